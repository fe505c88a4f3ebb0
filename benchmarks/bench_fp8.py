"""FP8 linears at the default job's shapes, kernel level: bf16 against FP8 with the activation quantization in
eager ops and FP8 with it fused by ``torch.compile`` (what ``--fast fp8`` runs), per linear and summed over a step.

The 7B (or 14B) network's linears (``plugins/predict1/specs.py``), both guidance branches batched at the default
job (121x704x1280 -> 56,320 tokens, x 2 branches = M 112,640 rows; the text has 512 tokens a branch):

    self-attention q, k, v, out; cross-attention q, out   (M, D) x (D, D)      6 a block
    cross-attention k, v (the text)                       (2x512, C) x (C, D)  2 a block
    MLP in                                                (M, D) x (D, 4D)     1 a block
    MLP out                                               (M, 4D) x (4D, D)    1 a block

Variants: ``bf16`` (``F.linear``), ``fp8-eager`` (:func:`fast.fp8_linear_eager`), ``fp8-fused``
(:func:`fast.fp8_linear_fused`), and ``scaled_mm`` alone on pre-quantized activations (the floor the fused path
approaches). Times are medians of CUDA-event timings after a warm-up; each linear's output is checked against
the FP8 simulation (``Fp8Linear(..., "simulate")``, fp32 products) on its first 2,048 rows.

    python benchmarks/bench_fp8.py --out benchmarks/results/fp8-kernels-h200.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as TF

REPO = Path(__file__).resolve().parents[1]

from cosmos_plugins.predict1 import fast as F  # noqa: E402
from cosmos_plugins.predict1.specs import PREDICT1_7B, PREDICT1_14B  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_network import timed  # noqa: E402

TOKENS = 16 * (88 // 2) * (160 // 2)  # latent 16x88x160, patch 2x2 -> 56,320
TEXT_TOKENS = 512
BRANCHES = 2
CHECK_ROWS = 2048


def linears(p) -> list[tuple[str, int, int, int, int]]:
    """(name, M, K, N, count per block) of one block's linears."""
    d, c, hidden = p.model_channels, p.crossattn_emb_channels, int(p.model_channels * p.mlp_ratio)
    m, mt = BRANCHES * TOKENS, BRANCHES * TEXT_TOKENS
    return [("attn q/k/v/out (6)", m, d, d, 6), ("cross k/v, text (2)", mt, c, d, 2),
            ("mlp in", m, d, hidden, 1), ("mlp out", m, hidden, d, 1)]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


# The fused function compiled with other inductor options, each through its own code object (dynamo caches
# compiled code per code object): multi_kernel (persistent and looped kernels both compiled, the faster kept at
# the first call; fails in torch 2.11 on an inductor cache hit, see fast.FP8_INDUCTOR_OPTIONS), and the persistent
# row reduction forced.
def _multikernel(x, qw, ws):
    return F.fp8_linear_eager(x, qw, ws)


def _persistent(x, qw, ws):
    return F.fp8_linear_eager(x, qw, ws)


_VARIANT_FNS = {"fp8-fused-multikernel": (_multikernel, {"triton.multi_kernel": 1}), "fp8-fused-persistent": (_persistent, {"triton.multi_kernel": 2})}
_COMPILED: dict = {}


def fused_variant(name: str, x, qw, ws):
    if name not in _COMPILED:
        fn, options = _VARIANT_FNS[name]
        _COMPILED[name] = torch.compile(fn, dynamic=False, fullgraph=True, options=options)
    torch._dynamo.maybe_mark_dynamic(x, 0)
    return _COMPILED[name](x, qw, ws)


def bench_shape(m: int, k: int, n: int, warmup: int, repeats: int, seed: int, device: str = "cuda") -> dict:
    g = torch.Generator(device).manual_seed(seed)
    x = torch.randn(m, k, generator=g, device=device, dtype=torch.bfloat16)  # random data, never zeros
    w = (torch.randn(n, k, generator=g, device=device) / k**0.5).to(torch.bfloat16)
    lin = F.Fp8Linear(w, "scaled_mm")
    qw, ws = lin.qweight, lin.weight_scale
    xq, xs = F.quantize_rows(x)
    variants = {
        "bf16": lambda: TF.linear(x, w),
        "fp8-eager": lambda: F.fp8_linear_eager(x, qw, ws),
        "fp8-fused": lambda: F.fp8_linear_fused(x, qw, ws),
        "scaled_mm": lambda: F.fp8_matmul_scaled_mm(xq, xs, qw, ws, torch.bfloat16),
    }
    if device == "cuda":  # the alternatives to fast.FP8_INDUCTOR_OPTIONS (Triton only)
        for name in _VARIANT_FNS:
            variants[name] = (lambda v: lambda: fused_variant(v, x, qw, ws))(name)
    flop = 2.0 * m * k * n
    row: dict = {"M": m, "K": k, "N": n, "gflop": round(flop / 1e9, 1)}
    t0 = time.perf_counter()
    F.fp8_linear_fused(x, qw, ws)  # compile outside the timings
    if device == "cuda":
        for name in _VARIANT_FNS:
            fused_variant(name, x, qw, ws)
    if device == "cuda":
        torch.cuda.synchronize()
    row["fused_first_call_s"] = round(time.perf_counter() - t0, 2)
    for name, fn in variants.items():
        s = timed(fn, warmup, repeats)
        row[f"{name}_ms"] = round(s * 1e3, 4)
        row[f"{name}_tflops"] = round(flop / s / 1e12, 1)
    for name in list(variants)[1:]:
        row[f"{name}_vs_bf16"] = round(row[f"{name}_ms"] / row["bf16_ms"], 3)
    # correctness on the first rows: the fused path against the simulation, and FP8 against bf16
    xs_ = x[:CHECK_ROWS]
    sim = F.Fp8Linear(w, "simulate")(xs_)
    fused = F.fp8_linear_fused(xs_, qw, ws)
    row["fused_vs_sim_rel_err"] = rel(fused, sim)
    row["eager_vs_sim_rel_err"] = rel(F.fp8_linear_eager(xs_, qw, ws), sim)
    row["fused_vs_bf16_rel_err"] = rel(fused, TF.linear(xs_, w))
    for name in _VARIANT_FNS if device == "cuda" else ():
        row[f"{name}_vs_sim_rel_err"] = rel(fused_variant(name, xs_, qw, ws), sim)
    q_f, _ = torch.compile(F.quantize_rows, dynamic=False)(xs_)
    row["fused_quant_mismatch_frac"] = (q_f.float() != F.quantize_rows(xs_)[0].float()).float().mean().item()
    variants.clear()  # the timed closures hold this shape's tensors; they go when the function returns
    return row


def adaln(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    return TF.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale) + shift  # AdaLNSubBlock's pre-op


def adaln_quant(x, scale, shift):
    return F.quantize_rows(adaln(x, scale, shift).reshape(-1, x.shape[-1]))


def gelu_quant(h):
    return F.quantize_rows(TF.gelu(h))


def adaln_quant_persistent(x, scale, shift):  # its own code object, compiled with the persistent reduction
    return F.quantize_rows(adaln(x, scale, shift).reshape(-1, x.shape[-1]))


def bench_preops(p, warmup: int, repeats: int) -> dict:
    """What fusing the quantization into the op before it would save, per occurrence: the AdaLN pre-op (layer norm,
    modulation) before q/k/v (self-attention: 3 linears read the same input), cross q and MLP in; the GELU before
    MLP out."""
    d, hidden = p.model_channels, int(p.model_channels * p.mlp_ratio)
    g = torch.Generator("cuda").manual_seed(7)
    x = torch.randn(BRANCHES, TOKENS, d, generator=g, device="cuda", dtype=torch.bfloat16)
    scale, shift = (torch.randn(BRANCHES, 1, d, generator=g, device="cuda", dtype=torch.bfloat16) * 0.1
                    for _ in range(2))
    h = torch.randn(BRANCHES * TOKENS, hidden, generator=g, device="cuda", dtype=torch.bfloat16)
    quant = torch.compile(F.quantize_rows, dynamic=False)
    adaln_quant_c, gelu_quant_c = torch.compile(adaln_quant, dynamic=False), torch.compile(gelu_quant, dynamic=False)
    adaln_quant_p = torch.compile(adaln_quant_persistent, dynamic=False, options={"triton.multi_kernel": 2})
    x2 = x.reshape(-1, d)
    row = {
        "adaln_eager_ms": timed(lambda: adaln(x, scale, shift), warmup, repeats) * 1e3,
        "quant_fused_D_ms": timed(lambda: quant(x2), warmup, repeats) * 1e3,
        "adaln_quant_fused_ms": timed(lambda: adaln_quant_c(x, scale, shift), warmup, repeats) * 1e3,
        "adaln_quant_fused_persistent_ms": timed(lambda: adaln_quant_p(x, scale, shift), warmup, repeats) * 1e3,
        "gelu_eager_ms": timed(lambda: TF.gelu(h), warmup, repeats) * 1e3,
        "quant_fused_4D_ms": timed(lambda: quant(h), warmup, repeats) * 1e3,
        "gelu_quant_fused_ms": timed(lambda: gelu_quant_c(h), warmup, repeats) * 1e3,
    }
    # per block today: 3 AdaLN pre-ops, q/k/v/cross-q/mlp-in quantized 5 times from them, the GELU, MLP out's
    # quantization; fused: 3 AdaLN+quant (q/k/v sharing one), GELU+quant
    today = 3 * row["adaln_eager_ms"] + 5 * row["quant_fused_D_ms"] + row["gelu_eager_ms"] + row["quant_fused_4D_ms"]
    fused = 3 * row["adaln_quant_fused_ms"] + row["gelu_quant_fused_ms"]
    row = {k: round(v, 4) for k, v in row.items()}
    row.update(per_block_today_ms=round(today, 3), per_block_fused_ms=round(fused, 3),
               step_saving_s=round(p.num_blocks * (today - fused) / 1e3, 3))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="7B", choices=["7B", "14B"])
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", type=Path, default=None, help="default benchmarks/results/fp8-kernels-<model>.json")
    ap.add_argument("--smoke", action="store_true",
                    help="the script's own check: shapes / 256 on the CPU (CPU _scaled_mm), nothing written")
    args = ap.parse_args()
    if args.smoke:
        for name, m, k, n, _ in linears({"7B": PREDICT1_7B, "14B": PREDICT1_14B}[args.model].network):
            print(name, bench_shape(m // 256, k // 64, n // 64, 0, 1, seed=0, device="cpu"))
        return
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9):
        ap.error("needs a CUDA GPU of compute capability 8.9+ (FP8 tensor cores)")
    spec = {"7B": PREDICT1_7B, "14B": PREDICT1_14B}[args.model]
    p = spec.network
    t_start = time.perf_counter()
    rows = []
    for i, (name, m, k, n, count) in enumerate(linears(p)):
        row = {"linear": name, "per_block": count, **bench_shape(m, k, n, args.warmup, args.repeats, seed=i)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    try:  # a side measurement: never lose the table above to it
        preops = bench_preops(p, args.warmup, args.repeats)
    except Exception as e:  # noqa: BLE001
        preops = {"error": repr(e)}
    print(json.dumps({"preops": preops}), flush=True)
    variants = ("bf16", "fp8-eager", "fp8-fused", "scaled_mm", *_VARIANT_FNS)
    per_step = {v: round(p.num_blocks * sum(r["per_block"] * r[f"{v}_ms"] for r in rows) / 1e3, 4) for v in variants}
    report = {
        "benchmark": f"FP8 linears vs bf16, {args.model} shapes, default job (M = {BRANCHES} x {TOKENS} tokens)",
        "model": spec.name, "num_blocks": p.num_blocks, "linears": rows,
        "linear_s_per_step": per_step,
        "linear_vs_bf16_per_step": {v: round(per_step[v] / per_step["bf16"], 3) for v in variants},
        "preops": preops,
        "command": "python " + " ".join(sys.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(), "torch": torch.__version__,
        "seconds": round(time.perf_counter() - t_start, 1),
        "fp8_inductor_options": F.FP8_INDUCTOR_OPTIONS,
    }
    out = args.out or REPO / "benchmarks" / "results" / f"fp8-kernels-{args.model.lower()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\n{'linear':22} {'M':>7} {'K':>6} {'N':>6} " + " ".join(f"{v + ' ms':>13}" for v in variants)
          + f" {'fused/bf16':>10} {'fused vs sim':>12}")
    for r in rows:
        print(f"{r['linear']:22} {r['M']:7d} {r['K']:6d} {r['N']:6d} "
              + " ".join(f"{r[f'{v}_ms']:13.3f}" for v in variants)
              + f" {r['fp8-fused_vs_bf16']:10.3f} {r['fused_vs_sim_rel_err']:12.2e}")
    print(f"{'step (x count x blocks)':45} " + " ".join(f"{per_step[v]:12.3f}s" for v in variants)
          + f" {report['linear_vs_bf16_per_step']['fp8-fused']:10.3f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
