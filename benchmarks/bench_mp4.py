"""The mp4 write (``cosmos_cli.media.write_video``) at the default job's size: x264 speed presets and crf values,
seconds, file size and PSNR of the decoded file against the frames written.

The frames: a real clip (``shared/media/video2world_input1.mp4``, the original project's example) scaled to
704 x 1280, its frames cycled to 121 and each shifted 3, 4 or 5 px to the left of the last (wrapping around),
so that every frame moves as a generated video does. Each setting is written ``--repeats`` times; the best time
counts (the encoder's threads share the machine's cores).

    python benchmarks/bench_mp4.py --out benchmarks/results/mp4-presets-cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cosmos_cli.media import DEFAULT_CRF, DEFAULT_PRESET, read_video, write_video  # noqa: E402
from tools.demo.metrics import psnr  # noqa: E402

CLIP = REPO.parent / "shared" / "media" / "video2world_input1.mp4"
FRAMES, HEIGHT, WIDTH = 121, 704, 1280
SETTINGS = [("medium", 25), ("veryfast", 25), ("veryfast", 24), ("superfast", 24), ("superfast", 22),
            ("ultrafast", 22)]


def moving_clip(path: Path) -> np.ndarray:
    """[121, 704, 1280, 3] uint8: the clip's frames scaled, cycled and shifted 3-5 px a frame."""
    import torch

    src, _ = read_video(path)
    t = torch.from_numpy(src).permute(0, 3, 1, 2).float()
    t = torch.nn.functional.interpolate(t, size=(HEIGHT, WIDTH), mode="bilinear", align_corners=False)
    base = t.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    shifts = np.cumsum([0] + [3 + i % 3 for i in range(FRAMES - 1)])
    return np.stack([np.roll(base[i % len(base)], -int(s), axis=1) for i, s in enumerate(shifts)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clip", type=Path, default=CLIP)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    frames = moving_clip(args.clip)
    report = {"benchmark": "mp4 write (write_video), 121 x 704 x 1280, x264 presets",
              "command": "python " + " ".join(sys.argv),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "device": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
              "clip": args.clip.name, "default": {"preset": DEFAULT_PRESET, "crf": DEFAULT_CRF}, "results": []}
    with tempfile.TemporaryDirectory() as tmp:
        for preset, crf in SETTINGS:
            path = Path(tmp) / f"{preset}-{crf}.mp4"
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                write_video(path, frames, fps=24, crf=crf, preset=preset)
                times.append(time.perf_counter() - t0)
            back, _ = read_video(path)
            row = {"preset": preset, "crf": crf, "seconds": round(min(times), 3),
                   "megabytes": round(path.stat().st_size / 1e6, 3), "psnr_db": round(psnr(back, frames), 2)}
            report["results"].append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\n{report['device']}; default {DEFAULT_PRESET}/crf {DEFAULT_CRF}")
    print(f"{'preset':10} {'crf':>3} {'s':>6} {'MB':>6} {'PSNR dB':>8}")
    for r in report["results"]:
        print(f"{r['preset']:10} {r['crf']:3} {r['seconds']:6.2f} {r['megabytes']:6.2f} {r['psnr_db']:8.2f}")


if __name__ == "__main__":
    main()
