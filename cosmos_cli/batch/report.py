"""What happened: one record per line, the batch's outcome and report, and the coordinator that keeps them."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cosmos_cli.batch.sidecar import existing_output, read_sidecar
from cosmos_cli.specs import ModelSpec

if TYPE_CHECKING:
    from cosmos_cli.batch.display import BatchDisplay, Event
    from cosmos_cli.batch.plan import BatchPlan, BatchRequest

REPORT_NAME = "batch_report.json"
STATUSES = ("ok", "skipped", "failed", "blocked", "not_run")
REPORT_EVERY_S = 2.0  # the running report is rewritten at most this often (and always at the end)


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
    details: dict[str, str] = field(default_factory=dict)  # the backend's words on how it ran (its kernels)

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
        if event.kind == "record":
            rec: ItemRecord = event.data[0]
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
        from cosmos_cli.batch.shard import shard_report_name

        return Path(req.defaults.output_dir) / shard_report_name(req.shard)
    return Path(req.defaults.output_dir) / REPORT_NAME
