"""The pipeline's denoising step against the bare network step, same process, same random 7B weights (GPU).

``bench_network.py`` times ``net(x, ...)`` on both guidance branches at once; the CLI runs the same network through
``Predict1Pipeline.denoise`` (the sampler, ``branches.branch_model_fn``, ``torch.inference_mode``). This times, for
each self-attention kernel (SDPA, and flash-attn-4 where it can run):

* ``bare``: the network step as ``bench_network`` runs it, under ``torch.no_grad`` and under ``torch.inference_mode``;
* ``pipeline``: ``denoise`` per step (2 steps after a 1-step warm-up), as the CLI runs it;

and profiles one step of each with ``torch.profiler`` (the GPU kernels with the most time, the GPU's busy
time against the wall time, and the longest gaps between kernels with the kernels around them), so that a gap
between the two says where it is.

    python benchmarks/bench_pipeline_step.py --out benchmarks/results/pipeline-step-7b-h200.json
    python benchmarks/bench_pipeline_step.py --compile --out benchmarks/results/pipeline-step-7b-compile-h200.json

``--compile`` runs only the pipeline, its blocks compiled, with the kernel the CLI picks (flash-attn-4 where it
runs), and profiles 30 kernels (``--fast fp8``: the compiled FP8 step); each profile also sums the GPU
time by kernel family (attention, matrix products, inductor's Triton kernels, other).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_network import LATENT, make_inputs, random_network, timed  # noqa: E402

from cosmos_cli.fastmode import parse_fast  # noqa: E402
from cosmos_cli.jobs import GenerationJob  # noqa: E402
from cosmos_cli.planner import plan_memory  # noqa: E402
from cosmos_cli.progress import NullProgress  # noqa: E402
from cosmos_plugins.predict1.flash4 import self_attention_kernel  # noqa: E402
from cosmos_plugins.predict1.network import PlainBlocks  # noqa: E402
from cosmos_plugins.predict1.pipeline import Predict1Pipeline  # noqa: E402
from cosmos_plugins.predict1.specs import PREDICT1_7B  # noqa: E402


def kernel_kind(name: str) -> str:
    """A GPU kernel's family from its name: attention, matrix product, inductor-generated (triton), or other."""
    n = name.lower()
    if n.startswith("triton_"):  # first: inductor names a kernel after every op fused into it (_scaled_mm, ...)
        return "triton (inductor)"
    if "flash" in n or "fmha" in n or "cudnn" in n or "attention" in n:
        return "attention"
    if "nvjet" in n or "gemm" in n or "xmma" in n or "cutlass" in n or "scaled_mm" in n:
        return "matmul"
    return "other (eager elementwise, copies)"


def profile(fn, top: int = 12) -> dict:
    """One call of ``fn`` under the profiler: wall seconds, GPU kernel seconds, the ``top`` kernels by GPU time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    torch.cuda.synchronize()
    with prof(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    kernels = [e for e in p.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    kernels.sort(key=lambda e: e.self_device_time_total, reverse=True)
    busy = sum(e.self_device_time_total for e in kernels) / 1e6
    by_kind: dict[str, float] = {}
    for e in kernels:
        by_kind[kernel_kind(e.key)] = by_kind.get(kernel_kind(e.key), 0.0) + e.self_device_time_total / 1e6
    return {"wall_s": round(wall, 3), "gpu_kernel_s": round(busy, 3),
            "by_kind_s": {k: round(v, 3) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
            "top": [{"kernel": e.key[:120], "s": round(e.self_device_time_total / 1e6, 4), "calls": e.count}
                    for e in kernels[:top]],
            "gpu_gaps": gaps([e for e in p.events() if e.device_type == torch.autograd.DeviceType.CUDA])}


def gaps(events, top: int = 12, least_us: float = 200.0) -> dict:
    """Where the GPU waited, from the trace's kernels (their start and end on one timeline, in us): the time from
    the first kernel's start to the last one's end with no kernel running, the gaps of at least ``least_us``
    (their count and sum), and the ``top`` longest with the kernels on either side."""
    spans = sorted((e.time_range.start, e.time_range.end, e.name) for e in events if e.time_range.end > 0)
    if not spans:
        return {}
    idle, found, end, last = 0.0, [], spans[0][1], spans[0][2]
    for start, stop, name in spans[1:]:
        if start > end:
            idle += start - end
            if start - end >= least_us:
                found.append((start - end, last, name))
        if stop >= end:
            end, last = stop, name
    found.sort(reverse=True)
    return {"span_s": round((end - spans[0][0]) / 1e6, 3), "idle_s": round(idle / 1e6, 3),
            f"gaps_over_{int(least_us)}us": len(found), f"gaps_over_{int(least_us)}us_s": round(
                sum(g for g, _, _ in found) / 1e6, 3),
            "longest": [{"ms": round(g / 1e3, 2), "after": a[:80], "before": b[:80]} for g, a, b in found[:top]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--compile", action="store_true",
                    help="only the pipeline, with its blocks compiled (--compile), profiled over more kernels")
    ap.add_argument("--profile-steps", type=int, default=1,
                    help="with --compile: steps of the profiled generation (more: the per-step gaps stand out)")
    ap.add_argument("--fast", default=None, metavar="OPTIONS",
                    help="with --compile: the pipeline's --fast value (fp8: the compiled FP8 step's kernels)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    spec, device = PREDICT1_7B, torch.device("cuda", 0)
    p = spec.network
    net = random_network(p, seed=0)
    x, emb, mask, t = make_inputs(p, seed=1)
    x2, t2 = torch.cat([x, x]), t.expand(2)
    tables = net.prepare(*LATENT, 24.0)
    flash4 = self_attention_kernel(device, torch.bfloat16, p.head_dim)
    kernels = {"sdpa": None, **({"flash-attn-4": flash4} if flash4 is not None else {})}
    report = {"benchmark": "pipeline denoising step vs bare network step, 7B random bf16 weights, default job",
              "command": "python " + " ".join(sys.argv),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "device": torch.cuda.get_device_name(0), "torch": torch.__version__, "results": {}}
    plan = plan_memory(spec, torch.cuda.mem_get_info(device)[0], strategy="resident", upsampler=False,
                       guardrail=False)
    gen = torch.Generator("cuda").manual_seed(2)
    latent = (torch.randn(1, p.in_channels, *LATENT, generator=gen, device=device) * 0.5).to(torch.bfloat16)
    job = GenerationJob(visual_input=Path("<random>"), prompt="random", negative_prompt="", seed=1,
                        num_input_frames=1, guidance=spec.guidance, num_steps=args.steps, fps=spec.fps)
    if args.fast and not args.compile:
        ap.error("--fast needs --compile")
    if args.compile:  # the pipeline compiles the blocks in place: the bare (eager) step is not run here
        report["benchmark"] += ", blocks compiled (--compile)" + (f", --fast {args.fast}" if args.fast else "")
        for name, kernel in list(kernels.items())[-1:]:  # flash-attn-4 where it runs (the CLI's choice), else SDPA
            net = random_network(p, seed=0)
            pipe = Predict1Pipeline(spec, plan, device, net, None, None, compile=True, fast=parse_fast(args.fast),
                                    attention="sdpa" if kernel is None else "auto")
            res = run_pipeline(pipe, job, latent, emb, args.steps, top=30, profile_steps=args.profile_steps)
            res["pipeline_attention"] = pipe.attention  # set by the generation (denoise), not before it
            report["results"][f"{name} --compile"] = res
            show(f"{name} --compile", res)
            del pipe, net
            torch.cuda.empty_cache()
        write(report, args.out)
        return
    for name, kernel in kernels.items():
        runner = PlainBlocks(kernel)
        res: dict = {}

        def bare(runner=runner):
            return net(x2, t2, emb, 24.0, mask, tables=tables, runner=runner)

        with torch.no_grad():
            res["bare_no_grad_s"] = round(timed(bare, 1, 2), 3)
        with torch.inference_mode():
            res["bare_inference_mode_s"] = round(timed(bare, 1, 2), 3)
            res["bare_profile"] = profile(bare)
        pipe = Predict1Pipeline(spec, plan, device, net, None, None, attention="sdpa" if kernel is None else "auto")
        res.update(run_pipeline(pipe, job, latent, emb, args.steps))
        res["pipeline_attention"] = pipe.attention
        res["pipeline_over_bare"] = round(res["pipeline_s_per_step"] / res["bare_inference_mode_s"], 3)
        report["results"][name] = res
        show(name, res)
    write(report, args.out)


def run_pipeline(pipe, job, latent, emb, steps: int, top: int = 12, profile_steps: int = 1) -> dict:
    """``denoise`` per step (after a 1-step warm-up: kernels, compilation) and a profile of a generation of
    ``profile_steps`` more steps (its per-generation setup included)."""
    one = dataclasses.replace(job, num_steps=1)
    with torch.inference_mode():
        pipe.denoise(one, latent, 1, emb, NullProgress())
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        pipe.denoise(job, latent, 1, emb, NullProgress())
        torch.cuda.synchronize()
        per_step = round((time.perf_counter() - t0) / steps, 3)
        some = dataclasses.replace(job, num_steps=profile_steps)
        prof = profile(lambda: pipe.denoise(some, latent, 1, emb, NullProgress()), top)
    key = "pipeline_profile_1_step" if profile_steps == 1 else f"pipeline_profile_{profile_steps}_steps"
    return {"pipeline_s_per_step": per_step, key: prof}


def show(name: str, res: dict) -> None:
    print(name, json.dumps({k: v for k, v in res.items() if not k.endswith("profile") and "profile_" not in k}),
          flush=True)
    for what in ("bare_profile", *(k for k in res if k.startswith("pipeline_profile_"))):
        if what not in res:
            continue
        pr = res[what]
        print(f"  {what}: wall {pr['wall_s']} s, GPU kernels {pr['gpu_kernel_s']} s, by kind {pr['by_kind_s']}",
              flush=True)
        g = pr.get("gpu_gaps") or {}
        print(f"  GPU idle between kernels {g.get('idle_s')} s of {g.get('span_s')} s; longest gaps (ms): "
              f"{[(x['ms'], x['before'][:40]) for x in g.get('longest', [])[:6]]}", flush=True)
        for row in pr["top"][:8]:
            print(f"    {row['s']:8.4f} s {row['calls']:5d}x {row['kernel'][:90]}", flush=True)


def write(report: dict, out: Path | None) -> None:
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
