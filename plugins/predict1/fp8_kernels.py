"""Two row quantizations of the FP8 path as hand-written Triton kernels: the attention outputs'
(:func:`.fast.quantize_rows`) and the MLP's GELU with its output's (:func:`.fast.gelu_quantized`).

In the compiled FP8 step inductor quantizes each attention output (the input of the attention's out projection,
4,096 channels a row) with a reduction that loops over the row twice and moves its bytes at ~0.9 TB/s, and the
GELU'd MLP activation (16,384 channels) in 4.3 ms a block (``benchmarks/results/fp8-h200.md``); the kernels before
them (attention, a matrix product) are opaque calls, so nothing fuses there anyway. These kernels keep each row in
registers, read it once and compute what the functions compute, in the same order: scale = max(amax, 1e-12) / 448
(for GELU: max(GELU(max row), 0.17) / 448, GELU rounded to bf16 as the eager op rounds it) and the round-to-nearest
e4m3 of ``x / scale`` (an IEEE division, ``div_rn``), clamped to +-448. ``benchmarks/bench_quant_kernels.py``
times them against inductor's.

:func:`register` makes them the custom operators ``cosmos_predict1::quantize_rows`` and
``cosmos_predict1::gelu_quantize_rows`` (once, when the FP8 layers are set up: not on import, not inside a compiled
region), so ``--compile`` keeps each in the block's graph as one call; on a tensor that is not on a GPU they are the
functions themselves. Triton is imported at the first GPU call (PyTorch's CUDA builds ship it).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from .fast import FP8, FP8_MAX, GELU_NEGATIVE_BOUND, gelu_quantized, quantize_rows

QUANTIZE_WARPS = 8  # warps per program (a 4,096-wide row: 16 values a thread)
GELU_WARPS = 16  # (a 16,384-wide row: 32 values a thread)
QUANTIZE_ROWS = 1  # rows per program


@functools.cache
def _quantize_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(x_ptr, q_ptr, s_ptr, M, K: tl.constexpr, BLOCK: tl.constexpr, ROWS: tl.constexpr,
               LIMIT: tl.constexpr):
        cols = tl.arange(0, BLOCK)
        inside = cols < K
        for r in range(ROWS):
            row = tl.program_id(0) * ROWS + r
            if row < M:
                x = tl.load(x_ptr + row * K + cols, mask=inside, other=0.0).to(tl.float32)
                s = tl.math.div_rn(tl.maximum(tl.max(tl.abs(x), axis=0), 1e-12), LIMIT)  # IEEE, as torch's
                v = tl.minimum(tl.maximum(tl.math.div_rn(x, s), -LIMIT), LIMIT)
                tl.store(q_ptr + row * K + cols, v.to(tl.float8e4nv), mask=inside)
                tl.store(s_ptr + row, s)

    return triton, kernel


@functools.cache
def _gelu_kernel():
    import triton
    import triton.language as tl

    # GELU as PyTorch's CUDA kernel computes it (erf): x * 0.5 * (1 + erf(x / sqrt(2))) in fp32, rounded to bf16
    # (written out twice: a jitted helper would have to live at module level, where Triton is not imported)
    @triton.jit
    def kernel(h_ptr, q_ptr, s_ptr, M, K: tl.constexpr, BLOCK: tl.constexpr, ROWS: tl.constexpr,
               LIMIT: tl.constexpr, BOUND: tl.constexpr):
        cols = tl.arange(0, BLOCK)
        inside = cols < K
        for r in range(ROWS):
            row = tl.program_id(0) * ROWS + r
            if row < M:
                h = tl.load(h_ptr + row * K + cols, mask=inside, other=float("-inf")).to(tl.float32)
                m = tl.max(h, axis=0)
                gm = (m * 0.5 * (1.0 + tl.math.erf(m * 0.7071067811865476))).to(tl.bfloat16).to(tl.float32)
                s = tl.math.div_rn(tl.maximum(gm, BOUND), LIMIT)
                g = (h * 0.5 * (1.0 + tl.math.erf(h * 0.7071067811865476))).to(tl.bfloat16).to(tl.float32)
                v = tl.minimum(tl.maximum(tl.math.div_rn(g, s), -LIMIT), LIMIT)
                tl.store(q_ptr + row * K + cols, v.to(tl.float8e4nv), mask=inside)
                tl.store(s_ptr + row, s)

    return triton, kernel


def _rows(compiled, x: Tensor, rows: int, warps: int, **constants) -> tuple[Tensor, Tensor]:
    """Launch one of the row kernels (``(triton, kernel)``) over x (M, K): one program a ``rows`` rows."""
    triton, kernel = compiled
    x = x.contiguous()
    M, K = x.shape
    q = torch.empty(M, K, device=x.device, dtype=FP8)
    s = torch.empty(M, 1, device=x.device, dtype=torch.float32)
    kernel[(triton.cdiv(M, rows),)](x, q, s, M, K=K, BLOCK=triton.next_power_of_2(K), ROWS=rows, LIMIT=FP8_MAX,
                                    num_warps=warps, **constants)
    return q, s


def gelu_quantize_rows_triton(h: Tensor, rows: int = QUANTIZE_ROWS, warps: int = GELU_WARPS) -> tuple[Tensor, Tensor]:
    """h (..., K) on a GPU (bf16) -> (M, K) e4m3 values of GELU(h), (M, 1) fp32 scales, as
    :func:`.fast.gelu_quantized`."""
    return _rows(_gelu_kernel(), h.reshape(-1, h.shape[-1]), rows, warps, BOUND=GELU_NEGATIVE_BOUND)


def quantize_rows_triton(x: Tensor, rows: int = QUANTIZE_ROWS, warps: int = QUANTIZE_WARPS) -> tuple[Tensor, Tensor]:
    """x (M, K) on a GPU -> (M, K) e4m3 values, (M, 1) fp32 scales, as :func:`.fast.quantize_rows`."""
    return _rows(_quantize_kernel(), x, rows, warps)


@functools.cache
def register() -> None:
    """Register ``cosmos_predict1::quantize_rows`` (x (M, K) -> values, scales) and
    ``cosmos_predict1::gelu_quantize_rows`` (h (..., K) -> values, scales of GELU(h)'s rows) once."""

    @torch.library.custom_op("cosmos_predict1::quantize_rows", mutates_args=())
    def quantize(x: Tensor) -> tuple[Tensor, Tensor]:
        return quantize_rows_triton(x) if x.is_cuda else quantize_rows(x)

    @quantize.register_fake
    def _(x: Tensor) -> tuple[Tensor, Tensor]:
        return x.new_empty(x.shape, dtype=FP8), x.new_empty((x.shape[0], 1), dtype=torch.float32)

    @torch.library.custom_op("cosmos_predict1::gelu_quantize_rows", mutates_args=())
    def gelu(h: Tensor) -> tuple[Tensor, Tensor]:
        return gelu_quantize_rows_triton(h) if h.is_cuda else gelu_quantized(h)

    @gelu.register_fake
    def _(h: Tensor) -> tuple[Tensor, Tensor]:
        m = h.numel() // h.shape[-1]
        return h.new_empty((m, h.shape[-1]), dtype=FP8), h.new_empty((m, 1), dtype=torch.float32)


def quantize_rows_op(x: Tensor) -> tuple[Tensor, Tensor]:
    """``cosmos_predict1::quantize_rows`` (:func:`register` first)."""
    return torch.ops.cosmos_predict1.quantize_rows(x)


def gelu_quantize_rows_op(h: Tensor) -> tuple[Tensor, Tensor]:
    """``cosmos_predict1::gelu_quantize_rows`` (:func:`register` first)."""
    return torch.ops.cosmos_predict1.gelu_quantize_rows(h)
