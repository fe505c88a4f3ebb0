"""Peak GPU memory and time of every stage of the default job under every memory strategy, at full size.

One process per model: builds the 7B or 14B network, a T5-11B-sized encoder and the CV8x8x8 tokenizer with random
bf16 weights, parks them in pinned host memory once, and then for each strategy of ``cosmos_cli.planner`` (fastest
first) places them as the strategy says, generates the default job (121x704x1280 from one 704x1280 frame) with
``--steps`` sampler steps, records ``torch.cuda.max_memory_allocated`` and ``max_memory_reserved`` per stage and
the time per stage and per step, and gives everything back before the next strategy. The 35-step denoising time
is extrapolated from the last step.

The prompt upsampler (Pixtral-12B) and the guardrails (LlamaGuard-7B, SigLIP, RetinaFace) are weight-only
stand-ins: their bf16 weight bytes are placed and moved exactly as the strategy says (so the other stages carry
them when they are resident, and a swap costs its real copy), but their own stages compute nothing. Their
activations are the planner's estimates. The video is not encoded to mp4 (CPU work that would only slow the run).

A strategy whose predicted peak does not fit the free memory is skipped (recorded with its prediction); a CUDA
out-of-memory error is recorded and the run goes on. A first section measures the tokenizer alone: encode and
decode whole and over chunks of frames (time, peak, and the largest difference from the whole result).

    python benchmarks/bench_memory.py --model 7B --steps 2 --out benchmarks/results/memory-7b-h100.json
    python benchmarks/bench_memory.py --model tiny --device cpu     # a dry run of the script on a CPU
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

import cosmos_cli.media as media
from cosmos_cli.errors import MemoryPlanError
from cosmos_cli.jobs import GenerationJob
from cosmos_cli.planner import plan_memory
from cosmos_cli.progress import NullProgress
from cosmos_cli.specs import GUARDRAIL, UPSAMPLER, Component
from cosmos_plugins.predict1.guardrails import Verdict
from cosmos_plugins.predict1.offload import Resident, park, parked_groups
from cosmos_plugins.predict1.params import TOKENIZER_CHUNK_FRAMES
from cosmos_plugins.predict1.pipeline import Predict1Pipeline
from cosmos_plugins.predict1.specs import PREDICT1_7B, PREDICT1_14B, PREDICT1_TINY
from cosmos_plugins.predict1.strategies import STRATEGIES, STRATEGY_NAMES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generate import random_t5, random_tokenizer  # noqa: E402
from bench_network import random_network  # noqa: E402

GiB = 1 << 30
STAGES = ("upsample", "text_guardrail", "encode_video", "encode_text", "denoise", "decode", "video_guardrail")


class Weights(nn.Module):
    """A stand-in's weight bytes: one flat bf16 parameter (uninitialized: nothing computes with it)."""

    def __init__(self, numel: int, device: str):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(max(numel, 1), dtype=torch.bfloat16, device=device),
                                   requires_grad=False)


class UpsamplerStandIn:
    def __init__(self, numel: int, device: str):
        self.model = Weights(numel, device)

    def to(self, device):
        return self

    def upsample(self, image, prompt, *, seed, ignore_prompt=False):
        return prompt or "a robot arm picks up a red cup from the table"


class TextGuardrailStandIn:
    def __init__(self, numel: int, device: str):
        self.model = Weights(numel, device)

    def to(self, device):
        return self

    def check(self, prompt):
        return Verdict(True, "stand-in", "not run")


class VideoGuardrailStandIn(TextGuardrailStandIn):
    def check(self, frames):
        return Verdict(True, "stand-in", "not run"), frames


class StepTimer(NullProgress):
    """Records the time of every sampler step (the sampler calls ``advance`` after each)."""

    def __init__(self, device: torch.device):
        self.device, self.times = device, []

    def steps(self, total, label):
        def advance(n=1):
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.times.append(time.perf_counter())
        self.times = [time.perf_counter()]
        return advance


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_and_time(fn, device):
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    secs = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else 0
    return out, secs, peak


@torch.inference_mode()
def tokenizer_section(tok, spec, device, dtype, chunks) -> dict:
    """Encode and decode one clip whole and in chunks: seconds, peak above the weights, difference from whole."""
    gen = torch.Generator(device).manual_seed(0)
    x = torch.rand(1, 3, spec.num_frames, spec.height, spec.width, generator=gen, device=device, dtype=torch.float32)
    x = (x * 2 - 1).to(dtype)
    placed = Resident(tok, device)
    rows = {}
    ref_z = ref_v = None
    for chunk in (None, *chunks):
        key = "whole" if chunk is None else f"chunk{chunk}"
        try:
            z, te, pe = peak_and_time(lambda c=chunk, clip=x: tok.encode(clip, chunk_frames=c), device)
            latent = z if ref_z is None else ref_z
            v, td, pd = peak_and_time(lambda c=chunk, lat=latent: tok.decode(lat, chunk_frames=c), device)
        except torch.cuda.OutOfMemoryError as e:
            rows[key] = {"error": f"out of memory: {str(e).splitlines()[0]}"}
            gc.collect()
            torch.cuda.empty_cache()
            continue
        if ref_z is None:
            ref_z, ref_v = z, v
        rows[key] = {
            "encode_s": te, "encode_peak_gib": pe / GiB, "decode_s": td, "decode_peak_gib": pd / GiB,
            "encode_max_abs_diff": (z.float() - ref_z.float()).abs().max().item(),
            "encode_rel_l2_diff": ((z.float() - ref_z.float()).norm() / ref_z.float().norm()).item(),
            "decode_max_abs_diff": (v.float() - ref_v.float()).abs().max().item(),
            "decode_rel_l2_diff": ((v.float() - ref_v.float()).norm() / ref_v.float().norm()).item(),
            "decode_max_abs": ref_v.float().abs().max().item(),
        }
        z = v = latent = None
    placed.close()
    return rows


def build(spec, device: torch.device):
    dev = str(device)
    network = random_network(spec.network, seed=0, device=dev)
    if device.type == "cpu":
        network = network.float()
    park(network, list(network.blocks.values()))
    text_encoder = random_t5(spec, dev)
    if device.type == "cpu":
        text_encoder.model.float()
    park(text_encoder.model, list(text_encoder.model.encoder.block))
    tokenizer = random_tokenizer(spec, dev)
    if device.type == "cpu":
        tokenizer = tokenizer.float()
    park(tokenizer)
    def params_of(name: str, stage: str) -> int:
        return sum(c.num_params for c in spec.components if c.name == name and stage in c.stages)

    stand_ins = (UpsamplerStandIn(params_of(UPSAMPLER, "upsample"), dev),
                 TextGuardrailStandIn(params_of(GUARDRAIL, "text_guardrail"), dev),
                 VideoGuardrailStandIn(params_of(GUARDRAIL, "video_guardrail"), dev))
    for s in stand_ins:
        park(s.model)
    sync(device)
    return network, text_encoder, tokenizer, stand_ins


def input_image(spec, folder: Path) -> Path:
    import cv2

    rng = np.random.default_rng(0)
    img = (rng.random((spec.height, spec.width, 3)) * 255).astype(np.uint8)
    path = folder / "input.png"
    cv2.imwrite(str(path), img)
    return path


def run_strategy(name, spec, parts, job, device, free_bytes, work: Path, reference: dict) -> dict:
    network, text_encoder, tokenizer, (ups, tgrd, vgrd) = parts
    row: dict = {"strategy": name}
    try:
        plan = plan_memory(spec, free_bytes, strategy=name, upsampler=True, guardrail=True)
    except MemoryPlanError as e:
        plan = plan_memory(spec, None, strategy=name, upsampler=True, guardrail=True)
        row.update(skipped=f"{e.message}", predicted_peak_gib=plan.predicted_peak_bytes / GiB,
                   predicted_stage_gib={s: b / GiB for s, b in plan.stage_peaks})
        return row
    row.update(predicted_peak_gib=plan.predicted_peak_bytes / GiB,
               predicted_stage_gib={s: b / GiB for s, b in plan.stage_peaks},
               placements={c.name: c.placement for c in plan.components})
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    pipe = Predict1Pipeline(spec, plan, device, network, tokenizer, text_encoder, "fp32", upsampler=ups,
                            text_guardrail=tgrd, video_guardrail=vgrd)
    captured = {}
    decode = pipe.decode

    def keep_latent(latent):
        captured["latent"] = latent.float().cpu()
        frames = decode(latent)
        captured["frames"] = frames
        return frames

    pipe.decode = keep_latent
    timer = StepTimer(device)
    sync(device)
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    try:
        result = pipe.generate(job, timer, video_path=work / f"{name}.mp4")
        steps = np.diff(timer.times).tolist()
        denoise = result.timings["denoise"]
        row.update(
            seconds=result.timings,
            step_s=steps,
            denoise_35_steps_s=denoise + (35 - job.num_steps) * steps[-1],
            peak_gib={k: v / GiB for k, v in result.stage_peak_bytes.items()},
            reserved_gib={k: v / GiB for k, v in pipe.stage_reserved_bytes.items()},
            resident_before_gib=base / GiB,
        )
        if "latent" in reference:
            ref = reference["latent"]
            row["latent_rel_diff_vs_" + reference["name"]] = ((captured["latent"] - ref).norm() / ref.norm()).item()
            row["frames_max_abs_diff_vs_" + reference["name"]] = int(
                np.abs(captured["frames"].astype(np.int16) - reference["frames"].astype(np.int16)).max())
        else:
            reference.update(name=name, latent=captured["latent"], frames=captured["frames"])
    except torch.cuda.OutOfMemoryError as e:
        row["error"] = f"CUDA out of memory: {str(e).splitlines()[0]}"
    except Exception as e:  # noqa: BLE001 - a benchmark records the failure and goes on to the next strategy
        row["error"] = f"{type(e).__name__}: {e}"
        row["traceback"] = traceback.format_exc()[-2000:]
    finally:
        pipe.close()
        del pipe
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            row["allocated_after_close_gib"] = torch.cuda.memory_allocated(device) / GiB
    del dtype
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="7B", choices=["7B", "14B", "tiny"])
    ap.add_argument("--steps", type=int, default=2)
    # the stream-mapped strategies stream from a checkpoint file, which this script does not write (its weights are
    # made in memory): benchmarks/bench_hostram.py measures them
    ap.add_argument("--strategies", nargs="*", default=[s.name for s in STRATEGIES if not s.mapped])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tokenizer-chunks", type=int, nargs="*", default=[TOKENIZER_CHUNK_FRAMES],
                    help="chunk sizes (frames) of the tokenizer section, besides the whole clip; none: skip it")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--summarize", type=Path, nargs="*", help="result files: print (and --markdown) their table")
    ap.add_argument("--markdown", type=Path, default=None)
    args = ap.parse_args()
    if args.summarize:
        print(summarize(args.summarize, args.markdown))
        return
    device = torch.device(args.device)
    spec = {"7B": PREDICT1_7B, "14B": PREDICT1_14B, "tiny": PREDICT1_TINY}[args.model]
    if spec.component(UPSAMPLER) is None:  # the tiny spec: give it small stand-ins so every stage runs
        spec = replace(spec, components=(Component(UPSAMPLER, ("upsample",), 1000, left_out_by="upsampler"),
                                         Component(GUARDRAIL, ("text_guardrail", "video_guardrail"), 1000,
                                                   left_out_by="guardrail"),
                                         *spec.components))
    media.write_video = lambda path, frames, fps, **kw: Path(path)  # no mp4 encoding (CPU time, not memory)
    free, total = torch.cuda.mem_get_info(device) if device.type == "cuda" else (None, None)
    report = {
        "benchmark": "every memory strategy at full size, random weights (benchmarks/bench_memory.py)",
        "command": "python " + " ".join(sys.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "model": spec.name,
        "steps": args.steps,
        "free_bytes_at_start": free,
        "total_bytes": total,
        "weights_gib": {c.name: c.weight_bytes / GiB for c in spec.components},
    }

    def save():
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n")

    t0 = time.perf_counter()
    parts = build(spec, device)
    report["setup_s"] = time.perf_counter() - t0
    groups = [g for m in (parts[0], parts[1].model, parts[2], *(s.model for s in parts[3])) for g in parked_groups(m)]
    report["host_copies_pinned"] = all(g.pinned for g in groups)
    report["host_copies_gib"] = sum(g.nbytes for g in groups) / GiB
    print(f"built and parked in {report['setup_s']:.1f} s", flush=True)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.tokenizer_chunks:
        report["tokenizer"] = tokenizer_section(parts[2], spec, device, dtype, args.tokenizer_chunks)
        gc.collect()
        if device.type == "cuda":  # a fresh process starts with an empty cache: so does the first strategy
            torch.cuda.empty_cache()
        print(json.dumps(report["tokenizer"], indent=1), flush=True)
        save()
    work = Path(tempfile.mkdtemp())
    job = GenerationJob(visual_input=input_image(spec, work), prompt="a robot arm picks up a red cup from the table",
                        num_steps=args.steps, num_input_frames=1, seed=1)
    reference: dict = {}
    report["strategies"] = []
    for name in args.strategies:
        t1 = time.perf_counter()
        row = run_strategy(name, spec, parts, job, device, free, work, reference)
        row["wall_s"] = time.perf_counter() - t1
        report["strategies"].append(row)
        save()
        brief = {k: row.get(k) for k in ("strategy", "skipped", "error", "wall_s")}
        print(json.dumps(brief), flush=True)
        if "peak_gib" in row:
            print("   peak " + " ".join(f"{k}={v:.2f}" for k, v in row["peak_gib"].items()) + "   predicted " +
                  " ".join(f"{k}={v:.2f}" for k, v in row["predicted_stage_gib"].items()), flush=True)
            print(f"   seconds {json.dumps({k: round(v, 2) for k, v in row['seconds'].items()})} "
                  f"steps {[round(s, 2) for s in row['step_s']]}", flush=True)
    save()
    print_table(report)


def summarize(paths: list[Path], out: Path | None) -> str:
    """A markdown table of measured against predicted peaks from result files (a later file's row for a
    strategy replaces an earlier one's). The predictions are recomputed with the planner's current formulas."""
    models: dict[str, dict] = {}
    for path in paths:
        report = json.loads(path.read_text())
        entry = models.setdefault(report["model"], {"rows": {}, "sources": []})
        entry["sources"].append(f"{path.name} ({report['date']}, {report['device']}): `{report['command']}`")
        for row in report["strategies"]:
            if "peak_gib" in row or row["strategy"] not in entry["rows"]:
                entry["rows"][row["strategy"]] = (row, path.name)
    from cosmos_cli.registry import find_model

    real = ("encode_video", "encode_text", "denoise", "decode")
    lines = []
    for model, entry in models.items():
        spec = find_model(model)[1]
        lines += [f"### {model}", "", *[f"- {s}" for s in entry["sources"]], "",
                  "| strategy | predicted peak | measured peak (allocated) | max reserved | error | "
                  + " | ".join(f"{s} meas/pred" for s in real) + " | denoise, 35 steps | vs fastest | file |",
                  "|---|" + "---:|" * (4 + len(real) + 2) + "---|"]
        fastest = None
        for name in STRATEGY_NAMES:
            if name not in entry["rows"]:
                continue
            row, source = entry["rows"][name]
            plan = plan_memory(spec, None, strategy=name, upsampler=True, guardrail=True)
            pred = dict(plan.stage_peaks)
            if "peak_gib" not in row:
                why = row.get("skipped") or row.get("error", "")
                lines.append(f"| {name} | {plan.predicted_peak_bytes / GiB:.1f} | not run: {why[:70]} |"
                             + " |" * (3 + len(real) + 2) + f" {source} |")
                continue
            meas = max(v for k, v in row["peak_gib"].items() if k in STAGES)
            resv = max(v for k, v in row["reserved_gib"].items() if k in STAGES)
            err = (plan.predicted_peak_bytes / GiB - meas) / meas
            cells = [f"{row['peak_gib'][s]:.2f} / {pred[s] / GiB:.2f}" for s in real]
            fastest = fastest or row["denoise_35_steps_s"]
            lines.append(f"| {name} | {plan.predicted_peak_bytes / GiB:.2f} | {meas:.2f} | {resv:.2f} | {err:+.1%} | "
                         + " | ".join(cells) + f" | {row['denoise_35_steps_s']:.0f} s | "
                         f"{row['denoise_35_steps_s'] / fastest:.2f}x | {source} |")
        lines.append("")
    text = "\n".join(lines)
    if out:
        out.write_text(text + "\n")
    return text


def print_table(report: dict) -> None:
    print(f"\n{report['model']} on {report['device']}, {report['steps']} steps")
    print(f"{'strategy':20} {'pred':>6} {'meas':>6} {'resv':>6} {'denoise35':>9}  per stage (measured/predicted GiB)")
    for row in report["strategies"]:
        if "peak_gib" not in row:
            why = row.get("skipped") or row.get("error", "")
            print(f"{row['strategy']:20} {row['predicted_peak_gib']:6.1f} {'-':>6} {'-':>6} {'-':>9}  {why[:90]}")
            continue
        meas = max((v for k, v in row["peak_gib"].items() if k in STAGES), default=0.0)
        resv = max((v for k, v in row["reserved_gib"].items() if k in STAGES), default=0.0)
        stages = " ".join(f"{s}={row['peak_gib'].get(s, 0):.1f}/{row['predicted_stage_gib'].get(s, 0):.1f}"
                          for s in STAGES if s in row["seconds"])
        print(f"{row['strategy']:20} {row['predicted_peak_gib']:6.1f} {meas:6.1f} {resv:6.1f} "
              f"{row['denoise_35_steps_s']:9.1f}  {stages}")


if __name__ == "__main__":
    main()
