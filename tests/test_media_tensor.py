"""cosmos_cli.media.tensor: frames_to_tensor's normalisation and its stretch / crop / pad resize, against an
independent antialiased bicubic and Pillow."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cosmos_cli import media
from cosmos_cli.specs import ModelSpec, PixelNormalisation
from cosmos_plugins.predict1.specs import PREDICT1_7B, PREDICT1_14B, PREDICT1_DEMO, PREDICT1_TINY
from tests.media_helpers import random_frames

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
