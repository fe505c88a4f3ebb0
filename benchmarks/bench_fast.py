"""Fast mode against exact mode: network work, time and quality of each option and their combination.

Demo model (default; runs on a CPU): every setting generates the same held-out clips (``tools.demo``'s evaluation
seeds, from ``EVAL_FIRST_SEED``) through the real pipeline, and reports per setting

* the network work: forwards per branch (``branch_forwards``), forwards that ran every block and forwards that
  reused the step cache, transformer blocks run, and that work relative to exact mode (the speed proxy on a
  CPU, where times are noisy), plus the denoising time on this device;
* PSNR of the video against exact mode's video (predicted frames), per clip, mean and worst;
* the demo evaluation's own scores: prompt-following rate and PSNR gain over repeating the last input frame;
* the relative error, at each step, of the conditional branch's denoised estimate against exact mode's.

    python benchmarks/bench_fast.py --clips 32                      # demo model, CPU, -> fast_demo_cpu.json
    python benchmarks/bench_fast.py --full-size --device cuda --settings step-cache --out benchmarks/results/fast-7b-h100.json
    python benchmarks/bench_fast.py --full-size --device cuda --settings fp8 --modes eager compile --steps 2

``--full-size`` runs the same settings through the pipeline's denoising stage on the 7B network with random
bf16 weights at the default job (121x704x1280), one generation per setting, and reports seconds per step
against exact mode in the same run and the relative error per step (random weights say nothing about the step
cache's hit rate on the real model: its thresholds are calibrated on the demo model). ``fp8`` there is the real
FP8 path (compute capability 8.9+); on the demo model on a CPU use ``fp8-sim``, which rounds exactly as FP8 does.
Exact mode always runs first, in the same process; at 35 steps each 7B setting takes about 5 minutes on an H100
(8.5 s per exact step), so give one call one or two ``--settings`` (or fewer ``--steps``). ``--modes eager
compile`` runs every setting twice, without and with ``--compile`` (the blocks through ``torch.compile``), each
against exact mode in the same mode (``time_vs_exact``) and against eager exact mode (``time_vs_exact_eager``);
the compiled settings are keyed ``"<setting> --compile"``. Each full-size setting also times a 1-step generation:
``marginal_s_per_step`` = (the N-step generation - the 1-step one) / (N - 1), a step without the generation's
setup (what each step of a 35-step video costs), and ``marginal_vs_exact``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from cosmos_cli.fastmode import FastMode, parse_fast  # noqa: E402
from cosmos_cli.jobs import GenerationJob  # noqa: E402
from cosmos_cli.progress import NullProgress  # noqa: E402
from cosmos_plugins.predict1 import sampler as S  # noqa: E402

DEMO_SETTINGS = ("exact", "step-cache", "guidance-trunc", "fp8-sim", "step-cache,guidance-trunc,fp8-sim")
GPU_SETTINGS = ("exact", "step-cache", "guidance-trunc", "fp8", "step-cache,guidance-trunc,fp8")


def fast_of(setting: str) -> FastMode:
    return parse_fast(None if setting == "exact" else setting)


class StepRecorder:
    """A forward hook on the network that keeps, at each step, the conditional branch's denoised estimate
    ``x0 = c_skip x + c_out F`` (from the first forward of each noise level: batched branches put the prompt's row
    first, separate ones run it first). Its relative error against exact mode's at the same step is the per-step
    error (the raw output F alone would overweight the last steps, where c_out ~ sigma makes it irrelevant)."""

    def __init__(self, net: torch.nn.Module, keep_on: str = "cpu"):
        self.outputs: list[torch.Tensor] = []
        self._last_t: float | None = None
        self.keep_on = keep_on
        self.handle = net.register_forward_hook(self._hook)

    def _hook(self, module, args, out):
        t = float(args[1].reshape(-1)[0])
        if t != self._last_t:
            sigma = math.exp(4 * t)  # c_noise = ln(sigma) / 4
            x_in = args[0][:1].float() / S.c_in(sigma)
            x0 = S.c_skip(sigma) * x_in + S.c_out(sigma) * out[:1].float()
            self.outputs.append(x0.to(self.keep_on))
        self._last_t = t

    def close(self) -> list[torch.Tensor]:
        self.handle.remove()
        return self.outputs


def relative_errors(outputs: list[torch.Tensor], reference: list[torch.Tensor]) -> list[float]:
    if len(outputs) != len(reference):
        raise RuntimeError(f"{len(outputs)} steps recorded against {len(reference)} for exact mode")
    return [((o.float() - r.float()).norm() / r.float().norm().clamp_min(1e-12)).item()
            for o, r in zip(outputs, reference, strict=True)]


def timed_denoise(pipe, times: list[float]) -> None:
    """Record the seconds of each call of ``pipe.denoise`` (on this instance only)."""
    original = pipe.denoise
    cuda = pipe.device.type == "cuda"

    def denoise(*args, **kwargs):
        if cuda:
            torch.cuda.synchronize(pipe.device)
        t0 = time.perf_counter()
        out = original(*args, **kwargs)
        if cuda:
            torch.cuda.synchronize(pipe.device)
        times.append(time.perf_counter() - t0)
        return out

    pipe.denoise = denoise


# ----------------------------------------------------------------------------------------------------------
# Demo model


def run_demo(args) -> dict:
    from tools.demo.evaluate import EVAL_FIRST_SEED, generate, load_pipeline, summarize
    from tools.demo.metrics import evaluate_clip, psnr
    from tools.demo.scenes import make_clip

    settings = list(args.settings or DEMO_SETTINGS)
    if settings[0] != "exact":
        settings.insert(0, "exact")
    pipes, times = {}, {}
    for s in settings:
        pipes[s] = load_pipeline(args.checkpoint_dir, args.device, fast=fast_of(s))
        times[s] = []
        timed_denoise(pipes[s], times[s])
    n_in = args.input_frames
    rows: dict[str, list[dict]] = {s: [] for s in settings}
    step_errors: dict[str, list[list[float]]] = {s: [] for s in settings}
    t_start = time.perf_counter()
    for k, seed in enumerate(range(EVAL_FIRST_SEED, EVAL_FIRST_SEED + args.clips)):
        clip = make_clip(seed)
        exact_video = exact_steps = None
        for s in settings:
            pipe = pipes[s]
            rec = StepRecorder(pipe.network.obj)
            video = generate(pipe, clip.frames[:n_in], clip.caption, num_steps=args.steps, guidance=args.guidance)
            steps = rec.close()
            if s == "exact":
                exact_video, exact_steps = video, steps
            row = evaluate_clip(clip.frames[:n_in], video, clip)
            row.update(seed=seed, psnr_vs_exact=psnr(video[n_in:], exact_video[n_in:]),
                       denoise_s=times[s][-1], **pipe.denoise_stats)
            rows[s].append(row)
            step_errors[s].append(relative_errors(steps, exact_steps))
        print(f"clip {k + 1}/{args.clips} (seed {seed}): " + ", ".join(
            f"{s}: {rows[s][-1]['psnr_vs_exact']:.1f} dB" for s in settings[1:]) +
            f"  [{time.perf_counter() - t_start:.0f} s]", file=sys.stderr, flush=True)

    num_blocks = len(pipes["exact"].network.obj.blocks)
    exact_blocks = np.mean([r["blocks_run"] for r in rows["exact"]])
    exact_s = np.mean([r["denoise_s"] for r in rows["exact"]])
    results = {}
    for s in settings:
        r = rows[s]
        vs_exact = np.array([x["psnr_vs_exact"] for x in r])
        blocks = np.mean([x["blocks_run"] for x in r])
        results[s] = {
            "fast": fast_of(s).describe() or "exact",
            "branch_forwards": float(np.mean([x["branch_forwards"] for x in r])),
            "full_forwards": float(np.mean([x["full_forwards"] for x in r])),
            "cached_forwards": float(np.mean([x["cached_forwards"] for x in r])),
            "blocks_run": float(blocks),
            "full_forward_equivalents": round(float(blocks) / num_blocks, 2),
            "network_work_vs_exact": round(float(blocks / exact_blocks), 4),
            "denoise_s": round(float(np.mean([x["denoise_s"] for x in r])), 3),
            "denoise_time_vs_exact": round(float(np.mean([x["denoise_s"] for x in r]) / exact_s), 3),
            "psnr_vs_exact_db": round(float(vs_exact.mean()), 2),
            "psnr_vs_exact_min_db": round(float(vs_exact.min()), 2),
            "rel_err_per_step": [round(float(v), 5) for v in np.mean(step_errors[s], axis=0)],
            **summarize(r),
            "clips_detail": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in x.items()} for x in r],
        }
    return {
        "benchmark": "fast mode vs exact mode, demo model, held-out clips",
        "model": pipes["exact"].spec.name,
        "clips": args.clips, "seeds": [EVAL_FIRST_SEED, EVAL_FIRST_SEED + args.clips],
        "num_steps": args.steps, "num_input_frames": n_in,
        "guidance": args.guidance if args.guidance is not None else pipes["exact"].spec.guidance,
        "network_blocks": num_blocks,
        "note": "network_work_vs_exact counts transformer blocks run (the step cache computes 1 of "
                f"{num_blocks} blocks on a cached forward); fp8-sim rounds weights and activations to e4m3 exactly "
                "as the fp8 path does but multiplies in fp32, so it is quality evidence, not a speed measurement; "
                "wall times are on a shared CPU (noisy).",
        "results": results,
    }


# ----------------------------------------------------------------------------------------------------------
# Full size, random weights (GPU)

PERSISTENT_ROWS_MAX = 8192  # the layer norms (4,096 / 5,120 channels) and the K = 4,096 quantizations; not the MLP's 16,384


def persistent_rows_choices(max_numel: int, quantize_only: bool = False):
    """Inductor heuristics (``InductorChoices``) that keep a whole row in registers (a "persistent" reduction) for
    inner reductions up to ``max_numel`` columns instead of 1,024: the layer norms over 4,096 / 5,120 channels and
    the FP8 quantizations' row amax (K = 4,096) then read their row once instead of looping over it twice.
    ``quantize_only``: only for kernels with no ``rsqrt`` (no layer norm: the attention outputs' quantizations;
    2026-12-04 the layer norms measured slower persistent, the FP8 step as a whole a little faster)."""
    from torch._inductor.choices import InductorChoices
    from torch._inductor.runtime.hints import ReductionHint
    from torch._inductor.virtualized import V

    class PersistentRows(InductorChoices):
        @staticmethod
        def should_use_persistent_reduction(features, cooperative_reduction, *args, **kwargs) -> bool:
            if InductorChoices.should_use_persistent_reduction(features, cooperative_reduction, *args, **kwargs):
                return True
            if cooperative_reduction or features.get_reduction_hint() != ReductionHint.INNER:
                return False
            if quantize_only and features.contains_op("rsqrt"):
                return False
            return V.graph.sizevars.statically_known_leq(features.reduction_numel, max_numel)

    return PersistentRows()


def with_choices(handler, fn):
    """``fn`` (a compiled block's forward) called with inductor's heuristics set to ``handler``: its compilation,
    at the first call, makes its kernels with them."""
    from torch._inductor.virtualized import V

    def call(*args, **kwargs):
        with V.set_choices_handler(handler):
            return fn(*args, **kwargs)

    return call


def run_full_size(args) -> dict:
    from bench_network import LATENT, make_inputs, random_network

    from cosmos_cli.planner import plan_memory
    from cosmos_plugins.predict1 import fast as fast_mod
    from cosmos_plugins.predict1.network import AdaLNSubBlock, FeedForward, gelu, modulate
    from cosmos_plugins.predict1.pipeline import Predict1Pipeline
    from cosmos_plugins.predict1.specs import PREDICT1_7B, PREDICT1_14B

    spec = {"7B": PREDICT1_7B, "14B": PREDICT1_14B}[args.model]
    device = torch.device(args.device)
    settings = list(args.settings or GPU_SETTINGS)
    if settings[0] != "exact":
        settings.insert(0, "exact")
    p = spec.network
    _, emb, _, _ = make_inputs(p, seed=1, device=args.device)
    gen = torch.Generator(args.device).manual_seed(2)
    latent = (torch.randn(1, p.in_channels, *LATENT, generator=gen, device=device) * 0.5).to(torch.bfloat16)
    job = GenerationJob(visual_input=Path("<random>"), prompt="random", negative_prompt="", seed=1,
                        num_input_frames=1, guidance=spec.guidance, num_steps=args.steps, fps=spec.fps)
    free, _ = torch.cuda.mem_get_info(device)
    plan = plan_memory(spec, free, strategy="resident", upsampler=False, guardrail=False)
    results, exact_steps, exact_latent, marginals = {}, None, None, {}
    runs = []  # (setting, compiled, variant): each variant right after its setting
    for mode in args.modes:
        for s in settings:
            runs.append((s, mode == "compile", None))
            if args.unfused_modulation and "fp8" in s:
                runs.append((s, mode == "compile", "modulation unfused"))
            if args.unfused_gelu and "fp8" in s:
                runs.append((s, mode == "compile", "gelu unfused"))
            if args.persistent_rows and mode == "compile":
                runs.append((s, True, f"persistent rows{' (quantize only)' if args.persistent_rows == 'quantize' else ''}"))
            if args.inductor_options and mode == "compile":
                runs.append((s, True, "inductor options"))
            if args.row_kernel and "fp8" in s:
                runs.append((s, mode == "compile", "row kernels"))
    if args.persistent_rows:  # the variant compiles the same graphs: no cache may hand it the default's kernels
        torch._inductor.config.fx_graph_cache = False
        torch._functorch.config.enable_autograd_cache = False
    for s, compiled, variant in runs:
        key, exact_key = (f"{s} --compile", "exact --compile") if compiled else (s, "exact")
        if variant:
            key += f" ({variant})"
        before = torch.cuda.memory_allocated(device)  # what earlier runs left (their peaks would count it)
        net = random_network(p, seed=0, device=args.device)
        if variant == "inductor options":  # the blocks compiled with them (read by fast.compile_blocks)
            fast_mod.BLOCK_INDUCTOR_OPTIONS.update(json.loads(args.inductor_options))
        fast_mod.ROW_KERNELS = variant == "row kernels"  # read by fast.to_fp8
        try:
            pipe = Predict1Pipeline(spec, plan, device, net, None, None, fast=fast_of(s), compile=compiled)
        finally:
            fast_mod.BLOCK_INDUCTOR_OPTIONS.clear()
            fast_mod.ROW_KERNELS = False
        for sub in pipe.network.obj.modules():
            if variant == "modulation unfused" and isinstance(sub, AdaLNSubBlock):
                sub.modulate = modulate  # undo fast.to_fp8's Fp8Modulate: each linear quantizes its own input
            if variant == "gelu unfused" and isinstance(sub, FeedForward):
                sub.activation = gelu  # undo fast.to_fp8's Fp8Gelu: the down projection quantizes GELU's output
        if variant and variant.startswith("persistent rows"):
            handler = persistent_rows_choices(PERSISTENT_ROWS_MAX, quantize_only=args.persistent_rows == "quantize")
            for block in pipe.network.obj.blocks.values():
                block.forward = with_choices(handler, block.forward)
        t_warm = time.perf_counter()
        with torch.inference_mode():  # warm-up (kernels, allocator, compilation), not timed
            pipe.denoise(dataclasses.replace(job, num_steps=1), latent, 1, emb, NullProgress())
        torch.cuda.synchronize(device)
        t_warm = time.perf_counter() - t_warm
        times: list[float] = []
        timed_denoise(pipe, times)
        rec = StepRecorder(pipe.network.obj, keep_on=args.device)
        with torch.inference_mode():
            out = pipe.denoise(job, latent, 1, emb, NullProgress())
        steps = rec.close()
        stats = dict(pipe.denoise_stats)
        marginal = None
        if args.steps > 1:  # a 1-step generation too: the difference is a step without the generation's setup
            extra = StepRecorder(pipe.network.obj, keep_on=args.device)  # the same hook work per forward
            with torch.inference_mode():
                pipe.denoise(dataclasses.replace(job, num_steps=1), latent, 1, emb, NullProgress())
            extra.close()
            marginal = (times[0] - times[1]) / (args.steps - 1)
        if exact_steps is None:  # every setting's error is against the first exact run (eager when it ran)
            exact_steps, exact_latent = steps, out
        errs = relative_errors(steps, exact_steps)
        results[key] = {
            "fast": fast_of(s).describe() or "exact", "compile": compiled, **stats,
            "marginal_s_per_step": None if marginal is None else round(marginal, 3),
            "attention": pipe.attention,  # the blocks' self-attention kernel (flash-attn-4 where installed)
            "warmup_step_s": round(t_warm, 2),
            "denoise_s": round(times[0], 2), "s_per_step": round(times[0] / args.steps, 3),
            "rel_err_per_step": [round(e, 5) for e in errs],
            "final_latent_rel_err": ((out.float() - exact_latent.float()).norm() / exact_latent.float().norm()).item(),
            "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30,
            "allocated_before_gib": round(before / 2**30, 2),
        }
        results[key]["time_vs_exact"] = round(results[key]["denoise_s"] / results[exact_key]["denoise_s"], 3)
        if marginal is not None:  # per step of a long generation: what a 35-step video pays
            marginals[key] = marginal
            results[key]["marginal_vs_exact"] = round(marginal / marginals[exact_key], 3)
        if "exact" in results:
            results[key]["time_vs_exact_eager"] = round(results[key]["denoise_s"] / results["exact"]["denoise_s"], 3)
        print(json.dumps({"setting": key, **{k: v for k, v in results[key].items() if k != "rel_err_per_step"}}),
              flush=True)
        if args.partial_out is not None:  # what is done so far, in case the run is cut short
            args.partial_out.write_text(json.dumps({"results": results}, indent=1) + "\n")
        pipe.close()
        del pipe, net, steps
        torch._dynamo.reset()  # compiled code holds the blocks it guards on: else the network outlives its run
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    return {"benchmark": f"fast mode vs exact mode, {args.model} random bf16 weights, default job, denoising stage",
            "model": spec.name, "num_steps": args.steps, "modes": args.modes,
            "inductor_options": json.loads(args.inductor_options) if args.inductor_options else None,
            "results": results}


# ----------------------------------------------------------------------------------------------------------


def print_table(report: dict) -> None:
    res = report["results"]
    if "psnr_vs_exact_db" in next(iter(res.values())):
        print(f"\n{'setting':36} {'fwd':>5} {'cached':>6} {'work':>6} {'time':>6} {'PSNR vs exact':>14} "
              f"{'min':>6} {'follow':>7} {'gain dB':>8}")
        for s, r in res.items():
            print(f"{s:36} {r['branch_forwards']:5.1f} {r['cached_forwards']:6.1f} {r['network_work_vs_exact']:6.3f} "
                  f"{r['denoise_time_vs_exact']:6.3f} {r['psnr_vs_exact_db']:14.2f} {r['psnr_vs_exact_min_db']:6.2f} "
                  f"{100 * r['follow_rate']:6.1f}% {r['psnr_gain_db']:8.2f}")
    else:
        print(f"\n{'setting':36} {'s/step':>7} {'vs exact':>8} {'vs eager':>8} {'marginal':>8} {'vs exact':>8} "
              f"{'fwd':>5} {'cached':>6} {'final rel err':>13}")
        for s, r in res.items():
            m = r.get("marginal_s_per_step")
            marginal = f"{m:8.3f} {r['marginal_vs_exact']:8.3f}" if m is not None else f"{'-':>8} {'-':>8}"
            print(f"{s:36} {r['s_per_step']:7.3f} {r['time_vs_exact']:8.3f} {r.get('time_vs_exact_eager', 1.0):8.3f} "
                  f"{marginal} {r['branch_forwards']:5d} {r['cached_forwards']:6d} {r['final_latent_rel_err']:13.2e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", nargs="+", default=None,
                    help="--fast values to compare with exact mode (default: each option and their combination)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clips", type=int, default=32, help="demo: held-out clips")
    ap.add_argument("--steps", type=int, default=35)
    ap.add_argument("--input-frames", type=int, default=1, choices=[1, 9], help="demo: input frames")
    ap.add_argument("--guidance", type=float, default=None, help="default: the model's")
    ap.add_argument("--checkpoint-dir", type=Path, default=None, help="demo: default the bundled checkpoint")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads for torch (1 is fastest on a small shared machine)")
    ap.add_argument("--full-size", action="store_true", help="random-weight 7B/14B denoising on a GPU")
    ap.add_argument("--model", default="7B", choices=["7B", "14B"], help="--full-size: which network")
    ap.add_argument("--modes", nargs="+", default=["eager"], choices=["eager", "compile"],
                    help="--full-size: run the settings without and/or with --compile (exact first in each)")
    ap.add_argument("--unfused-modulation", action="store_true",
                    help="--full-size: also run each FP8 setting without fast.Fp8Modulate, each linear quantizing "
                         "the plain modulation itself (the same run's measure of what quantizing once saves)")
    ap.add_argument("--unfused-gelu", action="store_true",
                    help="--full-size: also run each FP8 setting without fast.Fp8Gelu (the down projection "
                         "quantizing GELU's output itself, its row amax from the GELU'd values)")
    ap.add_argument("--persistent-rows", nargs="?", const="all", default=None, choices=["all", "quantize"],
                    help="--full-size: also run each compiled setting with inductor's persistent row reductions up "
                         f"to {PERSISTENT_ROWS_MAX} columns (an experiment; turns off inductor's on-disk caches); "
                         "'quantize': only in kernels without a layer norm")
    ap.add_argument("--inductor-options", default=None, metavar="JSON",
                    help="--full-size: also run each compiled setting with these inductor options for its blocks, "
                         'e.g. \'{"coordinate_descent_tuning": true}\' (fast.BLOCK_INDUCTOR_OPTIONS)')
    ap.add_argument("--row-kernel", action="store_true",
                    help="--full-size: also run each FP8 setting with the attention outputs' quantization and the "
                         "MLP's GELU + quantization by the hand-written Triton kernels (fast.ROW_KERNELS, fp8_kernels)")
    ap.add_argument("--partial-out", type=Path, default=None,
                    help="--full-size: rewrite this JSON after each setting (results so far)")
    ap.add_argument("--out", type=Path, default=None,
                    help="default: benchmarks/results/fast_demo_<device>.json (demo) or fast-<model>-<device>.json")
    args = ap.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    if args.full_size and not args.device.startswith("cuda"):
        ap.error("--full-size needs --device cuda")
    if args.inductor_options is not None:
        try:
            if not isinstance(json.loads(args.inductor_options), dict):
                raise ValueError("not an object")
        except ValueError as exc:
            ap.error(f"--inductor-options: expected a JSON object, {exc}")
    t0 = time.perf_counter()
    report = run_full_size(args) if args.full_size else run_demo(args)
    dev = args.device.split(":")[0]
    report.update(
        command="python " + " ".join(sys.argv),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        device=torch.cuda.get_device_name(args.device) if dev == "cuda" else
        f"cpu ({torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()}, shared machine)",
        torch=torch.__version__, seconds=round(time.perf_counter() - t0, 1))
    out = args.out or REPO / "benchmarks" / "results" / (
        f"fast-{args.model.lower()}-{dev}.json" if args.full_size else f"fast_demo_{dev}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print_table(report)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
