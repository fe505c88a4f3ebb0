"""The condition latent: only the input frames that the condition latents see go through the tokenizer.

The original encodes the input zero-padded to all of the model's frames; the sampler reads only the first
``n_cond`` latent frames (the others enter multiplied by an indicator of 0), and the tokenizer is causal, so
``Predict1Pipeline.encode_video`` encodes the input zero-padded to ``1 + 8 (n_cond - 1)`` frames and leaves the
later latent frames zero. These tests hold it to that: the same condition latents as the full encode, and the
same sampled latent, bit for bit.
"""

from __future__ import annotations

import pytest
import torch

from cosmos_cli.jobs import GenerationJob
from cosmos_cli.media import frames_to_tensor, read_frames
from cosmos_cli.planner import plan_memory
from cosmos_cli.progress import NullProgress
from cosmos_plugins.predict1.pipeline import SIGMA_DATA, Predict1Pipeline
from cosmos_plugins.predict1.specs import PREDICT1_TINY
from tests.conftest import EXAMPLE_MEDIA, checkpoint_folder


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    root = checkpoint_folder(tmp_path_factory.mktemp("ckpt"), PREDICT1_TINY, seed=0)
    plan = plan_memory(PREDICT1_TINY, None, strategy="resident", upsampler=False, guardrail=False)
    pipe = Predict1Pipeline.load(PREDICT1_TINY, plan, checkpoint_dir=root, device="cpu")
    yield pipe
    pipe.close()


def _job(frames: int) -> GenerationJob:
    media = EXAMPLE_MEDIA / ("video2world_input0.jpg" if frames == 1 else "video2world_input1.mp4")
    return GenerationJob(visual_input=media, prompt="a road", num_input_frames=frames, num_steps=3, seed=5)


def _full_encode(pipe: Predict1Pipeline, job: GenerationJob) -> torch.Tensor:
    """The original's condition latent: the input frames zero-padded to all of the model's frames, encoded."""
    spec = pipe.spec
    pixels = frames_to_tensor(read_frames(job.visual_input, job.num_input_frames), spec.height, spec.width,
                              resize=job.resize, dtype=torch.float32, normalisation=spec.input_normalisation)
    pixels = torch.nn.functional.pad(pixels, (0, 0, 0, 0, 0, spec.num_frames - pixels.shape[2]))
    with pipe.tokenizer.active() as tok:
        return tok.encode(pixels.to(next(tok.parameters()).dtype)) * SIGMA_DATA


@pytest.mark.parametrize("frames, n_cond", [(1, 1), (9, 2)])
def test_condition_latents_are_those_of_the_full_encode(pipe, frames, n_cond):
    """In float64 the two encodes differ only by the order of their sums (about 1e-15 relative: the convolutions
    see other frame counts), far below the bf16 the latent is returned in, so each bf16 value is the full
    encode's rounded, or its neighbour where the two land on either side of a rounding boundary."""
    job = _job(frames)
    with pipe.tokenizer.active() as tok:
        tok.double()
    try:
        with torch.inference_mode():
            latent, n = pipe.encode_video(job)
            full = _full_encode(pipe, job)
    finally:
        with pipe.tokenizer.active() as tok:
            tok.float()
    assert n == n_cond and latent.dtype == torch.bfloat16 and latent.shape == full.shape
    assert torch.count_nonzero(latent[:, :, n:]) == 0  # the latents the sampler does not read: not computed
    assert torch.count_nonzero(full[:, :, n:]) > 0  # (the full encode's are not zero: work the change leaves out)
    ref = full[:, :, :n].to(torch.bfloat16).double()
    got = latent[:, :, :n].double()
    ulp = torch.ldexp(torch.ones_like(ref), torch.frexp(ref.abs().clamp_min(2.0**-126))[1] - 8)  # bf16 spacing
    assert ((got - ref).abs() <= ulp).all()
    assert (got == ref).double().mean().item() > 0.99


@pytest.mark.parametrize("numerics", ["fp32", "original"])
def test_the_sampled_latent_does_not_depend_on_the_latents_after_the_condition(pipe, numerics):
    """The sampler multiplies the latents after the condition by an indicator of exactly 0, so the full encode's
    latents there (or any finite values) give the same clean latent bit for bit."""
    job = _job(9)
    with torch.inference_mode():
        latent, n = pipe.encode_video(job)
        text = pipe.encode_text(job.prompt, job.negative_prompt)
        other = latent.clone()
        other[:, :, n:] = _full_encode(pipe, job)[:, :, n:].to(torch.bfloat16)
        pipe.numerics = numerics
        try:
            a = pipe.denoise(job, latent, n, text, NullProgress())
            b = pipe.denoise(job, other, n, text, NullProgress())
            c = pipe.denoise(job, latent, n + 1, text, NullProgress())  # one more condition frame: it must show
        finally:
            pipe.numerics = "fp32"
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_the_planner_sizes_the_condition_encode_at_the_frames_it_runs_on(pipe, monkeypatch):
    """The memory plan's encode_video stage counts the frames the encode sees (9 at most: the input padded to
    1 + 8k), not all 121 of the decode; the pipeline encodes exactly that many."""
    from cosmos_cli.specs import TOKENIZER
    from cosmos_plugins.predict1.params import condition_pixel_frames, tokenizer_activation_bytes
    from cosmos_plugins.predict1.specs import PREDICT1_7B

    assert [condition_pixel_frames(n) for n in (1, 2, 8, 9, 10, 17)] == [1, 9, 9, 9, 17, 17]
    acts = dict(PREDICT1_7B.component(TOKENIZER).activation_bytes)
    for tiled in (False, True):
        suffix = "_tiled" if tiled else ""
        assert acts[f"encode_video{suffix}"] == tokenizer_activation_bytes(9, 704, 1280, tiled, "encode_video")
        assert acts[f"decode{suffix}"] == tokenizer_activation_bytes(121, 704, 1280, tiled, "decode")
    assert acts["encode_video"] * 121 == acts["decode"] * 9  # the same bytes per pixel, 9 of 121 frames
    seen = []
    with pipe.tokenizer.active() as tok:
        encode = tok.encode
        monkeypatch.setattr(tok, "encode", lambda x, **kw: seen.append(x.shape[2]) or encode(x, **kw))
    for frames in (1, 9):
        pipe.encode_video(_job(frames))
    assert seen == [1, 9]
