"""The compiled FP8 step's quantizing kernels, one at a time: inductor's against hand-written Triton kernels (GPU).

In the compiled FP8 step (``pipeline-step-7b-fp8-compile-h200.json``) inductor's kernels that quantize rows of 4,096
channels move their bytes at 0.7-0.9 TB/s, a fifth of an H200's bandwidth: the attention outputs' quantization
(1.61 ms per call, 2 per block) and the residual + layer norm + modulation + quantization before each sub-block
(1.75-1.95 ms, 3 per block). This times, at the default job's shapes (M = 2 x 56,320 rows, K = 4,096; ``--k 5120``
for 14B), the same functions

* ``quantize``: rows -> e4m3 values and a per-row fp32 scale (``fast.quantize_rows``), as after attention;
* ``gelu-quantize``: the MLP's GELU and its output's quantization (``fast.gelu_quantized``, 4 K channels);
* ``residual-ln-quantize``: x + gate * y (kept: the block's next input), then LN(.) * (1 + scale) + shift, then the
  row quantization, as inductor fuses them before a sub-block's FP8 linears,

compiled by inductor (what ``--compile`` runs) and as one hand-written Triton kernel each (a whole row in registers,
read once; ``ROWS`` rows per program, several warp counts; the first is the network's ``fp8_kernels``, used for the
attention outputs where ``fast.ROW_KERNELS`` is on, the second an experiment), and reports ms, TB/s (bytes read and written) and the
agreement with the eager function (scales bit for bit, e4m3 values equal or one step apart). It says whether
kernels of our own would pay before any is wired into the network.

    python benchmarks/bench_quant_kernels.py --out benchmarks/results/quant-kernels-7b-h200.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_network import timed  # noqa: E402  (CUDA-event median)

from cosmos_plugins.predict1 import fast as F  # noqa: E402
from cosmos_plugins.predict1 import fp8_kernels  # noqa: E402
from cosmos_plugins.predict1.network import modulate  # noqa: E402

TOKENS = 16 * 44 * 80
WARPS = (4, 8, 16)
ROWS = (1, 2)


def residual_ln_quantize(x, y, gate, shift, scale):
    """x + gate * y, and the rows of LN(x + gate * y) * (1 + scale) + shift quantized: (new x, e4m3, scales)."""
    x = x + gate * y
    q, s = F.quantize_rows(modulate(x, shift, scale).reshape(-1, x.shape[-1]))
    return x, q, s


def triton_residual_kernel():
    """The hand-written residual + layer norm + modulation + quantization kernel (an experiment, not in the network;
    Triton is imported here: the GPU machine's torch ships it). The row quantization is the network's own,
    ``fp8_kernels.quantize_rows_triton``."""
    import triton
    import triton.language as tl

    @triton.jit
    def residual_ln_quantize_kernel(x_ptr, y_ptr, gate_ptr, shift_ptr, scale_ptr, xo_ptr, q_ptr, s_ptr, M, S,
                                    K: tl.constexpr, BLOCK: tl.constexpr, ROWS: tl.constexpr):
        cols = tl.arange(0, BLOCK)
        inside = cols < K
        for r in range(ROWS):
            row = tl.program_id(0) * ROWS + r
            if row < M:
                b = row // S  # the batch row: gate, shift and scale are (B, 1, K)
                x = tl.load(x_ptr + row * K + cols, mask=inside, other=0.0).to(tl.float32)
                y = tl.load(y_ptr + row * K + cols, mask=inside, other=0.0).to(tl.float32)
                g = tl.load(gate_ptr + b * K + cols, mask=inside, other=0.0).to(tl.float32)
                xn = (x + g * y).to(tl.bfloat16)  # the block's next input, rounded as eager rounds it
                tl.store(xo_ptr + row * K + cols, xn, mask=inside)
                h = xn.to(tl.float32)
                mean = tl.sum(h, axis=0) / K
                d = tl.where(inside, h - mean, 0.0)
                rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=0) / K + 1e-6)
                sh = tl.load(shift_ptr + b * K + cols, mask=inside, other=0.0).to(tl.float32)
                sc = tl.load(scale_ptr + b * K + cols, mask=inside, other=0.0).to(tl.float32)
                m = tl.where(inside, d * rstd * (1.0 + sc) + sh, 0.0)
                s = tl.math.div_rn(tl.maximum(tl.max(tl.abs(m), axis=0), 1e-12), 448.0)
                v = tl.minimum(tl.maximum(tl.math.div_rn(m, s), -448.0), 448.0)
                tl.store(q_ptr + row * K + cols, v.to(tl.float8e4nv), mask=inside)
                tl.store(s_ptr + row, s)

    def residual(x, y, gate, shift, scale, rows: int, warps: int):
        B, S, K = x.shape
        M = B * S
        xo = torch.empty_like(x)
        q = torch.empty(M, K, device=x.device, dtype=F.FP8)
        s = torch.empty(M, 1, device=x.device, dtype=torch.float32)
        residual_ln_quantize_kernel[(triton.cdiv(M, rows),)](
            x, y, gate, shift, scale, xo, q, s, M, S, K=K, BLOCK=triton.next_power_of_2(K), ROWS=rows,
            num_warps=warps)
        return xo, q, s

    return residual


def agreement(q, s, exact, eager: tuple | None = None) -> dict:
    """How far the dequantized rows are from ``exact(rows)`` (those rows in float64), in e4m3 steps at the exact
    rows' own scale (round to nearest: at most 0.5, plus what fp32 and bf16 roundings of the input add), over a
    sample of rows; with ``eager`` (values, scales) of the same function: the fractions of scales and values equal."""
    rows = torch.arange(0, q.shape[0], max(1, q.shape[0] // 4096), device=q.device)
    ref = exact(rows)
    scale64 = ref.abs().amax(-1, keepdim=True).clamp_min(1e-12) / F.FP8_MAX
    step = torch.maximum((ref / scale64).abs() * 2.0**-3, torch.full_like(ref, 2.0**-9)) * scale64
    out = {"max_steps": ((F.dequantize(q[rows], s[rows]).double() - ref).abs() / step).max().item()}
    if eager is not None:
        out["scales_equal"] = (s == eager[1]).float().mean().item()
        out["values_equal"] = (q.float() == eager[0].float()).float().mean().item()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=TOKENS)
    ap.add_argument("--k", type=int, default=4096, help="channels (4,096: 7B; 5,120: 14B)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--device", default="cuda",
                    help="cuda; cpu only for a dry run in Triton's interpreter (TRITON_INTERPRET=1, tiny --tokens)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    g = torch.Generator(device).manual_seed(0)
    B, S, K = 2, args.tokens, args.k
    M = B * S
    bf = torch.bfloat16
    x = torch.randn(B, S, K, generator=g, device=device).to(bf)
    y = torch.randn(B, S, K, generator=g, device=device).to(bf)
    gate, shift, scale = ((torch.randn(B, 1, K, generator=g, device=device) * 0.3).to(bf) for _ in range(3))
    rows = x.reshape(M, K)
    residual = triton_residual_kernel()
    report = {"benchmark": "the compiled FP8 step's quantizing kernels: inductor vs hand-written Triton",
              "command": "python " + " ".join(sys.argv),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu (Triton's interpreter)",
              "torch": torch.__version__, "M": M, "K": K, "results": []}

    def record(kind: str, name: str, fn, moved: int, exact, eager, outputs) -> None:
        row = {"kernel": kind, "variant": name}
        try:
            row.update(agreement(*outputs(fn()), exact, eager))
            row["ms"] = timed(fn, 3, args.repeats) * 1e3
            row["tb_per_s"] = moved / (row["ms"] / 1e3) / 1e12
        except Exception as exc:  # noqa: BLE001 - a variant that cannot compile or run is a result too
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        report["results"].append(row)
        print(json.dumps(row), flush=True)

    # the attention output's quantization: read M K bf16, write M K e4m3 and M scales
    eager = F.quantize_rows(rows)
    moved = M * K * 3 + M * 4
    compiled = torch.compile(F.quantize_rows, dynamic=False, fullgraph=True)
    exact = lambda i: rows[i].double()  # noqa: E731
    record("quantize", "inductor", lambda: compiled(rows), moved, exact, eager, lambda o: o)
    for r in ROWS:
        for w in WARPS:
            record("quantize", f"triton rows={r} warps={w}",
                   lambda r=r, w=w: fp8_kernels.quantize_rows_triton(rows, r, w), moved, exact, eager, lambda o: o)
    # the MLP's GELU + quantization (fast.gelu_quantized): read M x 16,384 bf16, write e4m3 and scales
    hidden = torch.randn(B, S, 4 * K, generator=g, device=device).to(bf)
    eager = F.gelu_quantized(hidden)
    moved = M * 4 * K * 3 + M * 4
    flat = hidden.reshape(M, 4 * K)
    exact = lambda i: torch.nn.functional.gelu(flat[i].double())  # noqa: E731
    compiled = torch.compile(F.gelu_quantized, dynamic=False, fullgraph=True)
    record("gelu-quantize", "inductor", lambda: compiled(hidden), moved, exact, eager, lambda o: o)
    for w in (8, 16, 32):
        record("gelu-quantize", f"triton rows=1 warps={w}",
               lambda w=w: fp8_kernels.gelu_quantize_rows_triton(hidden, 1, w), moved, exact, eager, lambda o: o)
    # residual + layer norm + modulation + quantization: read x, y (bf16), write x (bf16), e4m3 and scales; the
    # exact rows: the modulation in float64 of the new x as eager rounds it (bf16)
    x_new = x + gate * y
    mod = modulate(x_new.double(), shift.double(), scale.double()).reshape(M, K)
    exact = lambda i: mod[i]  # noqa: E731
    moved = M * K * (2 + 2 + 2 + 1) + M * 4
    compiled = torch.compile(residual_ln_quantize, dynamic=False, fullgraph=True)
    record("residual-ln-quantize", "inductor", lambda: compiled(x, y, gate, shift, scale), moved, exact, None,
           lambda o: o[1:])
    for r in ROWS:
        for w in WARPS:
            record("residual-ln-quantize", f"triton rows={r} warps={w}",
                   lambda r=r, w=w: residual(x, y, gate, shift, scale, r, w), moved, exact, None, lambda o: o[1:])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nM = {M}, K = {K}; max steps: the largest error in e4m3 steps against the rows in float64; "
          "equal: against the eager function")
    print(f"{'kernel':22} {'variant':24} {'ms':>7} {'TB/s':>6} {'max steps':>9} {'scales eq':>9} {'values eq':>9}")
    for r in report["results"]:
        if "error" in r:
            print(f"{r['kernel']:22} {r['variant']:24} {r['error'][:70]}")
        else:
            eq = (f"{r['scales_equal']:9.4f} {r['values_equal']:9.4f}" if "scales_equal" in r else f"{'-':>9} {'-':>9}")
            print(f"{r['kernel']:22} {r['variant']:24} {r['ms']:7.3f} {r['tb_per_s']:6.2f} {r['max_steps']:9.3f} {eq}")


if __name__ == "__main__":
    main()
