"""Render the README's frame strip: example inputs, the demo model's continuations, and the ground truth.

    python -m tools.demo.render_strip [--out assets/demo_strip.png] [--device cpu]

For each single-frame example of ``assets/examples/prompts.json`` (held-out scenes): one row of the generated
video (its first frame is the input), one row of the true clip (``make_clip`` of the seed in the file name), at
frames 0, 4, ..., 32. Generated with the bundled model at its defaults (35 steps, seed 1), decoded frames as
they are before video encoding.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # tools/ is not an installed package
    sys.path.insert(0, str(REPO))

from cosmos_cli.media import read_frames  # noqa: E402
from tools.demo.evaluate import generate, load_pipeline  # noqa: E402
from tools.demo.scenes import make_clip  # noqa: E402

EXAMPLES = REPO / "assets" / "examples"
DEFAULT_OUT = REPO / "assets" / "demo_strip.png"
SHOWN = tuple(range(0, 33, 4))  # frame indices in the strip
LABEL_W = 132  # width of the label column, pixels
GAP = 4
HEADER = 22


def _text(img: np.ndarray, text: str, x: int, y: int, scale: float = 0.45) -> None:
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (30, 30, 30), 1, cv2.LINE_AA)


def strip(rows: list[tuple[str, np.ndarray]], captions: list[str]) -> np.ndarray:
    """Rows of (label, (T, H, W, 3) frames), in pairs with a caption above each pair: one RGB image."""
    h, w = rows[0][1].shape[1:3]
    width = LABEL_W + len(SHOWN) * (w + GAP)
    blocks = [np.full((HEADER, width, 3), 255, np.uint8)]
    for j, t in enumerate(SHOWN):
        _text(blocks[0], f"frame {t}", LABEL_W + j * (w + GAP) + 36, 16)
    for i, (label, frames) in enumerate(rows):
        if i % 2 == 0:
            band = np.full((HEADER, width, 3), 255, np.uint8)
            _text(band, f'"{captions[i // 2]}"', 6, 16)
            blocks.append(band)
        row = np.full((h + GAP, width, 3), 255, np.uint8)
        _text(row, label, 6, h // 2 + 5)
        for j, t in enumerate(SHOWN):
            x = LABEL_W + j * (w + GAP)
            row[:h, x:x + w] = frames[t]
        blocks.append(row)
    return np.concatenate(blocks)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--checkpoint-dir", type=Path, default=None, help="default: the bundled demo checkpoint")
    args = ap.parse_args(argv)

    pipe = load_pipeline(args.checkpoint_dir, args.device)
    entries = [e for e in json.loads((EXAMPLES / "prompts.json").read_text()) if e["num_input_frames"] == 1]
    rows, captions = [], []
    for entry in entries:
        frames = read_frames(EXAMPLES / entry["visual_input"], 1)
        video = generate(pipe, frames, entry["prompt"])
        truth = make_clip(int(re.search(r"_(\d+)\.", entry["visual_input"]).group(1))).frames
        rows += [("generated", video), ("ground truth", truth)]
        captions.append(entry["prompt"])
    image = strip(rows, captions)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise RuntimeError("could not encode the strip")
    args.out.write_bytes(buf.tobytes())
    print(f"wrote {args.out} ({image.shape[1]}x{image.shape[0]}, {len(buf) // 1024} KiB)")


if __name__ == "__main__":
    main()
