"""cosmos_cli.media: probing, reading, normalising/resizing and atomically writing media.

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
import torch

from cosmos_cli import media
from cosmos_cli.errors import GenerationError, InputError
from cosmos_cli.specs import ModelSpec, PixelNormalisation
from cosmos_plugins.predict1.specs import PREDICT1_7B, PREDICT1_14B, PREDICT1_DEMO, PREDICT1_TINY
from tests.conftest import EXAMPLE_MEDIA

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
EXAMPLES = EXAMPLE_MEDIA  # shipped in the repository: present in every clone
EXAMPLE_IMAGE = EXAMPLES / "video2world_input0.jpg"
EXAMPLE_VIDEO = EXAMPLES / "video2world_input1.mp4"
REPO = Path(__file__).resolve().parents[1]

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


def encode(path: Path, frames: np.ndarray, codec: list[str], fps: int = 24) -> Path:
    n, h, w, _ = frames.shape
    ffmpeg(
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps), "-i", "-",
        *codec, str(path),
        stdin=frames.tobytes(),
    )  # fmt: skip
    return path


def stream_info(path: Path) -> str:
    """The bundled ffmpeg's description of the file's video stream (``ffmpeg -i`` prints it on stderr)."""
    out = subprocess.run([FFMPEG, "-hide_banner", "-i", str(path)], capture_output=True, text=True)
    return next(line for line in out.stderr.splitlines() if "Video:" in line)


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


# --------------------------------------------------------------------------------------------------
# frames_to_tensor
# --------------------------------------------------------------------------------------------------


# The original's normalisation, x / 128 - 1, as the Predict1 specs declare it (ModelSpec.input_normalisation).
ORIGINAL = PREDICT1_7B.input_normalisation


def to_tensor(frames, height, width, **kw):
    return media.frames_to_tensor(frames, height, width, normalisation=ORIGINAL, **kw)


def cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def aa_bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Antialiased bicubic resampling as a matrix (PIL's scheme: the kernel is widened by the
    downscale factor and the taps that fall inside the image are renormalised)."""
    scale = n_in / n_out
    stretch = max(scale, 1.0)
    matrix = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = (i + 0.5) * scale
        lo = max(int(centre - 2 * stretch + 0.5), 0)
        hi = min(int(centre + 2 * stretch + 0.5), n_in)
        taps = cubic((np.arange(lo, hi) - centre + 0.5) / stretch)
        matrix[i, lo:hi] = taps / taps.sum()
    return matrix


def reference_stretch(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """[1, 3, N, height, width] float64, computed with numpy only."""
    x = frames.astype(np.float64) / 128.0 - 1.0  # (N, h, w, 3)
    rows, cols = aa_bicubic_matrix(frames.shape[1], height), aa_bicubic_matrix(frames.shape[2], width)
    out = np.einsum("ij,njkc,lk->cnil", rows, x, cols)
    return out[None]


def random_frames(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_normalisation_is_exact_when_no_resize_is_needed():
    frames = random_frames(2, 16, 24)
    frames[0, 0, 0] = (0, 128, 255)
    out = to_tensor(frames, 16, 24)
    assert out.shape == (1, 3, 2, 16, 24) and out.dtype == torch.float32
    expected = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].double() / 128 - 1
    assert torch.equal(out.double(), expected)
    assert out[0, :, 0, 0, 0].tolist() == [-1.0, 0.0, 0.9921875]


def test_every_predict1_model_normalises_as_the_original_bit_for_bit():
    frames = random_frames(3, 16, 24, seed=5)
    reference = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 128.0 - 1.0  # the original's formula
    for spec in (PREDICT1_7B, PREDICT1_14B, PREDICT1_TINY, PREDICT1_DEMO):
        for dtype in (torch.float32, torch.bfloat16):
            out = media.frames_to_tensor(frames, 16, 24, dtype=dtype, normalisation=spec.input_normalisation)
            assert torch.equal(out, reference.to(dtype)), (spec.name, dtype)


def test_the_spec_says_how_pixels_are_normalised():
    """A model without its own normalisation gets [-1, 1]; another's scale and offset are applied as given,
    and a padded border is that model's black."""
    frames = np.zeros((1, 8, 8, 3), dtype=np.uint8)
    frames[0, :, :4] = 255
    default = media.frames_to_tensor(frames, 8, 8, normalisation=ModelSpec("m", "b", "d").input_normalisation)
    assert default[0, 0, 0, 0, :].tolist() == pytest.approx([1.0] * 4 + [-1.0] * 4, abs=1e-6)
    unit = media.frames_to_tensor(frames, 8, 8, normalisation=PixelNormalisation(scale=1 / 255, offset=0.0))
    assert unit[0, 0, 0, 0, :].tolist() == pytest.approx([1.0] * 4 + [0.0] * 4, abs=1e-6)
    padded = media.frames_to_tensor(frames, 8, 16, resize="pad", normalisation=PixelNormalisation(1 / 255, 0.5))
    assert padded[0, 0, 0, 0, :4].tolist() == [0.5] * 4  # the border: offset exactly
    assert padded[0, 0, 0, 0, 4:8].tolist() == pytest.approx([1.5] * 4, abs=1e-6)


@pytest.mark.parametrize(
    ("size_in", "size_out"), [((40, 60), (17, 25)), ((10, 14), (23, 31)), ((36, 64), (22, 40))]
)
def test_stretch_matches_independent_antialiased_bicubic(size_in, size_out):
    frames = random_frames(3, *size_in)
    out = to_tensor(frames, *size_out, resize="stretch")
    assert out.shape == (1, 3, 3, *size_out)
    # an fp32 separable filter against a float64 reference, values in [-1, 1], taps summed in another order:
    # ~20 taps of 2^-24 relative rounding each (< 2e-6); 2e-5 leaves a factor 10, a wrong tap moves it by > 1e-3
    np.testing.assert_allclose(out.numpy(), reference_stretch(frames, *size_out), atol=2e-5, rtol=0)


def test_stretch_agrees_with_pillow_bicubic():
    import PIL.Image as image_module  # pillow is a dependency of the package
    frames = random_frames(1, 45, 80, seed=3)
    out = to_tensor(frames, 27, 48)
    for c in range(3):
        plane = frames[0, :, :, c].astype(np.float32) / 128.0 - 1.0
        pil = image_module.fromarray(plane, mode="F").resize((48, 27), image_module.BICUBIC)
        # Pillow filters "F" images in float32 with its own tap order and kernel support rounding: ~1e-5
        np.testing.assert_allclose(out[0, c, 0].numpy(), np.asarray(pil), atol=1e-4)


def test_bfloat16_is_float32_resize_then_cast():
    frames = random_frames(2, 30, 50)
    ref = to_tensor(frames, 16, 24)
    out = to_tensor(frames, 16, 24, dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, ref.to(torch.bfloat16))


def three_bands(h: int = 40, w: int = 80) -> np.ndarray:
    """Left quarter black, middle half white, right quarter black."""
    frames = np.zeros((1, h, w, 3), dtype=np.uint8)
    frames[:, :, w // 4 : 3 * w // 4] = 255
    return frames


def test_crop_keeps_aspect_and_cuts_the_centre():
    out = to_tensor(three_bands(), 20, 20, resize="crop")  # 40x80 -> 20x40 -> centre 20x20
    assert out.shape == (1, 3, 1, 20, 20)
    # interior of a constant band: the filter's taps sum to 1 in fp32 (rounding ~1e-7 x 20 taps)
    np.testing.assert_allclose(out[0, :, 0, :, 3:17].numpy(), 255 / 128 - 1, atol=1e-4)
    full = to_tensor(three_bands(), 20, 40)  # the same resize, before cropping
    assert torch.equal(out, full[..., 10:30])


def test_pad_keeps_aspect_and_fills_black():
    out = to_tensor(three_bands(), 40, 40, resize="pad")  # 40x80 -> 20x40, 10 rows each side
    assert out.shape == (1, 3, 1, 40, 40)
    assert torch.all(out[..., :10, :] == -1.0) and torch.all(out[..., 30:, :] == -1.0)
    assert torch.equal(out[..., 10:30, :], to_tensor(three_bands(), 20, 40))

    tall = to_tensor(three_bands(80, 40), 40, 40, resize="pad")  # pillarbox: 40x20 inside
    assert torch.all(tall[..., :, :10] == -1.0) and torch.all(tall[..., :, 30:] == -1.0)


def test_crop_and_pad_equal_stretch_when_aspect_matches():
    frames = random_frames(2, 36, 64)
    stretch = to_tensor(frames, 18, 32)
    assert torch.equal(to_tensor(frames, 18, 32, resize="crop"), stretch)
    assert torch.equal(to_tensor(frames, 18, 32, resize="pad"), stretch)


def test_frames_to_tensor_rejects_bad_arguments():
    with pytest.raises(ValueError):
        to_tensor(np.zeros((1, 4, 4, 3), dtype=np.float32), 4, 4)
    with pytest.raises(ValueError):
        to_tensor(np.zeros((4, 4, 3), dtype=np.uint8), 4, 4)
    with pytest.raises(ValueError):
        to_tensor(np.zeros((1, 4, 4, 3), dtype=np.uint8), 4, 4, resize="zoom")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def top_level_boxes(path: Path) -> list[str]:
    data, boxes, i = path.read_bytes(), [], 0
    while i + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[i : i + 8])
        if size == 1:
            size = struct.unpack(">Q", data[i + 8 : i + 16])[0]
        boxes.append(kind.decode("latin-1"))
        if size == 0:
            break
        i += size
    return boxes


@pytest.mark.parametrize(("fps", "crf"), [(24, media.DEFAULT_CRF), (30, 18)])
def test_write_video_round_trip(tmp_path, fps, crf):
    path = tmp_path / "out.mp4"
    assert media.write_video(path, solid_frames(10), fps=fps, crf=crf) == path
    info = media.probe(path)
    assert (info.kind, info.num_frames, info.width, info.height) == ("video", 10, W, H)
    assert info.fps == pytest.approx(fps)
    stream = stream_info(path)
    assert "Video: h264" in stream and "yuv420p" in stream
    assert palette_index(media.read_video(path)[0]) == list(range(10))
    boxes = top_level_boxes(path)
    assert boxes.index("moov") < boxes.index("mdat")  # +faststart: playable while downloading
    assert f"crf={crf}.0".encode() in path.read_bytes()  # x264 records its settings in the stream
    assert os.listdir(tmp_path) == ["out.mp4"]


def test_write_video_pads_odd_sizes_by_one_pixel(tmp_path):
    blocks = random_frames(3, 6, 8)  # 8x8 blocks of one colour survive 4:2:0 chroma subsampling
    frames = np.ascontiguousarray(blocks.repeat(8, axis=1).repeat(8, axis=2)[:, :47, :63])
    path = media.write_video(tmp_path / "odd.mp4", frames, fps=24, crf=0)
    info = media.probe(path)
    assert (info.width, info.height, info.num_frames) == (64, 48, 3)
    back = media.read_video(path)[0]
    assert np.abs(back[:, :47, :63].astype(int) - frames).mean() < 4
    assert np.abs(back[:, 47, :63].astype(int) - frames[:, 46]).mean() < 6  # repeated last row


def test_write_video_accepts_a_generator_and_creates_the_folder(tmp_path):
    path = tmp_path / "new" / "deeper" / "gen.mp4"
    media.write_video(path, (frame for frame in solid_frames(4)), fps=24)
    assert media.probe(path).num_frames == 4


def test_failed_write_leaves_no_partial_file(tmp_path):
    frames = list(solid_frames(8))
    frames[5] = np.zeros((H, W + 2, 3), dtype=np.uint8)  # ffmpeg is already writing when this comes

    target = tmp_path / "fresh.mp4"
    with pytest.raises(ValueError, match="frame 5"):
        media.write_video(target, frames, fps=24)
    assert os.listdir(tmp_path) == []

    existing = tmp_path / "existing.mp4"
    existing.write_bytes(b"previous result")
    with pytest.raises(ValueError):
        media.write_video(existing, frames, fps=24)
    assert existing.read_bytes() == b"previous result"
    assert os.listdir(tmp_path) == ["existing.mp4"]


def test_write_is_checked_after_encoding(tmp_path, monkeypatch):
    """If what ffmpeg wrote does not read back as the frames sent, nothing replaces the target."""
    existing = tmp_path / "existing.mp4"
    existing.write_bytes(b"previous result")
    real_probe = media.read._probe_video

    def short_probe(p):
        info = real_probe(p)
        return media.MediaInfo(info.path, info.kind, info.num_frames - 1, info.width, info.height, info.fps)

    monkeypatch.setattr(media.write, "_probe_video", short_probe)
    with pytest.raises(GenerationError, match="expected 4"):
        media.write_video(existing, solid_frames(4), fps=24)
    assert existing.read_bytes() == b"previous result"
    assert os.listdir(tmp_path) == ["existing.mp4"]


FAKE_FFMPEG = {
    # writes a partial file, reads a little, then dies: the next frame hits a closed pipe
    "dies mid-write": 'for a; do out="$a"; done; printf partial > "$out"; head -c 20000 > /dev/null; exit 1',
    # reads everything and exits 0, but what it wrote is not a video
    "writes garbage": 'for a; do out="$a"; done; cat > /dev/null; printf garbage > "$out"; exit 0',
}


@pytest.mark.parametrize("behaviour", list(FAKE_FFMPEG))
def test_ffmpeg_failure_leaves_no_partial_file(tmp_path, monkeypatch, behaviour):
    script = tmp_path / "fake-ffmpeg.sh"
    script.write_text("#!/bin/sh\n" + FAKE_FFMPEG[behaviour] + "\n")
    script.chmod(0o755)
    monkeypatch.setattr(imageio_ffmpeg._io, "get_ffmpeg_exe", lambda: str(script))  # the encoder only
    out = tmp_path / "out"
    out.mkdir()
    (out / "existing.mp4").write_bytes(b"previous result")
    with pytest.raises(GenerationError) as err:
        media.write_video(out / "existing.mp4", solid_frames(12), fps=24)
    assert "existing.mp4" in err.value.message and "\n" not in err.value.message
    assert (out / "existing.mp4").read_bytes() == b"previous result"
    assert os.listdir(out) == ["existing.mp4"]


def test_write_video_replaces_an_existing_file(tmp_path):
    path = tmp_path / "v.mp4"
    path.write_bytes(b"old")
    media.write_video(path, solid_frames(2), fps=24)
    assert media.probe(path).num_frames == 2


def test_write_video_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        media.write_video(tmp_path / "a.mp4", np.zeros((2, H, W, 3), dtype=np.float32), fps=24)
    with pytest.raises(ValueError):
        media.write_video(tmp_path / "a.mp4", solid_frames(2), fps=0)
    with pytest.raises(ValueError):
        media.write_video(tmp_path / "a.mp4", solid_frames(0), fps=24)
    with pytest.raises(ValueError, match="^preset must be one of ultrafast, "):
        media.write_video(tmp_path / "a.mp4", solid_frames(2), fps=24, preset="nosuch")
    assert os.listdir(tmp_path) == []
    media.write_video(tmp_path / "b.mp4", solid_frames(2), fps=24, preset="ultrafast")  # another preset: a video
    assert media.probe(tmp_path / "b.mp4").num_frames == 2


def test_write_text_utf8_atomic(tmp_path):
    path = tmp_path / "prompt.txt"
    path.write_text("old prompt")
    text = "A robot arm picks up a café cup — 机器人\nsecond line\r\n"
    assert media.write_text(path, text) == path
    assert path.read_bytes() == text.encode("utf-8")
    assert os.listdir(tmp_path) == ["prompt.txt"]


def test_write_text_failure_leaves_target(tmp_path, monkeypatch):
    path = tmp_path / "prompt.txt"
    path.write_text("old prompt")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(media.write.os, "replace", broken_replace)
    with pytest.raises(GenerationError, match="No space left"):
        media.write_text(path, "new prompt")
    assert path.read_text() == "old prompt"
    assert os.listdir(tmp_path) == ["prompt.txt"]
