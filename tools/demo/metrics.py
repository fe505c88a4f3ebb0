"""Quality metrics for the demo model on procedural clips (:mod:`tools.demo.scenes`).

- :func:`psnr`: peak signal-to-noise ratio of uint8 frames, pooled over everything given.
- :func:`track_centroid`: the object's centre in every frame, found as the largest blob of pixels that differ
  from the known background (and are nearer the object's colour than the background's, when the colour is
  known). Made for blurry, noisy generated frames: the frames are averaged down first (2x2 blocks at
  128x128), the threshold sits far below the object/background contrast, and stray specks lose to the
  largest blob. Centres are within a pixel of the truth on clean frames.
- :func:`motion_direction`: 'left', 'right' or 'none' from that track: the sign of the object's largest
  horizontal excursion from where it is in the first frame given (after a running median), or 'none' when that
  excursion is under ``min_shift`` of the width or the object is found in fewer than two frames. The largest
  excursion, not the end point, so a late wall bounce cannot flip the answer.
- :func:`repeat_last_frame_baseline` and :func:`evaluate_clip`, which puts them together for one clip.

Coordinates follow :mod:`tools.demo.scenes`: pixels, with pixel i spanning [i, i+1), so a centre lines up
with :attr:`Clip.track <tools.demo.scenes.Clip>`.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .scenes import Clip, SceneParams, render_background

PSNR_CAP_DB = 100.0  # psnr() of identical inputs; also the largest value it returns
THRESHOLD = 45.0  # RGB distance from the background above which a pixel may be the object
MIN_AREA = 0.002  # smallest blob, as a share of the frame (about 33 pixels at 128x128)
MIN_SHIFT = 0.03  # smallest excursion that counts as motion, as a share of the width (about 4 pixels)
MEDIAN_WINDOW = 5  # frames in the running median applied to the track
TRACK_SIZE = 64  # the tracker works on block means down to about this many pixels across


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 arrays of the same shape, from the mean squared error over all of them.

    Pooled, not per frame: a clip's PSNR is that of its predicted frames taken together. Identical inputs
    give :data:`PSNR_CAP_DB` (100 dB) rather than infinity, so means over clips stay finite.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"psnr needs equal shapes, got {a.shape} and {b.shape}")
    if a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(f"psnr needs uint8 frames, got {a.dtype} and {b.dtype}")
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    if mse == 0:
        return PSNR_CAP_DB
    return min(PSNR_CAP_DB, 10.0 * math.log10(255.0**2 / mse))


def repeat_last_frame_baseline(input_frames: np.ndarray, num_frames: int) -> np.ndarray:
    """The "nothing moves" prediction: the last input frame repeated ``num_frames`` times, (T, H, W, 3)."""
    input_frames = np.asarray(input_frames)
    if input_frames.ndim != 4 or len(input_frames) == 0:
        raise ValueError(f"input_frames must be (T>=1, H, W, 3), got {input_frames.shape}")
    return np.repeat(input_frames[-1:], num_frames, axis=0)


def _reference(background: np.ndarray | SceneParams | Clip | None, frames: np.ndarray
               ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(background (H, W, 3) or None, object colour (3,) float32 or None) for ``frames``."""
    if isinstance(background, Clip):
        background = background.params
    if not isinstance(background, SceneParams):
        if background is not None and np.shape(background) != frames.shape[1:]:
            raise ValueError(f"background {np.shape(background)} does not match frames {frames.shape[1:]}")
        return background, None
    if frames.shape[1] != frames.shape[2]:
        raise ValueError(f"scene backgrounds are square; frames are {frames.shape[2]}x{frames.shape[1]}")
    return render_background(background.background, frames.shape[1]), np.array(background.rgb, np.float32)


def _shrink(images: np.ndarray, f: int) -> np.ndarray:
    """f x f block means of (N, H, W, 3) images, all in one OpenCV call: (N, H/f, W/f, 3) float32."""
    n, h, w, _ = images.shape
    images = np.ascontiguousarray(images, np.float32 if images.dtype != np.uint8 else np.uint8)
    small = cv2.resize(images.reshape(n * h, w, 3), (w // f, n * h // f), interpolation=cv2.INTER_AREA)
    return small.reshape(n, h // f, w // f, 3).astype(np.float32)


def _squared_distance(frames: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Squared RGB distance of every pixel of (..., 3) ``frames`` to ``ref`` (broadcast): (...)."""
    diff = frames - ref
    diff *= diff
    return diff[..., 0] + diff[..., 1] + diff[..., 2]


def track_centroid(frames: np.ndarray, background: np.ndarray | SceneParams | Clip | None = None, *,
                   threshold: float = THRESHOLD, min_area: float = MIN_AREA) -> np.ndarray:
    """The object's centre (x, y) in pixels in each frame: (T, 2) float64, NaN where no object is found.

    ``background`` is the empty scene: an (H, W, 3) image, or the clip / its params (then the background is
    rendered at the frames' size and the object's colour is used too). ``None`` estimates it as the per-pixel
    median over time, which only works when the object keeps moving.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"frames must be (T>=1, H, W, 3), got {frames.shape}")
    background, colour = _reference(background, frames)
    t, h, w, _ = frames.shape
    f = max(1, min(h, w) // TRACK_SIZE)
    if h % f or w % f:
        f = 1
    h, w = h // f, w // f
    small = _shrink(frames, f)  # (T, h, w, 3): f x f block means, less noise and less work
    if background is None:  # the object moves, so each pixel shows the background most of the time
        bg = np.median(small, axis=0)
    else:
        bg = _shrink(np.asarray(background)[None], f)[0]  # (h, w, 3)
    d_bg = _squared_distance(small, bg)  # (T, h, w)
    mask = d_bg > threshold**2
    if colour is not None:
        mask &= _squared_distance(small, colour) < d_bg
    # Label all frames in one call: stacked vertically with an empty row under each, so no blob spans two.
    stacked = np.zeros((t, h + 1, w), np.uint8)
    stacked[:, :h] = mask
    n, _, stats, centroids = cv2.connectedComponentsWithStats(stacked.reshape(t * (h + 1), w), connectivity=8)
    out = np.full((t, 2), np.nan)
    if n == 1:
        return out
    frame_of = stats[1:, cv2.CC_STAT_TOP] // (h + 1)  # (n - 1,)
    area = stats[1:, cv2.CC_STAT_AREA]
    order = np.lexsort((area, frame_of))  # by frame, then by area: each frame's largest blob comes last
    last = np.r_[frame_of[order][1:] != frame_of[order][:-1], True]
    best = order[last]
    best = best[area[best] >= max(4.0, min_area * h * w)]
    xy = centroids[1:][best]
    xy[:, 1] -= frame_of[best] * (h + 1)
    xy = (xy + 0.5) * f  # OpenCV puts pixel centres at integers; back to full-size pixels
    out[frame_of[best]] = xy
    return out


def _running_median(x: np.ndarray, window: int) -> np.ndarray:
    """Centred running median whose window shrinks symmetrically at the ends (so x[0] is kept as is)."""
    out = np.empty(len(x))
    for i in range(len(x)):
        k = min(window // 2, i, len(x) - 1 - i)
        out[i] = np.median(x[i - k:i + k + 1])
    return out


def direction_from_track(track: np.ndarray, width: int, *, min_shift: float = MIN_SHIFT) -> str:
    """'left', 'right' or 'none' from a (T, 2) centroid track (NaN rows are skipped); see the module doc."""
    x = np.asarray(track, np.float64)[:, 0]
    x = x[~np.isnan(x)]
    if len(x) < 2:
        return "none"
    x = _running_median(x, MEDIAN_WINDOW)
    excursion = x - x[0]
    i = int(np.argmax(np.abs(excursion)))
    if abs(excursion[i]) < min_shift * width:
        return "none"
    return "right" if excursion[i] > 0 else "left"


def motion_direction(frames: np.ndarray, background: np.ndarray | SceneParams | Clip | None = None, *,
                     min_shift: float = MIN_SHIFT) -> str:
    """'left', 'right' or 'none': where the object in ``frames`` goes, relative to the first frame.

    The first frame is the reference: pass the last input frame followed by the predicted frames (as
    :func:`evaluate_clip` does) to judge a prediction from where the input left the object.
    ``background`` is as for :func:`track_centroid`; give it whenever it is known.
    """
    frames = np.asarray(frames)
    return direction_from_track(track_centroid(frames, background), frames.shape[2], min_shift=min_shift)


def evaluate_clip(input_frames: np.ndarray, generated_frames: np.ndarray, clip: Clip) -> dict:
    """Score one generation against the ground-truth ``clip``.

    ``input_frames`` are the conditioning frames (the first ``n`` frames of ``clip``, (n, H, W, 3)).
    ``generated_frames`` is either the model's whole output video (as many frames as ``clip``, the first
    ``n`` being its copy of the input) or only the ``T - n`` predicted frames. Both PSNRs are over the predicted
    frames only, against ``clip.frames[n:]``. The direction is read from the last input frame followed by the
    predicted frames, with the clip's background and colour: where the prediction takes the object from where
    the input left it (so with 9 input frames, the motion already in the input earns nothing).

    Returns psnr_model, psnr_baseline, psnr_gain (model - baseline, dB), direction_predicted,
    direction_expected, follows_prompt, num_input_frames.
    """
    input_frames, generated = np.asarray(input_frames), np.asarray(generated_frames)
    n, total = len(input_frames), len(clip.frames)
    if input_frames.shape[1:] != clip.frames.shape[1:] or generated.shape[1:] != clip.frames.shape[1:]:
        raise ValueError(f"frame sizes differ: input {input_frames.shape[1:]}, generated {generated.shape[1:]}, "
                         f"clip {clip.frames.shape[1:]}")
    if not 1 <= n < total:
        raise ValueError(f"need 1 to {total - 1} input frames, got {n}")
    if len(generated) == total:
        predicted = generated[n:]
    elif len(generated) == total - n:
        predicted = generated
    else:
        raise ValueError(f"generated video has {len(generated)} frames; expected {total} (whole video) or "
                         f"{total - n} (predicted frames only)")
    target = clip.frames[n:]
    psnr_model = psnr(predicted, target)
    psnr_baseline = psnr(repeat_last_frame_baseline(input_frames, total - n), target)
    predicted_direction = motion_direction(np.concatenate([input_frames[-1:], predicted]), clip.params)
    return {
        "psnr_model": psnr_model,
        "psnr_baseline": psnr_baseline,
        "psnr_gain": psnr_model - psnr_baseline,
        "direction_predicted": predicted_direction,
        "direction_expected": clip.params.direction,
        "follows_prompt": predicted_direction == clip.params.direction,
        "num_input_frames": n,
    }
