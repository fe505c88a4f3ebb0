"""Running items: one line on a loaded pipeline, the same code in the main process, in worker processes and
under torchrun."""

from __future__ import annotations

import functools
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from cosmos_cli.batch.display import Event, EventProgress
from cosmos_cli.batch.plan import BatchItem, BatchRequest
from cosmos_cli.batch.report import ItemRecord
from cosmos_cli.batch.sidecar import commit
from cosmos_cli.errors import CosmosError, RankError
from cosmos_cli.progress import Progress, QuietProgress
from cosmos_cli.runner import Blocked, JobRunner
from cosmos_cli.specs import ModelSpec
from cosmos_cli.writes import BackgroundWriter, WriteSlot


def one_line(exc: BaseException) -> str:
    text = exc.message if isinstance(exc, CosmosError) else str(exc)
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first if isinstance(exc, CosmosError) else f"{type(exc).__name__}: {first}".rstrip(": ")


def run_item(runner: JobRunner, item: BatchItem, progress: Progress, device: str, run=None) -> ItemRecord:
    """Generate one item on ``runner`` (a CUDA out-of-memory under ``--offload auto`` is retried there once with a
    leaner pipeline, kept for the next lines); every failure becomes a record (KeyboardInterrupt propagates, after
    clean-up; so does a failure to load the leaner pipeline, which leaves nothing to run the next lines on).

    ``run`` (rank 0 of a split generation, ``--num-gpus``): a failure of the generation that the other ranks did
    not share raises :class:`RankError` instead, which stops the batch."""
    return start_item(runner, item, progress, device, run).complete()


@dataclass
class StartedItem:
    """A generated item: ``complete()`` gives its record. ``deferred``: its files are still being written in the
    background; ``complete`` waits for them and commits them (call it after starting the next line)."""

    complete: Callable[[], ItemRecord]
    deferred: bool


def start_item(runner: JobRunner, item: BatchItem, progress: Progress, device: str, run=None,
               writer: BackgroundWriter | None = None) -> StartedItem:
    """:func:`run_item`'s generation, its files written by ``writer`` in the background where the pipeline takes
    it (:mod:`cosmos_cli.writes`): then the commit waits for ``complete``."""
    job = item.job
    rec = ItemRecord(item.line, job.name, "failed", input=item.data, visual_input=str(job.visual_input),
                     prompt=job.prompt, seed=job.seed, params_hash=item.params_hash, device=device)
    t0 = time.perf_counter()
    generating = False
    slot = writer.slot() if writer is not None else None
    deferred: Callable[[], None] | None = None  # the commit, after the background write
    try:
        item.video_path.parent.mkdir(parents=True, exist_ok=True)
        generating = True
        done = runner.run(job, progress, video_path=item.staged_video, prompt_path=item.staged_prompt, writes=slot)
        result = done.result
        generating = False
        rec.timings, rec.details = dict(result.timings), dict(result.details)
        rec.prompt = result.final_prompt if result.final_prompt is not None else job.prompt
        if result.status != "ok":
            rec.message = result.message or f"the pipeline returned {result.status}"
        elif slot is not None and slot.pending is not None:
            deferred = functools.partial(_commit_files, item, rec, done, slot)
        else:
            _commit_files(item, rec, done, None)
    except Blocked as exc:
        rec.status, rec.message = "blocked", exc.reason
    except Exception as exc:  # the batch's fault boundary: one item's failure must not stop the others
        if runner.broken:
            raise
        if generating and run is not None and not run.shared_failure(exc):
            raise rank_failure(item, run, exc) from exc
        _failure(rec, exc, runner, device)
    finally:
        if deferred is None:
            if slot is not None and slot.pending is not None:
                slot.pending.join()  # (a write submitted before a failure: let it end before its files go)
            _remove_staged(item)
    rec.timings["total"] = time.perf_counter() - t0
    if deferred is None:
        return StartedItem(lambda: rec, deferred=False)
    return StartedItem(functools.partial(_complete_later, deferred, item, rec, runner, device), deferred=True)


def _complete_later(commit_files: Callable[[], None], item: BatchItem, rec: ItemRecord, runner: JobRunner,
                    device: str) -> ItemRecord:
    """A deferred item's ``complete``: wait for its background write and commit (``commit_files``)."""
    try:
        commit_files()
    except Exception as exc:  # the background write failed: this line's record says so
        _failure(rec, exc, runner, device)
    finally:
        _remove_staged(item)
    return rec


def _commit_files(item: BatchItem, rec: ItemRecord, done, slot: WriteSlot | None) -> None:
    """Commit the item's staged files (after waiting for their background write, ``slot``) and complete ``rec``."""
    if slot is not None:
        rec.timings["write"] = slot.wait()  # written in the background: not part of this line's total
    if not item.staged_video.exists():
        rec.message = "the pipeline reported success but wrote no video"
        return
    commit(item, rec.prompt)
    rec.status, rec.video = "ok", str(item.video_path)
    rec.prompt_file = str(item.prompt_path) if item.prompt_path.exists() else None
    notes = (item.regenerate_reason, done.note, *done.result.notes)  # e.g. an OOM retry, a prompt cut short
    rec.message = "; ".join(m for m in notes if m)


def _failure(rec: ItemRecord, exc: Exception, runner: JobRunner, device: str) -> None:
    """``rec``'s message for a line that raised ``exc``."""
    import torch

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


def _remove_staged(item: BatchItem) -> None:
    for staged in (item.staged_video, item.staged_prompt):
        staged.unlink(missing_ok=True)


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
    writer = BackgroundWriter()  # each line's files are written while the next line generates (cosmos_cli.writes)
    with JobRunner(backend, spec, req.defaults, device, progress) as runner:
        def finished(done: StartedItem) -> bool:
            """Record ``done``; whether --fail-fast stops the batch there."""
            rec = done.complete()
            emit(Event("record", slot, (rec,)))
            return req.fail_fast and not rec.has_output

        last: StartedItem | None = None  # generated, not yet recorded (its files perhaps still being written)
        try:
            for item in items:
                if should_stop():
                    break
                emit(Event("start", slot, (item.line, item.job.name)))
                started = start_item(runner, item, progress, device, writer=writer)
                previous, last = last, started
                if previous is not None and finished(previous):
                    break
                if not started.deferred:
                    last = None
                    if finished(started):
                        break
        finally:
            if last is not None:  # also on Ctrl-C and SIGTERM: a video being written is finished and kept
                finished(last)
            writer.drain()
