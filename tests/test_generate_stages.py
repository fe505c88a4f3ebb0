"""The prompt upsampler and the guardrails inside a generation: the final prompt, blocks, failing closed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from cosmos_cli.jobs import GenerationJob
from cosmos_cli.planner import plan_memory
from cosmos_cli.progress import NullProgress
from cosmos_cli.specs import GUARDRAIL, UPSAMPLER, CheckpointFile, Component
from cosmos_plugins.predict1 import guardrails as G
from cosmos_plugins.predict1 import upsampler as U
from cosmos_plugins.predict1.pipeline import Predict1Pipeline
from cosmos_plugins.predict1.specs import PREDICT1_TINY, TINY_DIR
from tests.conftest import checkpoint_folder, make_image
from tests.test_guardrails import (
    _write_aegis,
    _write_blocklist,
    _write_retinaface,
    _write_safety_filter,
    _write_siglip,
)
from tests.test_upsampler import _processor_parts, _tiny_model

SPEC = replace(
    PREDICT1_TINY,
    name="Cosmos-Predict1-TinyStages-Video2World",
    aliases=("predict1-tiny-stages",),
    components=(Component(UPSAMPLER, ("upsample",), 1000, left_out_by="upsampler"),
                Component(GUARDRAIL, ("text_guardrail", "video_guardrail"), 1000, left_out_by="guardrail"),
                *PREDICT1_TINY.components),
    files=(*PREDICT1_TINY.files, CheckpointFile(UPSAMPLER, "", "config.json", "Pixtral-12B/config.json")),
)


def _guardrail(folder: Path, unsafe_class: int | None) -> None:
    _write_blocklist(folder / "blocklist")
    _write_aegis(folder / "aegis", adapter_says_unsafe=False, cache_layout=False)
    (folder / "video_content_safety_filter").mkdir(parents=True)
    _write_siglip(folder / "video_content_safety_filter")
    _write_safety_filter(folder / "video_content_safety_filter", unsafe_class=unsafe_class)
    _write_retinaface(folder / "face_blur_filter")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = checkpoint_folder(tmp_path_factory.mktemp("ckpt"), PREDICT1_TINY, seed=0)
    tokenizer, image_processor = _processor_parts()
    model = _tiny_model(len(tokenizer))
    model.save_pretrained(root / "Pixtral-12B")
    tokenizer.save_pretrained(root / "Pixtral-12B")
    image_processor.save_pretrained(root / "Pixtral-12B")
    _guardrail(root / TINY_DIR / "guardrail", unsafe_class=None)
    return root


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    return make_image(tmp_path_factory.mktemp("in") / "scene.png", 40, 40)


def _pipeline(root: Path, *, upsampler: bool, guardrail: bool) -> Predict1Pipeline:
    plan = plan_memory(SPEC, None, strategy="resident", upsampler=upsampler, guardrail=guardrail)
    return Predict1Pipeline.load(SPEC, plan, checkpoint_dir=root, device="cpu")


def _job(image: Path, prompt: str | None, **kw) -> GenerationJob:
    return GenerationJob(visual_input=image, prompt=prompt, num_steps=2, seed=3, **kw)


def test_upsampled_prompt_is_the_final_prompt(root, image, tmp_path, monkeypatch):
    calls = []
    real = U.PromptUpsampler.upsample

    def spy(self, img, prompt, *, seed, ignore_prompt=False):
        calls.append((img.shape, prompt, seed, ignore_prompt))
        return "an upsampled prompt about a red ball"

    monkeypatch.setattr(U.PromptUpsampler, "upsample", spy)
    pipe = _pipeline(root, upsampler=True, guardrail=False)
    assert isinstance(pipe.upsampler.module, U.PromptUpsampler) and real is not spy
    res = pipe.generate(_job(image, "a ball"), NullProgress(), video_path=tmp_path / "o.mp4", prompt_path=tmp_path / "o.txt")
    assert res.status == "ok" and res.final_prompt == "an upsampled prompt about a red ball"
    assert (tmp_path / "o.txt").read_text() == "an upsampled prompt about a red ball"
    assert calls == [((40, 40, 3), "a ball", 3, False)]
    pipe.generate(_job(image, "a ball", upsampler_ignores_prompt=True), NullProgress(), video_path=tmp_path / "p.mp4")
    assert calls[-1][3] is True


def test_real_tiny_upsampler_runs_in_the_pipeline(root, image, tmp_path, monkeypatch):
    monkeypatch.setattr(U, "MAX_NEW_TOKENS", 4)
    pipe = _pipeline(root, upsampler=True, guardrail=False)
    res = pipe.generate(_job(image, None), NullProgress(), video_path=tmp_path / "o.mp4", prompt_path=tmp_path / "o.txt")
    assert res.status == "ok" and res.final_prompt and (tmp_path / "o.txt").read_text() == res.final_prompt


def test_blocklisted_prompt_is_blocked_and_nothing_written(root, image, tmp_path):
    pipe = _pipeline(root, upsampler=False, guardrail=True)
    res = pipe.generate(_job(image, "A snarfwidget on the beach"), NullProgress(), video_path=tmp_path / "o.mp4",
                        prompt_path=tmp_path / "o.txt")
    assert res.status == "blocked" and res.message.startswith("blocklist:")
    assert not list(tmp_path.iterdir())
    ok = pipe.generate(_job(image, "A cat walks along a beach"), NullProgress(), video_path=tmp_path / "k.mp4")
    assert ok.status == "ok" and (tmp_path / "k.mp4").exists()


def test_an_exception_inside_a_guardrail_blocks(root, image, tmp_path, monkeypatch):
    pipe = _pipeline(root, upsampler=False, guardrail=True)

    def boom(self, prompt):
        raise RuntimeError("CUDA error: device-side assert")

    monkeypatch.setattr(G.Aegis, "answer", boom)
    res = pipe.generate(_job(image, "A cat walks along a beach"), NullProgress(), video_path=tmp_path / "o.mp4")
    assert res.status == "blocked" and "RuntimeError" in res.message
    assert not (tmp_path / "o.mp4").exists()


def test_unsafe_video_is_blocked(root, image, tmp_path_factory):
    other = tmp_path_factory.mktemp("unsafe")
    for p in root.iterdir():
        if p.name != TINY_DIR:
            (other / p.name).symlink_to(p)
    (other / TINY_DIR).mkdir()
    (other / TINY_DIR / "model.pt").symlink_to(root / TINY_DIR / "model.pt")
    _guardrail(other / TINY_DIR / "guardrail", unsafe_class=2)
    plan = plan_memory(SPEC, None, strategy="resident", upsampler=False, guardrail=True)
    pipe = Predict1Pipeline.load(SPEC, plan, checkpoint_dir=other, device="cpu")
    out = tmp_path_factory.mktemp("out")
    res = pipe.generate(_job(image, "A cat walks along a beach"), NullProgress(), video_path=out / "o.mp4")
    assert res.status == "blocked" and res.message.startswith("video_safety_filter")
    assert not (out / "o.mp4").exists()


def test_cli_blocked_exits_nonzero_naming_the_component(root, image, tmp_path, cli, fake_backend, monkeypatch):
    from cosmos_plugins.predict1 import Predict1Backend

    fake_backend.specs = (SPEC,)
    monkeypatch.setattr(type(fake_backend), "build_pipeline", Predict1Backend.build_pipeline)
    monkeypatch.setattr(type(fake_backend), "Options", Predict1Backend.Options)
    monkeypatch.setattr(type(fake_backend), "checkpoint_path", Predict1Backend.checkpoint_path)
    res = cli("generate", "--model", "predict1-tiny-stages", "--checkpoint-dir", str(root), "-i", str(image),
              "--prompt", "A snarfwidget on the beach", "--disable-prompt-upsampler", "--device", "cpu",
              "--num-steps", "2", "--video-save-folder", str(tmp_path))
    assert res.exit_code == 1, res.stderr
    assert "blocked by the guardrail (blocklist:" in res.stderr
    assert not list(tmp_path.glob("*.mp4"))
    res = cli("generate", "--model", "predict1-tiny-stages", "--checkpoint-dir", str(root), "-i", str(image),
              "--prompt", "A cat", "--disable-prompt-upsampler", "--disable-guardrail", "--device", "cpu",
              "--num-steps", "2", "--video-save-folder", str(tmp_path))
    assert res.exit_code == 0 and "guardrails are disabled" in res.stderr


def test_torch_is_not_left_in_grad_mode():
    assert torch.is_grad_enabled()
