"""A batch driver that streams: millions of lines without holding them (used by ``--executor ray``).

A local batch holds every planned line (:class:`~cosmos_cli.batch.BatchItem`, about 3 KB each) and every record
of its report in memory, which is fine for thousands of lines and not for a million. This driver holds, per line:

* from validation (:func:`index_batch`, one pass of :func:`cosmos_cli.jobs.check_lines`): the line number and an
  8-byte digest of its bytes (``array``), the output name's 64-bit hash with its line (for the uniqueness check;
  a Python dict, the largest part), the issues of the invalid lines only, and at most ``PROBE_CACHE`` media probes;
* while running: one byte of status and the 8-byte offset of its record in a spool file
  (``OUTPUT_DIR/.cosmos-batch.records.HOST.PID.jsonl``, removed at the end, or by the next run on this host
  after a kill), the lines in flight, and a window of ``WINDOW`` planned lines.

Planning happens a window at a time (:func:`stream_plan`, which re-reads the file and hands each window to
:func:`cosmos_cli.batch.plan_batch`: the same resume decisions as a local batch), and a line whose bytes changed
since validation is failed instead of run. The report is written from the spool, in line order, in the usual
format (one item per line of the ``items`` list), atomically; while the batch runs it is rewritten at most every
``REPORT_EVERY_S`` seconds, or ten times the last write's duration, whichever is longer.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_FILE_BYTES = 16 * 2**30  # a streamed batch file: about 70 million lines of the examples' length
WINDOW = 256  # lines planned at a time
PROBE_CACHE = 4096  # media probes kept during validation (a file probed again after that is opened again)
CODES = {"ok": 1, "skipped": 2, "failed": 3, "blocked": 4, "not_run": 5}  # 0: no record yet
NAMES = {v: k for k, v in CODES.items()}


def digest(raw: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little")


class HashedNames:
    """Output name -> line for :func:`~cosmos_cli.jobs.check_lines`, keyed by the name's 64-bit hash (a false
    "already used" needs two names among N with one hash: about N^2/2^65, 3e-8 for a million)."""

    def __init__(self) -> None:
        self._lines: dict[int, int] = {}

    def __contains__(self, name: str) -> bool:
        return hash(name) in self._lines

    def __getitem__(self, name: str) -> int:
        return self._lines[hash(name)]

    def __setitem__(self, name: str, line: int) -> None:
        self._lines[hash(name)] = line


class BoundedProbes(dict):
    """The media probes of validation, at most ``PROBE_CACHE`` of them (the oldest goes first)."""

    def __setitem__(self, key, value) -> None:
        if len(self) >= PROBE_CACHE:
            del self[next(iter(self))]
        super().__setitem__(key, value)


@dataclass
class LineIndex:
    """What validation leaves for the run: the valid lines (number, digest), the invalid ones with their issues."""

    path: Path
    valid: array = field(default_factory=lambda: array("q"))
    digests: array = field(default_factory=lambda: array("Q"))
    invalid: dict[int, tuple[str, str]] = field(default_factory=dict)  # line -> (reasons, text)
    issues: int = 0
    last_line: int = 0

    def lines(self, shard: tuple[int, int]) -> int:
        return len(range(shard[0], len(self.valid), shard[1])) + (len(self.invalid) if shard[0] == 0 else 0)


def index_batch(req, spec, progress) -> LineIndex:
    """Validate the whole file in one streaming pass (the checks of ``cosmos validate``, see
    :func:`cosmos_cli.batch.validate_for`); raise :class:`ValidationFailed` as a local batch does."""
    from cosmos_cli.batch.plan import frames_for_line, image_lines_note, prompt_hint, validation_args
    from cosmos_cli.errors import ValidationFailed
    from cosmos_cli.jobs import RAW_TEXT_SHOWN, ValidationReport, check_lines

    d = req.defaults
    index = LineIndex(Path(req.file))
    raws = _raw_lines(Path(req.file))
    images: list[int] = []
    report = ValidationReport(Path(req.file))  # only the issues (for prompt_hint)
    for lineno, obj, resolved, issues, text in check_lines(Path(req.file), **validation_args(spec, d),
                                                           names=HashedNames(), probes=BoundedProbes(),
                                                           max_bytes=MAX_FILE_BYTES):
        raw = next(raws)
        while raw[0] != lineno:
            raw = next(raws)
        index.last_line = lineno
        if issues:
            for issue in issues:
                progress.warning(issue.format(str(req.file)))
            if len(report.issues) < 1000:
                report.issues.extend(issues)
            index.issues += len(issues)
            reasons = "; ".join(f"{i.field}: {i.message}" if i.field else i.message for i in issues)
            index.invalid[lineno] = (reasons, text[:RAW_TEXT_SHOWN])
            continue
        index.valid.append(lineno)
        index.digests.append(digest(raw[1]))
        if d.num_input_frames and d.num_input_frames > 1 and "num_input_frames" not in obj:
            if frames_for_line(obj, d, resolved) == 1:
                images.append(lineno)
    if not index.valid and not index.invalid:
        raise ValidationFailed(f"{req.file}: the file has no jobs (it is empty or only blank lines); nothing was "
                               "generated", hint="Add one JSON object per line.")
    if index.invalid and not (req.skip_invalid and index.valid):
        raise ValidationFailed(f"{req.file}: {len(index.invalid)} of {len(index.valid) + len(index.invalid)} lines "
                               "are invalid; nothing was generated",
                               hint=prompt_hint(report, spec, d) or "Fix the lines listed above (`cosmos validate "
                               "FILE` checks them), or pass --skip-invalid to run the valid lines.")
    if images and (req.shard or (0, 1))[0] == 0:
        progress.warning(image_lines_note(images, d.num_input_frames))
    return index


def _raw_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    from cosmos_cli.jobs import read_batch_lines

    for lineno, raw in read_batch_lines(path, MAX_FILE_BYTES):
        yield lineno, raw if raw is not None else b""


def stream_plan(req, spec, index: LineIndex, progress, shard: tuple[int, int]) -> Iterator[Any]:
    """The shard's lines in line order, planned a window at a time: a :class:`~cosmos_cli.batch.BatchItem` to run,
    or the :class:`~cosmos_cli.batch.ItemRecord` of a line already decided (invalid, complete, conflicting)."""
    from cosmos_cli.batch.plan import plan_batch, raw_line
    from cosmos_cli.batch.report import ItemRecord
    from cosmos_cli.jobs import BatchLine, ValidationReport, default_name, parse_json_line, resolve_input

    rank, world = shard
    mine = iter(range(rank, len(index.valid), world))
    invalid = sorted(index.invalid) if rank == 0 else []
    want = next(mine, None)
    window: list[BatchLine] = []
    changed: list[Any] = []
    leftovers = hidden_leftovers(Path(req.defaults.output_dir))

    def flush():
        plan = plan_batch(req, spec, _NoNotes(progress), report=ValidationReport(index.path, lines=list(window)),
                          leftovers=leftovers)
        out = [*plan.items, *plan.records.values(), *changed]
        window.clear()
        changed.clear()
        return sorted(out, key=lambda x: x.line)

    for lineno, raw in _raw_lines(index.path):
        while invalid and invalid[0] <= lineno:
            n = invalid.pop(0)
            reasons, text = index.invalid[n]
            changed.append(ItemRecord(n, default_name(n), "failed", f"invalid line: {reasons}", input=raw_line(text)))
        if want is None or index.valid[want] != lineno:
            continue
        if digest(raw) != index.digests[want]:
            changed.append(ItemRecord(lineno, default_name(lineno), "failed", "the line changed since the batch "
                                      "validated the file: run the batch again"))
        else:
            obj = parse_json_line(raw.decode("utf-8-sig" if lineno == 1 else "utf-8").removesuffix("\r"))
            window.append(BatchLine(lineno, obj, resolve_input(obj["visual_input"], index.path.parent)))
        want = next(mine, None)
        if len(window) >= WINDOW:
            yield from flush()
    for n in invalid:
        reasons, text = index.invalid[n]
        changed.append(ItemRecord(n, default_name(n), "failed", f"invalid line: {reasons}", input=raw_line(text)))
    if window or changed:
        yield from flush() if window else sorted(changed, key=lambda x: x.line)
    while want is not None:  # the file lost lines since validation
        n = index.valid[want]
        yield ItemRecord(n, default_name(n), "failed", "the line changed since the batch validated the file: run "
                         "the batch again")
        want = next(mine, None)


def hidden_leftovers(folder: Path) -> set[str]:
    """The staging and temporary files in ``folder`` (one listing), for :func:`cosmos_cli.batch.sidecar.remove_leftovers`."""
    try:
        return {e.name for e in os.scandir(folder)
                if e.name.startswith(".") and e.name.endswith((".pending", ".partial"))}
    except OSError:
        return set()


class _NoNotes:
    """The planner's progress for one window: the validation notes were already given once for the file."""

    def __init__(self, progress):
        self.progress = progress

    def warning(self, text: str) -> None:
        if not text.startswith("note: "):
            self.progress.warning(text)

    def __getattr__(self, name):
        return getattr(self.progress, name)


def remove_dead_spools(folder: Path, host: str) -> None:
    """Remove the record spools a killed driver on this host left (another host's are not ours to judge)."""
    from cosmos_cli.outputs import pid_alive

    for p in folder.glob(f".cosmos-batch.records.{host}.*.jsonl"):
        pid = p.name.removesuffix(".jsonl").rsplit(".", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            p.unlink(missing_ok=True)


class RecordSpool:
    """The records of a batch on disk (one JSON line each) with their offsets; the report is written from it."""

    def __init__(self, folder: Path, last_line: int):
        import socket

        host = socket.gethostname().replace(".", "_").replace("/", "_")
        remove_dead_spools(Path(folder), host)
        self.path = Path(folder) / f".cosmos-batch.records.{host}.{os.getpid()}.jsonl"
        self.file = open(self.path, "w+b")  # noqa: SIM115 (closed by close())
        self.offsets = array("q", [-1]) * (last_line + 1)
        self.status = array("b", [0]) * (last_line + 1)
        self.counts = dict.fromkeys(CODES, 0)

    def add(self, rec) -> None:
        old = self.status[rec.line]
        if old:
            self.counts[NAMES[old]] -= 1
        self.file.seek(0, os.SEEK_END)
        self.offsets[rec.line] = self.file.tell()
        self.file.write(json.dumps(rec.to_json(), ensure_ascii=False).encode("utf-8") + b"\n")
        self.status[rec.line] = CODES[rec.status]
        self.counts[rec.status] += 1

    def has(self, line: int) -> bool:
        return self.status[line] != 0

    def raw(self, line: int) -> bytes:
        self.file.seek(self.offsets[line])
        return self.file.readline().rstrip(b"\n")

    def close(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)


def write_streamed_report(path: Path, header: dict[str, Any], spool: RecordSpool, index: LineIndex,
                          shard: tuple[int, int], pending: str) -> None:
    """The report of ``header`` (the summary's fields but ``problems``) with ``problems`` and ``items`` streamed
    from ``spool``; a line without a record is ``not_run`` with the message ``pending``."""
    from cosmos_cli.media import atomic_path

    def lines() -> Iterator[int]:
        mine = iter(range(shard[0], len(index.valid), shard[1]))
        invalid = sorted(index.invalid) if shard[0] == 0 else []
        nxt = next(mine, None)
        while nxt is not None or invalid:
            if nxt is not None and (not invalid or index.valid[nxt] < invalid[0]):
                yield index.valid[nxt]
                nxt = next(mine, None)
            else:
                yield invalid.pop(0)

    lookup = _not_run_items(index)

    def item(line: int) -> bytes:
        if spool.has(line):
            return spool.raw(line)
        name, data, visual = lookup(line)
        return json.dumps({"line": line, "name": name, "status": "not_run", "message": pending, "input": data,
                           "visual_input": visual}, ensure_ascii=False).encode("utf-8")

    with atomic_path(Path(path)) as tmp, open(tmp, "xb") as f:
        head = json.dumps(header, indent=2, ensure_ascii=False).encode("utf-8")
        f.write(head[:-2] + b',\n  "problems": [')
        first = True
        for line in lines():
            code = spool.status[line]
            if code in (CODES["ok"], CODES["skipped"]):
                continue
            rec = json.loads(item(line))
            f.write((b"" if first else b",") + b"\n    " + json.dumps(
                {k: rec.get(k) for k in ("line", "name", "status", "message")}, ensure_ascii=False).encode("utf-8"))
            first = False
        f.write(b'\n  ],\n  "items": [')
        lookup = _not_run_items(index)
        first = True
        for line in lines():
            f.write((b"" if first else b",") + b"\n    " + item(line))
            first = False
        f.write(b"\n  ]\n}\n")


def report_due(last_write_s: float, last_duration_s: float, every_s: float) -> bool:
    return time.perf_counter() - last_write_s >= max(every_s, 10 * last_duration_s)


def _not_run_items(index: LineIndex):
    """``line -> (name, input, visual_input)`` of lines read again from the file, for lines without a record."""
    from cosmos_cli.batch.plan import raw_line
    from cosmos_cli.jobs import default_name, parse_json_line, resolve_input

    raws = _raw_lines(index.path)
    current = [0, b""]

    def lookup(line: int) -> tuple[str, dict[str, Any], str | None]:
        if line in index.invalid:
            return default_name(line), raw_line(index.invalid[line][1]), None
        while current[0] < line:
            current[0], current[1] = next(raws, (line, b""))
        try:
            obj = parse_json_line(current[1].decode("utf-8-sig" if line == 1 else "utf-8").removesuffix("\r"))
            return (obj.get("name") or default_name(line), obj,
                    str(resolve_input(obj["visual_input"], index.path.parent)))
        except (ValueError, KeyError, AttributeError, TypeError):
            return default_name(line), {}, None

    return lookup


@dataclass
class StreamOutcome:
    """The result of a streamed batch: what :class:`~cosmos_cli.batch.BatchOutcome` says, without its records."""

    file: Path
    output_dir: Path
    report_path: Path
    model: str
    lines: int
    counts: dict[str, int]
    problems: list[dict[str, Any]]
    workers: int = 1
    interrupted: bool = False
    elapsed_s: float = 0.0
    finished: bool = True
    terminated: bool = False

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 143 if self.terminated else 130
        return 0 if self.counts["ok"] + self.counts["skipped"] == self.lines else 1

    @property
    def missing(self) -> int:
        return self.lines - self.counts["ok"] - self.counts["skipped"]

    def summary(self) -> dict[str, Any]:
        return {"batch_file": str(self.file), "output_dir": str(self.output_dir), "report": str(self.report_path),
                "model": self.model, "workers": self.workers, "lines": self.lines, "counts": self.counts,
                "interrupted": self.interrupted, "finished": self.finished, "exit_code": self.exit_code,
                "elapsed_s": round(self.elapsed_s, 3), "problems": self.problems}

    def summary_line(self) -> str:
        parts = [f"{v} {k.replace('_', ' ')}" for k, v in self.counts.items() if v]
        return f"{self.file}: {self.lines} lines, {', '.join(parts) or 'nothing to do'}; report: {self.report_path}"


class StreamCoordinator:
    """:class:`cosmos_cli.batch.Coordinator` for a streamed batch: records go to the spool, the report from it."""

    def __init__(self, req, spec, display, report_path: Path, index: LineIndex, spool: RecordSpool,
                 shard: tuple[int, int]):
        self.req, self.spec, self.display, self.report_path = req, spec, display, Path(report_path)
        self.index, self.spool, self.shard = index, spool, shard
        self.t0 = time.perf_counter()
        self.last_write = self.last_duration = 0.0
        self.stopped = self.interrupted = self.terminated = False
        self.fatal: str | None = None
        self.workers = 1
        self.left_why: str | None = None  # why lines without a record were not run, when it is not the above

    def interrupt(self, exc: BaseException) -> None:
        from cosmos_cli.signals import Terminated

        self.interrupted = True
        self.terminated = self.terminated or isinstance(exc, Terminated)

    def decided(self, rec) -> None:
        """A line the plan decided (skipped, invalid, conflicting): counted, shown only when it failed."""
        from cosmos_cli.batch.report import REPORT_EVERY_S

        self.spool.add(rec)
        if rec.has_output:
            self.display.done += 1
            if self.display._bar is not None:
                self.display._bar.update(self.display._items_task, advance=1)
        else:
            self.display.finished(rec)
            if self.req.fail_fast and not rec.message.startswith("invalid line"):
                self.stopped = True
        if report_due(self.last_write, self.last_duration, REPORT_EVERY_S):
            self.write_report()

    def on_event(self, event) -> None:
        from cosmos_cli.batch.report import REPORT_EVERY_S

        self.display.handle(event)
        if event.kind == "record":
            rec = event.data[0]
            self.spool.add(rec)
            if self.req.fail_fast and not rec.has_output:
                self.stopped = True
            if report_due(self.last_write, self.last_duration, REPORT_EVERY_S):
                self.write_report()

    def why_not_run(self, final: bool) -> str:
        if self.interrupted:
            return f"not run: interrupted ({'SIGTERM' if self.terminated else 'Ctrl-C'})"
        if self.fatal:
            return f"not run: the batch stopped: {self.fatal}"
        if self.stopped:
            return "not run: --fail-fast stopped the batch"
        if self.left_why:
            return f"not run: {self.left_why}"
        if not final:
            return ("not run: pending: not generated yet when this report was written (if no batch is running, it "
                    "was killed: run the same command again to resume)")
        return "not run: the batch ended before this line"

    def outcome(self, final: bool = False) -> StreamOutcome:
        lines = self.index.lines(self.shard)
        counts = {k: self.spool.counts[k] for k in CODES}
        counts["not_run"] += lines - sum(self.spool.counts.values())
        return StreamOutcome(Path(self.req.file), Path(self.req.defaults.output_dir), self.report_path,
                             self.spec.name, lines, counts, [], self.workers, self.interrupted,
                             time.perf_counter() - self.t0, finished=final, terminated=self.terminated)

    def write_report(self, final: bool = False) -> StreamOutcome:
        from cosmos_cli.outputs import REPORT_MARKER

        t = time.perf_counter()
        outcome = self.outcome(final)
        header = {REPORT_MARKER: 1, **outcome.summary()}
        del header["problems"]
        if self.shard != (0, 1):
            header["shard"] = f"{self.shard[0]}/{self.shard[1]}"
        write_streamed_report(self.report_path, header, self.spool, self.index, self.shard, self.why_not_run(final))
        self.last_write, self.last_duration = time.perf_counter(), time.perf_counter() - t
        if final:  # the summary's problems, read back from what was written
            outcome.problems = _problems(self.report_path)
        return outcome


def _problems(report: Path, limit: int = 1000) -> list[dict[str, Any]]:
    """The first ``limit`` problems of a streamed report (its ``problems`` list comes before the items)."""
    out: list[dict[str, Any]] = []
    with open(report, "rb") as f:
        for raw in f:
            if raw.startswith(b'  "items"'):
                break
            if raw.startswith(b"    {") and len(out) < limit:
                out.append(json.loads(raw.strip().rstrip(b",")))
    return out
