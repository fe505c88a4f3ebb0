"""Input frames to the model's input tensor: normalised as the spec says, then resized (stretch, crop or pad)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

from cosmos_cli.specs import PixelNormalisation

if TYPE_CHECKING:
    import torch


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
