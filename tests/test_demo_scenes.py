"""The demo model's procedural clips (tools/demo/scenes.py), metrics (tools/demo/metrics.py) and example inputs."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import imageio_ffmpeg
import jsonschema
import numpy as np
import pytest

# tools/ is not an installed package: `python -m pytest` finds it from the repo root, plain `pytest` needs this.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.demo import make_examples
from tools.demo.metrics import (
    PSNR_CAP_DB,
    direction_from_track,
    evaluate_clip,
    motion_direction,
    psnr,
    repeat_last_frame_baseline,
    track_centroid,
)
from tools.demo.scenes import (
    BACKGROUNDS,
    COLOURS,
    EVAL_SEEDS,
    GROUND,
    KINDS,
    TRAIN_SEEDS,
    direction_from_caption,
    make_clip,
    make_dataset,
    render,
    sample_params,
    simulate,
    split_of,
)

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "assets" / "examples"


@pytest.fixture(scope="module")
def eval_clips():
    return [make_clip(seed) for seed in EVAL_SEEDS[:200]]


@pytest.fixture(scope="module")
def many_params():
    return [sample_params(seed) for seed in TRAIN_SEEDS[:400]]


def _sign(direction: str) -> int:
    return 1 if direction == "right" else -1


def test_clip_is_deterministic_and_well_formed():
    a, b, other = make_clip(11), make_clip(11), make_clip(12)
    assert a.frames.shape == (33, 128, 128, 3) and a.frames.dtype == np.uint8
    assert a.track.shape == (33, 2)
    assert np.array_equal(a.frames, b.frames) and a.caption == b.caption and a.params == b.params
    assert not np.array_equal(a.frames, other.frames)
    small = make_clip(11, frames=17, size=64)
    assert small.frames.shape == (17, 64, 64, 3)
    assert small.params == a.params


def test_caption_states_the_direction_object_and_colour(many_params):
    for p in many_params:
        caption = p.caption
        assert direction_from_caption(caption) == p.direction
        assert p.colour in caption
        assert ("ball" in caption) if p.kind == "ball" else ("box" in caption or "block" in caption)
    assert len({p.caption for p in many_params}) > 300  # templates, adverbs and phrases vary


def test_direction_from_caption_parses_and_refuses():
    assert direction_from_caption("A red ball rolls Leftward") == "left"
    assert direction_from_caption("to the right, then right again") == "right"
    for text in ("a ball bounces", "left and right", "a bright red ball"):
        with pytest.raises(ValueError):
            direction_from_caption(text)


def test_every_kind_colour_and_background_appears(many_params):
    assert {p.kind for p in many_params} == set(KINDS)
    assert {p.colour for p in many_params} == set(COLOURS)
    assert {p.background for p in many_params} == set(BACKGROUNDS)
    assert {(p.direction, p.speed) for p in many_params} == {(d, s) for d in ("left", "right") for s in ("slow", "fast")}


def test_first_frame_does_not_reveal_the_direction(many_params):
    # Frame 0 is the same picture whichever way the object is about to move...
    for p in many_params[:20]:
        flipped = replace(p, direction="left" if p.direction == "right" else "right", vx0=-p.vx0)
        assert np.array_equal(render(p, simulate(p, 1)), render(flipped, simulate(flipped, 1)))
    # ...and where the object starts (and how high, and how big) does not depend on the direction.
    for field in ("x0", "y0", "half_w", "half_h"):
        left = np.array([getattr(p, field) for p in many_params if p.direction == "left"])
        right = np.array([getattr(p, field) for p in many_params if p.direction == "right"])
        standard_error = np.sqrt(left.var() / len(left) + right.var() / len(right))
        assert abs(left.mean() - right.mean()) < 3.5 * standard_error, field
    assert abs(np.mean([p.x0 for p in many_params]) - 0.5) < 0.02


def test_object_stays_in_frame_and_goes_the_stated_way(many_params):
    for p in many_params:
        x, y = simulate(p).T
        assert np.all(x - p.half_w >= 0) and np.all(x + p.half_w <= 1)
        assert np.all(y - p.half_h >= 0) and np.all(y + p.half_h <= GROUND + 1e-9)
        excursion = (x - x[0]) * _sign(p.direction)
        assert excursion.max() >= 0.1  # the largest excursion is the stated way...
        assert -excursion.min() < 0.01 and excursion[-1] > 0.1  # ...it never goes back past the start
        assert (excursion[8:] - excursion[8]).max() >= 0.04  # and still goes that way after a 9-frame input


def test_tracker_finds_the_object_and_its_direction_on_ground_truth(eval_clips):
    for clip in eval_clips:
        track = track_centroid(clip.frames, clip.params)
        assert np.abs(track - clip.track).max() < 1.0
        assert direction_from_track(track, 128) == clip.params.direction
    assert motion_direction(eval_clips[0].frames, eval_clips[0].params) == eval_clips[0].params.direction
    # From a 9-frame input: judged from frame 8 on.
    assert all(evaluate_clip(c.frames[:9], c.frames, c)["follows_prompt"] for c in eval_clips[:50])
    # Without the background the per-pixel median over time stands in for it (worse where the object
    # rests most of the clip: about 95% over 200 clips).
    found = [motion_direction(c.frames) == c.params.direction for c in eval_clips[:40]]
    assert np.mean(found) >= 0.9


def test_tracker_survives_blur_and_noise(eval_clips):
    t, h, w, _ = eval_clips[0].frames.shape
    noise = np.rint(np.random.default_rng(0).normal(0.0, 15.0, (t * h, w, 3))).astype(np.int16)
    hits = []
    for i, clip in enumerate(eval_clips):
        blurred = cv2.GaussianBlur(clip.frames.reshape(t * h, w, 3), (0, 0), 2.0)  # sigma 2 px
        noisy = np.clip(blurred + np.roll(noise, i * h, axis=0), 0, 255).astype(np.uint8).reshape(t, h, w, 3)
        hits.append(motion_direction(noisy, clip.params) == clip.params.direction)
    assert np.mean(hits) >= 0.98


def test_psnr():
    a = np.full((2, 8, 8, 3), 100, np.uint8)
    assert psnr(a, a) == PSNR_CAP_DB  # identical frames: capped at 100 dB, not infinity
    b = a.copy()
    b[0] += 10  # MSE 50 over the pair
    assert psnr(a, b) == pytest.approx(10 * np.log10(255**2 / 50))
    with pytest.raises(ValueError):
        psnr(a, a[:1])
    with pytest.raises(ValueError):
        psnr(a.astype(np.float32), a)


def test_repeat_last_frame_baseline():
    frames = np.arange(3 * 4 * 4 * 3, dtype=np.uint8).reshape(3, 4, 4, 3)
    out = repeat_last_frame_baseline(frames, 5)
    assert out.shape == (5, 4, 4, 3) and all(np.array_equal(f, frames[-1]) for f in out)


def test_evaluate_clip(eval_clips):
    clip = eval_clips[0]
    for n in (1, 9):
        perfect = evaluate_clip(clip.frames[:n], clip.frames, clip)
        assert perfect["follows_prompt"] and perfect["psnr_model"] == PSNR_CAP_DB
        assert perfect == evaluate_clip(clip.frames[:n], clip.frames[n:], clip)  # whole video or only the new frames
        still = evaluate_clip(clip.frames[:n], repeat_last_frame_baseline(clip.frames[:n], 33 - n), clip)
        assert still["direction_predicted"] == "none" and not still["follows_prompt"]
        assert still["psnr_model"] == pytest.approx(still["psnr_baseline"]) and still["psnr_gain"] == 0
        assert 10 < still["psnr_baseline"] < 40
    # A generation that goes the other way from the same first frame does not follow the prompt.
    p = clip.params
    wrong = replace(p, direction="left" if p.direction == "right" else "right", vx0=-p.vx0)
    result = evaluate_clip(clip.frames[:1], render(wrong, simulate(wrong)), clip)
    assert result["direction_predicted"] == wrong.direction and not result["follows_prompt"]
    with pytest.raises(ValueError):
        evaluate_clip(clip.frames[:1], clip.frames[:20], clip)


def test_dataset_matches_clips_in_and_out_of_process():
    frames, captions, params = make_dataset(24, seed=EVAL_SEEDS.start + 500, workers=1, frames=9, size=32)
    assert frames.shape == (24, 9, 32, 32, 3) and frames.dtype == np.uint8
    for i in (0, 13, 23):
        clip = make_clip(EVAL_SEEDS.start + 500 + i, frames=9, size=32)
        assert np.array_equal(frames[i], clip.frames) and captions[i] == clip.caption and params[i] == clip.params
    parallel = make_dataset(24, seed=EVAL_SEEDS.start + 500, workers=2, frames=9, size=32, chunk=5)
    assert np.array_equal(parallel[0], frames) and parallel[1] == captions and parallel[2] == params


def test_train_and_eval_seeds_are_disjoint():
    assert TRAIN_SEEDS.stop <= EVAL_SEEDS.start
    assert split_of(0) == "train" and split_of(EVAL_SEEDS.start) == "eval"
    with pytest.raises(ValueError):
        make_dataset(4, seed=TRAIN_SEEDS.stop - 2, workers=1)
    with pytest.raises(ValueError):
        split_of(EVAL_SEEDS.stop)


def test_example_inputs_are_in_sync_with_the_generator():
    entries = json.loads((EXAMPLES / "prompts.json").read_text())
    chosen = make_examples.choose_examples()
    assert entries == [ex.entry() for ex in chosen]
    assert {e["num_input_frames"] for e in entries} == {1, 9}
    schema = json.loads((REPO / "schemas" / "batch_job.schema.json").read_text())
    for entry in entries:  # each entry is a valid `cosmos batch` line
        jsonschema.validate(entry, schema)
    assert sum(f.stat().st_size for f in EXAMPLES.iterdir()) < 200_000
    for ex in chosen:
        assert ex.clip.params.seed in EVAL_SEEDS
        path = EXAMPLES / ex.file_name
        if ex.num_input_frames == 1:
            image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
            assert np.array_equal(image, ex.clip.frames[0])
        else:
            reader = imageio_ffmpeg.read_frames(str(path))
            meta = next(reader)
            assert meta["size"] == (128, 128) and meta["fps"] == 24
            video = np.stack([np.frombuffer(b, np.uint8).reshape(128, 128, 3) for b in reader])
            assert len(video) == ex.num_input_frames
            assert psnr(video, ex.clip.frames[:ex.num_input_frames]) > 33
