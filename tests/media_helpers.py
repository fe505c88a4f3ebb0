"""Test media shared by the media tests: solid-colour frames from a palette that lossy coding cannot confuse, the
bundled ffmpeg, random frames."""

from __future__ import annotations

import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()

# 12 colours far apart in RGB, so that lossy coding cannot turn one into another.
PALETTE = np.array(
    [
        [255, 0, 0],
        [0, 255, 0],
        [0, 0, 255],
        [255, 255, 0],
        [0, 255, 255],
        [255, 0, 255],
        [255, 255, 255],
        [0, 0, 0],
        [128, 0, 0],
        [0, 128, 0],
        [0, 0, 128],
        [128, 128, 128],
    ],
    dtype=np.uint8,
)
W, H = 64, 48


def solid_frames(n: int, width: int = W, height: int = H) -> np.ndarray:
    return np.broadcast_to(PALETTE[:n, None, None, :], (n, height, width, 3)).copy()


def palette_index(frames: np.ndarray) -> list[int]:
    """Index of the palette colour nearest to each frame's mean colour."""
    means = frames.reshape(len(frames), -1, 3).mean(axis=1)
    return [int(np.argmin(np.abs(PALETTE.astype(float) - m).sum(axis=1))) for m in means]


def ffmpeg(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    quiet = ["-hide_banner", "-loglevel", "error", "-y"] + (["-nostdin"] if stdin is None else [])
    return subprocess.run(
        [FFMPEG, *quiet, *args],
        input=stdin,
        capture_output=True,
        check=True,
    )


def stream_info(path: Path) -> str:
    """The bundled ffmpeg's description of the file's video stream (``ffmpeg -i`` prints it on stderr)."""
    out = subprocess.run([FFMPEG, "-hide_banner", "-i", str(path)], capture_output=True, text=True)
    return next(line for line in out.stderr.splitlines() if "Video:" in line)


def random_frames(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)
