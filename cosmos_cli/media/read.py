"""Reading conditioning images and videos: :func:`probe` (what a file is, decoding nothing), :func:`read_frames`
(its last N frames) and :func:`read_video` (every frame). Opened by content, never by extension; sizes bounded before
any pixel is decoded; videos decoded by the bundled ffmpeg (see :mod:`cosmos_cli.media`)."""

from __future__ import annotations

import collections
import logging
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from cosmos_cli.errors import InputError
from cosmos_cli.limits import MAX_INPUT_PIXELS

_READABLE_HINT = "Pass an image (jpg, png, webp, bmp, tiff) or a video (mp4, mov, avi, webm, mkv)."
# ffmpeg demuxers that read single still images, or text as pictures: a file only they accept is not a
# video, and OpenCV already declined it as an image.
_STILL_DEMUXERS = ("image2", "tty")


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

