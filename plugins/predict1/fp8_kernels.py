"""The FP8 path's row quantization (:func:`.fast.quantize_rows`) as one hand-written Triton kernel, for the
attention outputs' FP8 linears.

In the compiled FP8 step inductor quantizes each attention output (the input of the attention's out projection,
4,096 channels a row) with a reduction that loops over the row twice and moves its bytes at ~0.9 TB/s
(``benchmarks/results/fp8-h200.md``); the attention kernel before it is an opaque call, so nothing fuses there
anyway. :func:`quantize_rows_triton` keeps each row in registers, reads it once and computes what
:func:`.fast.quantize_rows` computes: scale = max(amax, 1e-12) / 448 and the round-to-nearest e4m3 of
``x / scale`` (an IEEE division, ``div_rn``), clamped to +-448. ``benchmarks/bench_quant_kernels.py`` times it
against inductor's.

:func:`register` makes it the custom operator ``cosmos_predict1::quantize_rows`` (once, when the FP8 layers are set
up: not on import, not inside a compiled region), so ``--compile`` keeps it in the block's graph as one call; on a
tensor that is not on a GPU it is :func:`.fast.quantize_rows` itself. Triton is imported at the first GPU call
(PyTorch's CUDA builds ship it).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from .fast import FP8, FP8_MAX, quantize_rows

QUANTIZE_WARPS = 8  # warps per program (a 4,096-wide row: 16 values a thread)
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
                s = tl.maximum(tl.max(tl.abs(x), axis=0), 1e-12) / LIMIT
                v = tl.minimum(tl.maximum(tl.math.div_rn(x, s), -LIMIT), LIMIT)
                tl.store(q_ptr + row * K + cols, v.to(tl.float8e4nv), mask=inside)
                tl.store(s_ptr + row, s)

    return triton, kernel


def quantize_rows_triton(x: Tensor, rows: int = QUANTIZE_ROWS, warps: int = QUANTIZE_WARPS) -> tuple[Tensor, Tensor]:
    """x (M, K) on a GPU -> (M, K) e4m3 values, (M, 1) fp32 scales, as :func:`.fast.quantize_rows`."""
    triton, kernel = _quantize_kernel()
    x = x.contiguous()
    M, K = x.shape
    q = torch.empty(M, K, device=x.device, dtype=FP8)
    s = torch.empty(M, 1, device=x.device, dtype=torch.float32)
    kernel[(triton.cdiv(M, rows),)](x, q, s, M, K=K, BLOCK=triton.next_power_of_2(K), ROWS=rows, LIMIT=FP8_MAX,
                                    num_warps=warps)
    return q, s


@functools.cache
def register() -> None:
    """Register ``cosmos_predict1::quantize_rows`` (x (M, K) -> values, scales) once."""

    @torch.library.custom_op("cosmos_predict1::quantize_rows", mutates_args=())
    def op(x: Tensor) -> tuple[Tensor, Tensor]:
        return quantize_rows_triton(x) if x.is_cuda else quantize_rows(x)

    @op.register_fake
    def _(x: Tensor) -> tuple[Tensor, Tensor]:
        return x.new_empty(x.shape, dtype=FP8), x.new_empty((x.shape[0], 1), dtype=torch.float32)


def quantize_rows_op(x: Tensor) -> tuple[Tensor, Tensor]:
    """The registered operator (:func:`register` first)."""
    return torch.ops.cosmos_predict1.quantize_rows(x)
