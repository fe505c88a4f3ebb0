"""The sampler's ``model_fn``: the network's forwards for the two guidance branches, in one process or split
over the ranks of a context-parallel run.

One function for both, so that the guidance truncation (``uncond=False``: the prompt's branch alone), the step
cache (``cache``) and the forward counts work the same way wherever the network runs. What a
:class:`~.parallel.ContextParallel` changes is only where each forward's work goes:

* a token shard (its ``shard``): every forward passes ``shard=...`` to the network, which runs its blocks on this
  rank's tokens with the ring or Ulysses self-attention and gathers the output;
* the ``cfg`` layout (two branch groups): a guided step runs this rank's branch only and the groups exchange
  their outputs; an unguided step runs the prompt's branch on every group alike (no exchange).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .sampler import ModelFn

BRANCHES = ("cond", "uncond")  # the rows of the text embedding: (prompt, negative prompt)


def branch_model_fn(forward: Callable[..., Tensor], text_emb: Tensor, fps, mask: Tensor, tables, *,
                    cfg_batched: bool, cp=None, cache=None, counts: list[int] | None = None) -> ModelFn:
    """``model_fn(x_scaled, t, uncond=True) -> (F_cond, F_uncond or None)`` for the sampler.

    ``forward`` is the network's forward (or the lean one, :func:`~.offload.network_forward`); ``text_emb`` (2, M, C)
    in the network's dtype, ``mask`` the (1, 1, T, H, W) condition mask, ``tables`` from ``net.prepare``.
    ``cfg_batched``: both branches in one forward of two rows, else one forward each. ``cp``: a ContextParallel
    (None: this process alone); every rank gets the same full outputs. ``cache``: a :class:`~.fast.StepCache`.
    ``counts[0]`` is increased by the branch forwards each call runs."""
    extra = {}
    if cp is not None:
        shard = cp.shard(tables.extra_pos.shape[1])
        if shard is not None:
            extra["shard"] = shard
    split = cp is not None and cp.layout.branch_groups == 2

    def run(x_scaled: Tensor, t: Tensor, rows: slice, *branches: str) -> Tensor:
        if counts is not None:
            counts[0] += len(branches)
        kw = extra if cache is None else {**extra, "cache": cache.for_branches(*branches)}
        return forward(x_scaled, t, text_emb[rows], fps, mask, tables=tables, **kw)

    def model_fn(x_scaled: Tensor, t: Tensor, uncond: bool = True) -> tuple[Tensor, Tensor | None]:
        if not uncond:  # guidance truncation: the prompt's branch alone
            return run(x_scaled, t, slice(0, 1), BRANCHES[0]), None
        if split:  # this rank's branch; the groups exchange their outputs
            b = cp.branch
            return cp.exchange_branches(run(x_scaled, t, slice(b, b + 1), BRANCHES[b]))
        if cfg_batched:
            out = run(torch.cat([x_scaled, x_scaled]), t.expand(2), slice(0, 2), *BRANCHES)
            return out[:1], out[1:]
        return run(x_scaled, t, slice(0, 1), BRANCHES[0]), run(x_scaled, t, slice(1, 2), BRANCHES[1])

    return model_fn
