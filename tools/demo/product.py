"""The demo model through the product path: held-out clips written as files, `cosmos generate` and `cosmos batch`
run as a user runs them, the mp4s read back and scored.

    python -m tools.demo.product --steps 8          # print every case's figures (and write them as JSON)

What a user's command goes through is all here: the CLI, the image and video readers, the pipeline's own
``encode_video``, the text encoder, the sampler, decode, the mp4 writer, and (on our side) the mp4 reader.
:func:`tools.demo.evaluate.generate` skips the file reading and encodes the frames itself; this module does not.

Cases: :data:`CASES`, held-out clips (seeds from ``EVAL_SEEDS``, clear of the example inputs, of
``tests/test_demo_model.py``'s seeds and of the evaluation's), each with its input written as PNG, JPEG (one
frame) or H.264 MP4 (nine frames). One case runs through ``cosmos generate``, the others are the lines of one
``cosmos batch`` file; the ``flip`` cases give a clip's input with left and right swapped in its caption, so the
same first frame must go both ways.

Figures per case (:func:`score`):

* ``gain_db``: PSNR of the predicted frames against the true clip, minus that of the last input frame repeated
  (:func:`tools.demo.metrics.evaluate_clip`).
* ``direction`` / ``follows``: where the object goes from the last input frame on, and whether that is the
  prompt's direction.
* ``input_psnr_db``: PSNR of the video's first ``n`` frames (the model's copy of the input) against the ``n``
  input frames as the input file holds them (decoded here by OpenCV / imageio-ffmpeg, not by the product).
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import platform
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # tools/ is not an installed package
    sys.path.insert(0, str(REPO))

from tools.demo.evaluate import flip_direction  # noqa: E402
from tools.demo.make_examples import write_mp4, write_png  # noqa: E402
from tools.demo.metrics import evaluate_clip, psnr  # noqa: E402
from tools.demo.scenes import EVAL_SEEDS, Clip, direction_from_caption, make_clip, sample_params  # noqa: E402

FIRST_SEED = EVAL_SEEDS.start + 3000  # the examples use the first eval seeds, the tests +500, evaluate +1000
JPEG_QUALITY = 95


@dataclass(frozen=True)
class Case:
    name: str
    seed: int
    num_input_frames: int
    fmt: str  # "png", "jpg" or "mp4"
    flip: bool = False  # the caption with left and right swapped
    command: str = "batch"  # "generate" or "batch"

    @property
    def input_name(self) -> str:
        return f"{self.name}.{self.fmt}"


def _seeds(wanted: list[tuple[str, str]], start: int = FIRST_SEED) -> list[int]:
    """The first seeds from ``start`` on with each (kind, direction) of ``wanted``, in order, each seed once."""
    out: list[int] = []
    for kind, direction in wanted:
        seed = start
        while True:
            p = sample_params(seed)
            if (p.kind, p.direction) == (kind, direction) and seed not in out:
                out.append(seed)
                break
            seed += 1
    return out


def default_cases() -> tuple[Case, ...]:
    """Four one-frame clips (both kinds, both directions), one of them also with the prompt flipped, two nine-frame
    clips from MP4, and one one-frame clip from JPEG through ``cosmos generate``."""
    one = _seeds([("ball", "left"), ("box", "right"), ("box", "left"), ("ball", "right")])
    nine = _seeds([("box", "right"), ("ball", "left")], start=FIRST_SEED + 100)
    jpg = _seeds([("box", "left")], start=FIRST_SEED + 200)
    return (
        *(Case(f"one_{i}", s, 1, "png") for i, s in enumerate(one)),
        Case("one_0_flipped", one[0], 1, "png", flip=True),
        *(Case(f"nine_{i}", s, 9, "mp4") for i, s in enumerate(nine)),
        Case("jpeg", jpg[0], 1, "jpg", command="generate"),
    )


CASES = default_cases()


def prompt_of(case: Case, clip: Clip) -> str:
    return flip_direction(clip.caption) if case.flip else clip.caption


def write_input(case: Case, clip: Clip, folder: Path) -> Path:
    """The case's input file: frame 0 as PNG or JPEG, or the first nine frames as H.264 MP4."""
    import cv2

    path = folder / case.input_name
    frames = clip.frames[:case.num_input_frames]
    if case.fmt == "png":
        write_png(path, frames[0])
    elif case.fmt == "jpg":
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frames[0], cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError(f"could not encode {path}")
        path.write_bytes(buf.tobytes())
    elif case.fmt == "mp4":
        write_mp4(path, frames)
    else:
        raise ValueError(f"unknown input format {case.fmt!r}")
    return path


def read_input(path: Path) -> np.ndarray:
    """The frames an input file holds, (n, H, W, 3) uint8 RGB, read by OpenCV / imageio-ffmpeg (not the product)."""
    import cv2

    if path.suffix == ".mp4":
        import imageio_ffmpeg

        reader = imageio_ffmpeg.read_frames(str(path))
        meta = reader.__next__()
        w, h = meta["size"]
        return np.stack([np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader])
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)[None]


def run_cli(*args: str) -> tuple[int, str, str]:
    """``cosmos ARGS`` in this process through ``cosmos_cli.app.main``, as the console script runs it."""
    from cosmos_cli.app import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return code, out.getvalue(), err.getvalue()


@dataclass
class Run:
    case: Case
    clip: Clip
    prompt: str
    input_frames: np.ndarray  # what the input file holds
    video: np.ndarray  # the output mp4, read back
    fps: float | None
    mp4: Path
    txt: Path


def generate_all(folder: Path, *, steps: int, cases=CASES, extra: tuple[str, ...] = ()) -> tuple[dict[str, Run], dict]:
    """Write every case's input under ``folder``, run the CLI (one ``generate`` per generate case, one ``batch`` for
    the rest, on the CPU, ``steps`` sampler steps), read the mp4s back: ``({case name: Run}, {command: seconds})``.
    Raises RuntimeError with the CLI's stderr when a command fails."""
    from cosmos_cli.media import read_video

    inputs, out = folder / "inputs", folder / "outputs"
    inputs.mkdir(parents=True, exist_ok=True)
    common = ("--no-upsampler", "--no-guardrail", "--device", "cpu", "--num-steps", str(steps), "--quiet",
              "--checkpoint-dir", str(folder / "no-checkpoints"), "--video-save-folder", str(out), *extra)
    clips = {c.name: make_clip(c.seed) for c in cases}
    prompts = {c.name: prompt_of(c, clips[c.name]) for c in cases}
    paths = {c.name: write_input(c, clips[c.name], inputs) for c in cases}
    seconds: dict[str, float] = {}
    for c in cases:
        if c.command == "generate":
            t0 = time.perf_counter()
            code, _, err = run_cli("generate", "-i", str(paths[c.name]), "--prompt", prompts[c.name],
                                   "--num-input-frames", str(c.num_input_frames), "--video-save-name", c.name, *common)
            seconds[f"generate {c.name}"] = time.perf_counter() - t0
            if code != 0:
                raise RuntimeError(f"cosmos generate {c.name} exited {code}: {err}")
    lines = [{"visual_input": str(paths[c.name]), "prompt": prompts[c.name], "num_input_frames": c.num_input_frames,
              "name": c.name} for c in cases if c.command == "batch"]
    if lines:
        jsonl = inputs / "batch.jsonl"
        jsonl.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
        t0 = time.perf_counter()
        code, _, err = run_cli("batch", str(jsonl), *[a for a in common if a != "--quiet"])
        seconds["batch"] = time.perf_counter() - t0
        if code != 0:
            raise RuntimeError(f"cosmos batch exited {code}: {err}")
    runs = {}
    for c in cases:
        video, fps = read_video(out / f"{c.name}.mp4")
        runs[c.name] = Run(c, clips[c.name], prompts[c.name], read_input(paths[c.name]), video, fps,
                           out / f"{c.name}.mp4", out / f"{c.name}.txt")
    return runs, seconds


def score(run: Run) -> dict:
    """The figures of one case (see the module doc)."""
    n = run.case.num_input_frames
    expected = direction_from_caption(run.prompt)
    row = evaluate_clip(run.clip.frames[:n], run.video, run.clip)
    return {
        "gain_db": row["psnr_gain"],
        "psnr_model_db": row["psnr_model"],
        "psnr_baseline_db": row["psnr_baseline"],
        "direction": row["direction_predicted"],
        "expected": expected,
        "follows": row["direction_predicted"] == expected,
        "input_psnr_db": psnr(run.video[:n], run.input_frames[:n]),
    }


def main(argv: list[str] | None = None) -> None:
    import tempfile

    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--numerics", default="fp32")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=None, help="JSON file to write (default: none)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        runs, seconds = generate_all(Path(tmp), steps=args.steps, extra=("--numerics", args.numerics))
    rows = {name: score(r) for name, r in runs.items()}
    print(f"{'case':16s} {'seed':>10s} {'n':>2s} {'gain dB':>8s} {'input dB':>9s} direction")
    for name, s in rows.items():
        c = runs[name].case
        print(f"{name:16s} {c.seed:10d} {c.num_input_frames:2d} {s['gain_db']:8.2f} {s['input_psnr_db']:9.2f} "
              f"{s['direction']} (prompt: {s['expected']})")
    one = [s for n, s in rows.items() if runs[n].case.num_input_frames == 1 and not runs[n].case.flip]
    nine = [s for n, s in rows.items() if runs[n].case.num_input_frames == 9]
    summary = {"mean_gain_one_db": float(np.mean([s["gain_db"] for s in one])),
               "mean_gain_nine_db": float(np.mean([s["gain_db"] for s in nine])),
               "min_input_psnr_one_db": min(s["input_psnr_db"] for s in one),
               "min_input_psnr_nine_db": min(s["input_psnr_db"] for s in nine),
               "follows": sum(s["follows"] for s in rows.values()), "cases": len(rows)}
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in summary.items()}))
    print("seconds:", {k: round(v, 1) for k, v in seconds.items()})
    if args.out:
        report = {"command": " ".join(["python -m tools.demo.product", *(argv or sys.argv[1:])]),
                  "date": datetime.date.today().isoformat(), "torch": torch.__version__,
                  "device": f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})",
                  "steps": args.steps, "numerics": args.numerics, "summary": summary, "cases": rows,
                  "seconds": seconds}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
