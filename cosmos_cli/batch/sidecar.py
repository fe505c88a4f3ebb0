"""Resume: each finished line's sidecar, what is already at an output path, and committing an output.

Next to ``NAME.mp4`` and ``NAME.txt`` each finished line has ``NAME.job.json``: the batch file and line, the job
parameters that determine the video (the resolved job, the model, the numerics, whether the upsampler and the
guardrail ran) with their SHA-256 ``params_hash``, and the SHA-256 of the video's bytes. An item is written
in this order, every step atomic:

* the pipeline writes the video and the prompt to hidden staging files (``.NAME.mp4.pending``,
  ``.NAME.txt.pending``; the video writer itself goes through a ``.partial`` file and a rename);
* the prompt file is renamed into place, the sidecar is written, the video is renamed into place last.

So a visible ``NAME.mp4`` is always complete and its sidecar always already describes it; a kill at any point
leaves at worst hidden staging files, which the next run removes. On a re-run a line is ``skipped`` when
``NAME.mp4`` exists, its bytes match the sidecar's hash and the sidecar's ``params_hash`` equals the line's.
A finished output is never replaced without ``--overwrite``: an existing ``NAME.mp4`` made with other parameters
(the line or an option such as ``--num-steps`` changed), and any other existing ``NAME.mp4`` or ``NAME.txt``
(written by ``cosmos generate``, by another batch file, or edited since), is kept and its line reported
``failed``, saying to pass ``--overwrite`` or choose another ``--output-dir``. With ``--overwrite`` every line is
generated again, complete ones included.

A batch holds an exclusive lock on ``OUTPUT_DIR/.cosmos-batch.lock`` while it runs (see :mod:`cosmos_cli.outputs`):
a second batch on the same folder is refused before it touches anything. The running report says
``"finished": false`` and labels the lines not done yet as pending, so the report of a killed batch says so.
SIGTERM is handled like Ctrl-C (exit code 143 instead of 130).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cosmos_cli.batch.plan import BatchItem

SIDECAR_SUFFIX = ".job.json"
SIDECAR_VERSION = 1


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_sidecar(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def existing_output(item: BatchItem) -> tuple[str, str]:
    """What is already at the item's output path: ``new``, ``complete``, ``changed`` (this batch file's own
    output of this line, made with other parameters) or ``foreign`` (anything else), with a reason."""
    video = item.video_path
    if not video.exists():
        if not item.prompt_path.exists():
            return "new", ""
        side = read_sidecar(item.sidecar_path)  # a run killed between the prompt file's commit and the video's
        if side is not None and side.get("batch_file") == item.batch_file and side.get("line") == item.line:
            return "new", ""
        return "foreign", f"{item.prompt_path} already exists and is not an output this batch recorded"
    side = read_sidecar(item.sidecar_path)
    if side is None or side.get("video_sha256") != file_sha256(video):
        return "foreign", f"{video} already exists and is not an output this batch recorded"
    if side.get("params_hash") == item.params_hash:
        return "complete", ""
    if side.get("batch_file") == item.batch_file:
        old = side.get("params") or {}
        changed = sorted(k for k in set(old) | set(item.params) if old.get(k) != item.params.get(k))
        return "changed", f"{', '.join(changed) or 'parameters'} changed since the last run"
    return "foreign", (f"{video} already exists, written by {side.get('batch_file')} line {side.get('line')} "
                       f"with other parameters")


def remove_leftovers(item: BatchItem, present: set[str] | None = None) -> None:
    """Delete the hidden staging and temporary files a killed run may have left for this item. ``present``: the
    hidden leftovers of the folder from one listing (a streamed batch of a million lines lists it once, not per line)."""
    folder = item.video_path.parent
    if present is not None:
        mine = (f".{item.staged_video.name}", f".{item.staged_prompt.name}", f".{item.sidecar_path.name}.")
        for name in [n for n in present if n.startswith(mine)]:
            (folder / name).unlink(missing_ok=True)
            present.discard(name)
        return
    if not folder.is_dir():
        return
    for staged in (item.staged_video, item.staged_prompt):
        staged.unlink(missing_ok=True)
        for tmp in folder.glob(f".{staged.name}.*.partial"):
            tmp.unlink(missing_ok=True)
    for tmp in folder.glob(f".{item.sidecar_path.name}.*.partial"):
        tmp.unlink(missing_ok=True)


def commit(item: BatchItem, prompt: str | None) -> None:
    """Move a finished item into place: prompt file, then the sidecar, then the video (see the module doc)."""
    from cosmos_cli.media import write_text

    if item.staged_prompt.exists():
        os.replace(item.staged_prompt, item.prompt_path)
    sidecar = {
        "cosmos_batch": SIDECAR_VERSION,
        "batch_file": item.batch_file,
        "line": item.line,
        "name": item.job.name,
        "prompt": prompt,
        "params_hash": item.params_hash,
        "params": item.params,
        "video_sha256": file_sha256(item.staged_video),
    }
    write_text(item.sidecar_path, json.dumps(sidecar, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    os.replace(item.staged_video, item.video_path)
