"""`cosmos generate` end to end on a tiny checkpoint folder written in the real formats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cosmos_cli.media import probe, read_video
from cosmos_plugins.predict1.specs import PREDICT1_TINY
from tests.conftest import checkpoint_folder, make_image, make_video

TINY = "predict1-tiny"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return checkpoint_folder(tmp_path_factory.mktemp("checkpoints"), PREDICT1_TINY, seed=0)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inputs")
    return {"image": make_image(d / "frame.JPG", 40, 56), "video": make_video(d / "clip.mp4", 12, 40, 56)}


def gen(cli, ckpt, out, *extra):
    return cli("generate", "--model", TINY, "--checkpoint-dir", str(ckpt), "--video-save-folder", str(out),
               "--disable-prompt-upsampler", "--disable-guardrail", "--device", "cpu", "--num-steps", "4", *extra)


def test_image_to_video(cli, ckpt, inputs, tmp_path):
    res = gen(cli, ckpt, tmp_path, "-i", str(inputs["image"]), "--prompt", "a red ball bounces to the left")
    assert res.exit_code == 0, res.stderr
    out = Path(res.stdout.strip())
    assert out == tmp_path / "output.mp4" and out.exists()
    info = probe(out)
    assert (info.kind, info.num_frames, info.width, info.height) == ("video", 17, 32, 32)
    assert info.fps == pytest.approx(24)
    assert (tmp_path / "output.txt").read_text(encoding="utf-8") == "a red ball bounces to the left"
    assert not [p for p in tmp_path.iterdir() if p.name not in ("output.mp4", "output.txt")]  # no temp files left


def test_nine_frame_video_with_original_flag_names(cli, ckpt, inputs, tmp_path):
    res = cli("generate", "--checkpoint_dir", str(ckpt), "--diffusion_transformer_dir", "Cosmos-Predict1-Tiny-Video2World",
              "--input_image_or_video_path", str(inputs["video"]), "--num_input_frames", "9",
              "--prompt", "a blue box slides right", "--disable_prompt_upsampler", "--disable_guardrail",
              "--video_save_folder", str(tmp_path), "--video_save_name", "nine", "--num_steps", "3", "--fps", "12",
              "--device", "cpu")
    assert res.exit_code == 0, res.stderr
    info = probe(tmp_path / "nine.mp4")
    assert info.num_frames == 17 and info.fps == pytest.approx(12)


@pytest.mark.parametrize("numerics", ["fp32", "original"])
def test_same_seed_same_video(cli, ckpt, inputs, tmp_path, numerics):
    args = ("-i", str(inputs["image"]), "--prompt", "a ball", "--seed", "7", "--numerics", numerics)
    assert gen(cli, ckpt, tmp_path, *args, "--video-save-name", "a").exit_code == 0
    assert gen(cli, ckpt, tmp_path, *args, "--video-save-name", "b").exit_code == 0
    assert gen(cli, ckpt, tmp_path, "-i", str(inputs["image"]), "--prompt", "a ball", "--seed", "8",
               "--numerics", numerics, "--video-save-name", "c").exit_code == 0
    a, b, c = (read_video(tmp_path / f"{n}.mp4")[0] for n in "abc")
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_output_never_overwritten(cli, ckpt, inputs, tmp_path):
    args = ("-i", str(inputs["image"]), "--prompt", "a ball")
    assert gen(cli, ckpt, tmp_path, *args).exit_code == 0
    first = (tmp_path / "output.mp4").read_bytes()
    res = gen(cli, ckpt, tmp_path, *args)  # no name: the next free one
    assert res.exit_code == 0 and Path(res.stdout.strip()).name == "output_1.mp4"
    res = gen(cli, ckpt, tmp_path, *args, "--video-save-name", "output")
    assert res.exit_code == 1 and "already exists" in res.stderr and "--overwrite" in res.stderr
    assert (tmp_path / "output.mp4").read_bytes() == first
    res = gen(cli, ckpt, tmp_path, *args, "--video-save-name", "output", "--overwrite", "--seed", "3")
    assert res.exit_code == 0 and (tmp_path / "output.mp4").read_bytes() != first


def test_json_output(cli, ckpt, inputs, tmp_path):
    res = gen(cli, ckpt, tmp_path, "-i", str(inputs["image"]), "--prompt", "a ball", "--json")
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    assert Path(data["video"]).exists() and data["prompt"] == "a ball"
    assert set(data["timings"]) >= {"encode_video", "encode_text", "denoise", "decode"}
    assert data["details"] == {"attention": "sdpa"}  # the kernel the denoising used (flash-attn-4 needs a GPU)


@pytest.mark.parametrize(
    "extra, code, needle",
    [
        (("--prompt", "x"), 1, "file not found"),
        (("-i", "{video}", "--prompt", "x", "--num-input-frames", "5"), 2, "accepts 1 or 9"),
        (("-i", "{image}", "--prompt", "x", "--num-input-frames", "9"), 1, "an image has 1 frame"),
        (("-i", "{image}"), 2, "prompt is required"),
        (("-i", "{image}", "--prompt", "x", "--video-save-name", "../up"), 2, "--video-save-name"),
        (("-i", "{image}", "--prompt", "x", "--numerics", "fp16"), 2, "--numerics must be one of fp32, original"),
        (("-i", "{image}", "--prompt", "x", "--cp-scheme", "diagonal"), 2, "--cp-scheme must be one of auto"),
        (("-i", "{image}", "--prompt", "x", "--offload", "turbo"), 1, "unknown memory strategy"),
        (("-i", "{image}", "--prompt", "x", "--attention", "flash3"), 2,
         "--attention must be one of auto, sdpa, flash-attn-4, got 'flash3'"),
        (("-i", "{image}", "--prompt", "x", "--attention", "flash-attn-4"), 2,
         "--attention flash-attn-4: it cannot run here: the network runs on cpu"),
    ],
)
def test_bad_requests_fail_before_loading(cli, ckpt, inputs, tmp_path, extra, code, needle):
    args = [a.format(**{k: str(v) for k, v in inputs.items()}) for a in extra]
    if "--prompt" in args and "-i" not in args:
        args = ["-i", str(tmp_path / "missing.png"), *args]
    res = gen(cli, ckpt, tmp_path, *args)
    assert res.exit_code == code, res.stderr
    assert needle in res.stderr
    assert "Traceback" not in res.stderr
    assert not list(tmp_path.glob("*.mp4"))


def test_corrupt_input_names_the_file(cli, ckpt, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    res = gen(cli, ckpt, tmp_path / "out", "-i", str(bad), "--prompt", "x")
    assert res.exit_code == 1 and "broken.png" in res.stderr and "Traceback" not in res.stderr


def test_missing_checkpoint_lists_files(cli, inputs, tmp_path):
    res = gen(cli, tmp_path / "empty", tmp_path, "-i", str(inputs["image"]), "--prompt", "x")
    assert res.exit_code == 1
    assert "missing checkpoint files" in res.stderr and "model.pt" in res.stderr and "cosmos download" in res.stderr


def test_model_without_upsampler_or_guardrail_says_so(cli, ckpt, inputs, tmp_path):
    res = cli("generate", "--model", TINY, "--checkpoint-dir", str(ckpt), "-i", str(inputs["image"]),
              "--prompt", "x", "--device", "cpu", "--num-steps", "2", "--video-save-folder", str(tmp_path))
    assert res.exit_code == 0, res.stderr
    assert "has no prompt upsampler" in res.stderr and "has no guardrail models" in res.stderr


def test_original_offload_flags_map_to_a_strategy(cli, ckpt, inputs, tmp_path):
    res = gen(cli, ckpt, tmp_path, "-i", str(inputs["image"]), "--prompt", "x", "--offload_tokenizer",
              "--offload", "resident")
    assert res.exit_code == 2 and "contradicts" in res.stderr
