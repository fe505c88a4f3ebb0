"""``cosmos batch FILE --executor ray``: the lines of a planned batch run on a Ray cluster.

The driver (this process) validates and plans exactly as a local batch (:func:`cosmos_cli.batch.plan_batch`: the
same resume decisions, the folder lock, the same report through :class:`~cosmos_cli.batch.Coordinator`); then:

* one long-lived Ray actor per model copy (:class:`BatchActor`, ``num_gpus=1``, or ``num_cpus=1`` with
  ``--device cpu``) loads the pipeline once, and runs :func:`cosmos_cli.batch.run_item` for each line it is given:
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


def actor_count(ray, options: RayOptions, req) -> int:
    if options.actors:
        return options.actors
    if req.defaults.device == "cpu":
        return req.gpus
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus < 1:
        raise UsageError("--executor ray: the Ray cluster has no GPU",
                         hint="Start the Ray nodes on GPU machines, or pass --device cpu (slow) to try it out.")
    return gpus


class BatchActor:
    """One model copy on a Ray worker: the pipeline loads once, then :meth:`run` generates one line at a time.

    Ray gives the actor its GPU through ``CUDA_VISIBLE_DEVICES``, so it is always ``cuda:0`` inside."""

    def __init__(self, req, spec_name: str):
        from cosmos_cli.generation import load_pipeline
        from cosmos_cli.progress import QuietProgress
        from cosmos_cli.registry import find_model

        backend, spec = find_model(spec_name)
        self.device = "cpu" if req.defaults.device == "cpu" else "cuda:0"
        self.pipeline = load_pipeline(backend, spec, req.defaults, self.device, QuietProgress())
        import socket

        self.where = f"{socket.gethostname()}:{os.getpid()}"

    def run(self, item):
        from cosmos_cli.batch import run_item
        from cosmos_cli.progress import QuietProgress

        rec = run_item(self.pipeline, item, QuietProgress(), self.device)
        rec.device = f"{self.where}/{self.device}"
        return rec


def run_on_ray(req, spec, plan, display, options: RayOptions):
    """Run ``plan.items`` on Ray actors; the report and outcome are those of a local batch (see the module doc)."""
    from cosmos_cli.batch import Coordinator, _failed, one_line, remove_leftovers, report_path_for, sweep
    from cosmos_cli.signals import sigterm_as_interrupt

    ray = require_ray()
    d = req.defaults
    coord = Coordinator(req, spec, plan, display, report_path_for(req), 1)
    done = sum(r.status == "skipped" for r in plan.records.values())
    display.message(f"{req.file}: {len(plan.items) + len(plan.records)} lines, {len(plan.items)} to generate"
                    + (f", {done} already complete" if done else "") + " on Ray")
    connected = False
    actors: list[Any] = []
    # Ray prints its raylet's error messages (a worker died, ...) to sys.stdout from a thread of its own: while Ray
    # is connected, stdout is stderr, so stdout keeps only the batch summary (--json stays parseable).
    to_stderr = contextlib.redirect_stdout(sys.stderr)
    to_stderr.__enter__()
    try:
        if plan.items and not (req.fail_fast and plan.failed_before_start()):
            connected = connect(ray, options, max(options.actors, req.gpus))
            with sigterm_as_interrupt():  # (ray.init installs its own SIGTERM handler: ours comes back on top)
                n = min(actor_count(ray, options, req), len(plan.items))
                coord.workers = n
                gpu = d.device != "cpu"
                remote = ray.remote(num_gpus=1 if gpu else 0, num_cpus=1, max_restarts=0,
                                    max_task_retries=0)(BatchActor)
                actors = [remote.remote(req, spec.name) for _ in range(n)]
                display.labels = {i: f"actor {i}" for i in range(n)}
                display.message(f"{n} Ray actor{'s' if n > 1 else ''}, one model copy each"
                                f" ({'1 GPU' if gpu else '1 CPU'} per actor)")
                display.start(len(plan.items))
                _drive(ray, actors, plan.items, coord, options, remove_leftovers, _failed, one_line)
        else:
            display.start(len(plan.items))
    except KeyboardInterrupt as exc:
        coord.interrupt(exc)
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
        sweep(plan, coord.records)
    return coord.write_report(final=True)


def _drive(ray, actors, items, coord, options: RayOptions, remove_leftovers, failed, one_line) -> None:
    """Keep Ray's ActorPool fed with the lines; a line whose actor died goes back to the pool (see the module doc)."""
    from ray.exceptions import RayActorError
    from ray.util import ActorPool

    pool = ActorPool(actors)
    slot_of = {a: i for i, a in enumerate(actors)}
    busy: dict[Any, Any] = {}  # actor handle -> the item it runs
    lost: dict[int, list[str]] = {}  # line -> what happened to each actor that died running it
    alive = len(actors)
    todo = deque(items)
    init_error: str | None = None

    def submit(actor, item):
        busy[actor] = item
        coord.on_event(("start", slot_of[actor], item.line, item.job.name))
        return actor.run.remote(item)

    while (todo and alive) or pool.has_next():
        while todo and pool.has_free() and not coord.stopped:
            pool.submit(submit, todo.popleft())
        if not pool.has_next():
            break
        try:
            rec = pool.get_next_unordered(timeout=POLL_S)
        except TimeoutError:
            continue
        except RayActorError as exc:
            actor = next((a for a in busy if a._actor_id.hex() == exc.actor_id), None)  # (handles carry the id)
            item = busy.pop(actor, None) if actor is not None else None
            alive -= 1
            slot = slot_of.get(actor, -1)
            why = _actor_error(exc, one_line)
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
                rec = failed(item, f"{'; '.join(history)}: gave up after {len(history)} attempt"
                                   f"{'s' if len(history) > 1 else ''}", f"actor {slot}")
                coord.on_event(("record", slot, rec))
            else:
                coord.display.warning(f"line {item.line} ({item.job.name}): retried on another actor")
                todo.appendleft(item)
            continue
        actor = next((a for a, it in busy.items() if it.line == rec.line), None)
        slot = slot_of.get(actor, 0)
        busy.pop(actor, None)
        if rec.line in lost:
            rec.message = "; ".join(m for m in (f"retried after {', '.join(lost[rec.line])}", rec.message) if m)
        coord.on_event(("record", slot, rec))
    if todo and not coord.stopped:
        if init_error is not None and len(todo) == len(items):
            raise GenerationError(f"no Ray actor could load the model: {init_error}",
                                  hint="Fix the cause on the Ray nodes (checkpoints at the same path on each), "
                                       "then run the same command again.")
        why = f"no Ray actor left ({init_error or 'every actor was lost'})"
        for item in todo:
            coord.on_event(("record", 0, failed(item, why, "ray")))


def _actor_error(exc, one_line) -> str:
    if exc.actor_init_failed:
        cause = str(exc).strip().splitlines()
        text = next((ln for ln in reversed(cause) if ln.strip()), "the actor failed while loading the model")
        return f"could not load the model: {text.strip()[:300]}"
    if getattr(exc, "preempted", False):
        return "its node was preempted"
    return "the actor process died" + (" (out of memory?)" if "memory" in str(exc).lower() else "")

