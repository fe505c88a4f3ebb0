"""Exact-mode speed of one denoising step (both guidance branches) at the default job, per code path.

Variants, on the same random bf16 weights and inputs:

* ``eager``: the plain network, both branches batched (B=2);
* ``compiled``: each transformer block's ``forward`` compiled with ``torch.compile`` (norms, RoPE, modulation
  and gating fused around the matrix products and cuDNN attention);

Reports seconds per step, achieved TFLOP/s against the anchors' ceilings (761 TFLOP/s bf16 matmul, 656 TFLOP/s
cuDNN attention), and the compiled output's difference from eager.

    python benchmarks/bench_speed.py --models 7B 14B --out benchmarks/results/speed-h100.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_network import LATENT, forward_flops, make_inputs, random_network, timed  # noqa: E402

from cosmos_plugins.predict1.specs import PREDICT1_7B, PREDICT1_14B  # noqa: E402

GiB = 1 << 30


def compile_blocks(net) -> float:
    """Compile every block's forward in place (module names and weights unchanged); returns seconds spent."""
    t0 = time.perf_counter()
    for block in net.blocks.values():
        block.forward = torch.compile(block.forward, dynamic=False, fullgraph=False)
    return time.perf_counter() - t0


def run(label: str, p, args) -> dict:
    net = random_network(p, seed=0)
    x, emb, mask, t = make_inputs(p, seed=1)
    tables = net.prepare(*LATENT, 24.0)
    x2, t2 = torch.cat([x, x]), t.expand(2)

    def step():
        return net(x2, t2, emb, 24.0, mask, tables=tables)

    res = {"model": label, "step_pflop": forward_flops(p, 2) / 1e15}
    with torch.no_grad():
        res["eager_step_s"] = timed(step, 1, args.repeats)
        ref = step().float()
        t0 = time.perf_counter()
        compile_blocks(net)
        step()  # first call compiles
        torch.cuda.synchronize()
        res["compile_s"] = time.perf_counter() - t0
        res["compiled_step_s"] = timed(step, 1, args.repeats)
        out = step().float()
    res["compiled_rel_diff"] = ((out - ref).abs().max() / ref.abs().max()).item()
    res["eager_tflops"] = forward_flops(p, 2) / res["eager_step_s"] / 1e12
    res["compiled_tflops"] = forward_flops(p, 2) / res["compiled_step_s"] / 1e12
    res["compiled_vs_eager"] = res["compiled_step_s"] / res["eager_step_s"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["7B"], choices=["7B", "14B"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    specs = {"7B": PREDICT1_7B, "14B": PREDICT1_14B}
    report = {"benchmark": "one denoising step, both branches batched, default job, random bf16 weights",
              "command": "python " + " ".join(sys.argv),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "device": torch.cuda.get_device_name(0), "torch": torch.__version__, "results": []}
    for m in args.models:
        report["results"].append(run(m, specs[m].network, args))
        print(json.dumps(report["results"][-1], indent=1), flush=True)
        torch.cuda.empty_cache()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{'model':6} {'eager s':>8} {'TFLOP/s':>8} {'compiled s':>11} {'TFLOP/s':>8} {'ratio':>6} {'rel diff':>9}")
    for r in report["results"]:
        print(f"{r['model']:6} {r['eager_step_s']:8.3f} {r['eager_tflops']:8.0f} {r['compiled_step_s']:11.3f} "
              f"{r['compiled_tflops']:8.0f} {r['compiled_vs_eager']:6.3f} {r['compiled_rel_diff']:9.2e}")


if __name__ == "__main__":
    main()
