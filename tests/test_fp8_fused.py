"""The fused FP8 linear (``--fast fp8``: row-wise activation quantization compiled into one kernel, then
``torch._scaled_mm``) computes what the FP8 simulation (``--fast fp8-sim``) computes, within the rounding the two
can differ by.

The bounds, derived (not fitted):

* e4m3fn has 3 mantissa bits: a normal value v in [2^e, 2^(e+1)) (e >= -6) has neighbours 2^(e-3) apart, so one
  e4m3 step is at most 2^-3 |v|; below 2^-6 (subnormals) the step is 2^-9. Activations are quantized as
  q = x / scale, so one step in x's units is max(2^-3 |q|, 2^-9) * scale. Two implementations of the same
  rounding can disagree only where x / scale lies on (or, with a different fp32 division, within an ulp of) a
  rounding boundary, and then by one step.
* The products: both sides multiply exact e4m3 values (4-bit significands: every product of two is exact in fp32)
  and accumulate K of them in fp32 in some order; two orders differ by at most 2 K 2^-24 sum_k |q_k w_k| (the
  standard bound gamma_K ~ K u per side, u = 2^-24), and the two scales applied in another order add a few u. The output is rounded to bf16 (8 significand bits): values
  straddling a rounding boundary can land one bf16 ulp apart, at most 2^-7 |y| (ulp <= 2^-7 |y|).
* On Hopper's FP8 tensor cores the accumulation is not fp32: the products are added in a format with 13 fraction
  bits, truncated (bit-accurate models of the H100's multipliers: Khattak and Mikaitis, "Accurate Models of NVIDIA
  Tensor Cores", arXiv 2512.07004; the DeepSeek-V3 report, arXiv 2412.19437, section 3.3.2, measured "around 14
  bits"). Each term aligned to the group's largest exponent, and each truncated partial sum, then errs by less
  than 2^-13 of sum_k |q_k w_k|, so the count of such steps times 2^-13 replaces K 2^-24: the GPU tests bound it
  with products of few nonzero terms (sparse weights), where that count is small.
"""

from __future__ import annotations

import pytest
import torch

from cosmos_plugins.predict1 import fast as F

BF16_ULP = 2.0**-7  # bf16 ulp relative to the value, at most (8 significand bits; ulp(y) <= 2^-7 |y|)
FP32_U = 2.0**-24  # fp32 unit roundoff
HOPPER_FP8_ACC_U = 2.0**-13  # FP8 tensor-core accumulation on sm90: 13 fraction bits, truncated (module doc)


def _inputs(m: int, k: int, n: int, device: str = "cpu", seed: int = 0):
    """Random activations with rows of very different magnitudes (1e-3..1e2) and a few outliers, and weights."""
    g = torch.Generator(device).manual_seed(seed)
    x = torch.randn(m, k, generator=g, device=device) * torch.logspace(-3, 2, m, device=device)[:, None]
    x[:, 3] *= 30  # an outlier channel: most values of each row fall far below the row's amax (subnormals too)
    w = torch.randn(n, k, generator=g, device=device) / k**0.5
    return x.to(torch.bfloat16), w.to(torch.bfloat16)


def _one_step(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """One e4m3 step at each quantized value, in the units of the unquantized tensor (module doc)."""
    return torch.maximum(q.float().abs() * 2.0**-3, torch.full_like(scale, 2.0**-9)) * scale


def _product_bound(xq, xs, wq, ws, y_ref, x_step=None, acc_u=FP32_U, terms=None):
    """Largest |y_a - y_b| two implementations may show (module doc): the accumulation (``terms`` products of
    nonzero weights per output, default K, each step within ``acc_u`` of sum_k |x_k w_k|), bf16 output rounding,
    and, where given, one e4m3 step of each activation (``x_step``, in x's units)."""
    wd = F.dequantize(wq, ws.t())  # (N, K)
    abs_terms = F.dequantize(xq, xs).abs() @ wd.abs().t()  # sum_k |x_k w_k|, (M, N)
    k = xq.shape[-1] if terms is None else terms
    bound = (2 * k + 4) * acc_u * abs_terms + BF16_ULP * y_ref.float().abs()
    if x_step is not None:
        bound = bound + x_step @ wd.abs().t()
    return bound * (1 + 1e-3) + 1e-30  # the bound's own fp32 evaluation


def _scaled_mm_on(device: str) -> bool:
    try:
        q = torch.ones(16, 16, device=device).to(F.FP8)
        s = torch.ones(16, 1, device=device)
        torch._scaled_mm(q, q.t(), scale_a=s, scale_b=s.t().contiguous(), out_dtype=torch.bfloat16)
    except (RuntimeError, NotImplementedError):
        return False
    return True


def test_fused_path_equals_the_simulation():
    """The fused path's function (quantize per row, then ``_scaled_mm``, here run op by op on the CPU) against
    ``Fp8Linear(..., "simulate")``: the same e4m3 activations and scales, outputs within the product bound."""
    if not _scaled_mm_on("cpu"):
        pytest.skip("this torch has no CPU torch._scaled_mm")
    x, w = _inputs(37, 96, 48)
    sim = F.Fp8Linear(w, "simulate")
    y_sim = sim(x)
    y = F.fp8_linear_eager(x, sim.qweight, sim.weight_scale)
    assert y.shape == y_sim.shape and y.dtype == torch.bfloat16
    xq, xs = F.quantize_rows(x)
    bound = _product_bound(xq, xs, sim.qweight, sim.weight_scale, y_sim)
    assert ((y.float() - y_sim.float()).abs() <= bound).all()
    # and it is an FP8 product, not the float one: the float product differs by far more than that bound
    y_float = x.float() @ w.float().t()
    assert ((y_float - y_sim.float()).abs() > bound).any()


def test_quantization_round_trip_within_half_a_step():
    """What the fused kernel must compute per row: scale = amax / 448 and round-to-nearest e4m3 of x / scale,
    so x is recovered within half a step and the row's largest value maps to 448 exactly."""
    x, _ = _inputs(37, 96, 16, seed=1)
    q, s = F.quantize_rows(x)
    assert q.dtype == F.FP8 and s.shape == (37, 1) and s.dtype == torch.float32
    back = F.dequantize(q, s)
    assert ((back - x.float()).abs() <= _one_step(q, s) / 2 * (1 + 1e-6)).all()
    assert torch.equal(q.float().abs().amax(-1), torch.full((37,), 448.0))
    assert (q.float().abs() < 2.0**-6).any()  # the subnormal range is exercised


def _gelu_rows(device: str = "cpu", seed: int = 5) -> torch.Tensor:
    """MLP hidden rows (B, S, K) in bf16 of very different magnitudes, and rows whose largest GELU is under 0.17:
    all large negatives (|h| up to 6 but GELU ~0: an amax of |h| would be 10^4 times too coarse), all small."""
    g = torch.Generator(device).manual_seed(seed)
    h = torch.randn(2, 40, 256, generator=g, device=device) * torch.logspace(-1, 1.5, 40, device=device)[:, None]
    h[0, 3] = -h[0, 3].abs() - 3  # GELU in (-0.004, 0)
    h[1, 7] = h[1, 7].clamp(-1.0, 0.2)  # largest GELU 0.116 (at 0.2) or |GELU(-0.75)| = 0.16997: under the bound
    h[1, 8] = -0.7518  # every value at the negative extreme of GELU
    return h.to(torch.bfloat16)


def test_gelu_quantization_takes_the_amax_from_the_row_maximum():
    """``gelu_quantized`` (the MLP's down projection input, ``Fp8Gelu``) against quantizing GELU's output: the same
    scales and e4m3 values, bit for bit, in every row whose largest |GELU| is at least 0.17; in the others the
    scale is 0.17 / 448 (not below the row's own: no overflow) and each value is that scale's nearest e4m3."""
    h = _gelu_rows()
    q, s = F.gelu_quantized(h)
    assert q.shape == (80, 256) and q.dtype == F.FP8 and s.shape == (80, 1)
    g = torch.nn.functional.gelu(h).reshape(80, 256)
    q0, s0 = F.quantize_rows(g)
    big = (g.float().abs().amax(-1) >= F.GELU_NEGATIVE_BOUND)
    assert 0 < (~big).sum() < 10  # both kinds of row are exercised
    assert torch.equal(s[big], s0[big]) and torch.equal(q[big].float(), q0[big].float())
    assert torch.equal(s[~big], torch.full_like(s[~big], F.GELU_NEGATIVE_BOUND / F.FP8_MAX))
    assert (s[~big] >= s0[~big]).all()
    assert torch.equal(q[~big].float(), (g[~big].float() / s[~big]).to(F.FP8).float())


@pytest.mark.slow
def test_compiled_quantization_equals_the_eager_one():
    """``torch.compile`` of the quantization (the fused kernel's code, here generated for the CPU): same scales,
    e4m3 values equal or one step apart (a boundary case of a different fp32 division), and few of those.
    ~25 s of compilation on a small CPU, hence slow."""
    x, _ = _inputs(37, 96, 16, seed=2)
    q0, s0 = F.quantize_rows(x)
    q, s = torch.compile(F.quantize_rows, dynamic=False, fullgraph=True)(x)
    assert torch.equal(s, s0)
    diff = (F.dequantize(q, s) - F.dequantize(q0, s0)).abs()
    assert (diff <= _one_step(q0, s0) * (1 + 1e-6)).all()
    assert (diff > 0).float().mean().item() < 0.01


@pytest.mark.gpu
def test_fused_scaled_mm_matches_the_simulation_on_the_gpu():
    """The real path on FP8 tensor cores (compiled quantization + ``_scaled_mm``), eager and traced inside a
    compiled caller (``--compile``), against the simulation: within the product bound plus one e4m3 step per
    activation (the compiled division may round a boundary case the other way)."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("needs a GPU with FP8 tensor cores")
    x, w = _inputs(300, 512, 384, device="cuda", seed=3)
    real, sim = F.Fp8Linear(w, "scaled_mm"), F.Fp8Linear(w, "simulate")
    y_sim = sim(x)
    xq, xs = F.quantize_rows(x)
    bound = _product_bound(xq, xs, sim.qweight, sim.weight_scale, y_sim, x_step=_one_step(xq, xs),
                           acc_u=HOPPER_FP8_ACC_U)
    for y in (real(x), torch.compile(lambda t: real(t) * 1.0, fullgraph=True)(x)):
        assert y.dtype == torch.bfloat16 and y.shape == y_sim.shape
        assert ((y.float() - y_sim.float()).abs() <= bound).all()
        assert ((y.float() - y_sim.float()).norm() / y_sim.float().norm()).item() < 2 * BF16_ULP
    ref = x.float() @ w.float().t()
    assert ((real(x).float() - ref).norm() / ref.norm()).item() < 0.06  # e4m3 of both operands: ~2.5% each


@pytest.mark.gpu
def test_compiled_gelu_quantization_within_one_step_on_the_gpu():
    """``Fp8Gelu``'s compiled kernel (row max, GELU, scale and e4m3 cast in one) against GELU in float64 of the same
    bf16 values: each row's scale within a bf16 rounding of amax / 448 (inductor may keep GELU's value in fp32
    where eager rounds it to bf16; never below it by more than that rounding) for rows over the bound, exactly
    0.17 / 448 under it, and each dequantized value within one e4m3 step of GELU (half a step of rounding; fp32
    evaluation can cross a rounding boundary) plus GELU's fp32 error (a few u of the row's amax)."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("needs a GPU with FP8 tensor cores")
    h = _gelu_rows("cuda")
    rows = F.Fp8Gelu("scaled_mm")(h)
    assert isinstance(rows, F.QuantizedRows) and rows.values.shape == (80, 256) and rows.shape == h.shape
    g64 = torch.nn.functional.gelu(h.double()).reshape(80, 256)
    amax = g64.abs().amax(-1, keepdim=True)
    big = amax >= F.GELU_NEGATIVE_BOUND
    expect = torch.where(big, amax, torch.full_like(amax, F.GELU_NEGATIVE_BOUND)) / F.FP8_MAX
    assert ((rows.scale.double() - expect).abs() <= BF16_ULP * expect).all()
    back = F.dequantize(rows.values, rows.scale).double()
    slack = 16 * FP32_U * amax
    assert ((back - g64).abs() <= _one_step(rows.values, rows.scale).double() + slack).all()


@pytest.mark.gpu
def test_compiled_modulation_quantizes_and_multiplies_within_the_bounds_on_the_gpu():
    """``Fp8Modulate``'s compiled kernel (layer norm, scale, shift, row amax and e4m3 cast in one) and the product of
    the ``QuantizedRows`` it hands over, on FP8 tensor cores.

    The kernel keeps the modulated activation h in fp32 up to the cast (no bf16 rounding in between, as inside
    ``--compile``'s block graph). Against h computed in float64 from the same bf16 inputs, each dequantized value is
    within one e4m3 step (half a step of rounding, and the fp32 evaluation can move a value across a rounding
    boundary) plus h's own fp32 error: the layer norm's mean and variance are sums of K terms, at most about
    2 K 2^-24 relative (the standard gamma_K bound, once for each) of |h|, and a few more u for the scale and shift.
    The product of those e4m3 values is then within the product bound of the same values multiplied in fp32, with
    the tensor cores' accumulation (module doc): each output sums the products of 4 nonzero weights, so it takes
    at most 2 x 4 truncations of 2^-13 (and a few fp32 roundings for the scales), and a wrong scale, row or
    transposition shows as an error of the size of the output."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("needs a GPU with FP8 tensor cores")
    from cosmos_plugins.predict1.network import modulate

    g = torch.Generator("cuda").manual_seed(4)
    k, n = 512, 384
    x = (torch.randn(2, 300, k, generator=g, device="cuda") * 3 + 1).to(torch.bfloat16)
    shift, scale = (torch.randn(2, 1, k, generator=g, device="cuda").to(torch.bfloat16) for _ in range(2))
    rows = F.Fp8Modulate("scaled_mm")(x, shift, scale)
    assert isinstance(rows, F.QuantizedRows) and rows.values.dtype == F.FP8 and rows.values.shape == (600, k)
    h64 = modulate(x.double(), shift.double(), scale.double()).reshape(-1, k)
    slack = (2 * k + 8) * FP32_U * h64.abs().amax(-1, keepdim=True)
    back = F.dequantize(rows.values, rows.scale).double()
    assert ((back - h64).abs() <= _one_step(rows.values, rows.scale).double() + slack).all()
    nonzero = 4  # per output channel, at distinct columns (131 j mod 512, j < 4, are distinct)
    cols = (torch.arange(n, device="cuda")[:, None] * 37 + torch.arange(nonzero, device="cuda") * 131) % k
    w = torch.zeros(n, k, device="cuda").scatter_(1, cols, torch.randn(n, nonzero, generator=g, device="cuda"))
    lin = F.Fp8Linear(w.to(torch.bfloat16), "scaled_mm")
    y = lin(rows)
    assert y.shape == (2, 300, n) and y.dtype == torch.bfloat16
    y_ref = F.fp8_matmul_reference(rows.values, rows.scale, lin.qweight, lin.weight_scale, torch.bfloat16)
    bound = _product_bound(rows.values, rows.scale, lin.qweight, lin.weight_scale, y_ref, acc_u=HOPPER_FP8_ACC_U,
                           terms=nonzero)
    assert ((y.reshape(-1, n).float() - y_ref.float()).abs() <= bound).all()


@pytest.mark.gpu
def test_triton_row_quantization_equals_quantize_rows_on_the_gpu():
    """``fp8_kernels.quantize_rows_triton`` (the attention outputs' quantization, one Triton kernel) computes
    ``quantize_rows``'s operations in the same order (the row amax, the same fp32 scale, an IEEE division, round to
    nearest even): the same scales bit for bit and the same e4m3 values, for a power-of-two width and one that is
    not (14B: 5,120, a masked row), one and two rows a program, and rows of very different magnitudes."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("needs a GPU with FP8 tensor cores")
    from cosmos_plugins.predict1 import fp8_kernels

    for k, rows in ((4096, 1), (5120, 1), (5120, 2)):
        x, _ = _inputs(301, k, 16, device="cuda", seed=k)
        q0, s0 = F.quantize_rows(x)
        q, s = fp8_kernels.quantize_rows_triton(x, rows=rows)
        assert q.dtype == F.FP8 and q.shape == (301, k) and s.shape == (301, 1)
        assert torch.equal(s, s0), (k, rows)
        assert torch.equal(q.float(), q0.float()), (k, rows, (q.float() != q0.float()).sum().item())


@pytest.mark.gpu
def test_triton_gelu_quantization_equals_gelu_quantized_on_the_gpu():
    """``fp8_kernels.gelu_quantize_rows_triton`` (the MLP's GELU + quantization, one Triton kernel) against the eager
    ``gelu_quantized`` on the same GPU: GELU is PyTorch's formula (x * 0.5 * (1 + erf(x / sqrt 2)) in fp32, rounded
    to bf16), so scales and values are expected equal; the bound allowed is one bf16 rounding of a row's GELU
    maximum (2^-8 relative) in the scale and one e4m3 step in a value (an erf evaluated one fp32 ulp apart can move
    a value across a rounding boundary), with rows under and over the 0.17 bound, 16,384 wide (the MLP's) and not
    a power of two."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("needs a GPU with FP8 tensor cores")
    from cosmos_plugins.predict1 import fp8_kernels

    for k in (256, 16384, 5000):
        g = torch.Generator("cuda").manual_seed(k)
        h = (torch.randn(2, 40, k, generator=g, device="cuda") *
             torch.logspace(-1, 1.5, 40, device="cuda")[:, None]).to(torch.bfloat16)
        h[0, 3] = -h[0, 3].abs() - 3  # a row under the bound
        q0, s0 = F.gelu_quantized(h)
        q, s = fp8_kernels.gelu_quantize_rows_triton(h)
        assert q.shape == q0.shape and s.shape == s0.shape
        assert ((s - s0).abs() <= BF16_ULP / 2 * s0).all(), k
        # the bound's scale as the float32 scales hold it (0.17 / 448 itself is a float64: no float32 equals it)
        assert s[3].item() == s0[3].item() == torch.tensor(F.GELU_NEGATIVE_BOUND / F.FP8_MAX, dtype=s0.dtype).item()
        step = _one_step(q0, s0)
        assert ((F.dequantize(q, s) - F.dequantize(q0, s0)).abs() <= step * (1 + 2**-4)).all(), k
        assert (q.float() == q0.float()).float().mean().item() > 0.999, k
