"""The run modes of a batch: this process, ``--gpus N`` worker processes, torchrun ranks (a line each, or
``--num-gpus N``: every line split over them); :func:`run_batch` picks one (see :mod:`cosmos_cli.batch`)."""

from __future__ import annotations

import dataclasses
import json
import os
import queue as queue_mod
import signal
import time
from pathlib import Path
from typing import Any

from cosmos_cli.batch.display import BatchDisplay, Event, EventProgress
from cosmos_cli.batch.item import follow_item, one_line, run_item, run_items
from cosmos_cli.batch.plan import BatchItem, BatchPlan, BatchRequest, plan_batch
from cosmos_cli.batch.report import BatchOutcome, Coordinator, ItemRecord, report_path_for
from cosmos_cli.batch.sidecar import remove_leftovers
from cosmos_cli.errors import CosmosError, GenerationError, UsageError
from cosmos_cli.generation import checked_model, pick_device, start_parallel
from cosmos_cli.launch import launch_env
from cosmos_cli.progress import QuietProgress
from cosmos_cli.registry import find_model
from cosmos_cli.runner import JobRunner
from cosmos_cli.specs import ModelSpec

WORKER_GRACE_S = 5.0  # after Ctrl-C, how long workers get to finish cleaning up before being interrupted again


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
    """Validate, plan, generate and report a batch; see :mod:`cosmos_cli.batch`. SIGTERM is handled like Ctrl-C."""
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
        from cosmos_cli.batch.ray_executor import check_ray_request

        check_ray_request(req, dist)
    log = BatchDisplay("off") if dist is not None and dist[0] != 0 else display
    backend, spec = checked_model(d, EventProgress(log.handle, 0))
    primary = dist is None or dist[0] == 0
    locks = []

    def take_folder() -> None:  # the file is valid: lock the output folder (rank 0 of torchrun) before touching it
        if primary and req.shard is not None:
            from cosmos_cli.batch.shard import lock_shard

            locks.extend(lock_shard(Path(d.output_dir), req.shard))
        elif primary:
            locks.append(lock_folder(Path(d.output_dir)))
        if primary:
            check_report_path(report_path_for(req), Path(req.file))

    try:
        if req.executor == "ray":  # validates and plans as it goes, streaming (see cosmos_cli.batch.stream)
            from cosmos_cli.batch.ray_executor import run_on_ray

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
                kind, slot, data = event
                if kind == "exit":
                    running.discard(slot)
                elif kind == "interrupted":
                    coord.interrupted = True
                    coord.terminated = coord.terminated or bool(data and data[0])
                elif kind == "fatal":
                    cls, message, hint = data
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
    """``--num-gpus N`` under torchrun: every line one generation split over the ranks (see :mod:`cosmos_cli.batch`)."""
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
                        coord.on_event(Event("start", 0, (item.line, item.job.name)))
                        coord.on_event(Event("record", 0, (run_item(runner, item, progress, device, run),)))
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

        emit(Event("interrupted", slot, (isinstance(exc, Terminated),)))
    except CosmosError as exc:
        emit(Event("fatal", slot, (type(exc), exc.message, exc.hint)))
    except BaseException as exc:  # anything else still has to reach the parent as one line
        emit(Event("fatal", slot, (GenerationError, f"worker on {device} failed: {one_line(exc)}", None)))
    finally:
        emit(Event("exit", slot))
