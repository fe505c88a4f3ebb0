"""The distributed layer of a multi-process run (torchrun): joining it, process groups with timeouts, and
"rank 0 computes, every rank receives".

Model-agnostic: any backend that splits work over the ranks of one machine can use it (the predict1 backend's
context parallelism does, :mod:`cosmos_plugins.predict1.parallel`). A :class:`DistContext` is what the core
(``cosmos_cli.backend.ParallelRun``) sees: ``agree_min``, ``share`` (:func:`from_rank0`), ``shared_failure``,
``close``.

Failures: a launch without torchrun or a missing NCCL are clear errors before anything loads. Every process
group has a timeout. A collective that fails (a rank died: its sockets close) or times out (a rank hangs) raises
:class:`ParallelError` naming the rank and the step, and an error on rank 0 in a rank-0-only stage is broadcast,
so the other ranks exit with it (:class:`FollowerExit`) instead of waiting.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from cosmos_cli.errors import CosmosError, MissingDependencyError, RankError, UsageError
from cosmos_cli.errors import quiet_on_this_rank as quiet_on_this_rank
from cosmos_cli.launch import launch_env

# Process-group timeouts, in seconds. ``wait``: the world group, where the other ranks wait while rank 0 runs
# the rank-0-only stages (loading and running the upsampler, guardrails, T5, the tokenizer: minutes at full
# size). ``step``: the groups used inside the network, where every collective completes within one block.
WAIT_TIMEOUT_ENV, STEP_TIMEOUT_ENV = "COSMOS_DIST_TIMEOUT", "COSMOS_DIST_STEP_TIMEOUT"
DEFAULT_WAIT_TIMEOUT_S, DEFAULT_STEP_TIMEOUT_S = 1800.0, 600.0
class ParallelError(RankError):
    """A failure of the multi-process machinery on this rank: setup, a lost rank, a timeout (always printed)."""

    default_hint = ("Another rank failed or stopped: look for its message above. Timeouts: "
                    f"{WAIT_TIMEOUT_ENV} / {STEP_TIMEOUT_ENV} (seconds).")


class FollowerExit(CosmosError):
    """Raised on ranks > 0 when rank 0 failed or stopped in a rank-0-only stage; rank 0 printed why.

    ``main()`` on a rank > 0 exits with ``exit_code`` without printing (see ``cosmos_cli.errors.quiet_on_this_rank``).
    """

    def __init__(self, message: str, exit_code: int = 1, hint: str | None = None):
        super().__init__(message, hint)
        self.exit_code = exit_code


# ----------------------------------------------------------------------------------------------------------
# Process groups from torchrun's environment


_ACTIVE: DistContext | None = None  # the run this process joined


@dataclass
class DistContext:
    """This process's place in the run, and the world process group's settings."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    wait_timeout_s: float
    step_timeout_s: float
    owns_group: bool = True  # False: the default group was set up by other code in this process
    _groups: dict = field(default_factory=dict, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- what the core uses (cosmos_cli.backend.ParallelRun) ---------------------------------------------------

    def agree_min(self, value: int) -> int:
        return agree_min(self, value)

    def share(self, fn: Callable[[], Any], what: str = "a rank-0 stage") -> Any:
        return from_rank0(self, fn, what)

    def shared_failure(self, exc: BaseException) -> bool:
        return isinstance(exc, FollowerExit) or getattr(exc, _SHARED_MARK, False)

    def close(self, ok: bool = True) -> None:
        shutdown(self, ok=ok)

    def gather_ints(self, value: int) -> list[int]:
        """Every rank's ``value``, in rank order, on every rank (e.g. each GPU's memory peak)."""
        return _gather_ints(self, value)


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise UsageError(f"{name} must be positive, got {raw}")
    return value


def init_distributed(num_gpus: int, *, device: str = "auto", wait_timeout_s: float | None = None,
                     step_timeout_s: float | None = None, command: str = "generate") -> DistContext | None:
    """Join the run torchrun started (None for a plain single-process run).

    Reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT as torchrun sets them; uses NCCL on CUDA
    (one GPU per local rank) and gloo on the CPU. Raises :class:`UsageError` for a launch that does not match
    ``--num-gpus`` (its hint gives the torchrun command for ``cosmos <command>``), :class:`MissingDependencyError`
    without NCCL, :class:`ParallelError` when the rendezvous fails. (``quiet_on_this_rank``, re-exported here,
    is ``cosmos_cli.errors.quiet_on_this_rank``.)
    """
    global _ACTIVE
    env = launch_env()
    world = env.world_size
    launch = f"torchrun --nproc_per_node={num_gpus} --no-python cosmos {command} ... --num-gpus {num_gpus}"
    if num_gpus < 1:
        raise UsageError(f"--num-gpus must be >= 1, got {num_gpus}")
    if num_gpus == 1 and world == 1:
        return None
    if not env.launched:
        raise UsageError(f"--num-gpus {num_gpus} needs one process per GPU, started by torchrun",
                         hint=f"Launch with: {launch}")
    if world != num_gpus:
        raise UsageError(f"--num-gpus {num_gpus} but torchrun started {world} processes",
                         hint=f"Pass --num-gpus {world}, or launch with: {launch}")
    if _ACTIVE is not None and dist.is_initialized():  # joined already (e.g. a second command in the process)
        return _ACTIVE
    rank, local_rank = env.rank, env.local_rank
    wait_s = wait_timeout_s if wait_timeout_s is not None else _env_seconds(WAIT_TIMEOUT_ENV, DEFAULT_WAIT_TIMEOUT_S)
    step_s = step_timeout_s if step_timeout_s is not None else _env_seconds(STEP_TIMEOUT_ENV,
                                                                            min(DEFAULT_STEP_TIMEOUT_S, wait_s))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: no CUDA GPU is available", hint="Use --device cpu (tiny models only).")
        if not dist.is_nccl_available():
            raise MissingDependencyError("this PyTorch build has no NCCL, needed for --num-gpus > 1 on GPUs",
                                         hint="Install a CUDA build of PyTorch for Linux (it ships NCCL).")
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ParallelError(f"rank {rank}: LOCAL_RANK {local_rank} but only {count} GPU(s) are visible "
                                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})",
                                hint="Start at most as many processes per machine as it has GPUs.")
        # NCCL for CUDA tensors, gloo for CPU ones (objects, and what other code, e.g. `batch`, gathers)
        dev, backend = torch.device("cuda", local_rank), "cpu:gloo,cuda:nccl"
        torch.cuda.set_device(dev)
    else:
        if not dist.is_gloo_available():
            raise MissingDependencyError("this PyTorch build has no gloo backend for multi-process CPU runs")
        dev, backend = torch.device("cpu"), "gloo"
    adopted = dist.is_initialized()
    if adopted:  # other code in this process set the group up: use it if it can carry our tensors
        have = str(dist.get_backend())
        if dev.type == "cuda" and "nccl" not in have:
            raise ParallelError(f"rank {rank}: the process group was set up with {have}, without NCCL for the GPUs",
                                hint="Initialize it with cosmos_torch.dist.init_distributed (gloo for the CPU, NCCL for CUDA).")
        if dist.get_world_size() != world or dist.get_rank() != rank:
            raise ParallelError(f"rank {rank}: the existing process group has {dist.get_world_size()} ranks "
                                f"(this is rank {dist.get_rank()}), torchrun started {world}")
    else:
        extra = {"device_id": dev} if dev.type == "cuda" else {}
        try:
            dist.init_process_group(backend, rank=rank, world_size=world,
                                    timeout=datetime.timedelta(seconds=wait_s), **extra)
        except (RuntimeError, ValueError) as exc:  # rendezvous: DistStoreError, DistNetworkError, no MASTER_*
            raise ParallelError(f"rank {rank}: could not join the other {world - 1} process(es): "
                                f"{_first_line(exc)}") from exc
    _ACTIVE = DistContext(rank, world, local_rank, dev, backend, wait_s, step_s, owns_group=not adopted)
    return _ACTIVE


def shutdown(ctx: DistContext | None, *, ok: bool = True) -> None:
    """Leave the run: call it on every exit path (``main()``'s ``finally``). After a failure (``ok`` False) no
    collective is attempted, only the local teardown, so the exit code is the error's (a process group left
    behind can abort the interpreter at exit)."""
    global _ACTIVE
    if ctx is None or not dist.is_initialized():
        return
    if ok:
        with _collective(ctx.rank, "the final barrier"):
            dist.barrier()
    if ctx.owns_group:
        dist.destroy_process_group()
    _ACTIVE = None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


@contextmanager
def _collective(rank: int, what: str) -> Iterator[None]:
    """Turn a failed or timed-out collective into a :class:`ParallelError` that says where it happened."""
    try:
        yield
    except RuntimeError as exc:  # gloo/NCCL errors (DistBackendError is a RuntimeError): a peer died or hung
        kind = "timed out" if "timeout" in str(exc).lower() or "timed out" in str(exc).lower() else "failed"
        raise ParallelError(f"rank {rank}: lost contact with the other ranks ({what} {kind}: "
                            f"{_first_line(exc)})") from exc


def agree_min(ctx: DistContext, value: int) -> int:
    """The smallest ``value`` over all ranks (e.g. free GPU memory, so that every rank makes the same plan)."""
    t = torch.tensor([value], dtype=torch.int64, device=_comm_device(ctx))
    with _collective(ctx.rank, "agreeing on a value"):
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def _comm_device(ctx: DistContext) -> torch.device:
    """Where tensors travel: the GPU (NCCL) on CUDA runs, the CPU (gloo) otherwise."""
    return ctx.device


# ----------------------------------------------------------------------------------------------------------
# Rank 0 computes, every rank receives


def _flatten(obj: Any, tensors: list[Tensor]) -> Any:
    """``obj`` with every tensor replaced by a placeholder (its index in ``tensors``); tuples, lists, dicts."""
    if isinstance(obj, Tensor):
        tensors.append(obj)
        return _TensorSlot(len(tensors) - 1, tuple(obj.shape), obj.dtype, obj.device.type)
    if isinstance(obj, tuple | list):
        return type(obj)(_flatten(o, tensors) for o in obj)
    if isinstance(obj, dict):
        return {k: _flatten(v, tensors) for k, v in obj.items()}
    return obj


def _unflatten(obj: Any, tensors: list[Tensor]) -> Any:
    if isinstance(obj, _TensorSlot):
        return tensors[obj.index]
    if isinstance(obj, tuple | list):
        return type(obj)(_unflatten(o, tensors) for o in obj)
    if isinstance(obj, dict):
        return {k: _unflatten(v, tensors) for k, v in obj.items()}
    return obj


@dataclass(frozen=True)
class _TensorSlot:
    index: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    device_type: str


def _broadcast_object(ctx: DistContext, obj: Any, what: str) -> Any:
    box = [obj]
    with _collective(ctx.rank, what):
        dist.broadcast_object_list(box, src=0, device=_comm_device(ctx))
    return box[0]


def from_rank0(ctx: DistContext, fn: Callable[[], Any], what: str = "a rank-0 stage") -> Any:
    """Run ``fn`` on rank 0 only and return its result on every rank.

    The result may nest tensors in tuples, lists and dicts; tensors arrive on each rank's own device (CUDA
    tensors) or on the CPU (CPU tensors). If ``fn`` raises on rank 0, the error is re-raised there and the other
    ranks raise :class:`FollowerExit` with the same exit code instead of waiting for a timeout.
    """
    tensors: list[Tensor] = []
    if ctx.rank == 0:
        try:
            result = fn()
        except BaseException as exc:
            code = exc.exit_code if isinstance(exc, CosmosError) else 1
            _broadcast_object(ctx, ("error", f"rank 0 stopped in {what}: {_first_line(exc)}", code), what)
            try:  # the other ranks know: the run may go on together (DistContext.shared_failure)
                setattr(exc, _SHARED_MARK, True)
            except AttributeError:
                pass
            raise
        skeleton = _flatten(result, tensors)
        _broadcast_object(ctx, ("ok", skeleton, 0), what)
    else:
        status, skeleton, code = _broadcast_object(ctx, None, what)
        if status == "error":
            raise FollowerExit(skeleton, code)
    slots: list[_TensorSlot] = []
    _collect_slots(skeleton, slots)  # in the order _flatten numbered them
    comm, received = _comm_device(ctx), []
    for slot in slots:
        if ctx.rank == 0:
            buf = tensors[slot.index].detach().to(comm).contiguous()
        else:
            buf = torch.empty(slot.shape, dtype=slot.dtype, device=comm)
        with _collective(ctx.rank, what):
            dist.broadcast(buf, src=0)
        if ctx.rank != 0:
            received.append(buf.to(ctx.device if slot.device_type == "cuda" else torch.device("cpu")))
    return result if ctx.rank == 0 else _unflatten(skeleton, received)


_SHARED_MARK = "_cosmos_shared_with_ranks"  # set on rank 0's exception once the other ranks raised FollowerExit


def _collect_slots(obj: Any, out: list[_TensorSlot]) -> None:
    if isinstance(obj, _TensorSlot):
        out.append(obj)
    elif isinstance(obj, tuple | list):
        for o in obj:
            _collect_slots(o, out)
    elif isinstance(obj, dict):
        for o in obj.values():
            _collect_slots(o, out)


def _gather_ints(ctx: DistContext, value: int) -> list[int]:
    t = torch.tensor([value], dtype=torch.int64, device=_comm_device(ctx))
    parts = [torch.empty_like(t) for _ in range(ctx.world_size)]
    with _collective(ctx.rank, "gathering memory peaks"):
        dist.all_gather(parts, t)
    return [int(p.item()) for p in parts]
