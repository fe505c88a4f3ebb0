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
forward. The memory-lean block runner (``offload.LeanBlocks``, chunked attention) takes no token shard: the
pipeline refuses a lean plan (``stream-lean``) under context parallelism, naming the leanest strategy that splits.

Where the parts live: the layout choice in :mod:`.parallel_layout`; the model-agnostic distributed layer in the
``cosmos_torch`` package (``cosmos_torch.dist``: joining torchrun's run, :class:`DistContext`, process groups with
timeouts, :func:`from_rank0`; ``cosmos_torch.seqattn``: the ring and Ulysses attention, :class:`SequenceShard`);
here, :class:`ContextParallel` (a layout made real: groups, this rank's branch and token shard, the branch
exchange). This module re-exports all of them: it is the predict1 backend's one entry to parallelism.

From the command line: ``--num-gpus N`` (``cosmos_cli.generation.start_parallel`` calls the backend's
``start_parallel``: the layout checks, then :func:`init_distributed`), ``--cp-scheme`` (else ``COSMOS_CP_SCHEME``),
``Predict1Pipeline.load(parallel=...)`` (only the network on ranks > 0) and ``Predict1Pipeline.generate``: one
executor for one process and N, its stages shared through the run (``DistContext.share``) and its denoising
forwards sharded by :func:`.branches.branch_model_fn` with a :class:`ContextParallel`. A :class:`DistContext` is
what the core sees as its ``ParallelRun``.

Failures: a rank count that does not divide the work, a launch without torchrun, or a missing NCCL are clear
errors before anything loads. Every process group has a timeout. A collective that fails (a rank died: its
sockets close) or times out (a rank hangs) raises :class:`ParallelError` naming the rank and the step, and an
error on rank 0 in a rank-0-only stage is broadcast, so the other ranks exit with it (:class:`FollowerExit`)
instead of waiting. Under torchrun, a rank that exits makes torchrun stop the others as well.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
from torch import Tensor

from cosmos_cli.errors import UsageError
from cosmos_torch.dist import (
    DEFAULT_STEP_TIMEOUT_S,
    DEFAULT_WAIT_TIMEOUT_S,
    STEP_TIMEOUT_ENV,
    WAIT_TIMEOUT_ENV,
    DistContext,
    FollowerExit,
    ParallelError,
    _collective,
    agree_min,
    from_rank0,
    init_distributed,
    quiet_on_this_rank,
    shutdown,
)
from cosmos_torch.seqattn import SequenceShard, attention_with_lse, merge_partial

from . import network as _network
from . import sampler as S
from .parallel_layout import (
    ATTENTION_ENV,
    ATTENTIONS,
    SCHEME_ENV,
    SCHEMES,
    Layout,
    choose_layout,
    latent_shape_of,
    valid_world_sizes,
)
from .params import DiTParams

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


__all__ = [
    "ATTENTIONS", "ATTENTION_ENV", "DEFAULT_STEP_TIMEOUT_S", "DEFAULT_WAIT_TIMEOUT_S", "SCHEMES", "SCHEME_ENV",
    "STEP_TIMEOUT_ENV", "WAIT_TIMEOUT_ENV", "ContextParallel", "DistContext", "FollowerExit", "Layout",
    "ParallelError", "SequenceShard", "agree_min", "attention_with_lse",
    "choose_layout", "from_rank0", "init_distributed", "latent_shape_of", "merge_partial", "quiet_on_this_rank",
    "shutdown", "valid_world_sizes",
]
