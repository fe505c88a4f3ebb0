"""Reading conditioning images and videos, and writing the generated video (model-agnostic).

What the original Cosmos-Predict1 does, and where we differ (spec 1.2 step 5, 1.3, pitfall 13.13):

* **Image or video** is decided by opening the file, never by its extension: OpenCV is asked first
  whether it recognises an image signature; anything else goes to the bundled ffmpeg
  (``imageio_ffmpeg.get_ffmpeg_exe()``; no system ffmpeg is needed). The original used the
  case-sensitive extension, so ``.JPG`` was read as a video and failed.
* **Images** are decoded with OpenCV ``IMREAD_UNCHANGED``: grayscale becomes RGB, 16-bit becomes 8-bit
  (rounded, ``65535 -> 255``), and RGBA is composited over white exactly as the original,
  ``rgb*a + 255*(1-a)`` in float64 then a truncating cast to uint8. The EXIF orientation tag is *not*
  applied: the pixels are used as stored, which is what the original's imageio/Pillow reader does.
* **Size bound**: an image's size is read from its header first (Pillow's lazy ``Image.open``) and a video's
  frame size from the demuxer, and more than :data:`~cosmos_cli.limits.MAX_INPUT_PIXELS` per frame is refused
  before any pixel is decoded (a 97 KB PNG can declare 10000x10000); a larger JPEG is decoded reduced
  (1/2, 1/4, 1/8) instead. :func:`probe` decodes no image, so an image is decoded once, by :func:`read_frames`.
* **Videos** are decoded by ffmpeg into RGB24 (display rotation applied, as in the original, which read
  through the same imageio-ffmpeg pipe), one frame per decoded picture (``-fps_mode passthrough``: no
  frame is duplicated or dropped to force a constant rate). Only the last ``N`` frames are kept while
  streaming; the original decoded and resized the whole video.
* **Normalisation** is the model spec's ``x * scale + offset`` (Predict1's: the original's ``x / 128 - 1``,
  range ``[-1, 0.9921875]``), then a bicubic antialiased resize, see :func:`frames_to_tensor`.
* **Saving** is H.264 / yuv420p / ``+faststart`` MP4 through ``imageio_ffmpeg.write_frames``, written to a
  temporary file beside the target and renamed into place, see :func:`write_video`.

torch is imported inside :func:`frames_to_tensor` only, so importing this module stays cheap.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import re
import subprocess
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from cosmos_cli.errors import GenerationError, InputError
from cosmos_cli.limits import MAX_INPUT_PIXELS
from cosmos_cli.specs import PixelNormalisation

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_CRF",
    "DEFAULT_PRESET",
    "MediaInfo",
    "frames_to_tensor",
    "probe",
    "read_frames",
    "read_video",
    "write_text",
    "write_video",
]

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

_READABLE_HINT = "Pass an image (jpg, png, webp, bmp, tiff) or a video (mp4, mov, avi, webm, mkv)."
# ffmpeg demuxers that read single still images, or text as pictures: a file only they accept is not a
# video, and OpenCV already declined it as an image.
_STILL_DEMUXERS = ("image2", "tty")
_WRITE_HINT = "Check that the output folder is writable and has free space, and any ffmpeg messages above."


@dataclass(frozen=True)
class MediaInfo:
    """What :func:`probe` found. ``width``/``height`` are those of the frames :func:`read_frames` returns
    (after display rotation for videos). ``fps`` is ``None`` for images and for videos that do not say."""

    path: Path
    kind: Literal["image", "video"]
    num_frames: int
    width: int
    height: int
    fps: float | None


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def probe(path: str | os.PathLike[str]) -> MediaInfo:
    """Open ``path`` and say whether it is an image or a video, its frame size, frame count and fps.

    Videos are counted without decoding: ffmpeg demuxes the stream (``-c copy -f framecrc``) and the
    packets not marked for discard are counted, so frames that an MP4/MOV edit list hides are left out
    (the header's frame count, which OpenCV reports, includes them). For a well-formed file this equals
    the number of decoded frames; a stream damaged past its header can decode to fewer, which
    :func:`read_frames` then reports. About 0.1 s for the 9-frame 4K example (a full decode: 0.4 s).
    """
    p = _existing_file(path)
    if _looks_like_image(p):
        width, height, _ = _image_size(p)  # from the header: probing an image decodes nothing
        return MediaInfo(path=p, kind="image", num_frames=1, width=width, height=height, fps=None)
    return _probe_video(p)


def read_frames(path: str | os.PathLike[str], num_frames: int) -> np.ndarray:
    """The last ``num_frames`` frames of ``path`` as uint8 RGB ``[N, H, W, 3]``.

    An image is one frame. A video is decoded as a stream keeping only the last ``num_frames`` frames in
    memory. Asking for more frames than the file has raises :class:`InputError` with the real count.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    p = _existing_file(path)
    if _looks_like_image(p):
        if num_frames > 1:
            raise InputError(
                f"{p} is an image (1 frame) but {num_frames} input frames were requested",
                hint=f"Pass a video with at least {num_frames} frames, or use 1 input frame.",
            )
        return _load_image(p)[None]
    frames, _, total = _decode_video(p, keep_last=num_frames)
    if total < num_frames:
        raise InputError(
            f"{p} has {_frames_word(total)} but {num_frames} input frames were requested",
            hint=f"Pass a video with at least {num_frames} frames, or use fewer input frames.",
        )
    return frames


def read_video(path: str | os.PathLike[str]) -> tuple[np.ndarray, float | None]:
    """Every frame of ``path`` as uint8 RGB ``[T, H, W, 3]`` and its fps (``None`` for an image).

    Meant for tests and checks: the whole video is held in memory.
    """
    p = _existing_file(path)
    if _looks_like_image(p):
        return _load_image(p)[None], None
    frames, fps, _ = _decode_video(p, keep_last=None)
    return frames, fps


def _existing_file(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.exists():
        raise InputError(
            f"{p}: file not found", hint="Check the path; relative paths start at the current folder."
        )
    if not p.is_file():
        raise InputError(f"{p} is not a file", hint=_READABLE_HINT)
    if not os.access(p, os.R_OK):
        raise InputError(f"{p} cannot be read (permission denied)", hint="Fix the file's permissions.")
    if p.stat().st_size == 0:
        raise InputError(f"{p} is empty (0 bytes)", hint=_READABLE_HINT)
    return p


def _looks_like_image(p: Path) -> bool:
    """True if OpenCV recognises an image signature in the file's first bytes (no decoding)."""
    import cv2

    return bool(cv2.haveImageReader(str(p)))


def _image_size(p: Path) -> tuple[int, int, int]:
    """``(width, height, reduction)`` of the frame :func:`_load_image` gives, read from the file's header with
    Pillow (``Image.open`` parses the header only; no pixel is decoded), refusing more than
    :data:`~cosmos_cli.limits.MAX_INPUT_PIXELS`. A larger JPEG is decoded reduced instead (libjpeg's 1/2, 1/4 or
    1/8 scaling, through OpenCV's ``IMREAD_REDUCED_*``): ``reduction`` is that factor, else 1. A format Pillow
    cannot read the size of (Radiance HDR, OpenEXR, PFM) is refused: its decoded size could not be bounded."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                (width, height), fmt = im.size, im.format
    except Image.DecompressionBombError:  # Pillow's own limit, far above ours
        width, height, fmt = 0, 0, "too large"
    except Exception:  # Pillow raises many types for a damaged header (OSError, SyntaxError, ValueError, ...)
        raise InputError(
            f"{p} looks like an image but could not be decoded; it may be damaged (or in a format whose size "
            f"cannot be read first: HDR, EXR, PFM)", hint=_READABLE_HINT
        ) from None
    limit = MAX_INPUT_PIXELS
    if fmt != "too large" and width * height <= limit:
        return width, height, 1
    if fmt == "JPEG":
        for factor in (2, 4, 8):
            w, h = -(-width // factor), -(-height // factor)
            if w * h <= limit:
                return w, h, factor
    size = f"{width}x{height} ({width * height / 1e6:.0f} megapixels)" if width else "over Pillow's limit"
    raise InputError(
        f"{p} is {size}: more than the {limit / 1e6:.0f} megapixels an input image may have",
        hint="Resize it first (the model works at 1280x704 or less anyway).",
    )


_REDUCED = {2: "IMREAD_REDUCED_COLOR_2", 4: "IMREAD_REDUCED_COLOR_4", 8: "IMREAD_REDUCED_COLOR_8"}


def _load_image(p: Path) -> np.ndarray:
    """Decode an image to uint8 RGB ``[H, W, 3]``, once, after :func:`_image_size` bounded it."""
    import cv2

    width, height, factor = _image_size(p)
    flags = cv2.IMREAD_UNCHANGED if factor == 1 else getattr(cv2, _REDUCED[factor])
    data = np.fromfile(p, dtype=np.uint8)
    try:
        image = cv2.imdecode(data, flags)
    except cv2.error:
        image = None
    if image is None or image.size == 0:
        raise InputError(
            f"{p} looks like an image but could not be decoded; it may be damaged", hint=_READABLE_HINT
        )
    if image.shape[0] * image.shape[1] > MAX_INPUT_PIXELS:  # the header said otherwise: never pass it on
        raise InputError(f"{p} decodes to {image.shape[1]}x{image.shape[0]}, more than its header said",
                         hint=_READABLE_HINT)
    image = _to_uint8(image, p)
    if image.ndim == 2:
        image = image[:, :, None]
    channels = image.shape[2]
    if channels == 1:
        return np.ascontiguousarray(np.repeat(image, 3, axis=2))
    if channels == 2:  # gray + alpha
        return _over_white(np.repeat(image[:, :, :1], 3, axis=2), image[:, :, 1])
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return _over_white(cv2.cvtColor(image[:, :, :3], cv2.COLOR_BGR2RGB), image[:, :, 3])
    raise InputError(f"{p} has {channels} colour channels; expected 1 to 4", hint=_READABLE_HINT)


def _to_uint8(image: np.ndarray, p: Path) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:  # 0..65535 -> 0..255, rounded
        return ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if image.dtype in (np.float32, np.float64):  # HDR / float TIFF: assume 0..1
        return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise InputError(
        f"{p} has unsupported sample type {image.dtype}", hint="Convert it to an 8-bit PNG or JPEG."
    )


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite over white as the original: ``rgb*a + 255*(1-a)`` in float64, truncated to uint8 (a band of rows
    at a time, so the float64 copy stays small for a large image)."""
    out = np.empty(rgb.shape, dtype=np.uint8)
    for y in range(0, rgb.shape[0], 256):
        a = alpha[y:y + 256].astype(np.float64)[:, :, None] / 255.0
        out[y:y + 256] = (rgb[y:y + 256] * a + 255 * (1 - a)).astype(np.uint8)
    return out


def _ffmpeg_input(p: Path) -> str:
    # The file: protocol stops ffmpeg from reading "http:", "concat:" or "-x" in a name as anything else.
    return "file:" + str(p.resolve())


def _probe_video(p: Path) -> MediaInfo:
    import imageio_ffmpeg

    cmd = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-hide_banner",
        "-nostdin",
        "-i",
        _ffmpeg_input(p),
        "-map",
        "0:V:0",
        "-c",
        "copy",
        "-f",
        "framecrc",
        "-",
    ]
    run = subprocess.run(cmd, capture_output=True)
    log = run.stderr.decode("utf-8", errors="replace")
    if run.returncode != 0:
        raise _unreadable(p, log)
    demuxer = re.search(r"^Input #0, (.+?), from ", log, re.MULTILINE)
    if demuxer and any(
        name in _STILL_DEMUXERS or name.endswith("_pipe") for name in demuxer.group(1).split(",")
    ):
        raise InputError(
            f"{p} is not a readable image or video (unsupported or damaged image)", hint=_READABLE_HINT
        )

    count = 0
    width = height = 0
    for line in run.stdout.decode("ascii", errors="replace").splitlines():
        if line.startswith("#dimensions 0:"):
            width, height = (int(v) for v in line.split(":", 1)[1].strip().split("x"))
        elif line.startswith("0,"):
            flags = re.search(r"F=0x([0-9A-Fa-f]+)", line)
            if flags is None or not int(flags.group(1), 16) & 0x4:  # 0x4: AV_PKT_FLAG_DISCARD
                count += 1
    if count == 0 or not width or not height:
        raise InputError(
            f"{p} has a video stream but no frames could be read from it; the file may be damaged",
            hint=_READABLE_HINT,
        )

    _check_frame_pixels(p, width, height)
    fps, rotation = _stream_fps_and_rotation(log)
    if round(rotation) % 180 == 90:
        width, height = height, width
    return MediaInfo(path=p, kind="video", num_frames=count, width=width, height=height, fps=fps)


def _check_frame_pixels(p: Path, width: int, height: int) -> None:
    if width * height > MAX_INPUT_PIXELS:
        raise InputError(
            f"{p} has {width}x{height} frames ({width * height / 1e6:.0f} megapixels): more than the "
            f"{MAX_INPUT_PIXELS / 1e6:.0f} megapixels an input frame may have",
            hint="Scale the video down first (the model works at 1280x704 or less anyway).",
        )


def _stream_fps_and_rotation(log: str) -> tuple[float | None, float]:
    """fps and display rotation of the input stream that ``-map 0:V:0`` selected, from ffmpeg's log."""
    mapping = re.search(r"Stream #0:(\d+)\S* -> #0:0", log)
    header = log.split("Stream mapping:", 1)[0]
    if mapping is None:
        return None, 0.0
    block = re.search(rf"Stream #0:{mapping.group(1)}\b.*?(?=\n\s*Stream #|\Z)", header, re.DOTALL)
    if block is None:
        return None, 0.0
    text = block.group(0)
    first_line = text.splitlines()[0]
    fps = None
    rate = re.search(r"([\d.]+)(k?) fps\b", first_line) or re.search(r"([\d.]+)(k?) tbr\b", first_line)
    if rate:
        fps = float(rate.group(1)) * (1000 if rate.group(2) else 1)
    angle = re.search(r"rotation of (-?[\d.]+) degrees", text, re.IGNORECASE)
    return fps, float(angle.group(1)) if angle else 0.0


def _decode_video(p: Path, keep_last: int | None) -> tuple[np.ndarray, float | None, int]:
    """Decode every frame; return the last ``keep_last`` (all when ``None``), the fps and the total count."""
    import imageio_ffmpeg

    _quiet_imageio_ffmpeg()
    stream: Iterator = imageio_ffmpeg.read_frames(
        _ffmpeg_input(p), pix_fmt="rgb24", output_params=["-map", "0:V:0", "-fps_mode", "passthrough"]
    )
    kept: collections.deque[bytes] = collections.deque(maxlen=keep_last)
    total = 0
    try:
        meta = next(stream)
        _check_frame_pixels(p, *meta["size"])  # before the first frame is decoded
        for frame in stream:
            kept.append(frame)
            total += 1
    except (OSError, RuntimeError, ValueError, IndexError) as err:  # what imageio-ffmpeg raises
        raise _unreadable(p, str(err)) from None
    finally:
        stream.close()
    if total == 0:
        raise InputError(f"{p} contains no decodable video frames; it may be damaged", hint=_READABLE_HINT)
    width, height = meta["size"]
    frames = np.empty((len(kept), height, width, 3), dtype=np.uint8)
    for i, frame in enumerate(kept):
        frames[i] = np.frombuffer(frame, dtype=np.uint8).reshape(height, width, 3)
    return frames, (float(meta["fps"]) or None), total


class _DropRotationNotice(logging.Filter):
    """imageio-ffmpeg warns when a rotated video's frames are W x H instead of H x W; that is expected."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("The frame size for reading")


def _quiet_imageio_ffmpeg() -> None:
    log = logging.getLogger("imageio_ffmpeg")
    if not any(isinstance(f, _DropRotationNotice) for f in log.filters):
        log.addFilter(_DropRotationNotice())


def _unreadable(p: Path, log: str) -> InputError:
    if "matches no streams" in log:
        return InputError(f"{p} contains no video stream", hint=_READABLE_HINT)
    reason = _ffmpeg_cause(log)
    detail = f" ({reason})" if reason else ""
    return InputError(f"{p} is not a readable image or video{detail}", hint=_READABLE_HINT)


# Lines of an ffmpeg log that say why a file could not be read, most telling first.
_FFMPEG_CAUSES = (
    "moov atom not found",
    "Invalid data found when processing input",
    "End of file",
    "Invalid NAL unit",
    "Error while decoding",
)


def _ffmpeg_cause(log: str) -> str:
    """The most telling known cause in an ffmpeg log, or ``""``."""
    for needle in _FFMPEG_CAUSES:
        if needle in log:
            return needle[0].lower() + needle[1:]
    return ""


def _frames_word(n: int) -> str:
    return f"{n} frame" if n == 1 else f"{n} frames"


# --------------------------------------------------------------------------------------------------
# To the model
# --------------------------------------------------------------------------------------------------


def frames_to_tensor(
    frames: np.ndarray,
    height: int,
    width: int,
    resize: Literal["stretch", "crop", "pad"] = "stretch",
    dtype: torch.dtype | None = None,
    normalisation: PixelNormalisation = PixelNormalisation(),
) -> torch.Tensor:
    """uint8 RGB frames ``[N, H, W, 3]`` to a model input ``[1, 3, N, height, width]`` in ``dtype``.

    Pixels are normalised as the model's spec says (``ModelSpec.input_normalisation``: ``x * scale + offset``;
    the default maps [0, 255] onto [-1, 1]; Predict1's is the original's ``x / 128 - 1``, so black is ``-1.0``
    and white ``0.9921875``), then resized with ``torch.nn.functional.interpolate(mode="bicubic", antialias=True,
    align_corners=False)``, which is what torchvision's tensor ``resize(..., BICUBIC, antialias=True)``
    calls. Values are not clamped afterwards (bicubic can overshoot slightly), as in the original.

    ``resize``:

    * ``"stretch"`` (the original's rule): resize to exactly ``(height, width)``; the aspect ratio is not
      kept.
    * ``"crop"``: scale so the frame covers ``(height, width)`` with its aspect ratio kept, then cut the
      centre.
    * ``"pad"``: scale so the frame fits inside ``(height, width)`` with its aspect ratio kept, then
      centre it on black (``normalisation.offset``).

    The resize is computed in float32 and the result cast to ``dtype`` (default float32). With
    ``dtype=torch.bfloat16`` this reproduces the original bit for bit: it held the frames as bf16, but
    torchvision's resize casts a bf16 tensor to float32, interpolates and casts back (and the normalised
    values are exact in bf16 with Predict1's normalisation). Frames whose size already matches are not
    resampled. Frames are processed one at a time, so a 4K input never needs a full-video float copy.
    """
    import torch
    import torch.nn.functional as F

    if (
        not isinstance(frames, np.ndarray)
        or frames.dtype != np.uint8
        or frames.ndim != 4
        or frames.shape[3] != 3
    ):
        raise ValueError(
            f"frames must be a uint8 array [N, H, W, 3], got {getattr(frames, 'shape', type(frames))}"
        )
    if resize not in ("stretch", "crop", "pad"):
        raise ValueError(f"resize must be 'stretch', 'crop' or 'pad', got {resize!r}")
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be positive, got {height}x{width}")
    dtype = dtype or torch.float32
    n, h, w, _ = frames.shape
    out = torch.empty((1, 3, n, height, width), dtype=dtype)  # (B, C, T, H, W)

    if resize == "stretch":
        inner = (height, width)
    elif resize == "crop":
        scale = max(height / h, width / w)
        inner = (max(height, int(h * scale + 0.5)), max(width, int(w * scale + 0.5)))
    else:
        scale = min(height / h, width / w)
        inner = (max(1, min(height, int(h * scale + 0.5))), max(1, min(width, int(w * scale + 0.5))))

    for i in range(n):
        x = torch.from_numpy(frames[i].astype(np.float32)).permute(2, 0, 1)[None]  # (1, 3, h, w)
        x = x * normalisation.scale + normalisation.offset
        if (h, w) != inner:
            x = F.interpolate(x, size=inner, mode="bicubic", antialias=True, align_corners=False)
        if resize == "crop":
            top, left = (inner[0] - height) // 2, (inner[1] - width) // 2
            x = x[:, :, top : top + height, left : left + width]
        elif resize == "pad":
            canvas = torch.full((1, 3, height, width), normalisation.offset)
            top, left = (height - inner[0]) // 2, (width - inner[1]) // 2
            canvas[:, :, top : top + inner[0], left : left + inner[1]] = x
            x = canvas
        out[0, :, i] = x[0].to(dtype)
    return out


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


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

    with _atomic_path(target) as tmp:
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
    with _atomic_path(target) as tmp:
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
def _atomic_path(target: Path) -> Iterator[Path]:
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
