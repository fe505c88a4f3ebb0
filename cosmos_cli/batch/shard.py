"""``cosmos batch FILE --shard I/N``: one of N deterministic parts of a batch, for Slurm job arrays and any scheduler.

* The split: shard ``I`` (``0 <= I < N``) takes the valid lines at positions ``I, I+N, I+2N, ...`` of the file's
  valid lines (the same rule as torchrun ranks); the invalid lines (``--skip-invalid``) belong to shard 0. Every
  shard validates the whole file, so all N see the same valid lines and together cover each exactly once.
* Each shard writes ``OUTPUT_DIR/batch_report.shard-I-of-N.json`` (or ``--report``), resumes like a full batch
  (a re-run of the shard skips its finished lines) and holds two locks: an exclusive one on
  ``.cosmos-batch.shard-I-of-N.lock`` (the same shard twice is refused) and a *shared* one on the folder's batch
  lock ``.cosmos-batch.lock``, so shards run side by side while a full batch on the folder (which takes that lock
  exclusively) is refused, and the other way round.
* ``cosmos batch FILE --merge-reports`` combines the N shard reports into ``batch_report.json``; a full run of the
  same file after the shards also reports every line (the finished ones ``skipped``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from cosmos_cli.errors import CosmosError, UsageError

SHARD_REPORT_RE = re.compile(r"^batch_report\.shard-(?P<i>\d+)-of-(?P<n>\d+)\.json$")


class ShardReportError(CosmosError):
    """Shard reports that do not combine into one report (missing, from another file, overlapping)."""


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"I/N"`` -> ``(I, N)``; one clear line when it is not a shard."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if m is None or int(m[2]) < 1 or int(m[1]) >= int(m[2]):
        raise UsageError(f"--shard {text}: expected I/N with 0 <= I < N (for example 0/3, 1/3, 2/3)",
                         hint="In a Slurm job array: --array=0-(N-1) and --shard $SLURM_ARRAY_TASK_ID/N.")
    return int(m[1]), int(m[2])


def shard_report_name(shard: tuple[int, int]) -> str:
    return f"batch_report.shard-{shard[0]}-of-{shard[1]}.json"


def lock_shard(folder: Path, shard: tuple[int, int]) -> list:
    """The two locks of a running shard (see the module doc); released with ``lock.release()`` each."""
    import fcntl

    from cosmos_cli.outputs import (
        BATCH_LOCK_NAME,
        FolderBusy,
        Lock,
        OutputFolderError,
        holder_pid,
        make_folder,
        try_lock,
    )

    created = make_folder(folder, "--output-dir")
    main = folder / BATCH_LOCK_NAME
    try:
        fd = os.open(main, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as err:
        raise OutputFolderError(f"--output-dir {folder}: cannot write in the folder: {err.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        pid = holder_pid(main)
        raise FolderBusy(f"--output-dir {folder}: a full batch is writing here" + (f" (pid {pid})" if pid else ""),
                         hint="Wait for it to finish, or choose another --output-dir.") from None
    shared = Lock(main, fd, created)
    own_path = folder / f".cosmos-batch.shard-{shard[0]}-of-{shard[1]}.lock"
    own = try_lock(own_path)
    if own is None:
        os.close(fd)
        pid = holder_pid(own_path)
        raise FolderBusy(f"--shard {shard[0]}/{shard[1]}: this shard is already running on {folder}"
                         + (f" (pid {pid})" if pid else ""), hint="Wait for it to finish.")
    return [own, _KeepFile(shared)]


class _KeepFile:
    """A shared lock: released without removing the file (other shards may still hold it)."""

    def __init__(self, lock):
        self.lock = lock

    def release(self) -> None:
        self.lock.release(remove_file=False)


def merge_reports(batch_file: Path, output_dir: Path, report_path: Path | None = None) -> dict[str, Any]:
    """Combine the shard reports in ``output_dir`` into one batch report; returns it (already written)."""
    from cosmos_cli.batch.report import REPORT_NAME, STATUSES
    from cosmos_cli.jobs import read_batch_lines
    from cosmos_cli.media import write_text
    from cosmos_cli.outputs import REPORT_MARKER, check_report_path

    output_dir = Path(output_dir)
    found: dict[int, dict[int, Path]] = {}
    for p in sorted(output_dir.glob("batch_report.shard-*-of-*.json")):
        m = SHARD_REPORT_RE.match(p.name)
        if m:
            found.setdefault(int(m["n"]), {})[int(m["i"])] = p
    if not found:
        raise ShardReportError(f"{output_dir}: no shard reports (batch_report.shard-I-of-N.json)",
                               hint="Run the shards first: cosmos batch FILE --shard I/N --output-dir DIR.")
    if len(found) > 1:
        raise ShardReportError(f"{output_dir}: shard reports of several splits ({', '.join(f'N={n}' for n in found)})",
                               hint="Remove the reports of the split you no longer use.")
    (n, shards), = found.items()
    missing = [i for i in range(n) if i not in shards]
    if missing:
        raise ShardReportError(f"{output_dir}: shard{'s' if len(missing) > 1 else ''} "
                               f"{', '.join(f'{i}/{n}' for i in missing)} of {n} ha{'ve' if len(missing) > 1 else 's'}"
                               " no report yet", hint="Run the missing shards, then merge again.")
    want = str(Path(batch_file).resolve())
    items: dict[int, dict[str, Any]] = {}
    model, interrupted, elapsed = None, False, 0.0
    for i in range(n):
        data = json.loads(shards[i].read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get(REPORT_MARKER) is None:
            raise ShardReportError(f"{shards[i]}: not a batch report of cosmos")
        if str(Path(data.get("batch_file", "")).resolve()) != want:
            raise ShardReportError(f"{shards[i]}: a report of {data.get('batch_file')}, not of {batch_file}")
        if not data.get("finished", True):
            raise ShardReportError(f"{shards[i]}: shard {i}/{n} has not finished (or was killed)",
                                   hint="Run that shard again (it resumes), then merge.")
        model = model or data.get("model")
        interrupted = interrupted or bool(data.get("interrupted"))
        elapsed = max(elapsed, float(data.get("elapsed_s", 0.0)))
        for item in data.get("items", []):
            if item["line"] in items:
                raise ShardReportError(f"line {item['line']} is in two shard reports ({shards[i]} and another)")
            items[item["line"]] = item
    jobs = sum(1 for _, raw in read_batch_lines(Path(batch_file)) if raw is None or raw.strip())
    if len(items) != jobs:
        raise ShardReportError(f"the {n} shard reports hold {len(items)} of the {jobs} lines of {batch_file}",
                               hint="Was the batch file changed after the shards ran? Run the shards again.")
    records = [items[k] for k in sorted(items)]
    counts = dict.fromkeys(STATUSES, 0)
    for r in records:
        counts[r["status"]] += 1
    problems = [{"line": r["line"], "name": r["name"], "status": r["status"], "message": r["message"]}
                for r in records if r["status"] not in ("ok", "skipped")]
    path = Path(report_path) if report_path is not None else output_dir / REPORT_NAME
    check_report_path(path, Path(batch_file))
    report = {REPORT_MARKER: 1, "batch_file": want, "output_dir": str(output_dir), "report": str(path),
              "model": model, "workers": n, "shards": n, "lines": len(records), "counts": counts,
              "interrupted": interrupted, "finished": True,
              "exit_code": (130 if interrupted else 1 if problems else 0), "elapsed_s": round(elapsed, 3),
              "problems": problems, "items": records}
    write_text(path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return report
