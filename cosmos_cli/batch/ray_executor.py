"""``cosmos batch FILE --executor ray``: the lines of a planned batch run on a Ray cluster.

The driver (this process) validates and plans exactly as a local batch (:func:`cosmos_cli.batch.plan_batch`: the
same resume decisions, the folder lock, the same report through :class:`~cosmos_cli.batch.Coordinator`); then:

* one long-lived Ray actor per model copy (:class:`BatchActor`, ``num_gpus=1``, or ``num_cpus=1`` with
  ``--device cpu``) loads the pipeline once, and runs :func:`cosmos_cli.batch.item.run_item` for each line it is given:
  the same staging files, atomic commit and sidecar as a local batch, written into the output folder, which must
  therefore be one shared filesystem seen at the same path by every node;
* the lines go to free actors through Ray's own :class:`ray.util.ActorPool` (``submit`` while it ``has_free``,
  ``get_next_unordered``): the driver hands out no line itself, it only keeps the pool fed;
* an actor that dies (its node lost, the OOM killer, ``kill -9``) makes its line fail with Ray's
  ``RayActorError``; the pool drops a dead actor, the line's leftovers are removed and the line goes back to the
  pool, so it runs on another actor, at most ``--ray-retries`` times, then it is recorded ``failed`` naming the
  lost actors. When no actor is left, the remaining lines are ``failed`` too (a re-run resumes them);
* Ctrl-C and SIGTERM on the driver kill the actors, sweep the staging files of unfinished lines and write the
  report (``interrupted``, exit code 130 or 143), as a local batch does.

Ray is imported only here, inside functions: ``cosmos --help`` and every local batch stay Ray-free, and without the
optional extra ``--executor ray`` is one line saying what to install.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cosmos_cli.errors import GenerationError, MissingDependencyError, UsageError

INSTALL_HINT = "pip install 'cosmos-cli[ray]'"
DEFAULT_RETRIES = 2  # times a line is sent to another actor after the actor running it died
POLL_S = 0.5  # how often the driver looks at Ctrl-C/SIGTERM while waiting on the pool


@dataclass(frozen=True)
class RayOptions:
    """Where and how a batch runs on Ray.

    ``address``: ``None`` starts a Ray on this machine (for trying it out, and for tests); ``auto`` joins the
    cluster this node belongs to (``ray start`` ran here, or ``RAY_ADDRESS`` is set); else ``HOST:PORT`` or
    ``ray://HOST:PORT``. ``actors``: model copies; 0 means one per GPU of the cluster (``--workers`` on the CPU).
    """

    address: str | None = None
    actors: int = 0
    retries: int = DEFAULT_RETRIES


def require_ray():
    """The ``ray`` module, or one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise MissingDependencyError("--executor ray needs Ray, which is not installed",
                                     hint=f"Install it with: {INSTALL_HINT}") from None
    return ray


def check_ray_request(req, dist) -> None:
    """Before anything else: Ray is installed and the options go with it."""
    require_ray()
    if dist is not None:
        raise UsageError("--executor ray under torchrun", hint="Run `cosmos batch --executor ray` once, on one node.")
    if req.defaults.num_gpus > 1:
        raise UsageError("--executor ray runs one model copy per GPU: --num-gpus (one line split over GPUs) is "
                         "not supported with it", hint="Leave out --num-gpus, or run it under torchrun.")
    if req.ray is not None and req.ray.retries < 0:
        raise UsageError(f"--ray-retries must be 0 or more, got {req.ray.retries}")


def connect(ray, options: RayOptions, n_cpus_wanted: int) -> bool:
    """``ray.init`` for the batch; returns whether it connected (the batch then disconnects at the end, which also
    stops a Ray it started on this machine); False when the caller had already connected."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    if options.address is None and not os.environ.get("RAY_ADDRESS"):
        # a Ray of our own on this machine: room for every actor even on a small CPU
        ray.init(num_cpus=max(os.cpu_count() or 1, n_cpus_wanted), **kwargs)
        return True
    ray.init(address=options.address or "auto", **kwargs)
    return True


def actor_count(ray, options: RayOptions, req, warn) -> int:
    """--ray-actors, else one actor per GPU of the cluster (--workers with --device cpu)."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if options.actors:
        if req.defaults.device != "cpu" and options.actors > gpus:
            warn(f"--ray-actors {options.actors}: the cluster has {gpus} GPU{'s' if gpus != 1 else ''} now; the "
                 "other actors start when GPUs join (an autoscaler), and the lines go to the actors that run")
        return options.actors
    if req.defaults.device == "cpu":
        return req.gpus
    if gpus < 1:
        raise UsageError("--executor ray: the Ray cluster has no GPU",
                         hint="Start the Ray nodes on GPU machines, or pass --device cpu (slow) to try it out.")
    return gpus


class BatchActor:
    """One model copy on a Ray worker: the pipeline loads once, then :meth:`run` generates one line at a time.

    Ray gives the actor its GPU through ``CUDA_VISIBLE_DEVICES``, so it is always ``cuda:0`` inside."""

    def __init__(self, req, spec_name: str):
        from cosmos_cli.progress import QuietProgress
        from cosmos_cli.registry import find_model
        from cosmos_cli.runner import JobRunner

        backend, spec = find_model(spec_name)
        self.device = "cpu" if req.defaults.device == "cpu" else "cuda:0"
        self.runner = JobRunner(backend, spec, req.defaults, self.device, QuietProgress())  # the OOM retry too
        import socket

        self.where = f"{socket.gethostname()}:{os.getpid()}"

    def run(self, item):
        from cosmos_cli.batch.item import run_item
        from cosmos_cli.progress import QuietProgress

        rec = run_item(self.runner, item, QuietProgress(), self.device)
        rec.device = f"{self.where}/{self.device}"
        return rec


def run_on_ray(req, spec, display, options: RayOptions, take_folder):
    """Validate (streaming), lock the folder (``take_folder``), then plan and run the lines on Ray actors a window
    at a time, the records spooled to disk and the report written from them (see :mod:`cosmos_cli.batch.stream`)."""
    from cosmos_cli.batch.display import EventProgress
    from cosmos_cli.batch.item import one_line
    from cosmos_cli.batch.report import report_path_for
    from cosmos_cli.batch.sidecar import existing_output, remove_leftovers
    from cosmos_cli.batch.stream import RecordSpool, StreamCoordinator, index_batch, stream_plan
    from cosmos_cli.generation import RESIZE_MODES
    from cosmos_cli.outputs import check_folder
    from cosmos_cli.signals import Terminated

    ray = require_ray()
    d = req.defaults
    check_folder(Path(d.output_dir), "--output-dir")
    if d.resize not in RESIZE_MODES:
        raise UsageError(f"--resize must be one of {', '.join(RESIZE_MODES)}, got {d.resize!r}")
    progress = EventProgress(display.handle, 0)
    shard = req.shard or (0, 1)
    try:
        index = index_batch(req, spec, progress)
    except KeyboardInterrupt as exc:  # nothing generated yet: no report, but the same exit code as later
        from cosmos_cli.batch.stream import StreamOutcome

        return StreamOutcome(Path(req.file), Path(d.output_dir), report_path_for(req), spec.name, 0,
                             {}, [], interrupted=True, terminated=isinstance(exc, Terminated))
    take_folder()
    spool = RecordSpool(Path(d.output_dir), index.last_line)
    coord = StreamCoordinator(req, spec, display, report_path_for(req), index, spool, shard)
    total = index.lines(shard)
    display.message(f"{req.file}: {total} lines" + (f" (shard {shard[0]}/{shard[1]})" if req.shard else "")
                    + ", planned and run on Ray as the actors take them")
    connected = False
    got_term: list[int] = []
    actors: list[Any] = []
    busy: dict[Any, Any] = {}  # actor handle -> the item it runs
    # Ray prints its raylet's error messages (a worker died, ...) to sys.stdout from a thread of its own: while Ray
    # is connected, stdout is stderr, so stdout keeps only the batch summary (--json stays parseable).
    to_stderr = contextlib.redirect_stdout(sys.stderr)
    to_stderr.__enter__()
    try:
        source = stream_plan(req, spec, index, progress, shard)
        first = _first_item(source, coord)
        display.start(total)
        if first is not None and not coord.stopped:
            connected = connect(ray, options, max(options.actors, req.gpus))
            with _sigterm_noted(got_term):  # (ray.init installs its own SIGTERM handler: ours comes back on top)
                n = actor_count(ray, options, req, display.warning)
                coord.workers = n
                gpu = d.device != "cpu"
                remote = ray.remote(num_gpus=1 if gpu else 0, num_cpus=1, max_restarts=0,
                                    max_task_retries=0)(BatchActor)
                actors = [remote.remote(req, spec.name) for _ in range(n)]
                display.labels = {i: f"actor {i}" for i in range(n)}
                display.message(f"{n} Ray actor{'s' if n > 1 else ''}, one model copy each"
                                f" ({'1 GPU' if gpu else '1 CPU'} per actor)")
                _drive(actors, first, source, coord, options, busy)
        else:
            for rec_or_item in source if not coord.stopped else ():
                coord.decided(rec_or_item)
    except KeyboardInterrupt as exc:
        coord.interrupt(Terminated() if got_term else exc)
    except BaseException as exc:
        coord.fatal = one_line(exc)
        coord.write_report(final=True)
        raise
    finally:
        for a in actors:
            try:
                ray.kill(a)
            except Exception:  # already gone
                pass
        if connected:
            ray.shutdown()  # (joining a cluster: disconnects; the cluster goes on)
        to_stderr.__exit__(None, None, None)
        display.close()
        for item in busy.values():  # in flight when the batch stopped: finished, or its leftovers removed
            if existing_output(item)[0] == "complete":
                from cosmos_cli.batch.report import ItemRecord

                spool.add(ItemRecord(item.line, item.job.name, "ok", "finished as the batch stopped",
                                     input=item.data, visual_input=str(item.job.visual_input),
                                     prompt=item.job.prompt, seed=item.job.seed, params_hash=item.params_hash,
                                     video=str(item.video_path)))
            else:
                remove_leftovers(item)
    try:
        return coord.write_report(final=True)
    finally:
        spool.close()


@contextlib.contextmanager
def _sigterm_noted(got: list[int]):
    """SIGTERM raises :class:`~cosmos_cli.signals.Terminated` and is noted in ``got``: an interrupt that arrives
    while Ray waits comes out of Ray's own code as a plain ``KeyboardInterrupt``, and the note says it was SIGTERM."""
    import signal
    import threading

    from cosmos_cli.signals import Terminated

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum, frame):
        got.append(signum)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _first_item(source, coord):
    """Feed the decided lines to ``coord`` until the first line to generate (None: nothing to generate)."""
    from cosmos_cli.batch.plan import BatchItem

    for x in source:
        if isinstance(x, BatchItem):
            return x
        coord.decided(x)
        if coord.stopped:
            return None
    return None


def _drive(actors, first, source, coord, options: RayOptions, busy) -> None:
    """Keep Ray's ActorPool fed with the lines; a line whose actor died goes back to the pool (see the module doc)."""
    from ray.exceptions import RayActorError
    from ray.util import ActorPool

    from cosmos_cli.batch.display import Event
    from cosmos_cli.batch.runners import _failed
    from cosmos_cli.batch.sidecar import remove_leftovers

    pool = ActorPool(actors)
    slot_of = {a: i for i, a in enumerate(actors)}
    lost: dict[int, list[str]] = {}  # line -> what happened to each actor that died running it
    alive = len(actors)
    todo = deque([first])  # lines to (re)submit before the next of the plan
    more = True  # the plan may have more lines
    init_error: str | None = None
    ran = 0  # lines an actor finished
    dead: set[Any] = set()

    def submit(actor, item):
        busy[actor] = item
        coord.on_event(Event("start", slot_of[actor], (item.line, item.job.name)))
        return actor.run.remote(item)

    def next_item():
        nonlocal more
        if todo:
            return todo.popleft()
        nxt = _first_item(source, coord) if more else None
        more = nxt is not None
        return nxt

    while alive and not coord.stopped or pool.has_next():
        while alive and pool.has_free() and not coord.stopped:
            item = next_item()
            if item is None:
                break
            pool.submit(submit, item)
        if not pool.has_next():
            break
        try:
            rec = pool.get_next_unordered(timeout=POLL_S)
        except TimeoutError:
            continue
        except RayActorError as exc:
            actor = next((a for a in busy if a._actor_id.hex() == exc.actor_id), None)  # (handles carry the id)
            item = busy.pop(actor, None) if actor is not None else None
            if actor is not None and actor not in dead:
                dead.add(actor)
                alive -= 1
            _evict(pool, dead)
            slot = slot_of.get(actor, -1)
            why = _actor_error(exc)
            if exc.actor_init_failed:
                init_error = init_error or why
            coord.display.warning(f"actor {slot} lost: {why}")
            if item is None:
                continue
            coord.display.current.pop(slot, None)
            remove_leftovers(item)  # its staging files: the next actor writes the same ones
            history = lost.setdefault(item.line, [])
            history.append(f"actor {slot} lost ({why})")
            if len(history) > options.retries or not alive:
                rec = _failed(item, f"{'; '.join(history)}: gave up after {len(history)} attempt"
                                    f"{'s' if len(history) > 1 else ''}", f"actor {slot}")
                coord.on_event(Event("record", slot, (rec,)))
            else:
                coord.display.warning(f"line {item.line} ({item.job.name}): retried on another actor")
                todo.appendleft(item)
            continue
        actor = next((a for a, it in busy.items() if it.line == rec.line), None)
        slot = slot_of.get(actor, 0)
        busy.pop(actor, None)
        ran += 1
        if rec.line in lost:
            rec.message = "; ".join(m for m in (f"retried after {', '.join(lost[rec.line])}", rec.message) if m)
        coord.on_event(Event("record", slot, (rec,)))
    if not alive and not coord.stopped:
        if init_error is not None and ran == 0:
            coord.fatal = f"no Ray actor could load the model: {init_error}"
            raise GenerationError(coord.fatal, hint="Fix the cause on the Ray nodes (checkpoints at the same path "
                                                    "on each), then run the same command again.")
        coord.left_why = f"no Ray actor left ({init_error or 'every actor was lost'}); run the batch again"
        for item in todo:
            coord.on_event(Event("record", 0, (_failed(item, coord.left_why, "ray"),)))


def _evict(pool, dead: set) -> None:
    """Take dead actors out of the pool's idle ones (Ray before 2.5x put a dead actor back), by its public API."""
    idle = []
    while (a := pool.pop_idle()) is not None:
        idle.append(a)
    for a in idle:
        if a not in dead:
            pool.push(a)


def _actor_error(exc) -> str:
    if exc.actor_init_failed:
        cause = str(exc).strip().splitlines()
        text = next((ln for ln in reversed(cause) if ln.strip()), "the actor failed while loading the model")
        return f"could not load the model: {text.strip()[:300]}"
    if getattr(exc, "preempted", False):
        return "its node was preempted"
    return "the actor process died" + (" (out of memory?)" if "memory" in str(exc).lower() else "")

