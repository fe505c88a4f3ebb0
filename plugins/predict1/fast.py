"""Speed options of the network: block compilation (exact mode), step caching and FP8 matrix products (fast mode).

* :func:`compile_blocks`: each transformer block's ``forward`` through ``torch.compile`` (same operations, fused
  around the matrix products; outputs equal within float rounding).
* :class:`StepCache`: first-block caching across denoising steps. At every step the first block is computed and
  its residual (output - input) compared with the one of the last step where every block ran; while the relative
  L1 change stays under the threshold, the remaining blocks are skipped and their residual from that step is
  added instead. Each guidance branch has its own state (its own reference and cached residual); branches
  computed in one batch skip together, only when every one of them is under the threshold. The first
  :data:`CACHE_FIRST_STEPS` and the last :data:`CACHE_LAST_STEPS` steps always compute everything. Memory: two
  (S, D) tensors per branch (7B default job: 0.46 GB each in bf16, 1.8 GB for both branches), which the memory
  planner does not count yet.
* :class:`Fp8Linear` / :func:`to_fp8`: the blocks' linear layers with e4m3 weights (one fp32 scale per output
  channel, taken once) and e4m3 activations (one scale per token, taken at each call). ``scaled_mm`` runs
  ``torch._scaled_mm`` (FP8 tensor cores, compute capability 8.9+); ``simulate`` rounds the same way and
  multiplies the dequantized values in fp32, on any device (slower: for checking quality). The AdaLN modulation,
  the embedders, the final layer and the attention itself stay in the compute dtype (no FP8 attention). The
  e4m3 weights take half the bf16 memory; the memory planner still counts bf16 (a safe overestimate).
  In ``scaled_mm`` mode the activation quantization and the product run as one compiled function
  (:func:`fp8_linear_fused`: amax per row -> scale -> e4m3 cast in one fused kernel, then ``_scaled_mm``), so the
  activations go from bf16 to e4m3 with no fp32 copies; done in eager ops (:func:`fp8_linear_eager`) the
  quantization makes ~5 passes in fp32 and costs more than FP8 saves. Inside a compiled block (``--compile``) the
  same operations are traced into the block's graph, where they can fuse with the op before them. Outside
  ``--compile``, each AdaLN sub-block quantizes its modulated input once, in one compiled kernel with the
  modulation (:class:`Fp8Modulate`), and hands it to its linears as :class:`QuantizedRows`; in and out of
  ``--compile``, the MLP's GELU and the quantization of its output are one function (:class:`Fp8Gelu`), whose row
  amax is GELU of the row's maximum (:func:`gelu_quantized`: the same scale, GELU computed once per value).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from . import network as _network

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite e4m3fn value
CACHE_FIRST_STEPS = 3  # steps that always run every block, at the start
CACHE_LAST_STEPS = 2  # ... and at the end (the conditional-frame substitution is released there)
CACHE_FIRST_BLOCKS = 1  # blocks computed at every step; their residual decides


# ----------------------------------------------------------------------------------------------------------
# torch.compile of the blocks (exact mode)


# Inductor options of the compiled blocks: none (the defaults). Measured on an H200 (fp8-h200.md): rows of up to
# 8,192 columns kept in registers made the exact step slower. ``bench_fast.py --inductor-options`` tries others.
BLOCK_INDUCTOR_OPTIONS: dict[str, object] = {}


def compile_blocks(net: nn.Module) -> float:
    """Compile each transformer block's ``forward`` in place (weights and names unchanged); seconds spent
    wrapping (the compilation itself happens at the first call). Hooks on the blocks (streaming) still run."""
    t0 = time.perf_counter()
    options = dict(BLOCK_INDUCTOR_OPTIONS) or None
    for block in net.blocks.values():
        block.forward = torch.compile(block.forward, dynamic=False, fullgraph=False, options=options)
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------------------
# Step caching


# run_blocks(x, start, stop): x through blocks start..stop-1 (it may update x in place).
RunBlocks = Callable[[Tensor, int, int], Tensor]


@dataclass
class _BranchState:
    calls: int = 0  # forwards of this branch so far = the step index of the next one
    reference: Tensor | None = None  # (1, S, D) first-block residual at the last full step
    rest: Tensor | None = None  # (1, S, D) residual of the remaining blocks at the last full step
    full: int = 0
    skipped: int = 0
    changes: list[float] = field(default_factory=list)  # relative change seen at each cacheable step


def relative_l1(a: Tensor, b: Tensor) -> Tensor:
    """Per batch row: mean |a - b| / mean |b|, in fp32 -> (B,)."""
    a, b = a.float().flatten(1), b.float().flatten(1)
    return (a - b).abs().mean(1) / b.abs().mean(1).clamp_min(1e-12)


class StepCache:
    """First-block step caching for one generation (module doc). Create one per generation; get the network's
    ``cache`` argument for a forward with :meth:`for_branches`."""

    def __init__(self, threshold: float, num_steps: int, num_blocks: int, *, first_steps: int = CACHE_FIRST_STEPS,
                 last_steps: int = CACHE_LAST_STEPS, first_blocks: int = CACHE_FIRST_BLOCKS):
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}")
        if not 0 < first_blocks < num_blocks:
            raise ValueError(f"first_blocks must be in 1..{num_blocks - 1}, got {first_blocks}")
        self.threshold, self.num_steps, self.num_blocks = threshold, num_steps, num_blocks
        self.first_steps, self.last_steps, self.first_blocks = first_steps, last_steps, first_blocks
        self.states: dict[str, _BranchState] = {}

    def for_branches(self, *branches: str) -> Callable[[Tensor, RunBlocks], Tensor]:
        """The ``cache`` argument of a forward whose batch rows are ``branches`` (e.g. "cond", "uncond"), in order."""
        if len(set(branches)) != len(branches) or not branches:
            raise ValueError(f"branches must be distinct names, got {branches}")
        return lambda x, run_blocks: self._run(branches, x, run_blocks)

    def _cacheable(self, step: int) -> bool:
        return self.first_steps <= step < self.num_steps - self.last_steps

    def _run(self, branches: Sequence[str], x: Tensor, run_blocks: RunBlocks) -> Tensor:
        if x.shape[0] != len(branches):
            raise ValueError(f"a batch of {x.shape[0]} rows for branches {list(branches)}")
        states = [self.states.setdefault(b, _BranchState()) for b in branches]
        steps = {s.calls for s in states}  # this forward's step, as each branch counts it
        for s in states:
            s.calls += 1
        may_skip = (len(steps) == 1 and self._cacheable(min(steps))
                    and all(s.reference is not None for s in states))
        x_in = x.clone()  # run_blocks may update x in place
        h = run_blocks(x, 0, self.first_blocks)  # (B, S, D)
        residual = h - x_in
        del x_in
        if may_skip:
            change = relative_l1(residual, torch.cat([s.reference for s in states]))  # (B,)
            for s, c in zip(states, change.tolist(), strict=True):
                s.changes.append(c)
            if change.max().item() < self.threshold:
                for s in states:
                    s.skipped += 1
                return h + torch.cat([s.rest for s in states]).to(h.dtype)
        h_first = h.clone()
        out = run_blocks(h, self.first_blocks, self.num_blocks)
        rest = out - h_first
        for i, s in enumerate(states):
            s.reference, s.rest, s.full = residual[i:i + 1], rest[i:i + 1], s.full + 1
        return out

    def stats(self) -> dict[str, int]:
        """Forwards per outcome, summed over the branches, and the transformer blocks run."""
        full = sum(s.full for s in self.states.values())
        skipped = sum(s.skipped for s in self.states.values())
        return {"full_forwards": full, "cached_forwards": skipped,
                "blocks_run": full * self.num_blocks + skipped * self.first_blocks}


# ----------------------------------------------------------------------------------------------------------
# FP8 matrix products


def quantize_rows(t: Tensor) -> tuple[Tensor, Tensor]:
    """e4m3 values and one fp32 scale per row (last dim): ``t ~= q.float() * scale``.

    (..., K) -> q (..., K) float8_e4m3fn, scale (..., 1) fp32 with scale = amax(|row|) / 448 (rows of zeros
    get a tiny scale, so they stay zeros). Rounding is to nearest even, saturating at +-448.
    """
    tf = t.float()
    scale = tf.abs().amax(-1, keepdim=True).clamp_min(1e-12) / FP8_MAX
    q = (tf / scale).clamp_(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


def dequantize(q: Tensor, scale: Tensor) -> Tensor:
    return q.float() * scale


def fp8_matmul_reference(xq: Tensor, x_scale: Tensor, wq: Tensor, w_scale: Tensor, out_dtype: torch.dtype) -> Tensor:
    """What ``torch._scaled_mm`` with row-wise scales computes, in fp32: xq (M, K) with x_scale (M, 1), wq (N, K)
    with w_scale (1, N) -> (M, N) in ``out_dtype``."""
    acc = xq.float() @ wq.float().t()  # the exact products of e4m3 values, accumulated in fp32
    return (acc * x_scale * w_scale).to(out_dtype)


def fp8_matmul_scaled_mm(xq: Tensor, x_scale: Tensor, wq: Tensor, w_scale: Tensor, out_dtype: torch.dtype) -> Tensor:
    """The same on FP8 tensor cores (CUDA, compute capability 8.9+; K and N multiples of 16; ``wq.t()`` is the
    column-major operand the kernel wants)."""
    return torch._scaled_mm(xq, wq.t(), scale_a=x_scale, scale_b=w_scale, out_dtype=out_dtype)


def fp8_linear_eager(x: Tensor, qweight: Tensor, weight_scale: Tensor) -> Tensor:
    """x (M, K) in bf16 -> (M, N) in x's dtype: ``x`` quantized per row (:func:`quantize_rows`), times the e4m3
    weight (N, K) with its (1, N) scales on FP8 tensor cores. Each op runs on its own (the slow path, kept to
    measure against); :func:`fp8_linear_fused` is the same function compiled."""
    xq, x_scale = quantize_rows(x)
    return fp8_matmul_scaled_mm(xq, x_scale, qweight, weight_scale, x.dtype)


# Inductor options of the fused function: none. Inductor keeps a row in registers (a "persistent" reduction) only
# up to 1,024 columns, and the linears' K is 4,096 or 16,384, so it loops over each row (amax, then the cast).
# Measured on an H200 (benchmarks/results/fp8-kernels-7b-h200-variants.json): forcing the persistent kernel
# (triton.multi_kernel = 2) gains ~1% of the linears' time; multi_kernel = 1 (time both, keep the faster) gained
# ~6% in one run but fails in torch 2.11 when the compiled graph comes from inductor's on-disk cache (a second
# process: "TypeError: 'NoneType' object does not support the context manager protocol" in MultiKernelCall).
FP8_INDUCTOR_OPTIONS: dict[str, object] = {}


@functools.cache
def _fp8_linear_compiled() -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    # Made at the first call (no import-time compilation). K and N stay static; M is marked dynamic at the call,
    # so a model's linears take one graph per (K, N).
    return torch.compile(fp8_linear_eager, dynamic=False, fullgraph=True, options=FP8_INDUCTOR_OPTIONS)


def fp8_linear_fused(x: Tensor, qweight: Tensor, weight_scale: Tensor) -> Tensor:
    """:func:`fp8_linear_eager` through ``torch.compile``: the row amax, the scale and the e4m3 cast fuse into one
    kernel (x read in bf16, written once in e4m3), then ``torch._scaled_mm`` with row-wise scales. Called
    while a caller is itself being compiled (``--compile``), the plain function is traced into that graph."""
    if torch.compiler.is_compiling():
        return fp8_linear_eager(x, qweight, weight_scale)
    torch._dynamo.maybe_mark_dynamic(x, 0)
    return _fp8_linear_compiled()(x, qweight, weight_scale)


@dataclass(frozen=True)
class QuantizedRows:
    """An activation of shape ``shape`` (..., K) handed to :class:`Fp8Linear` already quantized: ``values`` (M, K)
    e4m3 and ``scale`` (M, 1) fp32 as :func:`quantize_rows` gives them for its rows (M: the leading dims'
    product); ``dtype``: the activation's, which the products are returned in."""

    values: Tensor
    scale: Tensor
    shape: torch.Size
    dtype: torch.dtype


def modulate_quantized(x: Tensor, shift: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
    """``network.modulate`` (AdaLN's layer norm, scale and shift) then :func:`quantize_rows` of its rows."""
    h = _network.modulate(x, shift, scale)
    return quantize_rows(h.reshape(-1, h.shape[-1]))


@functools.cache
def _modulate_quantized_compiled() -> Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]:
    return torch.compile(modulate_quantized, dynamic=False, fullgraph=True, options=FP8_INDUCTOR_OPTIONS)


@functools.cache
def _fp8_matmul_compiled() -> Callable[..., Tensor]:
    # The product of pre-quantized rows through inductor as in fp8_linear_fused: at the MLP's input projection the
    # eager _scaled_mm call measured 16.5 ms against 13.6 ms inside the compiled linear (fp8-h200.md), not
    # understood, so the product takes the same route.
    return torch.compile(fp8_matmul_scaled_mm, dynamic=False, fullgraph=True, options=FP8_INDUCTOR_OPTIONS)


def fp8_matmul_rows(x: QuantizedRows, qweight: Tensor, weight_scale: Tensor) -> Tensor:
    """``x`` (already quantized) times the e4m3 weight on FP8 tensor cores, compiled (M dynamic) -> (M, N)."""
    if torch.compiler.is_compiling():
        return fp8_matmul_scaled_mm(x.values, x.scale, qweight, weight_scale, x.dtype)
    torch._dynamo.maybe_mark_dynamic(x.values, 0)
    torch._dynamo.maybe_mark_dynamic(x.scale, 0)
    return _fp8_matmul_compiled()(x.values, x.scale, qweight, weight_scale, x.dtype)


class Fp8Modulate:
    """An AdaLN sub-block's ``modulate`` (``network.AdaLNSubBlock``) when its input goes only to :class:`Fp8Linear`
    layers: the modulated activation is quantized once, there, and handed over as :class:`QuantizedRows`.

    The self-attention's q, k and v then share one quantization (they quantized the same tensor three times), and
    in ``scaled_mm`` mode the layer norm, scale, shift, row amax and e4m3 cast run as one compiled kernel instead of
    four eager passes over the activation and one fused quantization per linear. In ``simulate`` mode the e4m3
    values are those each linear took before (the products are bit-identical); the compiled kernel keeps the
    modulated activation in fp32 up to the e4m3 cast instead of rounding it to bf16 first, as inductor does inside
    a compiled block, where this is the plain modulation (``--compile`` fuses it with each linear's quantization)."""

    def __init__(self, mode: str):
        self.mode = mode

    def __call__(self, x: Tensor, shift: Tensor, scale: Tensor) -> Tensor | QuantizedRows:
        if torch.compiler.is_compiling():
            return _network.modulate(x, shift, scale)
        if self.mode == "scaled_mm":
            for t, dim in ((x, 0), (x, 1), (shift, 0), (scale, 0)):  # batch and tokens vary; the width does not
                torch._dynamo.maybe_mark_dynamic(t, dim)
            values, row_scale = _modulate_quantized_compiled()(x, shift, scale)
        else:
            values, row_scale = modulate_quantized(x, shift, scale)
        return QuantizedRows(values, row_scale, x.shape, x.dtype)


# max |GELU(x)| over x < 0 is 0.169971 (at x = -0.7518): above this bound, the largest |GELU| of a row is GELU of
# the row's largest value, GELU being increasing for x >= 0.
GELU_NEGATIVE_BOUND = 0.17


def gelu_quantized(h: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`quantize_rows` of ``GELU(h)``'s rows (..., K) -> (M, K) e4m3, (M, 1) fp32, with each row's amax taken
    as ``max(GELU(max(row)), 0.17)`` instead of from the GELU'd values: the same number wherever the row's
    largest GELU is at least 0.17 (any row with a value above 0.28: all 537,600 MLP rows of 3 demo generations,
    the smallest row maximum 0.95), else a scale a little coarser than needed (still no overflow). The reduction then reads ``h`` without computing
    GELU, and GELU is computed once per value, at the cast (a fused row reduction over K = 16,384 loops over the
    row twice, so taking the amax of the GELU'd values computed the GELU twice)."""
    h2 = h.reshape(-1, h.shape[-1])
    amax = _network.gelu(h2.amax(-1, keepdim=True)).float().clamp_min(GELU_NEGATIVE_BOUND)
    scale = amax / FP8_MAX
    q = (_network.gelu(h2).float() / scale).clamp_(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


@functools.cache
def _gelu_quantized_compiled() -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    return torch.compile(gelu_quantized, dynamic=False, fullgraph=True, options=FP8_INDUCTOR_OPTIONS)


class Fp8Gelu:
    """The MLP's GELU (``network.FeedForward.activation``) when its output goes only to an :class:`Fp8Linear`:
    GELU and the row quantization as one function (:func:`gelu_quantized`), handed over as :class:`QuantizedRows`;
    compiled in ``scaled_mm`` mode (outside ``--compile``: one kernel instead of the eager GELU and a fused
    quantization; inside, the same operations traced into the block's graph)."""

    def __init__(self, mode: str, kernel: Callable[[Tensor], tuple[Tensor, Tensor]] | None = None):
        self.mode = mode
        self.kernel = kernel  # h -> (values, scales) in one call (fp8_kernels' operator), in and out of --compile

    def __call__(self, h: Tensor) -> QuantizedRows:
        if self.kernel is not None:
            values, row_scale = self.kernel(h)
        elif self.mode == "scaled_mm" and not torch.compiler.is_compiling():
            torch._dynamo.maybe_mark_dynamic(h, 0)
            torch._dynamo.maybe_mark_dynamic(h, 1)
            values, row_scale = _gelu_quantized_compiled()(h)
        else:
            values, row_scale = gelu_quantized(h)
        return QuantizedRows(values, row_scale, h.shape, h.dtype)


class Fp8Linear(nn.Module):
    """A bias-free linear layer, ``y = x W^T``, with W in e4m3 (per-output-channel scales, taken once here) and x
    quantized per token at each call. ``mode``: ``scaled_mm`` (FP8 tensor cores, the quantization fused into one
    compiled kernel: :func:`fp8_linear_fused`) or ``simulate`` (the same rounding, float products: for checking
    quality on any device)."""

    def __init__(self, weight: Tensor, mode: str = "simulate"):
        super().__init__()
        if mode not in ("scaled_mm", "simulate"):
            raise ValueError(f"mode must be scaled_mm or simulate, got {mode!r}")
        out_features, in_features = weight.shape
        if mode == "scaled_mm" and (in_features % 16 or out_features % 16):
            raise ValueError(f"FP8 matrix products need sizes divisible by 16, got {out_features}x{in_features}")
        self.mode, self.in_features, self.out_features = mode, in_features, out_features
        # x (M, K) -> (values, scales) for an input that is not QuantizedRows; None: quantize_rows, compiled with the
        # product (to_fp8 sets fp8_kernels' operator on the attention outputs' linears where asked)
        self.row_quantize: Callable[[Tensor], tuple[Tensor, Tensor]] | None = None
        q, scale = quantize_rows(weight.detach())
        self.register_buffer("qweight", q)  # (N, K) e4m3
        self.register_buffer("weight_scale", scale.reshape(1, out_features).contiguous())  # (1, N) fp32

    def forward(self, x: Tensor | QuantizedRows) -> Tensor:
        if isinstance(x, QuantizedRows):  # quantized by the op before (Fp8Modulate)
            if self.mode == "scaled_mm":
                y = fp8_matmul_rows(x, self.qweight, self.weight_scale)
            else:
                y = fp8_matmul_reference(x.values, x.scale, self.qweight, self.weight_scale, x.dtype)
            return y.reshape(*x.shape[:-1], self.out_features)
        lead, x2 = x.shape[:-1], x.reshape(-1, self.in_features)  # (M, K)
        if self.mode == "scaled_mm" and self.row_quantize is not None:
            values, row_scale = self.row_quantize(x2)
            y = fp8_matmul_rows(QuantizedRows(values, row_scale, x.shape, x.dtype), self.qweight, self.weight_scale)
        elif self.mode == "scaled_mm":
            y = fp8_linear_fused(x2, self.qweight, self.weight_scale)
        else:
            xq, x_scale = quantize_rows(x2)  # (M, K), (M, 1)
            y = fp8_matmul_reference(xq, x_scale, self.qweight, self.weight_scale, x.dtype)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, mode={self.mode}"


# The attention outputs' quantization and the MLP's GELU + quantization by the hand-written Triton kernels
# (fp8_kernels) in scaled_mm mode, instead of inductor's (and, outside --compile, the compiled functions): off until
# measured in the step (bench_fast.py --row-kernel; the kernels alone: bench_quant_kernels.py).
ROW_KERNELS = False


def to_fp8(net: nn.Module, mode: str) -> int:
    """Replace the linear layers of the transformer blocks (attention projections, MLP) by :class:`Fp8Linear`,
    in place; the AdaLN modulation, embedders and final layer keep their weights. Every AdaLN sub-block then
    hands its linears their input quantized (:class:`Fp8Modulate`), and every MLP its second linear the GELU's
    output (:class:`Fp8Gelu`). Returns the layers replaced."""
    replaced = 0
    kernels = ROW_KERNELS and mode == "scaled_mm"
    if kernels:
        from . import fp8_kernels

        fp8_kernels.register()  # here, outside any compiled region
    for block in net.blocks.values():
        keep = {id(m) for sub in block.modules() if hasattr(sub, "adaLN_modulation")
                for m in sub.adaLN_modulation.modules()}
        for parent in list(block.modules()):
            if id(parent) in keep:
                continue
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear) and child.bias is None:
                    setattr(parent, name, Fp8Linear(child.weight, mode))
                    replaced += 1
        for sub in block.modules():
            if isinstance(sub, _network.AdaLNSubBlock):
                sub.modulate = Fp8Modulate(mode)  # its block's input goes to linears only, all of them now FP8
            if isinstance(sub, _network.FeedForward) and isinstance(sub.layer2, Fp8Linear):
                sub.activation = Fp8Gelu(mode, fp8_kernels.gelu_quantize_rows_op if kernels else None)
            if kernels and isinstance(sub, _network.Attention) and isinstance(sub.to_out[0], Fp8Linear):
                sub.to_out[0].row_quantize = fp8_kernels.quantize_rows_op
    return replaced
