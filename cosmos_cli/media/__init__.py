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

Three modules, one idea each: :mod:`.read` (probing and decoding the input), :mod:`.tensor` (the frames to the
model's input tensor), :mod:`.write` (the mp4 and text outputs, atomically). This package holds their public names;
torch is imported inside :func:`frames_to_tensor` only, so importing it stays cheap.
"""

from cosmos_cli.media.read import MediaInfo, probe, read_frames, read_video
from cosmos_cli.media.tensor import frames_to_tensor
from cosmos_cli.media.write import (
    DEFAULT_CRF,
    DEFAULT_PRESET,
    X264_PRESETS,
    atomic_path,
    write_text,
    write_video,
)

__all__ = [
    "DEFAULT_CRF",
    "DEFAULT_PRESET",
    "X264_PRESETS",
    "MediaInfo",
    "atomic_path",
    "frames_to_tensor",
    "probe",
    "read_frames",
    "read_video",
    "write_text",
    "write_video",
]
