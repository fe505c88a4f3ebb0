"""The command-line surface a user switching from cosmos-predict1 meets: option names and help at 80 columns, the
original's spellings, --quiet, memory and device messages, off-distribution inputs, the shipped example inputs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import REPO

COMMANDS = ("generate", "batch", "validate", "memory-plan", "backends")


def help_at(cli, monkeypatch, command: str, columns: int = 80) -> str:
    monkeypatch.setenv("COLUMNS", str(columns))
    res = cli(command, "--help")
    assert res.exit_code == 0, res.stderr
    return res.stdout


def declared_options(command: str) -> list[str]:
    """Every long option name the command declares (through Typer's public get_command)."""
    import typer

    from cosmos_cli.app import app

    cmd = typer.main.get_command(app).commands[command]
    return [name for p in cmd.params for name in (*p.opts, *p.secondary_opts) if name.startswith("--")]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_at_80_columns_shows_every_option_name_uncut(cli, monkeypatch, command):
    text = help_at(cli, monkeypatch, command)
    assert "…" not in text, text
    assert max(len(line) for line in text.splitlines()) <= 80
    for name in declared_options(command):
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text), f"{name} missing from {command} --help"


@pytest.mark.parametrize("command", ("generate", "batch", "validate"))
def test_flags_show_no_bool_type(cli, monkeypatch, command):
    text = help_at(cli, monkeypatch, command)
    lines = [line for line in text.splitlines() if "<bool>" in line]
    assert all("--help" in line for line in lines), lines  # Typer's own --help keeps its type


def test_one_name_for_the_upsampler_switch_on_every_command():
    for command in ("generate", "batch", "validate"):
        assert "--no-upsampler" in declared_options(command) and "--disable-prompt-upsampler" not in declared_options(command)
    for command in ("memory-plan", "download"):
        assert "--no-upsampler" in declared_options(command)
    assert "--no-guardrail" in declared_options("generate") and "--no-guardrail" in declared_options("memory-plan")
    batch = declared_options("batch")
    assert "--workers" in batch and "--gpus" not in batch and "--num-gpus" in batch


def test_every_option_reads_in_the_original_spelling_too():
    from cosmos_cli.options import normalize_option_name

    assert normalize_option_name("checkpoint_dir") == "checkpoint-dir"
    assert normalize_option_name("disable_prompt_upsampler") == "no-upsampler"
    assert normalize_option_name("input_image_or_video_path") == "input"
    assert normalize_option_name("gpus") == "workers"
    assert normalize_option_name("seed") == "seed"


def test_original_spellings_and_aliases_parse(cli, tmp_path):
    """The old names reach the same options: a usage error about the prompt proves --disable_prompt_upsampler was
    read as --no-upsampler (and the others parsed, or click would have said 'No such option')."""
    from tests.conftest import make_image

    img = make_image(tmp_path / "in.png", 128, 128)
    for upsampler_off in ("--disable_prompt_upsampler", "--disable-prompt-upsampler", "--no-upsampler"):
        res = cli("generate", "--input_image_or_video_path", str(img), upsampler_off, "--disable_guardrail",
                  "--video_save_folder", str(tmp_path / "o"), "--num_input_frames", "1", "--device", "cpu")
        assert res.exit_code == 2, res.stderr
        assert "a prompt is required" in res.stderr and "No such option" not in res.stderr
    res = cli("memory-plan", "--model", "7B", "--vram", "80GB", "--disable_prompt_upsampler", "--disable_guardrail",
              "--num_gpus", "1", "--json")
    assert res.exit_code == 0, res.stderr
    assert {c["name"] for c in res.json()["components"]} == {"text_encoder", "tokenizer", "diffusion_transformer"}


def test_original_no_op_options_refuse_what_they_cannot_do(cli, tmp_path):
    res = cli("generate", "-i", "x.png", "--model", "7B", "--height", "480")
    assert res.exit_code == 2 and "--height 480: Cosmos-Predict1-7B-Video2World generates 121 frames of 1280x704" in res.stderr
    res = cli("generate", "-i", "x.png", "--model", "7B", "--tokenizer_dir", "Other-Tokenizer")
    assert res.exit_code == 2 and "Cosmos-Tokenize1-CV8x8x8-720p" in res.stderr
    res = cli("generate", "-i", "x.png", "--model", "demo", "--prompt_upsampler_dir", "Pixtral-12B")
    assert res.exit_code == 2 and "has no prompt_upsampler" in res.stderr
