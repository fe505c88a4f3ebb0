"""Procedural training and evaluation clips for the bundled demo Video2World model.

One clip is one object (a ball or a box) moving left or right in front of a plain background, filmed
side-on, with a caption that names the object, its colour, the direction and the speed:

    clip = make_clip(7)   # deterministic from the seed
    clip.frames           # (33, 128, 128, 3) uint8 RGB, 24 fps
    clip.caption          # 'a red box slides slowly to the left on a grey floor' (say)
    clip.params           # SceneParams: kind, colour, background, direction, speed, positions, sizes

The world is deliberately easy to predict. Balls are dropped from rest (no vertical velocity in frame 0), fall
under gravity, bounce off the floor losing a fixed share of their speed, and bounce off the side walls (the
frame edges). Boxes rest on the floor and slide with a constant friction deceleration until they stop. The
only quantities a single frame cannot show are the direction and the speed class, and both are in the caption:
the direction as the word ``left`` or ``right`` (:func:`direction_from_caption`), the speed as an adverb.

Frame 0 never reveals the direction: the start position, size, height and colours are drawn independently
of it, and nothing in a frame depends on velocity (no motion blur). The object's centre starts within
[0.35, 0.65] of the width, and the speeds are small enough that the object always ends up on the side the
caption says, even after a wall bounce: for the default 33 frames at 24 fps, its largest excursion from
frame 0 is at least 0.1 of the width in the stated direction, it never goes back past its start, and from
frame 8 (the last of a 9-frame input) on it still moves at least 0.04 of the width the stated way.

Geometry is in frame units: x and y run from 0 to 1 across the width and down the height; the pixel with
index i covers [i, i+1) of the pixel grid, so its centre is at i + 0.5. Drawing is anti-aliased by exact
pixel coverage (boxes) or a one-pixel ramp at the edge (balls), so sub-pixel motion is smooth.

Seeds: :data:`TRAIN_SEEDS` and :data:`EVAL_SEEDS` are disjoint ranges; the held-out evaluation and the
example inputs use :data:`EVAL_SEEDS` only. A clip is a pure function of its seed, frame count and size.
"""

from __future__ import annotations

import math
import mmap
import os
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

FPS = 24
NUM_FRAMES = 33  # 1 + 8 * 4: whole latent frames for the causal 8x-in-time tokenizer
SIZE = 128

TRAIN_SEEDS = range(0, 1_000_000_000)
EVAL_SEEDS = range(1_000_000_000, 1_001_000_000)

KINDS = ("ball", "box")
DIRECTIONS = ("left", "right")
SPEEDS = ("slow", "fast")

# Object colours (RGB). Each is at least ~115 away (Euclidean RGB) from every background colour below, so
# the tracker's colour-distance threshold has a wide margin even on blurry generated frames.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 100, 240),
    "yellow": (240, 210, 40),
    "white": (240, 240, 240),
}

# Backgrounds: (top colour, bottom colour, where the colour changes as a fraction of the height, ramp width).
# A ramp width of 0 is a hard edge (the wall/floor split), 1 spans the whole height (the gradient).
_BACKGROUNDS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int], float, float]] = {
    "grey": ((110, 110, 110), (110, 110, 110), 0.5, 0.0),
    "dark": ((25, 30, 70), (25, 30, 70), 0.5, 0.0),
    "split": ((180, 170, 150), (95, 75, 60), 0.62, 0.0),
    "gradient": ((70, 70, 85), (150, 150, 160), 0.5, 1.0),
}
BACKGROUNDS = tuple(_BACKGROUNDS)

# Physics, in frame units and seconds.
GROUND = 0.9  # the floor: where the bottom of an object rests
GRAVITY = 4.0
BALL_FLOOR_RESTITUTION = 0.75
BALL_WALL_RESTITUTION = 0.5
BALL_REST_SPEED = 0.12  # a ball bouncing up slower than this stays on the floor
BOX_FRICTION = 0.6  # deceleration of a sliding box
BOX_WALL_RESTITUTION = 0.4
SUBSTEPS = 16  # physics steps per frame

# Speed classes: a ball's horizontal speed (frame widths per second) and the distance a box slides before
# friction stops it (frame widths). Each clip jitters the class value by up to +-10%.
BALL_SPEED = {"slow": 0.18, "fast": 0.33}
BOX_SLIDE = {"slow": 0.22, "fast": 0.36}
SPEED_JITTER = 0.10
START_X = (0.35, 0.65)  # range of the object's centre in frame 0, the same for both directions

_ADVERBS = {"slow": ("slowly", "gently"), "fast": ("quickly", "fast")}
_BACKGROUND_PHRASES = {
    "grey": ("a grey floor", "a plain grey background"),
    "dark": ("a dark blue floor", "a dark blue background"),
    "split": ("a brown floor in front of a beige wall", "a wooden floor by a pale wall"),
    "gradient": ("a softly lit grey floor", "a grey gradient background"),
}
_TEMPLATES = {
    "ball": (
        "a {colour} ball bounces {adverb} to the {direction} on {background}",
        "a {colour} ball drops and bounces {adverb} to the {direction} over {background}",
        "a bouncing {colour} ball moves {adverb} {direction} across {background}",
    ),
    "box": (
        "a {colour} box slides {adverb} to the {direction} on {background}",
        "a {colour} box slides {adverb} {direction} across {background} and slows down",
        "a {colour} block glides {adverb} to the {direction} over {background}, slowed by friction",
    ),
}
_DIRECTION_WORD = re.compile(r"\b(left|right)(?:wards?)?\b", re.IGNORECASE)


@dataclass(frozen=True)
class SceneParams:
    """Everything that determines a clip. Lengths in frame units, velocities in frame units per second.

    ``x0``/``y0`` are the object's centre in frame 0; ``half_w``/``half_h`` its half extents (a ball's
    radius twice). ``vx0`` is the signed initial horizontal velocity (negative = left); balls start with no
    vertical velocity.
    """

    seed: int
    kind: str
    colour: str
    background: str
    direction: str
    speed: str
    x0: float
    y0: float
    vx0: float
    half_w: float
    half_h: float
    template: int = 0
    background_phrase: int = 0
    adverb: int = 0

    def __post_init__(self) -> None:
        for field, value, allowed in (("kind", self.kind, KINDS), ("colour", self.colour, tuple(COLOURS)),
                                      ("background", self.background, BACKGROUNDS),
                                      ("direction", self.direction, DIRECTIONS), ("speed", self.speed, SPEEDS)):
            if value not in allowed:
                raise ValueError(f"{field} must be one of {', '.join(allowed)}, not {value!r}")
        if (self.vx0 < 0) != (self.direction == "left") or self.vx0 == 0:
            raise ValueError(f"vx0={self.vx0} does not move {self.direction}")

    @property
    def rgb(self) -> tuple[int, int, int]:
        return COLOURS[self.colour]

    @property
    def caption(self) -> str:
        return _TEMPLATES[self.kind][self.template].format(
            colour=self.colour,
            adverb=_ADVERBS[self.speed][self.adverb],
            direction=self.direction,
            background=_BACKGROUND_PHRASES[self.background][self.background_phrase],
        )


@dataclass(frozen=True)
class Clip:
    """One generated clip: ``frames`` (T, H, W, 3) uint8 RGB, its caption, its parameters, and ``track``
    (T, 2): the true centre (x, y) of the object in every frame, in pixels (pixel i spans [i, i+1))."""

    frames: np.ndarray
    caption: str
    params: SceneParams
    track: np.ndarray


def direction_from_caption(text: str) -> str:
    """'left' or 'right', from the one direction word a caption contains (``left``/``right``/``leftward``...).

    Raises ValueError when the text names no direction or both.
    """
    found = {m.group(1).lower() for m in _DIRECTION_WORD.finditer(text)}
    if len(found) != 1:
        raise ValueError(f"expected exactly one of 'left'/'right' in the caption, found {sorted(found) or 'none'}: "
                         f"{text!r}")
    return found.pop()


def sample_params(seed: int) -> SceneParams:
    """Draw a scene from its seed (cheap: no rendering). The direction is drawn independently of everything
    visible in frame 0."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, not {seed}")
    rng = np.random.default_rng(seed)
    kind = KINDS[rng.integers(len(KINDS))]
    colour = tuple(COLOURS)[rng.integers(len(COLOURS))]
    background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    direction = DIRECTIONS[rng.integers(len(DIRECTIONS))]
    speed = SPEEDS[rng.integers(len(SPEEDS))]
    jitter = 1.0 + SPEED_JITTER * rng.uniform(-1.0, 1.0)
    x0 = rng.uniform(*START_X)
    sign = -1.0 if direction == "left" else 1.0
    if kind == "ball":
        radius = rng.uniform(0.07, 0.1)
        half_w = half_h = radius
        drop = rng.uniform(0.12, 0.5)  # height of the ball's bottom above the floor
        y0 = GROUND - radius - drop
        vx0 = sign * BALL_SPEED[speed] * jitter
    else:
        half_w = rng.uniform(0.07, 0.11)
        half_h = rng.uniform(0.05, 0.08)
        y0 = GROUND - half_h
        vx0 = sign * math.sqrt(2.0 * BOX_FRICTION * BOX_SLIDE[speed] * jitter)
    return SceneParams(
        seed=int(seed), kind=kind, colour=colour, background=background, direction=direction, speed=speed,
        x0=float(x0), y0=float(y0), vx0=float(vx0), half_w=float(half_w), half_h=float(half_h),
        template=int(rng.integers(len(_TEMPLATES[kind]))),
        background_phrase=int(rng.integers(len(_BACKGROUND_PHRASES[background]))),
        adverb=int(rng.integers(len(_ADVERBS[speed]))),
    )


def simulate(params: SceneParams, frames: int = NUM_FRAMES, fps: int = FPS) -> np.ndarray:
    """The object's centre (x, y) in frame units at each of ``frames`` frames: (T, 2) float64."""
    dt = 1.0 / (fps * SUBSTEPS)
    x, y, vx, vy = params.x0, params.y0, params.vx0, 0.0
    hw, hh = params.half_w, params.half_h
    ball = params.kind == "ball"
    wall_e = BALL_WALL_RESTITUTION if ball else BOX_WALL_RESTITUTION
    resting = not ball
    out = np.empty((frames, 2))
    for i in range(frames):
        out[i] = x, y
        for _ in range(SUBSTEPS):
            if resting:  # on the floor: friction (boxes) or nothing (balls that stopped bouncing)
                if not ball:
                    vx = math.copysign(max(abs(vx) - BOX_FRICTION * dt, 0.0), vx)
            else:  # semi-implicit Euler under gravity
                vy += GRAVITY * dt
                y += vy * dt
                if y + hh >= GROUND:
                    y = GROUND - hh - (y + hh - GROUND) * BALL_FLOOR_RESTITUTION
                    vy = -vy * BALL_FLOOR_RESTITUTION
                    if abs(vy) < BALL_REST_SPEED:
                        y, vy, resting = GROUND - hh, 0.0, True
            x += vx * dt
            if x - hw < 0.0:
                x, vx = hw + (hw - x) * wall_e, -vx * wall_e
            elif x + hw > 1.0:
                x, vx = 1.0 - hw - (x + hw - 1.0) * wall_e, -vx * wall_e
    return out


@lru_cache(maxsize=32)
def _background(name: str, size: int) -> np.ndarray:
    top, bottom, at, ramp = _BACKGROUNDS[name]
    edges = np.arange(size + 1, dtype=np.float64) / size  # pixel row boundaries in frame units
    if ramp > 0:  # linear ramp, averaged over each pixel row
        lo, hi = at - ramp / 2, at + ramp / 2
        mid = (edges[:-1] + edges[1:]) / 2
        weight = np.clip((mid - lo) / (hi - lo), 0.0, 1.0)
    else:  # hard edge: the share of each pixel row below `at`
        weight = np.clip(edges[1:] - np.maximum(edges[:-1], at), 0.0, None) * size
    rows = (1 - weight)[:, None] * np.array(top, np.float64) + weight[:, None] * np.array(bottom, np.float64)
    img = np.broadcast_to(rows[:, None, :], (size, size, 3)).copy()
    img.flags.writeable = False
    return img


@lru_cache(maxsize=32)
def _background_u8(name: str, size: int) -> np.ndarray:
    img = np.rint(_background(name, size)).astype(np.uint8)
    img.flags.writeable = False
    return img


def render_background(name: str, size: int = SIZE) -> np.ndarray:
    """The background ``name`` as an (H, W, 3) uint8 image."""
    if name not in _BACKGROUNDS:
        raise ValueError(f"unknown background {name!r}; choose from {', '.join(BACKGROUNDS)}")
    return _background_u8(name, size).copy()


def _window(centre: np.ndarray, half: float, size: int) -> tuple[np.ndarray, int]:
    """Per-frame start index and the fixed length of a pixel window that holds [centre - half, centre + half]
    with a pixel to spare on each side (pixel units): ((T,) int, length)."""
    length = min(size, math.ceil(2 * half) + 3)
    start = np.clip(np.floor(centre - half).astype(np.int64) - 1, 0, size - length)
    return start, length


def _coverage(lo: np.ndarray, hi: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """Share of each pixel [i, i+1) in ``pixels`` (T, L) covered by the interval [lo, hi) (T,): (T, L)."""
    return np.clip(np.minimum(pixels + 1, hi[:, None]) - np.maximum(pixels, lo[:, None]), 0.0, 1.0)


def render(params: SceneParams, centres: np.ndarray, size: int = SIZE, out: np.ndarray | None = None
           ) -> np.ndarray:
    """Draw the object at ``centres`` ((T, 2) frame units) over its background: (T, size, size, 3) uint8.

    Only a small window around the object is blended in each frame (all frames at once); ``out``, if given,
    receives the frames.
    """
    c = np.asarray(centres, np.float64) * size  # (T, 2) pixels
    cx, cy = c[:, 0], c[:, 1]
    hw, hh = params.half_w * size, params.half_h * size
    x_start, x_len = _window(cx, hw, size)
    y_start, y_len = _window(cy, hh, size)
    cols = x_start[:, None] + np.arange(x_len)  # (T, Lx) pixel indices
    rows = y_start[:, None] + np.arange(y_len)  # (T, Ly)
    if params.kind == "ball":  # a one-pixel ramp at the edge, from the distance of each pixel centre
        dx2 = (cols + 0.5 - cx[:, None]) ** 2  # (T, Lx)
        dy2 = (rows + 0.5 - cy[:, None]) ** 2  # (T, Ly)
        alpha = np.clip(hw + 0.5 - np.sqrt(dy2[:, :, None] + dx2[:, None, :]), 0.0, 1.0)  # (T, Ly, Lx)
    else:  # exact area coverage of the rectangle
        alpha = _coverage(cy - hh, cy + hh, rows)[:, :, None] * _coverage(cx - hw, cx + hw, cols)[:, None, :]
    if out is None:
        out = np.empty((len(c), size, size, 3), np.uint8)
    out[:] = _background_u8(params.background, size)
    t = np.arange(len(c))[:, None, None]
    r, q = rows[:, :, None], cols[:, None, :]
    bg = _background(params.background, size)[r, q]  # (T, Ly, Lx, 3)
    patch = bg + alpha[..., None] * (np.array(params.rgb, np.float64) - bg)
    out[t, r, q] = np.rint(patch).astype(np.uint8)
    return out


def _check_shape(frames: int, size: int) -> None:
    if frames < 2 or size < 16:
        raise ValueError(f"need frames >= 2 and size >= 16, got frames={frames}, size={size}")


def make_clip(seed: int, *, frames: int = NUM_FRAMES, size: int = SIZE) -> Clip:
    """The clip for ``seed``: deterministic for a given (seed, frames, size)."""
    _check_shape(frames, size)
    params = sample_params(seed)
    centres = simulate(params, frames)
    return Clip(frames=render(params, centres, size), caption=params.caption, params=params,
                track=centres * size)


def split_of(seed: int) -> str:
    """'train' or 'eval': which seed range ``seed`` belongs to."""
    if seed in TRAIN_SEEDS:
        return "train"
    if seed in EVAL_SEEDS:
        return "eval"
    raise ValueError(f"seed {seed} is in neither TRAIN_SEEDS ({TRAIN_SEEDS}) nor EVAL_SEEDS ({EVAL_SEEDS})")


_TARGET: np.ndarray | None = None  # in a worker process: the (N, T, H, W, 3) array shared with the parent


def _share(target: np.ndarray) -> None:
    global _TARGET
    _TARGET = target


def _render_into(target: np.ndarray, first_seed: int, start: int, stop: int
                 ) -> tuple[list[str], list[SceneParams]]:
    """Render the clips for rows ``start..stop-1`` of ``target`` (seed = first_seed + row)."""
    frames, size = target.shape[1], target.shape[2]
    captions, params = [], []
    for row in range(start, stop):
        p = sample_params(first_seed + row)
        render(p, simulate(p, frames), size, out=target[row])
        captions.append(p.caption)
        params.append(p)
    return captions, params


def _worker(job: tuple[int, int, int]) -> tuple[list[str], list[SceneParams]]:
    if _TARGET is None:
        raise RuntimeError("a dataset worker started without the shared array")
    return _render_into(_TARGET, *job)


def make_dataset(n: int, seed: int = 0, workers: int | None = None, *, frames: int = NUM_FRAMES,
                 size: int = SIZE, out: np.ndarray | None = None,
                 chunk: int = 32) -> tuple[np.ndarray, list[str], list[SceneParams]]:
    """Clips for seeds ``seed .. seed+n-1``: (frames (N, T, H, W, 3) uint8, captions, params).

    The seed range must lie inside one of :data:`TRAIN_SEEDS` / :data:`EVAL_SEEDS`. ``workers`` processes
    render in parallel (default: all CPUs; 1 renders in this process), writing straight into shared memory,
    so nothing is copied back through pipes. The default clip is 1.6 MB, so 20,000 clips take 32 GB: pass
    ``out`` as a file-backed array (``np.lib.format.open_memmap(path, "w+", np.uint8, shape)``) to write them
    to disk instead of memory. With workers > 1, ``out`` must be such a memmap.

    Workers are forked (Linux, macOS): they only run numpy, so a parent that has loaded torch is fine.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, not {n}")
    _check_shape(frames, size)
    if n:
        split = split_of(seed)
        if split_of(seed + n - 1) != split:
            raise ValueError(f"seeds {seed}..{seed + n - 1} straddle the train and eval ranges")
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, not {workers}")
    shape = (n, frames, size, size, 3)
    parallel = workers > 1 and n > chunk
    if out is None:
        if parallel:  # anonymous shared memory: forked workers write into the very pages we return
            buffer = mmap.mmap(-1, max(1, math.prod(shape)))
            out = np.frombuffer(buffer, np.uint8, count=math.prod(shape)).reshape(shape)
        else:
            out = np.empty(shape, np.uint8)
    elif out.shape != shape or out.dtype != np.uint8:
        raise ValueError(f"out must be uint8 {shape}, got {out.dtype} {out.shape}")
    elif parallel and not isinstance(out, np.memmap):
        raise ValueError("with workers > 1, out must be a file-backed np.memmap (or None)")
    if not parallel:
        captions, params = _render_into(out, seed, 0, n)
        return out, captions, params
    import multiprocessing

    jobs = [(seed, start, min(start + chunk, n)) for start in range(0, n, chunk)]
    captions, params = [], []
    with multiprocessing.get_context("fork").Pool(min(workers, len(jobs)), _share, (out,)) as pool:
        for caps, pars in pool.imap(_worker, jobs):
            captions += caps
            params += pars
    if isinstance(out, np.memmap):
        out.flush()
    return out, captions, params
