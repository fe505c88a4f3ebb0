"""cosmos_cli.media.read: probing and reading images and videos (frames_to_tensor: test_media_tensor.py; writing:
test_media_write.py).

Test videos are encoded here with the bundled ffmpeg directly (not with ``write_video``), each frame one
solid colour from ``PALETTE`` so that the frames that come back can be identified.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
import pytest

from cosmos_cli import media
from cosmos_cli.errors import InputError
from tests.conftest import EXAMPLE_MEDIA
from tests.media_helpers import H, W, ffmpeg, palette_index, solid_frames

EXAMPLES = EXAMPLE_MEDIA  # shipped in the repository: present in every clone
EXAMPLE_IMAGE = EXAMPLES / "video2world_input0.jpg"
EXAMPLE_VIDEO = EXAMPLES / "video2world_input1.mp4"
REPO = Path(__file__).resolve().parents[1]

def encode(path: Path, frames: np.ndarray, codec: list[str], fps: int = 24) -> Path:
    n, h, w, _ = frames.shape
    ffmpeg(
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps), "-i", "-",
        *codec, str(path),
        stdin=frames.tobytes(),
    )  # fmt: skip
    return path


def decoded_count(path: Path) -> int:
    """Independent count: ffmpeg decodes every frame (what the original's imageio count_frames did)."""
    return imageio_ffmpeg.count_frames_and_secs(str(path))[0]


CONTAINERS = {
    "mp4": ("clip.mp4", ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "10"]),
    "MOV": ("clip.MOV", ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "10"]),
    "avi": ("clip.avi", ["-c:v", "mjpeg", "-q:v", "2"]),
    "mkv": ("clip.mkv", ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "10"]),
    "webm": ("clip.webm", ["-c:v", "libvpx-vp9", "-crf", "20", "-b:v", "0", "-deadline", "realtime"]),
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("videos")
    return {key: encode(folder / name, solid_frames(12), codec) for key, (name, codec) in CONTAINERS.items()}


# --------------------------------------------------------------------------------------------------
# The real example inputs
# --------------------------------------------------------------------------------------------------


def jpeg_size(path: Path) -> tuple[int, int]:
    """(width, height) from the JPEG's SOF marker, read without any image library."""
    data = path.read_bytes()
    i = 2
    while i < len(data):
        marker, length = data[i + 1], struct.unpack(">H", data[i + 2 : i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        i += 2 + length
    raise AssertionError("no SOF marker")


def test_probe_example_image():
    info = media.probe(EXAMPLE_IMAGE)
    assert info.kind == "image" and info.num_frames == 1 and info.fps is None
    assert (info.width, info.height) == jpeg_size(EXAMPLE_IMAGE)
    frames = media.read_frames(EXAMPLE_IMAGE, 1)
    assert frames.shape == (1, info.height, info.width, 3) and frames.dtype == np.uint8


def test_probe_example_video():
    info = media.probe(EXAMPLE_VIDEO)
    assert info.kind == "video"
    assert info.fps == pytest.approx(24.0)
    # Independent: OpenCV (its own ffmpeg build) decodes every frame.
    capture = cv2.VideoCapture(str(EXAMPLE_VIDEO))
    assert (info.width, info.height) == (
        capture.get(cv2.CAP_PROP_FRAME_WIDTH),
        capture.get(cv2.CAP_PROP_FRAME_HEIGHT),
    )
    decoded, last = 0, None
    while (frame := capture.read()[1]) is not None:
        decoded, last = decoded + 1, frame
    capture.release()
    assert info.num_frames == decoded == 9
    ours = media.read_frames(EXAMPLE_VIDEO, 1)
    assert ours.shape == (1, info.height, info.width, 3)
    # The same last frame, up to colour-conversion rounding.
    assert np.abs(ours[0].astype(np.int16) - last[:, :, ::-1]).mean() < 2.0


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------


def test_module_import_does_not_import_torch():
    code = "import sys, cosmos_cli.media; assert 'torch' not in sys.modules and 'cv2' not in sys.modules"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_mediainfo_is_frozen(tmp_path):
    info = media.probe(write_png(tmp_path / "a.png"))
    with pytest.raises(AttributeError):
        info.width = 1  # type: ignore[misc]


def rgb_test_image() -> np.ndarray:
    """48x64 RGB: red left half, blue right half, a green bar at the top; smooth enough for JPEG."""
    image = np.zeros((H, W, 3), dtype=np.uint8)
    image[:, : W // 2] = (220, 30, 30)
    image[:, W // 2 :] = (30, 30, 220)
    image[:8] = (30, 220, 30)
    return image


def write_png(path: Path, image: np.ndarray | None = None) -> Path:
    image = rgb_test_image() if image is None else image
    assert cv2.imwrite(str(path), image[:, :, ::-1] if image.ndim == 3 and image.shape[2] == 3 else image)
    return path


@pytest.mark.parametrize(
    ("name", "lossless"),
    [
        ("a.png", True),
        ("b.JPG", False),
        ("c.webp", False),
        ("d.bmp", True),
        ("e.jpeg", False),
        ("f.tiff", True),
    ],
)
def test_image_formats(tmp_path, name, lossless):
    image = rgb_test_image()
    path = tmp_path / name
    assert cv2.imwrite(str(path), image[:, :, ::-1])  # OpenCV writes BGR
    info = media.probe(path)
    assert (info.kind, info.num_frames, info.width, info.height, info.fps) == ("image", 1, W, H, None)
    frames = media.read_frames(path, 1)
    assert frames.shape == (1, H, W, 3) and frames.dtype == np.uint8
    if lossless:
        np.testing.assert_array_equal(frames[0], image)
    else:
        assert np.abs(frames[0].astype(int) - image).mean() < 6
    assert frames[0, 30, 5, 0] > 150 and frames[0, 30, 60, 2] > 150  # RGB order, not BGR


def test_grayscale_becomes_rgb(tmp_path):
    gray = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (H, 1))
    path = write_png(tmp_path / "gray.png", gray)
    frames = media.read_frames(path, 1)
    assert frames.shape == (1, H, 64, 3)
    for c in range(3):
        np.testing.assert_array_equal(frames[0, :, :, c], gray)


def test_rgba_composited_over_white_like_the_original(tmp_path):
    rgb = np.zeros((4, 6, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 0
    alpha = np.array([0, 1, 64, 128, 254, 255], dtype=np.uint8)[None, :].repeat(4, axis=0)
    bgra = np.dstack([rgb[:, :, ::-1], alpha])
    path = write_png(tmp_path / "rgba.png", bgra)
    frames = media.read_frames(path, 1)
    a = alpha[:, :, None] / 255.0
    expected = (rgb * a + 255 * (1 - a)).astype(np.uint8)  # the original's formula, truncating cast
    np.testing.assert_array_equal(frames[0], expected)
    np.testing.assert_array_equal(frames[0, 0, 0], [255, 255, 255])  # transparent -> white
    np.testing.assert_array_equal(frames[0, 0, 5], [200, 100, 0])  # opaque -> unchanged


def test_16_bit_images_become_8_bit(tmp_path):
    values = np.array([0, 128, 129, 257 * 100, 32768, 65535], dtype=np.uint16)
    gray = np.tile(values, (2, 1))
    frames = media.read_frames(write_png(tmp_path / "gray16.png", gray), 1)
    np.testing.assert_array_equal(frames[0, 0, :, 0], [0, 0, 1, 100, 128, 255])

    colour = np.zeros((2, 2, 3), dtype=np.uint16)
    colour[..., 0] = 65535  # R (OpenCV writes BGR, so it goes in the last channel)
    cv2.imwrite(str(tmp_path / "rgb16.png"), colour[:, :, ::-1])
    frames = media.read_frames(tmp_path / "rgb16.png", 1)
    np.testing.assert_array_equal(frames[0, 0, 0], [255, 0, 0])


def test_kind_comes_from_content_not_extension(tmp_path, videos):
    disguised_video = tmp_path / "really_a_video.jpg"
    shutil.copy(videos["mp4"], disguised_video)
    info = media.probe(disguised_video)
    assert (info.kind, info.num_frames) == ("video", 12)
    assert palette_index(media.read_frames(disguised_video, 2)) == [10, 11]

    disguised_image = tmp_path / "really_an_image.mp4"
    shutil.copy(write_png(tmp_path / "x.png"), disguised_image)
    assert media.probe(disguised_image).kind == "image"
    assert media.read_frames(disguised_image, 1).shape == (1, H, W, 3)


def test_image_cannot_give_more_than_one_frame(tmp_path):
    path = write_png(tmp_path / "still.png")
    with pytest.raises(InputError, match="1 frame") as err:
        media.read_frames(path, 9)
    assert str(path) in err.value.message


# --------------------------------------------------------------------------------------------------
# Videos
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("container", list(CONTAINERS))
def test_probe_video_containers(videos, container):
    path = videos[container]
    info = media.probe(path)
    assert (info.kind, info.width, info.height) == ("video", W, H)
    assert info.num_frames == decoded_count(path) == 12
    assert info.fps == pytest.approx(24.0)


@pytest.mark.parametrize("container", list(CONTAINERS))
def test_read_frames_returns_the_last_n(videos, container):
    path = videos[container]
    last5 = media.read_frames(path, 5)
    assert last5.shape == (5, H, W, 3) and last5.dtype == np.uint8
    assert palette_index(last5) == [7, 8, 9, 10, 11]
    assert palette_index(media.read_frames(path, 1)) == [11]
    assert palette_index(media.read_frames(path, 12)) == list(range(12))


def test_too_few_frames_says_how_many(videos):
    with pytest.raises(InputError) as err:
        media.read_frames(videos["mp4"], 13)
    assert "12 frames" in err.value.message and str(videos["mp4"]) in err.value.message


def test_read_video_all_frames_and_fps(videos):
    frames, fps = media.read_video(videos["mkv"])
    assert frames.shape == (12, H, W, 3)
    assert palette_index(frames) == list(range(12))
    assert fps == pytest.approx(24.0)


def test_edit_list_trimmed_mp4_counts_shown_frames(tmp_path):
    """A stream-copied cut keeps the earlier packets but an edit list hides them: the header's count
    (what OpenCV reports) is wrong, ours matches the frames decoded."""
    source = encode(
        tmp_path / "long.mp4",
        np.repeat(solid_frames(12), 4, axis=0),
        ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-bf", "3", "-g", "48", "-sc_threshold", "0"],
    )
    cut = tmp_path / "cut.mp4"
    ffmpeg("-ss", "0.5", "-i", str(source), "-c", "copy", str(cut))
    header_count = cv2.VideoCapture(str(cut)).get(cv2.CAP_PROP_FRAME_COUNT)
    info = media.probe(cut)
    assert info.num_frames == decoded_count(cut) == len(media.read_video(cut)[0])
    assert info.num_frames < header_count


def test_variable_frame_rate_frames_are_neither_duplicated_nor_dropped(tmp_path):
    vfr = tmp_path / "vfr.mp4"
    ffmpeg(
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{W}x{H}", "-r", "24", "-i", "-",
        "-vf", "setpts='(N+gte(N,6)*10)/24/TB'", "-fps_mode", "vfr",  # a 10-frame gap after frame 5
        "-c:v", "libx264", "-pix_fmt", "yuv420p", str(vfr),
        stdin=solid_frames(12).tobytes(),
    )  # fmt: skip
    info = media.probe(vfr)
    frames, _ = media.read_video(vfr)
    assert info.num_frames == decoded_count(vfr) == len(frames) == 12
    assert palette_index(frames) == list(range(12))
    assert palette_index(media.read_frames(vfr, 7)) == list(range(5, 12))


def test_rotated_video_reports_display_size(tmp_path, videos):
    rotated = tmp_path / "rotated.mp4"
    ffmpeg("-display_rotation", "90", "-i", str(videos["mp4"]), "-c", "copy", str(rotated))
    info = media.probe(rotated)
    assert (info.width, info.height) == (H, W)
    assert media.read_frames(rotated, 2).shape == (2, W, H, 3)


# --------------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------------


def bad_inputs(folder: Path, good_mp4: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    files = {
        "empty": folder / "empty.mp4",
        "text as mp4": folder / "notes.mp4",
        "random bytes mp4": folder / "noise.mp4",
        "random bytes jpg": folder / "noise.jpg",
        "jpeg header then garbage": folder / "broken.jpg",
        "truncated mp4": folder / "truncated.mp4",
        "audio only": folder / "audio.m4a",
    }
    files["empty"].write_bytes(b"")
    files["text as mp4"].write_text("this is not a video\n" * 20)
    files["random bytes mp4"].write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    files["random bytes jpg"].write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    files["jpeg header then garbage"].write_bytes(b"\xff\xd8\xff\xe0" + b"garbage" * 100)
    files["truncated mp4"].write_bytes(good_mp4.read_bytes()[:48])
    ffmpeg("-f", "lavfi", "-i", "sine=duration=0.3", "-c:a", "aac", str(files["audio only"]))
    return files


@pytest.mark.parametrize("reader", ["probe", "read_frames", "read_video"])
def test_bad_inputs_raise_input_error_naming_the_file(tmp_path, videos, reader):
    call = {
        "probe": media.probe,
        "read_frames": lambda p: media.read_frames(p, 1),
        "read_video": media.read_video,
    }[reader]
    cases = bad_inputs(tmp_path, videos["mp4"])
    cases["missing"] = tmp_path / "nowhere" / "missing.mp4"
    cases["folder"] = tmp_path
    for label, path in cases.items():
        with pytest.raises(InputError) as err:
            call(path)
        message = err.value.message
        assert str(path) in message, label
        assert "\n" not in message, label
        assert err.value.hint, label


def test_bad_input_messages_say_what_is_wrong(tmp_path, videos):
    cases = bad_inputs(tmp_path, videos["mp4"])
    assert "empty" in media_error(cases["empty"])
    assert "not found" in media_error(tmp_path / "missing.png")
    assert "no video stream" in media_error(cases["audio only"])
    assert "not a readable image or video" in media_error(cases["text as mp4"])
    assert "could not be decoded" in media_error(cases["jpeg header then garbage"])


def media_error(path: Path) -> str:
    with pytest.raises(InputError) as err:
        media.probe(path)
    return err.value.message


def test_num_frames_must_be_positive(videos):
    with pytest.raises(ValueError):
        media.read_frames(videos["mp4"], 0)
