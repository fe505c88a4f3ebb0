"""The predict1 backend's placements: the memory plan's placement names mapped to the placement engines
(:mod:`cosmos_torch.placement`, re-exported here), and the memory-lean network pass.

A memory plan (:mod:`cosmos_cli.planner`) gives every component a placement; :func:`place` wraps the component
in the matching :class:`Placed` object, and the pipeline enters ``placed.active()`` around each stage that
uses it:

* ``gpu`` (:class:`Resident`): on the compute device for the whole run.
* ``swap`` (:class:`Swapped`): a master copy lives in pinned host memory, packed in one flat buffer per dtype;
  each stage that uses the component copies it to the device (one asynchronous copy per buffer) and drops the
  copy afterwards. The disk is read once, at load, so a batch pays the load once.
* ``cpu`` (:class:`OnHost`): kept and computed on the host.
* ``stream`` (:class:`Streamed`: the diffusion network, the T5 encoder): each block's weights live in their own
  pinned host buffer; a few device slots hold the block being computed and the next ones, which a side CUDA
  stream copies in while the current block computes (CUDA events order the copies against the compute). The
  rest of the network (embedders, final layer) is on the device for the stage. Block hooks drive it, so the
  network's own ``forward`` streams unchanged; :class:`LeanBlocks` drives it too.
* ``map`` (:class:`~.mapped.MappedStreamed`, the diffusion network): streamed as under ``stream``, from the
  memory-mapped checkpoint file through a small pinned staging ring filled by a side thread (no host copy).

Host dtype: the host copies keep the dtype the weights are computed in (bf16 on a GPU). No smaller host dtype is
used: an fp8 copy would change the outputs by far more than bf16 rounding, so the rule "smaller only if the
outputs are unchanged" leaves bf16.

Pinned memory is plain host memory registered with CUDA (``cudaHostRegister``) at its exact size: PyTorch's
pinned allocator rounds each allocation up to a power of two, 28% more for the 14B network's 5120-wide matrices.
Without a GPU the host copies are ordinary memory, and every placement still runs its real code path with the
CPU as the compute device (the tests do that).

:class:`LeanBlocks` is the network's block runner with bounded activations (``net(..., runner=LeanBlocks())``,
or :func:`lean_forward`): the MLP and the cross-attention run over
chunks of tokens (both are per token), and the self-attention computes keys and values once, then the queries,
attention and output projection chunk by chunk, adding the result into the residual in place. Same function,
same operations per token; about a third of the peak activation of the plain forward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
from torch import Tensor, nn

from cosmos_torch.placement import (
    STREAM_SLOTS,
    OnHost,
    Placed,
    Resident,
    Streamed,
    Swapped,
    TensorGroup,
    _collect,
    _cuda_host_register,
    _cuda_host_unregister,
    _set_wrapper_device,
    host_buffer,
    park,
    parked_groups,
    torch_modules,
)

from . import network as _network

PLACEMENTS = ("gpu", "swap", "cpu", "stream", "map")
LEAN_CHUNK_TOKENS = 8192  # tokens per chunk in LeanBlocks


def place(obj, placement: str, device: torch.device | str, *, blocks: Sequence[nn.Module] = (),
          module: nn.Module | None = None) -> Placed:
    """Wrap a component under ``placement`` (one of :data:`PLACEMENTS`) on the compute ``device``; ``blocks``
    (and the ``module`` holding them, when ``obj`` is a wrapper) are what ``stream`` streams."""
    if placement == "gpu":
        return Resident(obj, device)
    if placement == "swap":
        return Swapped(obj, device, blocks if module is None or module is obj else ())
    if placement == "cpu":
        return OnHost(obj, device)
    if placement == "stream":
        return Streamed(obj, device, blocks, module=module)
    if placement == "map":
        from .mapped import MappedStreamed

        return MappedStreamed(obj, device, blocks, module=module)
    raise ValueError(f"unknown placement {placement!r}; expected one of {', '.join(PLACEMENTS)}")


# ----------------------------------------------------------------------------------------------------------
# The network's forward with bounded activations


def _spans(n: int, chunk: int) -> list[tuple[int, int]]:
    return [(a, min(a + chunk, n)) for a in range(0, n, chunk)]


def _lean_self_attention(sub: nn.Module, x: Tensor, emb: Tensor, adaln_lora_3d: Tensor,
                         rope: tuple[Tensor, Tensor], chunk: int) -> None:
    """``x = sub(x, emb, adaln_lora_3d, None, rope)`` in place, holding keys and values and one chunk of the rest."""
    attn = sub.block.attn
    mod = sub.adaLN_modulation(emb) + adaln_lora_3d  # (B, 3D)
    shift, scale, gate = mod.unsqueeze(1).chunk(3, dim=-1)  # 3 x (B, 1, D)
    B, S, D = x.shape
    heads = attn.num_heads
    cos, sin = rope
    k = x.new_empty(B, heads, S, D // heads)
    v = x.new_empty(B, heads, S, D // heads)
    spans = _spans(S, chunk)
    for a, b in spans:  # keys and values of every token
        h = _network.modulate(x[:, a:b], shift, scale)  # (B, c, D)
        kc = attn.to_k[1](attn.to_k[0](h).unflatten(-1, (heads, -1)))  # (B, c, H, hd)
        k[:, :, a:b] = _network.apply_rope(kc, cos[a:b], sin[a:b]).transpose(1, 2)
        v[:, :, a:b] = attn.to_v[0](h).unflatten(-1, (heads, -1)).transpose(1, 2)
        del h, kc
    for a, b in spans:  # queries chunk by chunk; each chunk reads only its own rows of x before updating them
        h = _network.modulate(x[:, a:b], shift, scale)
        q = attn.to_q[1](attn.to_q[0](h).unflatten(-1, (heads, -1)))  # (B, c, H, hd)
        q = _network.apply_rope(q, cos[a:b], sin[a:b]).transpose(1, 2)  # (B, H, c, hd)
        out = _network.attention(q, k, v).transpose(1, 2).reshape(B, b - a, D)  # (B, c, D)
        x[:, a:b] += gate * attn.to_out[0](out)
        del h, q, out


def lean_block(block: nn.Module, x: Tensor, emb: Tensor, adaln_lora_3d: Tensor, crossattn_emb: Tensor,
               rope: tuple[Tensor, Tensor], extra_pos: Tensor, chunk: int = LEAN_CHUNK_TOKENS) -> Tensor:
    """``block(x, ...)`` of a :class:`~.network.TransformerBlock`, updating ``x`` in place (the caller owns it)."""
    self_attn, cross_attn, mlp = block.blocks
    x += extra_pos
    _lean_self_attention(self_attn, x, emb, adaln_lora_3d, rope, chunk)
    for a, b in _spans(x.shape[1], chunk):  # cross-attention and the MLP are per token
        y = cross_attn(x[:, a:b], emb, adaln_lora_3d, crossattn_emb)
        x[:, a:b] = mlp(y, emb, adaln_lora_3d)
        del y
    return x


class LeanBlocks:
    """The network's block runner (``network.BlockRunner``) with bounded activations (module doc): each block by
    :func:`lean_block`, updating x in place, and the final layer over chunks of tokens. ``streamer`` brings each
    block's weights in around its computation (the block's module hooks do not fire: its sub-blocks are called
    directly). No token shard: its chunked self-attention sees every token."""

    def __init__(self, streamer: Streamed | None = None, chunk: int = LEAN_CHUNK_TOKENS):
        self.streamer, self.chunk = streamer, chunk

    def run(self, blocks: Sequence[nn.Module], x: Tensor, start: int, stop: int,
            inputs: _network.BlockInputs) -> Tensor:
        if inputs.self_attention is not None:
            raise ValueError("the memory-lean forward has no token shard (its chunked attention sees all the tokens)")
        i, streamer = inputs, self.streamer
        x = x.contiguous()  # ours to update in place
        for k in range(start, stop):
            with streamer.block(k) if streamer is not None else nullcontext():
                x = lean_block(blocks[k], x, i.emb, i.adaln_lora_3d, i.crossattn_emb, i.rope, i.extra_pos, self.chunk)
        return x

    def final(self, layer: nn.Module, x: Tensor, inputs: _network.BlockInputs) -> Tensor:
        x = x.contiguous()
        return torch.cat([layer(x[:, a:b], inputs.emb, inputs.adaln_lora_3d) for a, b in _spans(x.shape[1], self.chunk)],
                         dim=1)  # (B, S, pt*ps*ps*C)


def lean_forward(net: nn.Module, *args, streamer: Streamed | None = None, chunk: int = LEAN_CHUNK_TOKENS,
                 **kwargs) -> Tensor:
    """The network's forward (same arguments and result as ``VideoExtendGeneralDIT.forward``, ``cache``
    included) with the :class:`LeanBlocks` runner."""
    return net(*args, runner=LeanBlocks(streamer, chunk), **kwargs)


def network_forward(placed: Placed, lean: bool, chunk: int = LEAN_CHUNK_TOKENS,
                    attention: _network.AttentionFn | None = None) -> Callable[..., Tensor]:
    """The forward the denoising stage calls: the network's own (with ``attention`` as the blocks' self-attention
    kernel, None: SDPA), or with the :class:`LeanBlocks` runner (driving the streamer itself when the network is
    streamed; its chunked attention is SDPA's)."""
    net = placed.obj
    if not lean:
        if attention is None:
            return net
        runner = _network.PlainBlocks(attention)
    else:
        runner = LeanBlocks(placed if isinstance(placed, Streamed) else None, chunk)

    def forward(*args, **kwargs) -> Tensor:
        return net(*args, runner=runner, **kwargs)

    return forward


__all__ = [
    "LEAN_CHUNK_TOKENS", "PLACEMENTS", "STREAM_SLOTS", "LeanBlocks", "OnHost", "Placed", "Resident", "Streamed",
    "Swapped", "TensorGroup", "_collect", "_cuda_host_register", "_cuda_host_unregister", "_set_wrapper_device",
    "host_buffer", "lean_block", "lean_forward", "network_forward", "park", "parked_groups", "place",
    "torch_modules",
]
