"""One generation on several GPUs: context parallelism for the diffusion network, under torchrun.

``torchrun --nproc_per_node=N --no-python cosmos generate ... --num-gpus N`` starts N processes, one per GPU. Only the
diffusion network is split (it is ~97% of a generation's time); everything else runs once, on rank 0, and its
results are broadcast:

    rank 0: upsampler, text guardrail, read + encode the input, T5  --broadcast-->  every rank
    every rank: the sampler, with the network's work split as the layout says
    rank 0: decode, video guardrail, write the files (the other ranks only wait)

Two ways to split the network's work (a :class:`Layout`, chosen by :func:`choose_layout`):

* ``sequence``: the S tokens (56,320 at the default job) are cut into N contiguous ranges, one per rank. With
  t-major tokens a range is a block of latent frames when N divides the frame count (as the original splits),
  and otherwise a range of the flattened (t h w) axis. Everything but self-attention is per token; for
  self-attention every token needs every other token's keys and values:
  - ``ulysses`` (when N divides the head count): an all-to-all turns "my tokens, all heads" into "all tokens,
    my heads", each rank runs ordinary attention on H/N heads, and a second all-to-all turns it back;
  - ``ring`` (any N): the key/value blocks travel round the ranks while each rank attends its queries to the
    block it holds, merging the partial results with their log-sum-exp.
  Cross-attention to the 512 text tokens stays local. The final layer's output is all-gathered.
* ``cfg``: the two classifier-free-guidance branches (prompt, negative prompt) run on two halves of the ranks
  (N even); within a half the tokens are split as above when N/2 > 1. The branches' outputs are exchanged
  once per step (an all-gather of the 3.6 M-value output).

The default (``auto``) is ``cfg`` when N is even and the memory plan batches the two branches, otherwise
``sequence``; the reasoning and the single-GPU measurements behind it are in :func:`choose_layout`, the two-GPU
measurement in ``benchmarks/bench_parallel.py``.

State: the network holds none of this. A :class:`ContextParallel` (rank, groups, layout) is passed in per call
(``net(..., shard=...)``), so the network can be swapped, streamed block by block or rebuilt between calls: the
memory engine's placements (resident, swap, stream) work unchanged, their block hooks firing inside the sharded
forward. The memory-lean forward (``offload.lean_forward``, chunked attention) has no ``shard`` argument yet: the
pipeline refuses a lean plan (``stream-lean``) under context parallelism, naming the leanest strategy that splits.

From the command line: ``--num-gpus N`` (``cosmos_cli.generation.start_parallel`` calls the backend's
``start_parallel``: the layout checks, then :func:`init_distributed`), ``--cp-scheme`` (else ``COSMOS_CP_SCHEME``),
``Predict1Pipeline.load(parallel=...)`` (only the network on ranks > 0) and ``Predict1Pipeline.generate``: one
executor for one process and N, its stages shared through the run (``DistContext.share``) and its denoising
forwards sharded by :func:`.branches.branch_model_fn` with this module's :class:`ContextParallel`. A :class:`DistContext` is what the core sees as its ``ParallelRun``.

Failures: a rank count that does not divide the work, a launch without torchrun, or a missing NCCL are clear
errors before anything loads. Every process group has a timeout. A collective that fails (a rank died: its
sockets close) or times out (a rank hangs) raises :class:`ParallelError` naming the rank and the step, and an
error on rank 0 in a rank-0-only stage is broadcast, so the other ranks exit with it (:class:`FollowerExit`)
instead of waiting. Under torchrun, a rank that exits makes torchrun stop the others as well.
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

from . import network as _network
from . import sampler as S
from .params import DiTParams, dit_tokens

SCHEMES = ("auto", "sequence", "cfg")
ATTENTIONS = ("auto", "ulysses", "ring")

# Process-group timeouts, in seconds. ``wait``: the world group, where the other ranks wait while rank 0 runs
# the rank-0-only stages (loading and running the upsampler, guardrails, T5, the tokenizer: minutes at full
# size). ``step``: the groups used inside the network, where every collective completes within one block.
WAIT_TIMEOUT_ENV, STEP_TIMEOUT_ENV = "COSMOS_DIST_TIMEOUT", "COSMOS_DIST_STEP_TIMEOUT"
DEFAULT_WAIT_TIMEOUT_S, DEFAULT_STEP_TIMEOUT_S = 1800.0, 600.0
# Overrides of the layout choice (``auto`` when unset), for measurements and for users who measured.
SCHEME_ENV, ATTENTION_ENV = "COSMOS_CP_SCHEME", "COSMOS_CP_ATTENTION"


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
# The layout: a pure function of the rank count, the network and the latent size


@dataclass(frozen=True)
class Layout:
    """How ``world_size`` ranks split one generation's network work."""

    world_size: int
    scheme: str  # "single" | "sequence" | "cfg"
    branch_groups: int  # 1, or 2 for cfg (branch g runs on ranks g*group_size ... (g+1)*group_size - 1)
    group_size: int  # ranks that split one forward's tokens
    attention: str  # "local" (group_size 1) | "ulysses" | "ring"
    tokens: int
    reason: str

    @property
    def tokens_per_rank(self) -> int:
        return self.tokens // self.group_size


def _tokens_and_frames(params: DiTParams, latent_shape: tuple[int, int, int]) -> tuple[int, int]:
    T, H, W = latent_shape
    return dit_tokens(params, T, H, W), T // params.patch_temporal


def _group_ok(tokens: int, n: int) -> bool:
    return tokens % n == 0


def valid_world_sizes(params: DiTParams, latent_shape: tuple[int, int, int], upto: int = 16) -> list[int]:
    """The rank counts up to ``upto`` that can split this job (some scheme divides the work)."""
    tokens, _ = _tokens_and_frames(params, latent_shape)
    return [n for n in range(1, upto + 1) if _group_ok(tokens, n) or (n % 2 == 0 and _group_ok(tokens, n // 2))]


def choose_layout(world_size: int, params: DiTParams, latent_shape: tuple[int, int, int], *,
                  cfg_batched: bool = True, scheme: str = "auto", attention: str = "auto") -> Layout:
    """The split of one generation over ``world_size`` ranks (raises :class:`UsageError` when none works).

    Rule for ``auto``:

    * ``cfg`` when N is even and the memory plan batches the branches. The two branches cost exactly the same,
      so two halves of the ranks are perfectly balanced and need no communication inside the network: one
      all-gather of the output per step (7 MB in bf16 at the default job). Measured on one H100 with the
      communication replaced by local copies (benchmarks/results/parallel-compute-bound-h100.json), a rank's
      share of one step is 4.19 s (7B) / 7.15 s (14B) against 8.40 / 14.41 s for N=1: 2.01x. Sequence
      parallelism costs more per rank, 4.41 / 7.51 s (1.91x: smaller matrix products and the all-to-all
      packing), and then moves every self-attention's activations: Ulysses sends (N-1)/N of a rank's q, k, v
      and output per block, ~26 GB per step at N=2 for 7B (~42 GB for 14B), some 70-110 ms at NVLink speed.
      With N > 2 the cfg layout also halves the ranks in each all-to-all.
    * ``sequence`` otherwise: N odd, or a lean plan that runs the branches one at a time to save memory
      (``cfg_batched`` False): there cfg would give each GPU a whole branch's activations, while sequence
      parallelism divides them by N.

    Within a group of n ranks: ``ulysses`` when n divides the head count (32 for 7B, 40 for 14B: plain
    attention kernels on full sequences, two all-to-alls per block), else ``ring`` (any n; per-rank compute
    measured equal to Ulysses with the cuDNN kernel, but fp32 accumulators: +3.5 GB at 7B). Every group size must
    divide the token count. ``benchmarks/bench_parallel.py`` measures all three splits on two GPUs.
    """
    if scheme not in SCHEMES:
        raise UsageError(f"unknown parallel scheme {scheme!r}", hint=f"Use one of: {', '.join(SCHEMES)}.")
    if attention not in ATTENTIONS:
        raise UsageError(f"unknown parallel attention {attention!r}", hint=f"Use one of: {', '.join(ATTENTIONS)}.")
    if world_size < 1:
        raise UsageError(f"--num-gpus must be >= 1, got {world_size}")
    tokens, frames = _tokens_and_frames(params, latent_shape)
    if world_size == 1:
        return Layout(1, "single", 1, 1, "local", tokens, "one process")
    valid = valid_world_sizes(params, latent_shape)
    cfg_ok = world_size % 2 == 0 and _group_ok(tokens, world_size // 2)
    seq_ok = _group_ok(tokens, world_size)
    if not (cfg_ok or seq_ok):
        branches = (f"nor by {world_size // 2} (the guidance branches on two halves)" if world_size % 2 == 0
                    else "and an odd count cannot give the two guidance branches a half each")
        raise UsageError(f"{world_size} GPUs cannot split this job: its {tokens:,} tokens are not divisible by "
                         f"{world_size}, {branches}",
                         hint=f"Use one of these GPU counts: {', '.join(map(str, valid))}.")
    if scheme == "auto":
        if cfg_batched:
            scheme = "cfg" if cfg_ok else "sequence"
        else:
            scheme = "sequence" if seq_ok else "cfg"
    if scheme == "cfg" and not cfg_ok:
        why = "is odd" if world_size % 2 else f"/ 2 = {world_size // 2} does not divide the {tokens:,} tokens"
        raise UsageError(f"the cfg scheme needs an even GPU count whose half divides the work; {world_size} {why}",
                         hint=f"Use --cp-scheme sequence (or auto; {SCHEME_ENV} sets the default).")
    if scheme == "sequence" and not seq_ok:
        raise UsageError(f"the sequence scheme needs a GPU count that divides the {tokens:,} tokens; "
                         f"{world_size} does not", hint=f"Use --cp-scheme cfg (or auto; {SCHEME_ENV} sets the default).")
    groups = 2 if scheme == "cfg" else 1
    n = world_size // groups
    heads = params.num_heads
    if n == 1:
        attn = "local"
    elif attention == "ulysses" and heads % n:
        raise UsageError(f"Ulysses attention splits the {heads} heads over {n} ranks, which does not divide them",
                         hint=f"Set {ATTENTION_ENV}=ring (or auto).")
    else:
        attn = attention if attention != "auto" else ("ulysses" if heads % n == 0 else "ring")

    per = tokens // n
    where = (f"latent frames in blocks of {frames // n}" if frames % n == 0
             else "the flattened (t h w) token axis (the frame count does not divide)")
    split = (f"{tokens:,} tokens in {n} contiguous ranges of {per:,} along {where}, "
             + (f"Ulysses all-to-all over the {heads} heads ({heads // n} per rank)" if attn == "ulysses"
                else f"ring attention ({heads} heads do not divide by {n})" if attention == "auto"
                else "ring attention"))
    if scheme == "cfg":
        reason = (f"{world_size} GPUs: the two guidance branches on two groups of {n}"
                  + ("" if n == 1 else f"; within a group, {split}")
                  + "; one exchange of the output per step")
    else:
        if not cfg_batched:
            why = " (the memory plan runs the guidance branches one at a time)"
        else:
            why = f" ({world_size} is odd)" if world_size % 2 else " (as asked)"
        reason = f"{world_size} GPUs: sequence parallel{why}: {split}"
    return Layout(world_size, scheme, groups, n, attn, tokens, reason)


def latent_shape_of(spec) -> tuple[int, int, int]:
    """The latent (T, H, W) of a model spec's default job (16, 88, 160 for 121 x 704 x 1280)."""
    tok = spec.tokenizer
    return (tok.latent_frames(spec.num_frames), spec.height // tok.spatial_compression,
            spec.width // tok.spatial_compression)


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
                                hint="Initialize it with parallel.init_distributed (gloo for the CPU, NCCL for CUDA).")
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


# ----------------------------------------------------------------------------------------------------------
# Attention across ranks


def attention_with_lse(q: Tensor, k: Tensor, v: Tensor, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """softmax(q k^T / sqrt(hd)) v and its log-sum-exp: (B, H, Sq, hd), (B, H, Sq) fp32.

    Uses PyTorch's fused kernels that return the log-sum-exp: on CUDA in bf16/fp16 the cuDNN kernel (the one
    the network's own attention gets on Hopper, ~1.8x the flash kernel at full size), else the flash kernel; the
    CPU flash kernel on the CPU; otherwise a math path over query chunks of ``chunk``."""
    if q.device.type == "cuda" and q.dtype in (torch.float16, torch.bfloat16):
        if _CUDNN_LSE[0] is not False:
            try:
                out, lse = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True)[:2]
                _CUDNN_LSE[0] = True
                return out, lse.reshape(q.shape[:3])  # (B, H, Sq) (some versions add a trailing 1)
            except (RuntimeError, AttributeError):  # no cuDNN attention for this GPU/build/shape: flash instead
                if _CUDNN_LSE[0] is True:
                    raise
                _CUDNN_LSE[0] = False
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v)[:2]
        return out, lse
    if q.device.type == "cpu" and hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)
        return out, lse
    return _attention_with_lse_math(q, k, v, chunk)


_CUDNN_LSE: list[bool | None] = [None]  # whether the cuDNN kernel ran here (None: not tried yet)


def _attention_with_lse_math(q: Tensor, k: Tensor, v: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
    scale = q.shape[-1] ** -0.5
    kf, vf = k.float(), v.float()
    outs, lses = [], []
    for i in range(0, q.shape[2], chunk):
        s = (q[:, :, i:i + chunk].float() @ kf.transpose(-1, -2)) * scale  # (B, H, c, Sk)
        lse = torch.logsumexp(s, dim=-1)
        outs.append(((s - lse.unsqueeze(-1)).exp() @ vf).to(q.dtype))
        lses.append(lse)
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)


def merge_partial(out: Tensor | None, lse: Tensor | None, part: Tensor, part_lse: Tensor) -> tuple[Tensor, Tensor]:
    """Combine two attention results over disjoint key sets, given their log-sum-exps (fp32 accumulation)."""
    part, part_lse = part.float(), part_lse.float()
    if out is None:
        return part, part_lse
    new = torch.logaddexp(lse, part_lse)
    return out * (lse - new).exp().unsqueeze(-1) + part * (part_lse - new).exp().unsqueeze(-1), new


class SequenceShard:
    """One rank's part of a forward: tokens ``start:stop``; implements the network's ``TokenShard``."""

    def __init__(self, ctx: DistContext, group, ranks: list[int], attention: str, tokens: int):
        self.ctx, self.group, self.ranks, self.attention = ctx, group, ranks, attention
        self.n = len(ranks)
        self.index = ranks.index(ctx.rank)
        if tokens % self.n:
            raise UsageError(f"{self.n} ranks cannot split {tokens} tokens evenly")
        per = tokens // self.n
        self.start, self.stop = self.index * per, (self.index + 1) * per

    def self_attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """(B, H, S/n, hd) x3 -> (B, H, S/n, hd): this rank's queries against every rank's keys."""
        if self.attention == "ulysses":
            return self._ulysses(q, k, v)
        return self._ring(q, k, v)

    def _ulysses(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        n, (B, H, s, hd) = self.n, q.shape
        h = H // n
        send = q.new_empty(n, 3, B, h, s, hd)  # [destination rank, q/k/v, ...]: rank j gets heads j*h:(j+1)*h
        for i, t in enumerate((q, k, v)):
            send[:, i].copy_(t.unflatten(1, (n, h)).transpose(0, 1))
        recv = torch.empty_like(send)  # [source rank = token range, q/k/v, B, h, s, hd]
        with _collective(self.ctx.rank, "self-attention (Ulysses all-to-all)"):
            dist.all_to_all_single(recv, send, group=self.group)
        del send
        full = recv.permute(1, 2, 3, 0, 4, 5).reshape(3, B, h, n * s, hd)  # all tokens, my heads
        del recv
        out = _network.attention(full[0], full[1], full[2])  # (B, h, S, hd)
        del full
        back = out.unflatten(2, (n, s)).permute(2, 0, 1, 3, 4).contiguous()  # [destination = token range, ...]
        got = torch.empty_like(back)  # [source rank = head range, B, h, s, hd]
        with _collective(self.ctx.rank, "self-attention (Ulysses all-to-all back)"):
            dist.all_to_all_single(got, back, group=self.group)
        return got.permute(1, 0, 2, 3, 4).reshape(B, H, s, hd)

    def _ring(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        n, i = self.n, self.index
        nxt, prv = self.ranks[(i + 1) % n], self.ranks[(i - 1) % n]
        kv = torch.stack([k, v])  # (2, B, H, s, hd): this rank's block, then the others' as they come round
        out = lse = None
        for step in range(n):
            if step < n - 1:
                incoming = torch.empty_like(kv)
                ops = [dist.P2POp(dist.isend, kv, nxt, self.group), dist.P2POp(dist.irecv, incoming, prv, self.group)]
                with _collective(self.ctx.rank, "self-attention (ring exchange)"):
                    works = dist.batch_isend_irecv(ops)
            part, part_lse = attention_with_lse(q, kv[0], kv[1])  # overlaps the exchange
            out, lse = merge_partial(out, lse, part, part_lse)
            if step < n - 1:
                with _collective(self.ctx.rank, "self-attention (ring exchange)"):
                    for w in works:
                        w.wait()
                kv = incoming
        return out.to(q.dtype)

    def gather(self, x: Tensor) -> Tensor:
        """(B, S/n, F) on each rank -> (B, S, F) on every rank."""
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.n)]
        with _collective(self.ctx.rank, "gathering the network output"):
            dist.all_gather(parts, x, group=self.group)
        return torch.cat(parts, dim=1)


# ----------------------------------------------------------------------------------------------------------
# Context parallelism for one layout


class ContextParallel:
    """A layout made real on the ranks of ``ctx``: process groups, this rank's branch and token range.

    Create it on every rank with the same layout (process groups are created collectively), once per process;
    reuse it for every job and step. ``model_fn`` is what the sampler calls.
    """

    def __init__(self, ctx: DistContext, layout: Layout):
        if layout.world_size != ctx.world_size:
            raise UsageError(f"layout for {layout.world_size} ranks used with {ctx.world_size}")
        self.ctx, self.layout = ctx, layout
        n = layout.group_size
        self.branch = ctx.rank // n if layout.branch_groups == 2 else None
        self.group_ranks = list(range(ctx.rank // n * n, ctx.rank // n * n + n))
        step = datetime.timedelta(seconds=ctx.step_timeout_s)
        key = ("layout", layout.branch_groups, n)
        if key not in ctx._groups:
            with _collective(ctx.rank, "creating process groups"):
                world = dist.new_group(list(range(ctx.world_size)), timeout=step)
                groups = [dist.new_group(list(range(g * n, g * n + n)), timeout=step) if n > 1 else None
                          for g in range(ctx.world_size // n)]
            ctx._groups[key] = (world, groups)
        self.world_group, groups = ctx._groups[key]
        self.group = groups[ctx.rank // n]

    @classmethod
    def create(cls, ctx: DistContext, params: DiTParams, latent_shape: tuple[int, int, int], *,
               cfg_batched: bool = True, scheme: str | None = None, attention: str | None = None
               ) -> ContextParallel:
        """Choose the layout (``scheme``/``attention`` None: from COSMOS_CP_SCHEME / COSMOS_CP_ATTENTION, else
        auto) and set it up."""
        scheme = scheme or os.environ.get(SCHEME_ENV, "auto")
        attention = attention or os.environ.get(ATTENTION_ENV, "auto")
        return cls(ctx, choose_layout(ctx.world_size, params, latent_shape, cfg_batched=cfg_batched,
                                      scheme=scheme, attention=attention))

    @property
    def rank(self) -> int:
        return self.ctx.rank

    @property
    def is_main(self) -> bool:
        return self.ctx.rank == 0

    def shard(self, tokens: int) -> SequenceShard | None:
        """This rank's token range of a forward over ``tokens`` tokens (None when its group is one rank)."""
        if self.layout.group_size == 1:
            return None
        return SequenceShard(self.ctx, self.group, self.group_ranks, self.layout.attention, tokens)

    def exchange_branches(self, f: Tensor) -> tuple[Tensor, Tensor]:
        """Every rank's branch output -> (F_cond, F_uncond) on every rank."""
        f = f.contiguous()
        parts = [torch.empty_like(f) for _ in range(self.ctx.world_size)]
        with _collective(self.ctx.rank, "exchanging the guidance branches"):
            dist.all_gather(parts, f, group=self.world_group)
        return parts[0], parts[self.layout.group_size]

    def model_fn(self, net, text_emb: Tensor, fps, mask: Tensor, tables: _network.PosTables, *,
                 cfg_batched: bool = True) -> S.ModelFn:
        """The sampler's ``model_fn(x_scaled, t) -> (F_cond, F_uncond)`` with the network split over the ranks:
        the pipeline's own (:func:`.branches.branch_model_fn`, as ``Predict1Pipeline.denoise`` builds it) with
        ``net``'s forward. ``text_emb`` is (2, M, C) (prompt, negative prompt) in the network's dtype, ``mask``
        the (1, 1, T, H, W) condition mask, ``tables`` from ``net.prepare``. Every rank gets the same full
        outputs."""
        from .branches import branch_model_fn

        return branch_model_fn(net, text_emb, fps, mask, tables, cfg_batched=cfg_batched, cp=self)


def _gather_ints(ctx: DistContext, value: int) -> list[int]:
    t = torch.tensor([value], dtype=torch.int64, device=_comm_device(ctx))
    parts = [torch.empty_like(t) for _ in range(ctx.world_size)]
    with _collective(ctx.rank, "gathering memory peaks"):
        dist.all_gather(parts, t)
    return [int(p.item()) for p in parts]


__all__ = [
    "ATTENTIONS", "SCHEMES", "ContextParallel", "DistContext", "FollowerExit", "Layout", "ParallelError",
    "SequenceShard", "agree_min", "attention_with_lse", "choose_layout", "from_rank0",
    "init_distributed", "latent_shape_of", "merge_partial", "quiet_on_this_rank", "shutdown", "valid_world_sizes",
]
