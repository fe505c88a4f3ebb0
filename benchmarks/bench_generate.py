"""One full-size generation with random weights: time and peak GPU memory of every stage.

Builds the real pipeline (``Predict1Pipeline``) around full-size components with random bf16 weights made on
the GPU (the 7B or 14B network, the CV8x8x8 tokenizer, a T5-11B-sized encoder with a small local tokenizer:
the released tokenizer files cannot be downloaded here) and generates the default job (121x704x1280 from one
704x1280 input frame) with a few sampler steps, under a memory strategy. Reports seconds and the peak of
``torch.cuda.max_memory_allocated`` per stage, and the 35-step denoising time extrapolated from the steps run.

    python benchmarks/bench_generate.py --model 7B --steps 2 --strategy resident --out benchmarks/results/x.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from cosmos_cli.jobs import GenerationJob
from cosmos_cli.media import write_video
from cosmos_cli.planner import plan_memory
from cosmos_cli.progress import NullProgress
from cosmos_plugins.predict1.pipeline import Predict1Pipeline
from cosmos_plugins.predict1.specs import PREDICT1_7B, PREDICT1_14B

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_network import random_network  # noqa: E402

GiB = 1 << 30


@torch.no_grad()
def random_t5(spec, device: str, folder: Path | None = None):
    """The spec's T5 encoder with random bf16 weights, with the word tokenizer written to ``folder`` (a new
    temporary folder by default)."""
    from cosmos_plugins.predict1.fixtures import DEFAULT_WORDS
    from cosmos_plugins.predict1.t5 import T5Config, T5Encoder
    from cosmos_plugins.predict1.text_encoder import PromptTokenizer, T5TextEncoder, build_word_tokenizer

    p = spec.text_encoder
    config = T5Config(vocab_size=p.vocab_size, d_model=p.d_model, d_kv=p.d_kv, num_heads=p.num_heads, d_ff=p.d_ff,
                      num_layers=p.num_layers)
    with torch.device("meta"):
        model = T5Encoder(config)
    model = model.to_empty(device=device).to(torch.bfloat16)
    gen = torch.Generator(device).manual_seed(0)
    for name, t in model.named_parameters():
        t.normal_(generator=gen).mul_(0.05 if "weight" in name and t.ndim == 2 else 1.0)
    folder = Path(folder or tempfile.mkdtemp(prefix="t5-tokenizer-"))
    build_word_tokenizer(list(DEFAULT_WORDS)).save_pretrained(folder)
    return T5TextEncoder(model.eval(), PromptTokenizer(Path(folder) / "tokenizer.json", p.max_length))


@torch.no_grad()
def random_tokenizer(spec, device: str):
    from cosmos_plugins.predict1.tokenizer import VideoTokenizer, randomize_

    tok = VideoTokenizer(spec.tokenizer)  # on the CPU: its constant buffers (Haar taps) are built there
    randomize_(tok, seed=0)
    return tok.to(device, torch.bfloat16).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="7B", choices=["7B", "14B"])
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--strategy", default="resident")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    spec = {"7B": PREDICT1_7B, "14B": PREDICT1_14B}[args.model]
    device = "cuda"
    free, total = torch.cuda.mem_get_info()
    plan = plan_memory(spec, free, strategy=args.strategy, upsampler=False, guardrail=False)
    where = {c.name: ("cuda" if c.placement == "gpu" else "cpu") for c in plan.components}

    text_encoder = random_t5(spec, where["text_encoder"])
    tokenizer = random_tokenizer(spec, where["tokenizer"])
    network = random_network(spec.network, seed=0, device=where["diffusion_transformer"])
    pipe = Predict1Pipeline(spec, plan, torch.device(device), network, tokenizer, text_encoder, numerics="fp32")
    torch.cuda.synchronize()
    resident = torch.cuda.memory_allocated()

    work = Path(tempfile.mkdtemp())
    frame = (np.random.default_rng(0).random((1, spec.height, spec.width, 3)) * 255).astype(np.uint8)
    write_video(work / "input.mp4", np.repeat(frame, 9, axis=0), fps=24)
    job = GenerationJob(visual_input=work / "input.mp4", prompt="a robot arm picks up a red cup from the table",
                        num_steps=args.steps, num_input_frames=9)
    # a warm-up generation (cuDNN plans, allocator), then the measured one
    pipe.generate(job, NullProgress(), video_path=work / "warm.mp4")
    result = pipe.generate(job, NullProgress(), video_path=work / "out.mp4", prompt_path=work / "out.txt")
    report = {
        "benchmark": "one generation at full size with random weights",
        "command": "python " + " ".join(sys.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "model": spec.name,
        "strategy": plan.strategy,
        "planner_predicted_peak_gib": plan.predicted_peak_bytes / GiB,
        "planner_stage_peaks_gib": {s: b / GiB for s, b in plan.stage_peaks},
        "resident_weights_gib": resident / GiB,
        "steps": args.steps,
        "seconds": result.timings,
        "denoise_s_per_step": result.timings["denoise"] / args.steps,
        "denoise_35_steps_s_extrapolated": result.timings["denoise"] / args.steps * 35,
        "peak_gib": {k: v / GiB for k, v in result.stage_peak_bytes.items()},
        "max_reserved_gib": torch.cuda.max_memory_reserved() / GiB,
        "output_frames": int(__import__("cosmos_cli.media", fromlist=["probe"]).probe(result.video_path).num_frames),
    }
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{'stage':16} {'seconds':>8} {'peak GiB':>9} {'planner GiB':>12}")
    predicted = dict(plan.stage_peaks)
    for stage, secs in result.timings.items():
        print(f"{stage:16} {secs:8.2f} {result.stage_peak_bytes.get(stage, 0) / GiB:9.1f} "
              f"{predicted.get(stage, 0) / GiB:12.1f}")


if __name__ == "__main__":
    main()
