"""Context parallelism on a 2-GPU machine: N=2 against N=1 in the same torchrun call, full size, random bf16 weights.

Network mode (default), for each of 7B and 14B at the default job (latent 16x88x160, 56,320 tokens):

* the N=1 reference on every GPU at once (each its own copy: the single-GPU pipeline's resident plan, both
  guidance branches batched), and the network's outputs at fixed inputs;
* each split over the 2 GPUs: sequence parallel with Ulysses, sequence parallel with ring attention, and cfg
  parallel (one guidance branch per GPU): the same outputs, compared with N=1 (bf16 tolerance), and identical on
  both ranks;
* seconds per denoising step (the sampler's real steps, network and update, median after a warm-up step),
  speed-up over N=1 against the goal (1.85x), the peak memory of every GPU, the final latents after the steps;
* which scheme was faster, and whether it is the one ``choose_layout`` picks by default.

Generate mode (``--generate``): one full-size generation with random weights through the multi-GPU generation
path (``Predict1Pipeline.generate`` with a ContextParallel: rank 0 encodes, both GPUs denoise, rank 0 decodes and writes), a few
steps; checks that it completes and wrote exactly one video, and reports each GPU's peak memory. The same path
runs from the command line as ``torchrun --nproc_per_node=2 --no-python cosmos generate ... --num-gpus 2``
(tests/test_parallel_cli.py runs that on the CPU with gloo).

    torchrun --nproc_per_node=2 benchmarks/bench_parallel.py --models 7B 14B --steps 3 \\
        --out benchmarks/results/parallel-h200x2.json
    torchrun --nproc_per_node=2 benchmarks/bench_parallel.py --generate --models 7B --steps 2 \\
        --out benchmarks/results/parallel-generate-7b-h200x2.json

NVLink multicast stays off (NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1, NVSHMEM_DISABLE_NVLS=1): this
script sets them before anything starts NCCL.
"""

from __future__ import annotations

import os

for _var, _value in (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"),
                     ("NVSHMEM_DISABLE_NVLS", "1")):
    os.environ[_var] = _value  # the machine's rule: multicast off, whatever the caller's environment says

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from cosmos_cli.launch import launch_env  # noqa: E402
from cosmos_plugins.predict1 import parallel as P  # noqa: E402
from cosmos_plugins.predict1 import sampler as S  # noqa: E402
from cosmos_plugins.predict1.params import DiTParams  # noqa: E402
from cosmos_plugins.predict1.specs import PREDICT1_7B, PREDICT1_14B  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_network import make_inputs, random_network  # noqa: E402

LATENT = (16, 88, 160)
SMOKE_LATENT = (4, 8, 8)  # --smoke: a CPU check of this script with gloo, tiny network, 64 tokens
SMOKE_NET = DiTParams(model_channels=64, num_blocks=2, num_heads=4, mlp_ratio=2.0, in_channels=16, out_channels=16,
                      crossattn_emb_channels=32, max_img_h=32, max_img_w=32, max_frames=8, adaln_lora_dim=8)
GiB = 1 << 30
GOAL_SPEEDUP = 1.85
BF16_TOLERANCE = 2e-2  # max |difference| / max |reference| of one forward's output, bf16 (ours vs diffusers: ~1e-2)
SPLITS = (("sequence", "ulysses"), ("sequence", "ring"), ("cfg", "auto"))
SPECS = {"7B": PREDICT1_7B, "14B": PREDICT1_14B}


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def broadcast_module(module: torch.nn.Module) -> None:
    """Rank 0's weights on every rank (the random weights are seeded alike; this makes sure)."""
    for t in module.parameters():
        dist.broadcast(t.data, src=0)


_CUDA = [False]  # set by main(): GPUs (NCCL), or the CPU with --smoke (gloo)


def cuda() -> bool:
    return _CUDA[0]


def sync() -> None:
    if cuda():
        torch.cuda.synchronize()


def reset_peak() -> None:
    if cuda():
        torch.cuda.reset_peak_memory_stats()


def peak() -> int:
    return torch.cuda.max_memory_allocated() if cuda() else 0


def gather_floats(value: float) -> list[float]:
    t = torch.tensor([value], dtype=torch.float64, device="cuda" if cuda() else "cpu")
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t)
    return [p.item() for p in parts]


def local_model_fn(net, emb, mask, tables):
    """The single-GPU pipeline's step function under the resident plan: both branches in one B=2 forward."""
    def fn(x, t):
        out = net(torch.cat([x, x]), t.expand(2), emb, 24, mask, tables=tables)
        return out[:1], out[1:]
    return fn


def time_steps(model_fn, condition_latent: torch.Tensor, steps: int, seed: int = 0) -> dict:
    """Run the sampler for ``steps`` + 1 steps (the first is a warm-up); seconds per step, this GPU's peak and the
    final latent."""
    stamps: list[float] = []

    def on_step(info):
        sync()
        stamps.append(time.perf_counter())

    shape, device = condition_latent.shape, condition_latent.device
    sync()
    dist.barrier()
    reset_peak()
    start = time.perf_counter()
    latent = S.sample(model_fn, noise=S.initial_noise(shape, seed=seed, device=device),
                      condition_latent=condition_latent, num_condition_frames=2,
                      augment=S.augment_noise(shape, seed=seed, device=device), num_steps=steps + 1,
                      guidance=7.0, numerics="fp32", on_step=on_step)
    times = np.diff([start, *stamps])[1:]
    return {"step_s": float(np.median(times)), "step_s_all": [float(x) for x in times],
            "peak_gib_per_gpu": [b / GiB for b in gather_floats(peak())], "latent": latent}


def run_model(label: str, p: DiTParams, ctx: P.DistContext, args) -> dict:
    rank0, dev, latent_shape = ctx.rank == 0, str(ctx.device), args.latent
    net = random_network(p, seed=0, device=dev)
    broadcast_module(net)
    x, emb, mask, t = make_inputs(p, seed=1, device=dev)
    if latent_shape != LATENT:  # --smoke
        g = torch.Generator(dev).manual_seed(1)
        x = torch.randn(1, p.in_channels, *latent_shape, generator=g, device=dev).to(torch.bfloat16)
        mask = torch.zeros(1, 1, *latent_shape, device=dev, dtype=torch.bfloat16)
        mask[:, :, :1] = 1
    for tensor in (x, emb, t):
        dist.broadcast(tensor, src=0)
    condition_latent = torch.randn(1, p.in_channels, *latent_shape, generator=torch.Generator(dev).manual_seed(2),
                                   device=dev).to(torch.bfloat16) * 0.5
    dist.broadcast(condition_latent, src=0)
    tables = net.prepare(*latent_shape, 24.0)
    res: dict = {"model": label, "weights_gib": sum(q.numel() * q.element_size() for q in net.parameters()) / GiB,
                 "default_layout": P.choose_layout(ctx.world_size, p, latent_shape).reason}

    with torch.inference_mode():
        local = local_model_fn(net, emb, mask, tables)
        ref_c, ref_u = local(x, t)
        n1 = time_steps(local, condition_latent, args.steps)
        ref_latent = n1.pop("latent")
        res["n1"] = n1
        if rank0:
            print(f"{label} N=1: {n1['step_s']:.3f} s/step", flush=True)
        res["splits"] = []
        for scheme, attention in SPLITS:
            layout = P.choose_layout(ctx.world_size, p, latent_shape, scheme=scheme, attention=attention)
            cp = P.ContextParallel(ctx, layout)
            fn = cp.model_fn(net, emb, 24, mask, tables)
            f_c, f_u = fn(x, t)
            same_on_ranks = gather_floats(float(f_c.float().sum() + f_u.float().sum()))
            timing = time_steps(fn, condition_latent, args.steps)
            entry = {
                "scheme": scheme, "attention": layout.attention, "layout": layout.reason,
                "out_rel_diff_cond": rel_diff(f_c, ref_c), "out_rel_diff_uncond": rel_diff(f_u, ref_u),
                "ranks_agree": len(set(same_on_ranks)) == 1,
                "final_latent_rel_diff": rel_diff(timing.pop("latent"), ref_latent),
                **timing,
                "speedup": n1["step_s"] / timing["step_s"],
            }
            entry["within_bf16_tolerance"] = max(entry["out_rel_diff_cond"], entry["out_rel_diff_uncond"]) < BF16_TOLERANCE
            entry["meets_goal"] = entry["speedup"] >= GOAL_SPEEDUP
            res["splits"].append(entry)
            if rank0:
                print(f"{label} {scheme}/{layout.attention}: {timing['step_s']:.3f} s/step, "
                      f"{entry['speedup']:.2f}x, out diff {entry['out_rel_diff_cond']:.1e}", flush=True)
            del fn, cp, f_c, f_u
            if cuda():
                torch.cuda.empty_cache()
    seq = max((s for s in res["splits"] if s["scheme"] == "sequence"), key=lambda s: s["speedup"])
    cfg = next(s for s in res["splits"] if s["scheme"] == "cfg")
    best = max((seq, cfg), key=lambda s: s["speedup"])
    auto = P.choose_layout(ctx.world_size, p, latent_shape)
    res["best"] = f"{best['scheme']}/{best['attention']}"
    res["auto_choice"] = f"{auto.scheme}/{auto.attention}"
    res["auto_is_best"] = (auto.scheme, auto.attention) == (best["scheme"], best["attention"])
    res["goal_met"] = {"sequence": seq["meets_goal"], "cfg": cfg["meets_goal"]}
    del net, tables
    if cuda():
        torch.cuda.empty_cache()
    return res


def run_generate(label: str, ctx: P.DistContext, args) -> dict:
    """One generation at full size with random weights through the pipeline's generate (split over the ranks)."""
    from bench_generate import random_t5, random_tokenizer

    from cosmos_cli.jobs import GenerationJob
    from cosmos_cli.media import probe, write_video
    from cosmos_cli.planner import plan_memory
    from cosmos_cli.progress import NullProgress
    from cosmos_plugins.predict1.pipeline import Predict1Pipeline

    spec, dev = SPECS[label], str(ctx.device)
    free = P.agree_min(ctx, torch.cuda.mem_get_info()[0]) if cuda() else None
    plan = plan_memory(spec, free, strategy=args.strategy if cuda() else "resident", upsampler=False,
                       guardrail=False, num_gpus=ctx.world_size)
    network = random_network(spec.network, seed=0, device=dev)
    broadcast_module(network)
    text_encoder = tokenizer = None
    if ctx.rank == 0:  # only rank 0 encodes and decodes
        text_encoder, tokenizer = random_t5(spec, dev), random_tokenizer(spec, dev)
    cp = P.ContextParallel.create(ctx, spec.network, P.latent_shape_of(spec), cfg_batched=plan.cfg_batched)
    pipe = Predict1Pipeline(spec, plan, ctx.device, network, tokenizer, text_encoder, numerics="fp32", cp=cp)

    def make_input():
        work = Path(tempfile.mkdtemp(prefix="cosmos-parallel-"))
        frame = (np.random.default_rng(0).random((1, spec.height, spec.width, 3)) * 255).astype(np.uint8)
        write_video(work / "input.mp4", np.repeat(frame, 9, axis=0), fps=24)
        (work / "out").mkdir()
        return str(work)

    work = Path(P.from_rank0(ctx, make_input, "writing the input"))
    job = GenerationJob(visual_input=work / "input.mp4", prompt="a robot arm picks up a red cup from the table",
                        num_steps=args.steps, num_input_frames=9)
    t0 = time.perf_counter()
    result = pipe.generate(job, NullProgress(), video_path=work / "out" / "out.mp4",
                           prompt_path=work / "out" / "out.txt")
    seconds = time.perf_counter() - t0
    dist.barrier()
    report = {"model": spec.name, "strategy": plan.strategy, "layout": cp.layout.reason, "steps": args.steps,
              "status": result.status, "seconds_total": seconds, "seconds": result.timings,
              "denoise_s_per_step": result.timings.get("denoise", float("nan")) / args.steps,
              "peak_gib_per_gpu_denoise": [result.stage_peak_bytes.get(f"denoise_gpu{r}", 0) / GiB
                                           for r in range(ctx.world_size)],
              "peak_gib_this_gpu_per_stage": {k: v / GiB for k, v in result.stage_peak_bytes.items()},
              "planner_predicted_peak_gib": plan.predicted_peak_bytes / GiB}
    if ctx.rank == 0:
        files = sorted(q.name for q in (work / "out").iterdir())
        report["files_written"] = files
        report["one_video"] = files == ["out.mp4", "out.txt"]
        report["output_frames"] = probe(work / "out" / "out.mp4").num_frames if report["one_video"] else None
    report["peak_gib_per_gpu_overall"] = [b / GiB for b in gather_floats(peak())]
    pipe.close()
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["7B", "14B"], choices=list(SPECS))
    ap.add_argument("--steps", type=int, default=3, help="timed sampler steps (after one warm-up step)")
    ap.add_argument("--generate", action="store_true", help="one full generation instead of the network timings")
    ap.add_argument("--strategy", default="resident", help="memory strategy for --generate")
    ap.add_argument("--smoke", action="store_true",
                    help="check this script on the CPU (gloo) with tiny models; no timing meaning")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    args.latent = SMOKE_LATENT if args.smoke else LATENT
    if args.smoke:
        from cosmos_plugins.predict1.specs import PREDICT1_TINY

        SPECS.update({"7B": PREDICT1_TINY, "14B": PREDICT1_TINY})
    ctx = P.init_distributed(launch_env().world_size, device="cpu" if args.smoke else "cuda")
    if ctx is None or ctx.world_size != 2:
        raise SystemExit("run under torchrun --nproc_per_node=2")
    _CUDA[0] = ctx.device.type == "cuda"
    report = {
        "benchmark": ("one multi-GPU generation, full size, random weights" if args.generate else
                      "context parallelism, N=2 vs N=1 in the same call, full size, random bf16 weights"),
        "command": "torchrun --nproc_per_node=2 " + " ".join(sys.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(ctx.device) if cuda() else "cpu (--smoke)",
        "gpus": ctx.world_size,
        "torch": torch.__version__,
        "nccl": ".".join(map(str, torch.cuda.nccl.version())) if cuda() else None,
        "env": {k: os.environ.get(k) for k in ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST",
                                               "NVSHMEM_DISABLE_NVLS")},
        "goal_speedup": GOAL_SPEEDUP,
        "results": [],
    }
    for m in args.models:
        params = SMOKE_NET if args.smoke else SPECS[m].network
        res = run_generate(m, ctx, args) if args.generate else run_model(m, params, ctx, args)
        report["results"].append(res)
        if ctx.rank == 0:
            print(json.dumps(res, indent=1), flush=True)
    if ctx.rank == 0:
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n")
        if not args.generate:
            print(f"\n{'model':6} {'split':18} {'s/step':>8} {'N=1 s/step':>11} {'speed-up':>9} {'goal':>5} "
                  f"{'out diff':>9} {'peak GiB/GPU':>14}")
            for r in report["results"]:
                for s in r["splits"]:
                    print(f"{r['model']:6} {s['scheme'] + '/' + s['attention']:18} {s['step_s']:8.3f} "
                          f"{r['n1']['step_s']:11.3f} {s['speedup']:8.2f}x {'yes' if s['meets_goal'] else 'no':>5} "
                          f"{max(s['out_rel_diff_cond'], s['out_rel_diff_uncond']):9.1e} "
                          f"{'/'.join(f'{g:.1f}' for g in s['peak_gib_per_gpu']):>14}")
                print(f"{r['model']:6} best: {r['best']}; default: {r['auto_choice']} "
                      f"({'the best' if r['auto_is_best'] else 'NOT the best: change choose_layout'})")
    P.shutdown(ctx)


if __name__ == "__main__":
    main()
