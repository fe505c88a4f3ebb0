"""Write the demo model's example inputs to assets/examples/ (or --out), the same bytes every run.

    python -m tools.demo.make_examples [--out assets/examples]

Four held-out clips (seeds from EVAL_SEEDS, chosen so that both kinds, both directions and four backgrounds
appear): two single-frame inputs (frame 0 as PNG) and two 9-frame inputs (frames 0-8 as H.264 yuv420p MP4),
plus ``prompts.json``: a list of {"visual_input", "prompt", "num_input_frames"} entries, each a valid
``cosmos batch`` line when the list is written out as JSONL. The file names carry the scene seed, so
``make_clip(seed)`` gives the ground truth the model should continue.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np

from .scenes import EVAL_SEEDS, FPS, Clip, make_clip

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "assets" / "examples"

# (kind, direction, number of input frames) of each example, in order.
WANTED = (("ball", "left", 1), ("box", "right", 1), ("ball", "right", 9), ("box", "left", 9))
VIDEO_CRF = 12  # near-lossless, still a few kB for 9 frames of flat colour


@dataclass(frozen=True)
class Example:
    clip: Clip
    num_input_frames: int

    @property
    def file_name(self) -> str:
        p = self.clip.params
        return f"{p.colour}_{p.kind}_{p.seed}.{'png' if self.num_input_frames == 1 else 'mp4'}"

    def entry(self) -> dict:
        return {"visual_input": self.file_name, "prompt": self.clip.caption, "num_input_frames": self.num_input_frames}


def choose_examples() -> list[Example]:
    """The first held-out seeds that give each wanted (kind, direction) on a background not used yet."""
    examples: list[Example] = []
    used: set[str] = set()
    seeds = iter(EVAL_SEEDS)
    for kind, direction, frames in WANTED:
        for seed in seeds:
            clip = make_clip(seed)
            p = clip.params
            if (p.kind, p.direction) == (kind, direction) and p.background not in used:
                used.add(p.background)
                examples.append(Example(clip, frames))
                break
    return examples


def write_png(path: Path, frame: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise RuntimeError(f"could not encode {path.name}")
    path.write_bytes(buf.tobytes())


def write_mp4(path: Path, frames: np.ndarray, fps: int = FPS) -> None:
    """H.264 yuv420p with bit-exact flags and one thread, so the bytes depend only on the ffmpeg build."""
    height, width = frames.shape[1:3]
    writer = imageio_ffmpeg.write_frames(
        str(path), (width, height), fps=fps, codec="libx264", pix_fmt_out="yuv420p", quality=None,
        macro_block_size=16, ffmpeg_log_level="error",
        output_params=["-crf", str(VIDEO_CRF), "-preset", "medium", "-threads", "1", "-x264-params", "threads=1",
                       "-fflags", "+bitexact", "-flags", "+bitexact", "-map_metadata", "-1"],
    )
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame).tobytes())
    writer.close()


def write_examples(out: Path) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for ex in choose_examples():
        path = out / ex.file_name
        if ex.num_input_frames == 1:
            write_png(path, ex.clip.frames[0])
        else:
            write_mp4(path, ex.clip.frames[:ex.num_input_frames])
        entries.append(ex.entry())
    (out / "prompts.json").write_text(json.dumps(entries, indent=2) + "\n")
    return entries


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"folder to write (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    for entry in write_examples(args.out):
        print(f"{entry['visual_input']}\t{entry['num_input_frames']}\t{entry['prompt']}")


if __name__ == "__main__":
    main()
