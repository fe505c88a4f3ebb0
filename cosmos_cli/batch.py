"""Batch generation from a JSONL file: validated first, resumable, fault-tolerant, one model per GPU.

The flow of :func:`run_batch`:

1. **Validate** the whole file with :func:`cosmos_cli.jobs.validate_batch` (the code behind ``cosmos validate``)
   before any model loads. Any invalid line stops the batch with every error listed (exit code 1), unless
   ``skip_invalid``: then the valid lines run and each invalid one is reported as ``failed``.
2. **Plan** each line: the command-line options are the defaults, the line's keys override them (``prompt``,
   ``negative_prompt``, ``seed``, ``num_input_frames``, ``guidance``, ``num_steps``, ``fps``, ``name``). A line
   without ``seed`` uses ``--seed``: every line of a batch without seeds therefore shares one seed, and a
   batch re-run gives the same videos. A line without ``name`` is written as ``line00007`` (its line number).
3. **Resume** (see below): lines whose outputs are complete for the same parameters are ``skipped``.
4. **Run**: the model loads once (per worker) and stays placed by the memory plan across items, each item run
   by :class:`cosmos_cli.runner.JobRunner` as `generate` runs its job: a CUDA out-of-memory under ``--offload
   auto`` reloads the pipeline once with the next leaner strategy, retries the item (its message says so) and
   keeps that pipeline for the next items. One item's failure (an input that does not decode, a guardrail
   block, running out of memory again) is recorded and the batch goes on; ``fail_fast`` stops at the first.
   Ctrl-C stops after cleaning up the current item.
5. **Report**: ``batch_report.json`` (or ``report_path``), rewritten atomically while the batch runs and at the
   end, holds per line: the input line, the final prompt, the seed, the output paths, the status (``ok``,
   ``skipped``, ``failed``, ``blocked``, or ``not_run`` when Ctrl-C or ``--fail-fast`` stopped the batch first),
   the error message and the timings.

Resume design: per-output sidecars
----------------------------------
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

Several GPUs
------------
``gpus=N`` starts N worker processes (``spawn``); worker ``i`` loads the model on ``cuda:i`` (or the CPU with
``--device cpu``, for tests) and generates items ``i, i+N, ...`` of the lines still to do. Workers send their
progress and results to the parent, which draws one progress display and writes one report. Under
``torchrun`` (``WORLD_SIZE`` > 1) each rank takes lines ``rank, rank+WORLD_SIZE, ...`` on ``cuda:LOCAL_RANK``
and the records are gathered over ``torch.distributed`` (gloo) for rank 0 to write the combined report.

With ``--num-gpus N`` under torchrun (N processes) the ranks work together instead: every line is one generation
split over the N GPUs (see :mod:`cosmos_cli.generation`). Every rank validates the file; rank 0's plan is then
shared, so every rank runs the same items in the same order, and rank 0 alone commits the outputs and sidecars
and writes the report. A line that fails on rank 0 in a stage it runs alone (an input that does not decode, a
guardrail block) is recorded and the batch goes on; a failure of one rank inside the split work (out of memory,
a lost rank) stops the batch, since the others cannot go on without it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import queue as queue_mod
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cosmos_cli.errors import CosmosError, GenerationError, RankError, UsageError, ValidationFailed
from cosmos_cli.generation import (
    RESIZE_MODES,
    GenerateRequest,
    checked_model,
    make_job,
    pick_device,
    start_parallel,
)
from cosmos_cli.jobs import GenerationJob, default_name, parse_json_line, validate_batch
from cosmos_cli.launch import launch_env
from cosmos_cli.progress import Progress, QuietProgress
from cosmos_cli.registry import find_model
from cosmos_cli.runner import Blocked, JobRunner
from cosmos_cli.specs import GUARDRAIL, UPSAMPLER, ModelSpec

REPORT_NAME = "batch_report.json"
SIDECAR_SUFFIX = ".job.json"
SIDECAR_VERSION = 1
STATUSES = ("ok", "skipped", "failed", "blocked", "not_run")
REPORT_EVERY_S = 2.0  # the running report is rewritten at most this often (and always at the end)
WORKER_GRACE_S = 5.0  # after Ctrl-C, how long workers get to finish cleaning up before being interrupted again

Event = tuple  # (kind, slot, *payload): what workers send to the parent, see BatchDisplay.handle


@dataclass(frozen=True)
class BatchRequest:
    """A batch: the JSONL file and the generation options that are each line's defaults.

    ``defaults`` is the request ``cosmos generate`` would build from the same options; its ``input_path`` and
    ``name`` are not used (every line names its own input, and its output by ``name`` or line number).
    """

    file: Path
    defaults: GenerateRequest
    skip_invalid: bool = False
    fail_fast: bool = False
    gpus: int = 1
    report_path: Path | None = None
    shard: tuple[int, int] | None = None  # --shard I/N: see cosmos_cli.batch_shard
    executor: str = "local"  # or "ray": see cosmos_cli.batch_ray
    ray: Any = None  # cosmos_cli.batch_ray.RayOptions with --executor ray


@dataclass(frozen=True)
class BatchItem:
    """One valid line, resolved: its job, where its files go and the hash of what determines its video."""

    batch_file: str
    line: int
    data: dict[str, Any]
    job: GenerationJob
    params: dict[str, Any]
    params_hash: str
    video_path: Path
    prompt_path: Path
    regenerate_reason: str = ""

    @property
    def sidecar_path(self) -> Path:
        return self.video_path.with_name(self.job.name + SIDECAR_SUFFIX)

    @property
    def staged_video(self) -> Path:
        return self.video_path.with_name(f".{self.video_path.name}.pending")

    @property
    def staged_prompt(self) -> Path:
        return self.prompt_path.with_name(f".{self.prompt_path.name}.pending")


@dataclass
class ItemRecord:
    """What happened to one line: one entry of the report."""

    line: int
    name: str
    status: str
    message: str = ""
    input: dict[str, Any] = field(default_factory=dict)
    visual_input: str | None = None
    prompt: str | None = None
    seed: int | None = None
    params_hash: str | None = None
    video: str | None = None
    prompt_file: str | None = None
    device: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def has_output(self) -> bool:
        return self.status in ("ok", "skipped")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class BatchOutcome:
    """The result of a batch: one record per line, in line order."""

    file: Path
    output_dir: Path
    report_path: Path
    model: str
    records: list[ItemRecord]
    workers: int = 1
    interrupted: bool = False
    elapsed_s: float = 0.0
    finished: bool = True  # False in the report rewritten while the batch runs
    terminated: bool = False  # the interrupt was SIGTERM, not Ctrl-C

    @property
    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for r in self.records:
            counts[r.status] += 1
        return counts

    @property
    def exit_code(self) -> int:
        """0 only when every line has its output; 130 after Ctrl-C, 143 after SIGTERM; 1 otherwise."""
        if self.interrupted:
            return 143 if self.terminated else 130
        return 0 if all(r.has_output for r in self.records) else 1

    def summary(self) -> dict[str, Any]:
        return {
            "batch_file": str(self.file),
            "output_dir": str(self.output_dir),
            "report": str(self.report_path),
            "model": self.model,
            "workers": self.workers,
            "lines": len(self.records),
            "counts": self.counts,
            "interrupted": self.interrupted,
            "finished": self.finished,
            "exit_code": self.exit_code,
            "elapsed_s": round(self.elapsed_s, 3),
            "problems": [{"line": r.line, "name": r.name, "status": r.status, "message": r.message}
                         for r in self.records if not r.has_output],
        }

    def to_json(self) -> dict[str, Any]:
        from cosmos_cli.outputs import REPORT_MARKER

        return {REPORT_MARKER: 1, **self.summary(), "items": [r.to_json() for r in self.records]}

    def summary_line(self) -> str:
        c = self.counts
        parts = [f"{c[s]} {s.replace('_', ' ')}" for s in STATUSES if c[s]]
        return f"{self.file}: {len(self.records)} lines, {', '.join(parts) or 'nothing to do'}; report: {self.report_path}"


# ----------------------------------------------------------------------------------------------------------
# Planning: validation, one job per line, resume decisions
# ----------------------------------------------------------------------------------------------------------


def job_params(job: GenerationJob, spec: ModelSpec, req: GenerateRequest) -> tuple[dict[str, Any], str]:
    """Everything that determines a line's video, and its SHA-256 (the resume key)."""
    params = {
        **job.params(),
        "model": spec.name,
        "network_dir": req.network_dir,
        "numerics": req.numerics,
        "prompt_upsampler": not req.disable_prompt_upsampler and spec.component(UPSAMPLER) is not None,
        "guardrail": not req.disable_guardrail and spec.component(GUARDRAIL) is not None,
    }
    if not req.fast.exact:  # (absent in exact mode, so earlier outputs keep their keys)
        params["fast"] = req.fast.describe()
    blob = json.dumps(params, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return params, hashlib.sha256(blob.encode("utf-8")).hexdigest()


def frames_for_line(data: dict[str, Any], defaults: GenerateRequest, visual_input: Path) -> int | None:
    """The line's input frame count: its own ``num_input_frames``, else ``--num-input-frames``, except that an image
    line under ``--num-input-frames N > 1`` uses its one frame (a note says so, see :func:`image_lines_note`).

    The original's ``check_input_frames`` (``cosmos_predict1/diffusion/inference/inference_utils.py``) logs "is an
    image but 9 frames are required" and ``video2world.py`` then skips the line (``continue``, exit code 0; read in
    the fork staggeredsix/cosmos-predict1-dev at 339c26455504bc08f7b270784ff9f32b65521068), so its Example 4/5
    command generates nothing for an image line; here the command runs as written and every line gets its video."""
    if "num_input_frames" in data:
        return data["num_input_frames"]
    n = defaults.num_input_frames
    if n is not None and n > 1:
        from cosmos_cli.media import probe

        try:
            if probe(visual_input).kind == "image":
                return 1
        except CosmosError:
            pass  # make_job reports it
    return n


def image_lines_note(lines: list[int], n: int | None) -> str:
    shown = ", ".join(map(str, lines[:8])) + (f" and {len(lines) - 8} more" if len(lines) > 8 else "")
    return (f"note: line{'s' if len(lines) > 1 else ''} {shown}: an image is one input frame, so "
            f"--num-input-frames {n} applies to the videos only (the original skips such lines)")


def line_request(defaults: GenerateRequest, data: dict[str, Any], visual_input: Path, name: str) -> GenerateRequest:
    """The command-line defaults with this line's keys applied."""
    return dataclasses.replace(
        defaults,
        input_path=visual_input,
        prompt=data.get("prompt", defaults.prompt),
        negative_prompt=data.get("negative_prompt", defaults.negative_prompt),
        seed=data.get("seed", defaults.seed),
        num_input_frames=frames_for_line(data, defaults, visual_input),
        guidance=float(data["guidance"]) if "guidance" in data else defaults.guidance,  # 7 and 7.0: one hash
        num_steps=data.get("num_steps", defaults.num_steps),
        fps=data.get("fps", defaults.fps),
        name=name,
    )


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


@dataclass
class BatchPlan:
    spec: ModelSpec
    items: list[BatchItem]  # lines to generate
    records: dict[int, ItemRecord]  # lines already decided: invalid, complete, conflicting
    invalid: set[int] = field(default_factory=set)  # the lines --skip-invalid skips

    def failed_before_start(self) -> bool:
        """A line failed before any generation for a reason other than being invalid (for --fail-fast)."""
        return any(not r.has_output for n, r in self.records.items() if n not in self.invalid)


def validate_for(file: Path, spec: ModelSpec, defaults: GenerateRequest):
    """The one validation of a batch file, for `cosmos validate` and `cosmos batch` alike: the model's needs (a
    prompt on every line when it has no upsampler or the upsampler is off, unless --prompt gives one; its input
    frame counts) with the same options as defaults. Returns the :class:`~cosmos_cli.jobs.ValidationReport`."""
    return validate_batch(file, **validation_args(spec, defaults))


def validation_args(spec: ModelSpec, d: GenerateRequest) -> dict[str, Any]:
    """The model's needs and the options that validation checks each line against."""
    needs_prompt = d.disable_prompt_upsampler or spec.component(UPSAMPLER) is None
    return {"require_prompt": needs_prompt and not (d.prompt and d.prompt.strip()),
            "default_input_frames": d.num_input_frames or spec.default_input_frames,
            "allowed_input_frames": spec.input_frames, "model_name": spec.name}


def prompt_hint(report, spec: ModelSpec, defaults: GenerateRequest) -> str | None:
    """When lines lack a prompt only because no upsampler will write one: what to do about it."""
    if not any(i.field == "prompt" and "missing" in i.message for i in report.issues):
        return None
    why = ("--disable-prompt-upsampler is given" if defaults.disable_prompt_upsampler
           else f"{spec.name} has no prompt upsampler")
    return (f"A prompt is needed on every line because {why}: add \"prompt\" to the lines, or pass --prompt "
            "\"...\" as every line's default" + ("." if defaults.disable_prompt_upsampler else
                                                ", or use a model with an upsampler (--model 7B)."))


def validation_notes(report, defaults: GenerateRequest) -> list[str]:
    """What validation accepted but the user should know (image lines under --num-input-frames N)."""
    n = defaults.num_input_frames
    if not n or n <= 1:
        return []
    images = [bl.line for bl in report.lines
              if "num_input_frames" not in bl.data and frames_for_line(bl.data, defaults, bl.visual_input) == 1]
    return [image_lines_note(images, n)] if images else []


def plan_batch(req: BatchRequest, spec: ModelSpec, progress: Progress, *, shard: tuple[int, int] = (0, 1),
               report=None, on_valid: Callable[[], None] | None = None,
               leftovers: set[str] | None = None) -> BatchPlan:
    """Validate the file, resolve every valid line, and decide for each whether it needs generating.

    ``shard=(rank, world)`` restricts the resume decisions (and the clean-up of leftovers) to the lines a
    torchrun rank owns; validation always covers the whole file. ``on_valid`` runs once the file is known to be
    valid, before anything in the output folder is looked at or removed (the batch takes its folder lock there).
    """
    d = req.defaults
    out_dir = Path(d.output_dir)
    from cosmos_cli.outputs import check_folder

    check_folder(out_dir, "--output-dir")
    if d.resize not in RESIZE_MODES:
        raise UsageError(f"--resize must be one of {', '.join(RESIZE_MODES)}, got {d.resize!r}")
    report = report if report is not None else validate_for(req.file, spec, d)
    for issue in report.issues:
        progress.warning(issue.format(str(req.file)))
    if not report.valid and (not req.skip_invalid or issue_without_line(report)):
        what = (f"{len(report.invalid_lines)} of {report.jobs} lines are invalid" if report.invalid_lines
                else "not a valid batch file")
        raise ValidationFailed(f"{req.file}: {what}; nothing was generated",
                               hint=prompt_hint(report, spec, d) or
                               "Fix the lines listed above (`cosmos validate FILE` checks them), or pass "
                               "--skip-invalid to run the valid lines.")
    for note in validation_notes(report, d) if shard[0] == 0 else ():
        progress.warning(note)
    if on_valid is not None:
        on_valid()

    batch_file = str(Path(req.file).resolve())
    rank, world = shard
    records: dict[int, ItemRecord] = {}
    invalid: set[int] = set()
    for lineno in sorted(report.invalid_lines) if rank == 0 else ():
        invalid.add(lineno)
        reasons = "; ".join(f"{i.field}: {i.message}" if i.field else i.message
                            for i in report.issues if i.line == lineno)
        records[lineno] = ItemRecord(lineno, default_name(lineno), "failed", f"invalid line: {reasons}",
                                     input=raw_line(report.invalid_texts.get(lineno, "")))
    items: list[BatchItem] = []
    mine = report.lines[rank::world]
    for bl in mine:
        name = bl.data.get("name") or default_name(bl.line)
        base = ItemRecord(bl.line, name, "failed", input=bl.data, visual_input=str(bl.visual_input))
        try:
            job = make_job(line_request(d, bl.data, bl.visual_input, name), spec, name)
        except CosmosError as exc:  # what validation cannot see (e.g. the file changed since)
            records[bl.line] = dataclasses.replace(base, message=f"invalid line: {exc.message}")
            invalid.add(bl.line)
            progress.warning(f"line {bl.line} ({name}): failed: {records[bl.line].message}")
            continue
        job = dataclasses.replace(job, line=bl.line)
        params, digest = job_params(job, spec, d)
        item = BatchItem(batch_file, bl.line, bl.data, job, params, digest, out_dir / f"{name}.mp4",
                         out_dir / f"{name}.txt")
        remove_leftovers(item, leftovers)
        state, why = existing_output(item)
        base = dataclasses.replace(base, prompt=job.prompt, seed=job.seed, params_hash=digest)
        if state == "complete" and not d.overwrite:
            side = read_sidecar(item.sidecar_path) or {}
            records[bl.line] = dataclasses.replace(
                base, status="skipped", message="already complete with the same parameters",
                prompt=side.get("prompt", job.prompt), video=str(item.video_path),
                prompt_file=str(item.prompt_path) if item.prompt_path.exists() else None)
        elif state == "complete" and d.overwrite:
            items.append(dataclasses.replace(item, regenerate_reason="re-generated (--overwrite)"))
        elif state in ("foreign", "changed") and not d.overwrite:
            what = (f"kept {item.video_path}: made by this batch with other parameters ({why})" if state == "changed"
                    else why)
            records[bl.line] = dataclasses.replace(
                base, message=f"{what}; pass --overwrite to replace it, or choose another --output-dir")
            progress.warning(f"line {bl.line} ({name}): failed: {records[bl.line].message}")
        else:
            reason = (f"re-generated (--overwrite): {why}" if state == "changed" else
                      "replaced an existing output (--overwrite)" if state == "foreign" else "")
            items.append(dataclasses.replace(item, regenerate_reason=reason))
    return BatchPlan(spec, items, records, invalid)


def raw_line(text: str) -> dict[str, Any]:
    """An invalid line as it was written: its JSON object if it parses as one, else its text."""
    try:
        data = parse_json_line(text)  # (refuses NaN: a report never holds one)
    except ValueError:
        data = None
    return data if isinstance(data, dict) else {"text": text}


def issue_without_line(report) -> bool:
    """An issue about the whole file (not valid UTF-8, no jobs): --skip-invalid cannot skip it."""
    return any(i.line is None for i in report.issues) or not report.lines


# ----------------------------------------------------------------------------------------------------------
# Running items (the same code in the main process, in worker processes and under torchrun)
# ----------------------------------------------------------------------------------------------------------


class EventProgress(Progress):
    """A :class:`Progress` that turns the pipeline's progress calls into events for :class:`BatchDisplay`."""

    def __init__(self, emit: Callable[[Event], None], slot: int):
        self.emit, self.slot = emit, slot

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.emit(("stage", self.slot, name))
        t0 = time.perf_counter()
        yield
        self.emit(("stage_done", self.slot, name, time.perf_counter() - t0))

    def steps(self, total: int, label: str):
        self.emit(("steps", self.slot, total, label))
        return lambda n=1: self.emit(("advance", self.slot, n))

    def message(self, text: str) -> None:
        self.emit(("message", self.slot, text))

    def warning(self, text: str) -> None:
        self.emit(("warning", self.slot, text))


def one_line(exc: BaseException) -> str:
    text = exc.message if isinstance(exc, CosmosError) else str(exc)
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first if isinstance(exc, CosmosError) else f"{type(exc).__name__}: {first}".rstrip(": ")


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


def run_item(runner: JobRunner, item: BatchItem, progress: Progress, device: str, run=None) -> ItemRecord:
    """Generate one item on ``runner`` (a CUDA out-of-memory under ``--offload auto`` is retried there once with a
    leaner pipeline, kept for the next lines); every failure becomes a record (KeyboardInterrupt propagates, after
    clean-up; so does a failure to load the leaner pipeline, which leaves nothing to run the next lines on).

    ``run`` (rank 0 of a split generation, ``--num-gpus``): a failure of the generation that the other ranks did
    not share raises :class:`RankError` instead, which stops the batch."""
    import torch

    job = item.job
    rec = ItemRecord(item.line, job.name, "failed", input=item.data, visual_input=str(job.visual_input),
                     prompt=job.prompt, seed=job.seed, params_hash=item.params_hash, device=device)
    t0 = time.perf_counter()
    generating = False
    try:
        item.video_path.parent.mkdir(parents=True, exist_ok=True)
        generating = True
        done = runner.run(job, progress, video_path=item.staged_video, prompt_path=item.staged_prompt)
        result = done.result
        generating = False
        rec.timings = dict(result.timings)
        rec.prompt = result.final_prompt if result.final_prompt is not None else job.prompt
        if result.status == "ok" and item.staged_video.exists():
            commit(item, rec.prompt)
            rec.status, rec.video = "ok", str(item.video_path)
            rec.prompt_file = str(item.prompt_path) if item.prompt_path.exists() else None
            notes = (item.regenerate_reason, done.note, *result.notes)  # e.g. an OOM retry, a prompt cut short
            rec.message = "; ".join(m for m in notes if m)
        elif result.status == "ok":
            rec.message = "the pipeline reported success but wrote no video"
        else:
            rec.message = result.message or f"the pipeline returned {result.status}"
    except Blocked as exc:
        rec.status, rec.message = "blocked", exc.reason
    except Exception as exc:  # the batch's fault boundary: one item's failure must not stop the others
        if runner.broken:
            raise
        if generating and run is not None and not run.shared_failure(exc):
            raise rank_failure(item, run, exc) from exc
        if isinstance(exc, torch.cuda.OutOfMemoryError):
            where = f"{device} under memory strategy {runner.strategy}" if device != "cpu" else device
            rec.message = f"out of GPU memory on {where}: {one_line(exc).removeprefix('OutOfMemoryError: ')}"
            if device != "cpu" and runner.leaner():  # not retried (explicit --offload, or the retry ran out too)
                rec.message += f"; use --offload {runner.leaner()}"
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        elif isinstance(exc, MemoryError):
            rec.message = f"out of host memory: {exc}"
        else:
            rec.message = one_line(exc)
            if os.environ.get("COSMOS_DEBUG") == "1":
                traceback.print_exc()
    finally:
        for staged in (item.staged_video, item.staged_prompt):
            staged.unlink(missing_ok=True)
    rec.timings["total"] = time.perf_counter() - t0
    return rec


def rank_failure(item: BatchItem, run, exc: BaseException) -> RankError:
    return RankError(f"rank {run.rank}: line {item.line} ({item.job.name}) failed on this rank alone: {one_line(exc)}",
                     hint="The other ranks cannot go on without this one, so the batch stopped; fix the cause and "
                          "run the same command again (finished lines are skipped).")


def follow_item(runner: JobRunner, item: BatchItem, run) -> None:
    """A rank other than 0 of a split generation: its part of ``item``; rank 0 writes and records it."""
    try:
        runner.pipeline.generate(item.job, QuietProgress(), video_path=item.staged_video,
                                 prompt_path=item.staged_prompt)
    except Exception as exc:
        if not run.shared_failure(exc):  # rank 0 failing alone is recorded by rank 0, and the ranks go on
            raise rank_failure(item, run, exc) from exc


def run_items(backend, spec: ModelSpec, req: BatchRequest, items: list[BatchItem], device: str,
              emit: Callable[[Event], None], slot: int, should_stop: Callable[[], bool]) -> None:
    """Load the model once on ``device`` and generate ``items`` in order, emitting events."""
    progress = EventProgress(emit, slot)
    with JobRunner(backend, spec, req.defaults, device, progress) as runner:
        for item in items:
            if should_stop():
                break
            emit(("start", slot, item.line, item.job.name))
            rec = run_item(runner, item, progress, device)
            emit(("record", slot, rec))
            if req.fail_fast and not rec.has_output:
                break


def worker_main(slot: int, req: BatchRequest, spec_name: str, items: list[BatchItem], device: str,
                events, stop) -> None:
    """A worker process: load the model on ``device``, generate ``items``, report through ``events``."""
    emit = events.put
    try:
        backend, spec = find_model(spec_name)
        run_items(backend, spec, req, items, device, emit, slot, stop.is_set)
    except KeyboardInterrupt as exc:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        from cosmos_cli.signals import Terminated

        emit(("interrupted", slot, isinstance(exc, Terminated)))
    except CosmosError as exc:
        emit(("fatal", slot, type(exc), exc.message, exc.hint))
    except BaseException as exc:  # anything else still has to reach the parent as one line
        emit(("fatal", slot, GenerationError, f"worker on {device} failed: {one_line(exc)}", None))
    finally:
        emit(("exit", slot))


# ----------------------------------------------------------------------------------------------------------
# Progress display
# ----------------------------------------------------------------------------------------------------------


class BatchDisplay:
    """Batch progress on stderr.

    ``rich``: one live display with the items bar (done, failed, ETA) and one bar per worker for its current
    item's denoising steps. ``lines``: one line per finished item (logs, pipes). ``quiet``: warnings only
    (``--json``). ``off``: nothing (torchrun ranks other than 0).
    """

    def __init__(self, mode: str = "lines", labels: dict[int, str] | None = None, *, drop_notes: bool = False):
        self.mode, self.labels, self.drop_notes = mode, labels or {}, drop_notes
        self.total = self.done = self.failed = 0
        self.current: dict[int, str] = {}
        self._bar = None
        self._items_task = None
        self._slot_tasks: dict[int, Any] = {}

    # -- output ---------------------------------------------------------------------------------------------

    def _print(self, text: str, style: str | None = None) -> None:
        if self._bar is not None:
            self._bar.console.print(text, style=style, markup=False, highlight=False)
        else:
            print(text, file=sys.stderr, flush=True)

    def warning(self, text: str) -> None:
        if self.mode != "off" and not (self.drop_notes and text.startswith("note:")):  # --quiet drops the notes
            self._print(text, "yellow")

    def message(self, text: str) -> None:
        if self.mode in ("rich", "lines"):
            self._print(text)

    def start(self, total: int) -> None:
        self.total = total
        if self.mode != "rich" or total == 0:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as Bar

        self._bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"),
                        TimeRemainingColumn(), console=Console(stderr=True), transient=False)
        self._bar.start()
        self._items_task = self._bar.add_task("items", total=total, info="")

    def close(self) -> None:
        if self._bar is not None:
            for task in self._slot_tasks.values():  # the final display keeps the items bar only
                self._bar.remove_task(task)
            self._bar.stop()
            self._bar = None

    # -- events ---------------------------------------------------------------------------------------------

    def _slot_task(self, slot: int):
        if self._bar is None:
            return None
        if slot not in self._slot_tasks:
            self._slot_tasks[slot] = self._bar.add_task("", total=None, info="")
        return self._slot_tasks[slot]

    def _label(self, slot: int) -> str:
        return f"[{self.labels[slot]}] " if len(self.labels) > 1 and slot in self.labels else ""

    def handle(self, event: Event) -> None:
        kind, slot = event[0], event[1]
        task = self._slot_task(slot)
        if kind == "message":
            self.message(self._label(slot) + event[2])
        elif kind == "warning":
            self.warning(self._label(slot) + event[2])
        elif kind == "start":
            self.current[slot] = event[3]
            if task is not None:
                self._bar.reset(task, total=None, description=f"  {self._label(slot)}{event[3]}")
        elif kind == "stage" and task is not None:
            name = self.current.get(slot, "loading")
            self._bar.update(task, description=f"  {self._label(slot)}{name}: {event[2]}")
        elif kind == "stage_done" and slot not in self.current and self.mode == "lines":
            self._print(f"{self._label(slot)}done {event[2]} ({event[3]:.1f} s)")
        elif kind == "steps" and task is not None:
            name = self.current.get(slot, "")
            self._bar.reset(task, total=event[2], description=f"  {self._label(slot)}{name}: {event[3]}")
        elif kind == "advance" and task is not None:
            self._bar.advance(task, event[2])
        elif kind == "record":
            self.finished(event[2])
            self.current.pop(slot, None)

    def finished(self, rec: ItemRecord) -> None:
        self.done += 1
        self.failed += not rec.has_output
        if self._bar is not None:
            self._bar.update(self._items_task, advance=1, info=f"{self.failed} failed" if self.failed else "")
            if not rec.has_output:
                self._print(f"line {rec.line} ({rec.name}): {rec.status}: {rec.message}", "red")
        elif self.mode == "lines":
            secs = rec.timings.get("total")
            took = f" in {secs:.1f} s" if secs is not None else ""
            tail = f": {rec.message}" if rec.message else ""
            where = f" -> {rec.video}" if rec.status == "ok" else ""
            self._print(f"[{self.done}/{self.total}] line {rec.line} ({rec.name}): {rec.status}{took}{where}{tail}")


# ----------------------------------------------------------------------------------------------------------
# The coordinator: records, the running report, stopping
# ----------------------------------------------------------------------------------------------------------


class Coordinator:
    def __init__(self, req: BatchRequest, spec: ModelSpec, plan: BatchPlan, display: BatchDisplay,
                 report_path: Path | None, workers: int):
        self.req, self.spec, self.plan, self.display = req, spec, plan, display
        self.records: dict[int, ItemRecord] = dict(plan.records)
        self.report_path, self.workers = report_path, workers
        self.t0 = time.perf_counter()
        self.last_write = 0.0
        self.stopped = False
        self.interrupted = False
        self.terminated = False
        self.fatal: str | None = None  # the error that stopped the batch before its lines ran

    def interrupt(self, exc: BaseException) -> None:
        from cosmos_cli.signals import Terminated

        self.interrupted = True
        self.terminated = self.terminated or isinstance(exc, Terminated)

    def on_event(self, event: Event) -> None:
        self.display.handle(event)
        if event[0] == "record":
            rec: ItemRecord = event[2]
            self.records[rec.line] = rec
            if self.req.fail_fast and not rec.has_output:
                self.stopped = True
            if time.perf_counter() - self.last_write >= REPORT_EVERY_S:
                self.write_report()

    def outcome(self, final: bool = False) -> BatchOutcome:
        """The report so far. ``final`` also looks on disk for the outputs of items that have no record from
        a finished run (an interrupt between an output's commit and its record, a worker that died)."""
        records = dict(self.records)
        if self.interrupted:
            why = f"interrupted ({'SIGTERM' if self.terminated else 'Ctrl-C'})"
        elif self.fatal:
            why = f"the batch stopped: {self.fatal}"
        elif self.stopped:
            why = "--fail-fast stopped the batch"
        elif not final:
            why = ("pending: not generated yet when this report was written (if no batch is running, it was "
                   "killed: run the same command again to resume)")
        else:
            why = "the batch ended before this line"
        for item in self.plan.items:
            rec = records.get(item.line)
            if rec is not None and rec.timings:  # run_item's own record
                continue
            if final and existing_output(item)[0] == "complete":
                side = read_sidecar(item.sidecar_path) or {}
                records[item.line] = ItemRecord(
                    item.line, item.job.name, "ok", "finished as the batch stopped", input=item.data,
                    visual_input=str(item.job.visual_input), prompt=side.get("prompt", item.job.prompt),
                    seed=item.job.seed, params_hash=item.params_hash, video=str(item.video_path),
                    prompt_file=str(item.prompt_path) if item.prompt_path.exists() else None)
            elif rec is None:
                records[item.line] = ItemRecord(item.line, item.job.name, "not_run", f"not run: {why}",
                                                input=item.data, visual_input=str(item.job.visual_input),
                                                prompt=item.job.prompt, seed=item.job.seed,
                                                params_hash=item.params_hash)
        d = self.req.defaults
        return BatchOutcome(Path(self.req.file), Path(d.output_dir), self.report_path or report_path_for(self.req),
                            self.spec.name, [records[k] for k in sorted(records)], self.workers, self.interrupted,
                            time.perf_counter() - self.t0, finished=final, terminated=self.terminated)

    def write_report(self, final: bool = False) -> BatchOutcome:
        outcome = self.outcome(final)
        if self.report_path is not None:
            from cosmos_cli.media import write_text

            self.last_write = time.perf_counter()
            write_text(self.report_path, json.dumps(outcome.to_json(), indent=2, ensure_ascii=False) + "\n")
        return outcome


def report_path_for(req: BatchRequest) -> Path:
    if req.report_path is not None:
        return Path(req.report_path)
    if req.shard is not None:
        from cosmos_cli.batch_shard import shard_report_name

        return Path(req.defaults.output_dir) / shard_report_name(req.shard)
    return Path(req.defaults.output_dir) / REPORT_NAME


# ----------------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------------


def torchrun_env() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when started by torchrun with more than one process, else None."""
    launch = launch_env()
    return (launch.rank, launch.world_size, launch.local_rank) if launch.is_parallel else None


def worker_devices(device: str, n: int) -> list[str]:
    """The device of each of ``n`` workers: the CPU for every one with --device cpu, else cuda:0..n-1."""
    if n == 1:
        return [pick_device(device)]
    if device == "cpu":
        return ["cpu"] * n
    if device not in ("auto", "cuda"):
        raise UsageError(f"--gpus {n} uses cuda:0 to cuda:{n - 1}; --device {device} names one device",
                         hint="Drop --device, and choose the GPUs with CUDA_VISIBLE_DEVICES.")
    import torch

    have = torch.cuda.device_count()
    if have < n:
        raise UsageError(f"--gpus {n}: only {have} CUDA GPU{'s' if have != 1 else ''} visible",
                         hint=f"Use --gpus {have or 1}" + (" with --device cpu." if not have else "."))
    return [f"cuda:{i}" for i in range(n)]


def run_batch(req: BatchRequest, display: BatchDisplay | None = None) -> BatchOutcome:
    """Validate, plan, generate and report a batch; see the module docstring. SIGTERM is handled like Ctrl-C."""
    from cosmos_cli.signals import sigterm_as_interrupt

    with sigterm_as_interrupt():
        return _run_batch(req, display)


def _run_batch(req: BatchRequest, display: BatchDisplay | None) -> BatchOutcome:
    from cosmos_cli.outputs import check_report_path, lock_folder

    display = display or BatchDisplay("quiet")
    d = req.defaults
    if req.gpus < 1:
        raise UsageError(f"--gpus must be at least 1, got {req.gpus}")
    dist = torchrun_env()
    if d.num_gpus > 1 and req.gpus != 1:
        raise UsageError(f"--gpus {req.gpus} (one model per GPU, the lines shared out) and --num-gpus {d.num_gpus} "
                         "(each line split over the GPUs) cannot be combined", hint="Choose one of them.")
    if dist is not None and req.gpus not in (1, dist[1]):
        raise UsageError(f"--gpus {req.gpus} under torchrun with {dist[1]} processes",
                         hint="Under torchrun each process is one worker: leave --gpus out.")
    if req.shard is not None and (dist is not None or d.num_gpus > 1):
        raise UsageError("--shard under torchrun: the ranks already share the lines", hint="Drop --shard.")
    if req.executor == "ray":
        from cosmos_cli.batch_ray import check_ray_request

        check_ray_request(req, dist)
    log = BatchDisplay("off") if dist is not None and dist[0] != 0 else display
    backend, spec = checked_model(d, EventProgress(log.handle, 0))
    primary = dist is None or dist[0] == 0
    locks = []

    def take_folder() -> None:  # the file is valid: lock the output folder (rank 0 of torchrun) before touching it
        if primary and req.shard is not None:
            from cosmos_cli.batch_shard import lock_shard

            locks.extend(lock_shard(Path(d.output_dir), req.shard))
        elif primary:
            locks.append(lock_folder(Path(d.output_dir)))
        if primary:
            check_report_path(report_path_for(req), Path(req.file))

    try:
        if req.executor == "ray":  # validates and plans as it goes, streaming (see cosmos_cli.batch_stream)
            from cosmos_cli.batch_ray import run_on_ray

            return run_on_ray(req, spec, display, req.ray, take_folder)
        try:
            shard = (dist[0], dist[1]) if dist is not None and d.num_gpus == 1 else (0, 1)  # --num-gpus: rank 0 plans
            shard = req.shard or shard
            plan = plan_batch(req, spec, EventProgress(log.handle, 0), shard=shard, on_valid=take_folder)
        except KeyboardInterrupt as exc:  # nothing generated yet: no report, but the same exit code as later
            from cosmos_cli.signals import Terminated

            return BatchOutcome(Path(req.file), Path(d.output_dir), report_path_for(req), spec.name, [],
                                interrupted=True, terminated=isinstance(exc, Terminated))
        if d.num_gpus > 1:
            return _run_split(req, spec, backend, plan, log)
        if dist is not None:
            return _run_distributed(req, spec, backend, plan, log, dist)
        return _run_here(req, spec, backend, plan, display)
    finally:
        for lock in locks:
            lock.release()


def _run_here(req: BatchRequest, spec: ModelSpec, backend, plan: BatchPlan, display: BatchDisplay) -> BatchOutcome:
    """This process (and its --gpus worker processes) generate every line still to do."""
    d = req.defaults
    n_workers = max(1, min(req.gpus, len(plan.items)))
    devices = worker_devices(d.device, n_workers) if plan.items else []
    display.labels = {i: f"{dev}#{i}" if devices.count(dev) > 1 else dev for i, dev in enumerate(devices)}
    coord = Coordinator(req, spec, plan, display, report_path_for(req), n_workers)
    done = sum(r.status == "skipped" for r in plan.records.values())
    display.message(f"{req.file}: {len(plan.items) + len(plan.records)} lines, {len(plan.items)} to generate"
                    + (f", {done} already complete" if done else "")
                    + (f", {len(plan.records) - done} failed before starting" if len(plan.records) > done else "")
                    + (f", {n_workers} workers" if n_workers > 1 else ""))
    fatal: CosmosError | None = None
    display.start(len(plan.items))
    coord.stopped = req.fail_fast and plan.failed_before_start()
    try:
        if n_workers == 1 and plan.items and not coord.stopped:
            run_items(backend, spec, req, plan.items, devices[0], coord.on_event, 0, lambda: coord.stopped)
        elif plan.items and not coord.stopped:
            fatal = _run_workers(req, spec, plan, devices, coord)
            coord.fatal = fatal.message if fatal is not None else None
    except KeyboardInterrupt as exc:
        coord.interrupt(exc)
    except BaseException as exc:  # a setup error (a checkpoint file missing, ...): the report says what it was
        coord.fatal = one_line(exc)
        coord.write_report(final=True)
        raise
    finally:
        display.close()
        sweep(plan, coord.records)
    outcome = coord.write_report(final=True)
    if fatal is not None:
        raise fatal
    return outcome


def sweep(plan: BatchPlan, records: dict[int, ItemRecord]) -> None:
    """Remove the hidden temporaries of every item without its output (an interrupted or dead worker's)."""
    for item in plan.items:
        rec = records.get(item.line)
        if rec is None or not rec.has_output:
            remove_leftovers(item)


def _run_workers(req: BatchRequest, spec: ModelSpec, plan: BatchPlan, devices: list[str],
                 coord: Coordinator) -> CosmosError | None:
    """Start one worker process per device, dispatch items round-robin, collect events until all exit."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    events, stop = ctx.Queue(), ctx.Event()
    n = len(devices)
    shards = {i: plan.items[i::n] for i in range(n)}
    procs = {i: ctx.Process(target=worker_main, args=(i, req, spec.name, shards[i], devices[i], events, stop),
                            name=f"cosmos-batch-{i}", daemon=True) for i in range(n)}
    for p in procs.values():
        p.start()
    running = set(procs)
    fatal: CosmosError | None = None
    interrupted_at: float | None = None
    signalled = False
    try:
        while running:
            try:
                try:
                    event = events.get(timeout=0.5)
                except queue_mod.Empty:
                    event = None
                if event is None:
                    for i in list(running):
                        if not procs[i].is_alive():
                            _worker_died(i, procs[i].exitcode, shards[i], devices[i], coord)
                            running.discard(i)
                    if interrupted_at is not None and time.monotonic() - interrupted_at > WORKER_GRACE_S:
                        if not signalled:
                            for i in running:
                                if procs[i].pid:
                                    os.kill(procs[i].pid, signal.SIGINT)
                            signalled, interrupted_at = True, time.monotonic()
                        else:
                            for i in running:
                                procs[i].terminate()
                            break
                    continue
                kind, slot = event[0], event[1]
                if kind == "exit":
                    running.discard(slot)
                elif kind == "interrupted":
                    coord.interrupted = True
                    coord.terminated = coord.terminated or bool(event[2:] and event[2])
                elif kind == "fatal":
                    cls, message, hint = event[2], event[3], event[4]
                    fatal = fatal or cls(message, hint)
                    for item in shards[slot]:
                        coord.records.setdefault(item.line, _failed(item, message, devices[slot]))
                    stop.set()
                else:
                    coord.on_event(event)
                if coord.stopped:
                    stop.set()
            except KeyboardInterrupt as exc:
                coord.interrupt(exc)
                stop.set()
                if interrupted_at is None:
                    interrupted_at = time.monotonic()
                else:  # a second Ctrl-C: stop waiting
                    for i in running:
                        procs[i].terminate()
                    break
    finally:
        for p in procs.values():
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
        events.close()
    if coord.interrupted:
        raise KeyboardInterrupt
    return fatal


def _failed(item: BatchItem, message: str, device: str) -> ItemRecord:
    return ItemRecord(item.line, item.job.name, "failed", message, input=item.data,
                      visual_input=str(item.job.visual_input), prompt=item.job.prompt, seed=item.job.seed,
                      params_hash=item.params_hash, device=device)


def _worker_died(slot: int, code: int | None, items: list[BatchItem], device: str, coord: Coordinator) -> None:
    message = f"the worker on {device} stopped unexpectedly (exit code {code})"
    coord.display.warning(message)
    for item in items:
        if item.line not in coord.records:
            coord.records[item.line] = _failed(item, message, device)
            coord.display.finished(coord.records[item.line])


def _run_distributed(req: BatchRequest, spec: ModelSpec, backend, plan: BatchPlan, display: BatchDisplay,
                     dist_env: tuple[int, int, int]) -> BatchOutcome:
    """One torchrun rank: generate this rank's lines, gather every rank's records, rank 0 writes the report."""
    import torch
    import torch.distributed as tdist

    rank, world, local = dist_env
    device = "cpu" if req.defaults.device == "cpu" else f"cuda:{local}"
    if device != "cpu" and not torch.cuda.is_available():
        raise UsageError("torchrun without a CUDA GPU: pass --device cpu to run the ranks on the CPU")
    if not tdist.is_initialized():
        tdist.init_process_group("gloo")
    # No running report: it would only hold this rank's lines. Rank 0 writes the combined one at the end.
    coord = Coordinator(req, spec, plan, display, None, world)
    fatal: tuple[type, str, str | None] | None = None
    display.start(len(plan.items))
    try:
        if plan.items and not (req.fail_fast and plan.failed_before_start()):
            run_items(backend, spec, req, plan.items, device, coord.on_event, 0, lambda: coord.stopped)
    except KeyboardInterrupt as exc:
        coord.interrupt(exc)
    except CosmosError as exc:
        fatal = (type(exc), exc.message, exc.hint)
        coord.fatal = exc.message
        for item in plan.items:
            coord.records.setdefault(item.line, _failed(item, exc.message, device))
    finally:
        display.close()
        sweep(plan, coord.records)
    mine = coord.outcome(final=True)
    gathered: list[Any] = [None] * world
    tdist.all_gather_object(gathered, (mine.records, mine.interrupted, fatal))
    records = sorted((r for recs, _, _ in gathered for r in recs), key=lambda r: r.line)
    outcome = dataclasses.replace(mine, records=records, interrupted=any(g[1] for g in gathered), workers=world,
                                  report_path=report_path_for(req))
    if rank == 0:
        from cosmos_cli.media import write_text

        write_text(outcome.report_path, json.dumps(outcome.to_json(), indent=2, ensure_ascii=False) + "\n")
    tdist.barrier()  # leave together: gloo aborts a rank whose peer has already gone
    tdist.destroy_process_group()
    fatals = [g[2] for g in gathered if g[2] is not None]
    if fatals:
        cls, message, hint = fatals[0]
        raise cls(message, hint)
    return outcome


def _run_split(req: BatchRequest, spec: ModelSpec, backend, plan: BatchPlan, display: BatchDisplay) -> BatchOutcome:
    """``--num-gpus N`` under torchrun: every line one generation split over the ranks (see the module doc)."""
    run = start_parallel(backend, spec, req.defaults, "batch")
    ok = False
    try:
        shared = run.share(lambda: plan, "planning the batch")  # rank 0's items, in rank 0's order, on every rank
        outcome = _split_items(req, spec, backend, shared, display, run)
        ok = not outcome.interrupted
        return outcome
    finally:
        run.close(ok=ok)


def _split_items(req: BatchRequest, spec: ModelSpec, backend, plan: BatchPlan, display: BatchDisplay,
                 run) -> BatchOutcome:
    main, device = run.rank == 0, str(run.device)
    coord = Coordinator(req, spec, plan, display, report_path_for(req) if main else None, run.world_size)
    done = sum(r.status == "skipped" for r in plan.records.values())
    display.message(f"{req.file}: {len(plan.items) + len(plan.records)} lines, {len(plan.items)} to generate"
                    + (f", {done} already complete" if done else "") + f", each split over {run.world_size} GPUs")
    display.start(len(plan.items))
    coord.stopped = req.fail_fast and plan.failed_before_start()  # alike on every rank: the plan is rank 0's
    progress = EventProgress(display.handle, 0) if main else QuietProgress()
    try:
        if plan.items and not coord.stopped:
            with JobRunner(backend, spec, req.defaults, device, progress, run) as runner:  # no OOM retry: ranks
                for item in plan.items:
                    if not run.share(lambda: not coord.stopped, "starting the next line"):  # --fail-fast
                        break
                    if main:
                        coord.on_event(("start", 0, item.line, item.job.name))
                        coord.on_event(("record", 0, run_item(runner, item, progress, device, run)))
                    else:
                        follow_item(runner, item, run)
    except KeyboardInterrupt as exc:
        coord.interrupt(exc)
    except BaseException as exc:
        if main:
            coord.fatal = one_line(exc)
            coord.write_report(final=True)
        raise
    finally:
        display.close()
        if main:
            sweep(plan, coord.records)
    outcome = coord.write_report(final=True) if main else coord.outcome()
    if coord.interrupted:  # no collective after Ctrl-C: the ranks stop where they are
        return outcome
    return run.share(lambda: outcome, "the batch report")  # every rank exits with rank 0's code
