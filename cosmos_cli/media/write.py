"""Writing the outputs: the generated video as an H.264 MP4 (:func:`write_video`) and text (:func:`write_text`),
each to a temporary file beside its target that is renamed into place (:func:`atomic_path`): a target is either
complete or untouched."""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from cosmos_cli.errors import GenerationError, InputError
from cosmos_cli.media.read import MediaInfo, _probe_video

# The original saved with imageio quality 5, which imageio-ffmpeg maps to libx264 -crf 25 at x264's default speed
# preset, medium: 4.2-5.3 s per 121-frame 704x1280 video on an H200 machine's 16 cores (benchmarks/results/
# e2e-h200.md). We write with the veryfast preset at crf 24 instead, which keeps the quality: on a moving real clip
# (benchmarks/bench_mp4.py, results/mp4-presets-cpu.json: 121 frames at 704x1280, 2 CPU cores) medium/crf 25 took
# 3.83 s for 1.85 MB at PSNR 34.96 dB to the frames written, veryfast/crf 24 1.58 s for 2.33 MB at 34.80 dB
# (veryfast/crf 25: 1.67 s, 1.99 MB, 34.20 dB). Pass a lower crf for fewer artefacts at a larger size.
DEFAULT_CRF = 24
DEFAULT_PRESET = "veryfast"
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")

_WRITE_HINT = "Check that the output folder is writable and has free space, and any ffmpeg messages above."


def write_video(
    path: str | os.PathLike[str],
    frames: np.ndarray | Iterable[np.ndarray],
    fps: float,
    crf: int = DEFAULT_CRF,
    preset: str = DEFAULT_PRESET,
) -> Path:
    """Write uint8 RGB frames as an H.264 / yuv420p MP4 with ``+faststart`` (plays in browsers).

    ``frames`` is an array ``[T, H, W, 3]`` or any iterable of ``[H, W, 3]`` arrays (frames are streamed
    to ffmpeg one at a time). The file is written to a hidden temporary file in the target's folder
    (created if missing), checked (frame count and size read back), and renamed over ``path`` with
    :func:`os.replace`, so ``path`` is either the complete new video or untouched; on any failure the
    temporary file is removed. A frame whose shape differs from the first raises ``ValueError``.

    yuv420p needs an even width and height: an odd size is padded by one pixel, repeating the last row or
    column, so nothing is lost or resampled (the file is then one pixel larger than the frames).
    ``crf`` is libx264's constant rate factor (lower is better and larger; see :data:`DEFAULT_CRF`), ``preset``
    its speed preset (:data:`DEFAULT_PRESET`).
    Always MP4, whatever the extension of ``path``. Returns ``path``.
    """
    import imageio_ffmpeg

    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if not 0 <= crf <= 51:
        raise ValueError(f"crf must be between 0 and 51, got {crf}")
    if preset not in X264_PRESETS:
        raise ValueError(f"preset must be one of {', '.join(X264_PRESETS)}, got {preset!r}")
    target = Path(path)
    iterator = iter(frames)
    first = next(iterator, None)
    if first is None:
        raise ValueError("write_video needs at least one frame")
    shape = _check_frame(first, None, 0)
    height, width = shape[0], shape[1]
    pad_h, pad_w = height % 2, width % 2

    with atomic_path(target) as tmp:
        writer = imageio_ffmpeg.write_frames(
            str(tmp),
            size=(width + pad_w, height + pad_h),
            fps=fps,
            codec="libx264",
            pix_fmt_in="rgb24",
            pix_fmt_out="yuv420p",
            quality=None,
            macro_block_size=1,
            ffmpeg_log_level="error",
            output_params=["-preset", preset, "-crf", str(crf), "-movflags", "+faststart", "-f", "mp4"],
        )
        count = 0
        try:
            writer.send(None)
            for index, frame in enumerate(itertools.chain([first], iterator)):
                _check_frame(frame, shape, index)
                if pad_h or pad_w:
                    frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
                writer.send(np.ascontiguousarray(frame))
                count += 1
        except OSError:  # imageio-ffmpeg's multi-line IOError: ffmpeg exited and closed its input
            raise GenerationError(
                f"writing {target} failed: ffmpeg exited before all frames were written", hint=_WRITE_HINT
            ) from None
        finally:
            writer.close()
        written = _probe_written(tmp, target)
        got = (written.num_frames, written.width, written.height)
        expected = (count, width + pad_w, height + pad_h)
        if got != expected:
            raise GenerationError(
                f"writing {target} failed: ffmpeg wrote {got[0]} frames of {got[1]}x{got[2]}, "
                f"expected {expected[0]} of {expected[1]}x{expected[2]}",
                hint=_WRITE_HINT,
            )
    return target


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` as UTF-8, atomically (temporary file in the same folder, then :func:`os.replace`)."""
    target = Path(path)
    with atomic_path(target) as tmp:
        with open(tmp, "x", encoding="utf-8", newline="") as f:
            f.write(text)
    return target


def _check_frame(frame: np.ndarray, shape: tuple[int, ...] | None, index: int) -> tuple[int, ...]:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(
            f"frame {index} must be a uint8 array [H, W, 3], got {getattr(frame, 'shape', type(frame))}"
        )
    if shape is not None and frame.shape != shape:
        raise ValueError(f"frame {index} has shape {frame.shape}, but the first frame has {shape}")
    return frame.shape


def _probe_written(tmp: Path, target: Path) -> MediaInfo:
    try:
        if tmp.exists() and tmp.stat().st_size:
            return _probe_video(tmp)
    except InputError:
        pass
    raise GenerationError(
        f"writing {target} failed: ffmpeg did not produce a readable video", hint=_WRITE_HINT
    )


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``target``; on success rename it over ``target``, else delete it."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise GenerationError(
            f"cannot create the folder {target.parent}: {err.strerror}",
            hint="Choose a writable output folder.",
        ) from None
    # The writer's pid in the name: a later run removes the partial files of a process that is gone
    # (cosmos_cli.outputs.remove_stale_partials).
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.partial")
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # make the data durable before the rename makes it visible
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as err:
        raise GenerationError(
            f"writing {target} failed: {err.strerror or type(err).__name__}", hint=_WRITE_HINT
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
