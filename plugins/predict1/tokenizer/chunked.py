"""Bounded memory: every module of the tokenizer's encoder and decoder run over chunks of frames.

Memory. Untiled, the full-size decode of 121 frames at 704x1280 peaks near 30 GiB: every level holds whole-video
tensors, and the middle block's spatial attention over 88x160 positions is large. ``encode(x, chunk_frames=n)``
and ``decode(z, chunk_frames=n)`` bound that: every module of the encoder and decoder is run over chunks of n
frames of its input (:func:`run_in_time_chunks`), each chunk preceded by the few frames its causal convolutions
look back at (its halo), so only one chunk's intermediate tensors exist at a time, next to the module's whole
input and output. Every operation is causal in time with a finite look-back, per frame (GroupNorm, spatial
attention) or pointwise, except the temporal attention, which runs whole (it is small: latent resolution).
The result is the unchunked one up to floating-point rounding (kernels see other shapes): no blending, no
seams. Measured at full size in bf16 on an H100 (benchmarks/results/memory-h100.md): the convolutions give
identical bits; the spatial attention's query chunks move the decoded output by at most a few bf16 steps. We do not tile in space: the per-frame GroupNorm and the spatial attention see the whole frame, so
spatial tiles would change the output, and the temporal chunks already bound the memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from .modules import (
    AttentionPair,
    CausalConv3d,
    CausalGroupNorm,
    FactorizedConv3d,
    MidBlock,
    VideoDecoder,
    VideoEncoder,
)


@dataclass(frozen=True)
class TimeMap:
    """How a module maps input frames to output frames, for running it over chunks of its input frames.

    ``halo``: input frames before a chunk that the chunk's outputs depend on (causal look-back).
    ``first_out(a)``: the first output frame computed from the chunk that starts at input frame ``a``; a chunk
    ``[a, b)`` owns the output frames ``[first_out(a), first_out(b))`` and ``first_out(T)`` is the output length.
    ``offset(s)``: the output frame that the module's output frame 0 is, when it runs on the input from frame s.
    ``align``, ``rem``: chunk starts (after 0) are the frames ``a`` with ``a % align == rem``.
    """

    halo: int
    first_out: Callable[[int], int]
    offset: Callable[[int], int]
    align: int = 1
    rem: int = 0


def same_length(halo: int) -> TimeMap:
    """Output frame t from input frames t - halo .. t (causal convolutions, per-frame norms, pointwise ops)."""
    return TimeMap(halo, lambda a: a, lambda s: s)


# Temporal up-sampling (T -> 2T - 1): output frame j is input frame (j + 1) // 2 plus a causal 3-tap residual.
UPSAMPLE_2X = TimeMap(2, lambda a: max(0, 2 * a - 1), lambda s: 2 * s)
# Temporal down-sampling (T -> (T + 1) // 2): output frame k from input frames 2k - 2 .. 2k; chunks start on even frames.
DOWNSAMPLE_2X = TimeMap(2, lambda a: (a + 1) // 2, lambda s: s // 2, align=2)
# The Haar patcher (1 + 4k frames -> 1 + k): output 0 is frame 0, output k >= 1 is frames 4k - 3 .. 4k. A chunk runs
# from the frame before it, whose (repeated) copy makes a discarded first output.
PATCH_4X = TimeMap(1, lambda a: (a + 3) // 4, lambda s: s // 4, align=4, rem=1)
# Its inverse (T -> 4T - 3): input 0 makes output 0, input t >= 1 makes outputs 4t - 3 .. 4t.
UNPATCH_4X = TimeMap(1, lambda a: max(0, 4 * a - 3), lambda s: 4 * s)


ATTENTION_QUERY_CHUNK = 4096  # query positions per attention call in the chunked encode/decode


def _chunk_starts(T: int, chunk: int, m: TimeMap) -> list[int]:
    starts = [0]
    while True:
        a = starts[-1] + chunk
        a += (m.rem - a) % m.align
        if a >= T:
            return starts
        starts.append(a)


def run_in_time_chunks(fn: Callable[[Tensor], Tensor], x: Tensor, m: TimeMap, chunk: int) -> Tensor:
    """``fn(x)`` for a module ``fn`` with time map ``m``, computed over chunks of ``chunk`` input frames (dim 2).

    Each chunk runs on its frames preceded by ``m.halo`` more; the outputs the halo spoils are dropped and the
    rest is written into one output tensor. Exact up to floating-point rounding."""
    T = x.shape[2]
    starts = _chunk_starts(T, max(1, chunk), m)
    if len(starts) == 1:
        return fn(x)
    out = None
    for a, b in zip(starts, [*starts[1:], T], strict=True):
        s = max(0, a - m.halo)
        y = fn(x[:, :, s:b])
        lo, hi = m.first_out(a) - m.offset(s), m.first_out(b) - m.offset(s)
        if out is None:
            out = y.new_empty(*y.shape[:2], m.first_out(T), *y.shape[3:])
        out[:, :, m.first_out(a):m.first_out(b)] = y[:, :, lo:hi]
        del y
    return out


def causal_halo(module: nn.Module) -> int:
    """Frames of look-back of a chain of stride-1 causal convolutions (a ResnetBlock: 4, a FactorizedConv3d: 2)."""
    return sum(m.time_pad for m in module.modules() if isinstance(m, CausalConv3d))


def _attention_chunked(pair: AttentionPair, x: Tensor, chunk: int) -> Tensor:
    spatial, temporal = pair
    # one frame at a time, its queries in chunks: a whole frame's attention weights (14,080^2 at the 720p latent
    # size; the 512-wide heads take no fused kernel) cost ~1.8 GiB (measured), a chunk's about a quarter of that
    x = run_in_time_chunks(lambda t: spatial(t, query_chunk=ATTENTION_QUERY_CHUNK), x, same_length(0), 1)
    return temporal(x)  # causal over all frames: runs whole (latent resolution)


def _blocks_chunked(blocks: nn.ModuleList, attn: nn.ModuleList, x: Tensor, chunk: int) -> Tensor:
    for i, block in enumerate(blocks):
        x = run_in_time_chunks(block, x, same_length(causal_halo(block)), chunk)
        if len(attn):
            x = _attention_chunked(attn[i], x, chunk)
    return x


def _mid_chunked(mid: MidBlock, x: Tensor, chunk: int) -> Tensor:
    x = run_in_time_chunks(mid.block_1, x, same_length(causal_halo(mid.block_1)), chunk)
    x = _attention_chunked(mid.attn_1, x, chunk)
    return run_in_time_chunks(mid.block_2, x, same_length(causal_halo(mid.block_2)), chunk)


def _head(norm: CausalGroupNorm, conv: FactorizedConv3d) -> Callable[[Tensor], Tensor]:
    return lambda x: conv(F.silu(norm(x)))


def encode_in_chunks(enc: VideoEncoder, x: Tensor, chunk: int) -> Tensor:
    """``enc(x)`` with every module run over chunks of ``chunk`` frames (:func:`run_in_time_chunks`)."""
    e = enc.encoder
    x = run_in_time_chunks(e.patcher3d, x, PATCH_4X, chunk)  # (B, 3p^3, (T+p-1)/p, H/p, W/p)
    x = run_in_time_chunks(e.conv_in, x, same_length(causal_halo(e.conv_in)), chunk)
    for level in e.down:
        x = _blocks_chunked(level.block, level.attn, x, chunk)
        if hasattr(level, "downsample"):
            ds = level.downsample
            x = run_in_time_chunks(ds, x, DOWNSAMPLE_2X if ds.temporal else same_length(0), chunk)
    x = _mid_chunked(e.mid, x, chunk)
    x = run_in_time_chunks(_head(e.norm_out, e.conv_out), x, same_length(causal_halo(e.conv_out)), chunk)
    return enc.quant_conv(x)  # (B, latent, 1+k, H/8, W/8)


def decode_in_chunks(dec: VideoDecoder, z: Tensor, chunk: int) -> Tensor:
    """``dec(z)`` with every module run over chunks of ``chunk`` frames (:func:`run_in_time_chunks`)."""
    d = dec.decoder
    x = run_in_time_chunks(d.conv_in, dec.post_quant_conv(z), same_length(causal_halo(d.conv_in)), chunk)
    x = _mid_chunked(d.mid, x, chunk)
    for level in reversed(d.up):
        x = _blocks_chunked(level.block, level.attn, x, chunk)
        if hasattr(level, "upsample"):
            us = level.upsample
            x = run_in_time_chunks(us, x, UPSAMPLE_2X if us.temporal else same_length(0), chunk)
    x = run_in_time_chunks(_head(d.norm_out, d.conv_out), x, same_length(causal_halo(d.conv_out)), chunk)
    return run_in_time_chunks(d.unpatcher3d, x, UNPATCH_4X, chunk)  # (B, 3, T, H, W)

