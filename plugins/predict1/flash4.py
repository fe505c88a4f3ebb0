"""FlashAttention-4's kernels (the ``flash-attn-4`` package, CuTe DSL) for the network's self-attention.

The network's attention is dense softmax attention over 56,320 tokens per branch at the default job: two thirds of
a step's matrix work. PyTorch's dispatcher runs it with cuDNN on Hopper; ``flash-attn-4`` has its own Hopper
(sm90) and Blackwell (sm100) kernels, compiled on first use by the CuTe DSL. Where that package is installed
(``pip install flash-attn-4``, with the ``nvidia-cutlass-dsl`` libraries of your CUDA) and the GPU is one of
those, :func:`self_attention_kernel` returns :func:`flash4_attention` for the blocks' self-attention
(``network.PlainBlocks(attention=...)``); otherwise None (PyTorch's SDPA). The result is the same function
computed in another order: both kernels accumulate in fp32 and round the output to bf16 once, so they differ by
the output rounding (relative 2^-8 per element) and the order of the fp32 sums.

The cross-attention (512 text tokens), the memory-lean forward's chunked attention and the distributed
attention of a token shard stay on SDPA.

:func:`flash4_attention` is a ``torch.library`` custom operator (registered when first asked for, not on import),
so ``torch.compile`` (``--compile``) treats it as one opaque call and keeps it inside the block's graph.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable

import torch
from torch import Tensor

FLASH4_MODULE = "flash_attn.cute.interface"  # where flash-attn-4 keeps flash_attn_func
FLASH4_ARCHS = (9, 10)  # compute capability majors with kernels in flash-attn-4 (Hopper, Blackwell)
FLASH4_DTYPES = (torch.bfloat16, torch.float16)
FLASH4_MAX_HEAD_DIM = 128  # supported on both archs (sm90 goes to 256, sm100 to 128)
FLASH4_DIST = "flash-attn-4"  # its distribution's name (what pip installs; also the --attention value)


def flash4_module():
    """flash-attn-4's interface module, or None when the package (or a library it needs) does not import.

    Its kernels are compiled at their first call in each process (the GPU test, one kernel, took 19 s on an H200:
    run); its on-disk cache of compiled kernels is off unless ``FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1``, so we
    turn it on (where the variable is unset) before the package reads it, and a second run reuses the kernels."""
    return _imported()[0]


def _imported():
    """(the interface module, None), or (None, the exception its import raised)."""
    os.environ.setdefault("FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED", "1")
    try:
        return importlib.import_module(FLASH4_MODULE), None
    except Exception as exc:  # ImportError, or an OSError / RuntimeError from its native libraries
        return None, exc


def import_failure_reason(exc: Exception) -> str:
    """One line for a failed import: "not installed" only where the missing module is flash-attn-4's own; a
    library it needs that does not import (cutlass-dsl's ``cutlass``, a CUDA library) is named, so an install that
    is there but broken is not mistaken for none (seen on the GPU machine: ``cutlass`` on a path no .pth reached)."""
    missing = getattr(exc, "name", None) if isinstance(exc, ImportError) else None
    if missing is not None and (FLASH4_MODULE == missing or FLASH4_MODULE.startswith(missing + ".")):
        return "flash-attn-4 is not installed"
    detail = str(exc).splitlines()[0] if str(exc) else ""
    return (f"flash-attn-4 is installed but does not import ({type(exc).__name__}: {detail}); reinstall it, or "
            "pass --attention sdpa")


def unusable_reason(device: torch.device, dtype: torch.dtype, head_dim: int) -> str | None:
    """Why flash-attn-4 cannot run this network's self-attention here (None: it can)."""
    if device.type != "cuda":
        return f"the network runs on {device.type}"
    if dtype not in FLASH4_DTYPES:
        return f"the network computes in {dtype}"
    if head_dim > FLASH4_MAX_HEAD_DIM or head_dim % 8:
        return f"head dimension {head_dim}"
    major = torch.cuda.get_device_capability(device)[0]
    if major not in FLASH4_ARCHS:
        return f"compute capability {major}.x (it has kernels for 9.x and 10.x)"
    module, exc = _imported()
    if module is None:
        return import_failure_reason(exc)
    return None


def self_attention_kernel(device: torch.device, dtype: torch.dtype, head_dim: int, choice: str = "auto"
                          ) -> Callable[[Tensor, Tensor, Tensor], Tensor] | None:
    """The self-attention kernel for ``choice`` (``--attention``): ``"auto"`` (flash-attn-4 where it can run, else
    None: SDPA), ``"sdpa"`` (None) or ``"flash-attn-4"`` (ValueError with the reason where it cannot run; the
    pipeline checks that before it loads anything). Raises ValueError for another name."""
    if choice == "sdpa":
        return None
    if choice not in ("auto", FLASH4_DIST):
        raise ValueError(f"unknown attention kernel {choice!r} (auto, sdpa or {FLASH4_DIST})")
    reason = unusable_reason(device, dtype, head_dim)
    if reason is not None:
        if choice == FLASH4_DIST:
            raise ValueError(f"flash-attn-4 cannot run here: {reason}")
        return None
    register()
    return flash4_attention


# The forward tile on Hopper: None leaves it to flash-attn-4 (128 x 128 at head dim 128); (M, N) asks for it through
# the package's ``_flash_attn_fwd`` (``benchmarks/bench_attention.py --flash4-tiles`` measures the choices).
SM90_TILE: tuple[int, int] | None = None


def _flash4_bshd(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """flash-attn-4 on (B, S, H, hd) tensors (last dim contiguous) -> (B, S, H, hd)."""
    module = flash4_module()
    if SM90_TILE is not None and torch.cuda.get_device_capability(q.device)[0] == 9:
        out = module._flash_attn_fwd(q, k, v, tile_mn=SM90_TILE)
    else:
        out = module.flash_attn_func(q, k, v)
    return out[0] if isinstance(out, tuple) else out


@functools.cache
def register() -> None:
    """Register the custom operator ``cosmos_predict1::flash4_attention`` (B, S, H, hd) x 3 -> (B, S, H, hd) once
    (outside any compiled region: :func:`self_attention_kernel` and eager calls do it)."""

    @torch.library.custom_op("cosmos_predict1::flash4_attention", mutates_args=())
    def op(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return _flash4_bshd(q.contiguous(), k.contiguous(), v.contiguous())

    @op.register_fake
    def _(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return torch.empty_like(q, memory_format=torch.contiguous_format)


def flash4_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(hd)) v on (B, H, S, hd) -> (B, H, S, hd), like ``network.attention``.

    The network hands over transposed views of (B, S, H, hd) tensors, which is the layout flash-attn-4 reads, so
    the transposes cost no copy; the (B, H, S, hd) result is a view of the kernel's (B, S, H, hd) output."""
    if not torch.compiler.is_compiling():
        register()
    return torch.ops.cosmos_predict1.flash4_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                      v.transpose(1, 2)).transpose(1, 2)
