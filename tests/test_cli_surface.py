"""The command-line surface a user switching from cosmos-predict1 meets: option names and help at 80 columns, the
original's spellings, --quiet, memory and device messages, off-distribution inputs, the shipped example inputs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import REPO

COMMANDS = ("generate", "batch", "validate", "memory-plan", "backends", "download")


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


@pytest.mark.parametrize("command", ("generate", "batch", "validate", "download"))
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
    assert normalize_option_name("model_sizes") == "model"  # the original's download script
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


# --- item 6: memory and device messages -------------------------------------------------------------------


def test_memory_plan_exits_1_when_nothing_fits(cli):
    res = cli("memory-plan", "--model", "7B", "--vram", "4GB")
    assert res.exit_code == 1
    assert "strategies, fastest first" in res.stdout  # the table is still shown
    assert res.stderr.startswith("error: Cosmos-Predict1-7B-Video2World does not fit: nothing fits in 3.7 GiB")
    res = cli("memory-plan", "--model", "7B", "--vram", "4GB", "--json")
    assert res.exit_code == 1 and res.json()["fits"] is False
    fits = cli("memory-plan", "--model", "7B", "--vram", "80GB")
    assert fits.exit_code == 0 and "(fits)" in fits.stdout


def test_memory_plan_help_names_its_exit_codes(cli, monkeypatch):
    text = " ".join(help_at(cli, monkeypatch, "memory-plan", 200).split())
    assert "1 when it does not fit" in text and "0 when the plan fits" in text


@pytest.mark.parametrize("value", ["24", "80", "1.5"])
def test_vram_without_a_unit_is_refused(cli, value):
    res = cli("memory-plan", "--vram", value)
    assert res.exit_code == 2
    assert res.stderr.splitlines() == [f"error: --vram {value}: give a unit",
                                       f"hint: Write {value}GB (10^9 bytes) or {value}GiB (2^30 bytes)."]


def _fake_gpu(monkeypatch, free_gib: float, total_gib: float = 80):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "mem_get_info",
                        lambda device=None: (int(free_gib * 2**30), int(total_gib * 2**30)))


@pytest.mark.parametrize("free_gib", [79.0, 30.0, 15.0])
def test_memory_plan_shows_the_plan_generate_uses(cli, monkeypatch, free_gib):
    """Both read torch.cuda.mem_get_info and call generation.plan_request: the same strategy and reason."""
    from cosmos_cli.generation import GenerateRequest, plan_for
    from cosmos_cli.registry import find_model

    _fake_gpu(monkeypatch, free_gib)
    shown = cli("memory-plan", "--model", "7B", "--no-upsampler", "--json")
    assert shown.exit_code == 0, shown.stderr
    used = plan_for(find_model("7B")[1], GenerateRequest(Path("in.png"), "p", model="7B",
                                                         disable_prompt_upsampler=True), "cuda")
    data = shown.json()
    assert data["vram_bytes"] == int(free_gib * 2**30) and data["gpus"][0]["name"] == "Fake GPU"
    assert (data["strategy"], data["reason"]) == (used.strategy, used.reason)


def test_original_offload_flags_on_a_gpu_name_the_strategy_they_mean(cli, monkeypatch):
    _fake_gpu(monkeypatch, 79.0)
    res = cli("memory-plan", "--model", "7B", "--offload", "offload-tokenizer")
    assert res.exit_code == 0 and "offload-tokenizer was asked for and fits" in " ".join(res.stdout.split())
    from cosmos_cli.generation import GenerateRequest, plan_for
    from cosmos_cli.registry import find_model

    req = GenerateRequest(Path("in.png"), "p", model="7B",
                          original_offload_flags=frozenset({"offload_tokenizer", "offload_text_encoder_model"}))
    plan = plan_for(find_model("7B")[1], req, "cuda")
    assert plan.strategy == "offload-tokenizer"
    assert plan.reason.startswith("offload-tokenizer (what --offload_text_encoder_model, --offload_tokenizer mean) "
                                  "was asked for and fits")
    _fake_gpu(monkeypatch, 20.0)
    from cosmos_cli.errors import MemoryPlanError

    with pytest.raises(MemoryPlanError, match=r"strategy offload-tokenizer \(what --offload_text_encoder_model"):
        plan_for(find_model("7B")[1], req, "cuda")


@pytest.fixture
def tiny_run(tmp_path):
    """A generate command on the tiny model with an empty checkpoint folder: every check before loading runs (the
    notes, the input warning, the memory plan line), then it stops at the missing checkpoint (exit 1)."""
    from tests.conftest import make_image

    (tmp_path / "empty").mkdir()

    def run(cli, *extra, size=(32, 32)):
        img = make_image(tmp_path / f"in{size[0]}x{size[1]}.png", size[1], size[0])
        res = cli("generate", "--model", "predict1-tiny", "--checkpoint-dir", str(tmp_path / "empty"), "-i", str(img),
                  "-p", "a ball", "--device", "cpu", "-o", str(tmp_path / "out"), *extra)
        assert res.exit_code == 1 and "missing checkpoint files" in res.stderr, res.stderr
        return " ".join(res.stderr.split())
    return run


def test_offload_flags_on_the_cpu_say_what_they_mean_and_why_unused(cli, tiny_run):
    err = tiny_run(cli, "--offload_tokenizer", "--offload_diffusion_transformer", "--offload_guardrail_models",
                   "--offload_text_encoder_model", "--offload_prompt_upsampler")
    assert ("memory strategy resident (on the CPU every model stays in host memory, about 0.0 GiB at the peak; "
            "--offload_diffusion_transformer, --offload_guardrail_models, --offload_prompt_upsampler, "
            "--offload_text_encoder_model, --offload_tokenizer mean offload-all, a placement in GPU memory, not used "
            "on the CPU)") in err
    assert "resident needs about" not in err


def test_quiet_drops_the_notes(cli, tiny_run):
    loud = tiny_run(cli)
    assert loud.count("note:") == 2 and "memory strategy" in loud
    quiet = tiny_run(cli, "--quiet")
    assert "note:" not in quiet and "memory strategy" not in quiet and "error: " in quiet


def test_7b_without_a_gpu_needs_device_cpu(cli, tmp_path, monkeypatch):
    import torch

    from tests.conftest import make_image

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    img = make_image(tmp_path / "in.png", 704, 1280)
    args = ("generate", "--model", "7B", "-i", str(img), "-p", "a road", "--checkpoint-dir", str(tmp_path / "none"),
            "--no-upsampler", "--no-guardrail", "-o", str(tmp_path / "out"))
    res = cli(*args)
    assert res.exit_code == 2
    assert res.stderr.splitlines()[-2] == ("error: no CUDA GPU found: Cosmos-Predict1-7B-Video2World on the CPU would "
                                           "take at least 43 hours (35 steps of 4.4 PFLOP at 1 TFLOP/s)")
    assert "--device cpu" in res.stderr.splitlines()[-1]
    fewer = cli(*args, "--num-steps", "1")  # 1 step: 74 minutes, still past the limit
    assert fewer.exit_code == 2 and "at least 74 minutes" in fewer.stderr
    explicit = cli(*args, "--device", "cpu")  # runs (and stops at the missing checkpoint), with the estimate
    assert explicit.exit_code == 1 and "missing checkpoint files" in explicit.stderr
    assert "warning: Cosmos-Predict1-7B-Video2World on the CPU would take at least 43 hours" in explicit.stderr


def test_demo_model_is_not_refused_on_the_cpu():
    from cosmos_cli.gpu import CPU_AUTO_LIMIT_S, cpu_seconds
    from cosmos_cli.registry import find_model

    demo = find_model("demo")[1]
    assert 0 < cpu_seconds(demo.step_flops, demo.num_steps) < CPU_AUTO_LIMIT_S
    for name in ("7B", "14B"):
        spec = find_model(name)[1]
        assert cpu_seconds(spec.step_flops, 1) > CPU_AUTO_LIMIT_S


# --- item 9: off-distribution inputs ---------------------------------------------------------------------


def test_input_far_from_the_model_gets_a_warning(cli, tiny_run):
    err = tiny_run(cli, size=(320, 90))
    assert ("warning: " in err and "the input is 320x90, far from the 32x32 Cosmos-Predict1-Tiny-Video2World "
            "generates: it will be stretched to 32x32 (--resize crop or pad keeps its aspect)") in err
    assert "far from" not in tiny_run(cli, size=(40, 36))  # aspect within 1.25, size within 4x
    cropped = tiny_run(cli, "--resize", "crop", size=(320, 90))
    assert "it will be cropped to 32x32." in cropped


def test_demo_model_says_what_it_expects():
    from cosmos_cli.registry import find_model

    demo = find_model("demo")[1]
    text = demo.input_warning(1920, 1080)
    assert text.startswith("the input is 1920x1080, far from the 128x128 Cosmos-Predict1-Demo-Video2World generates")
    assert "The model expects a square 128x128 picture of one ball or box" in text
    assert demo.input_warning(3840, 2160) is not None  # a 4K video: 16:9 and 30x the size
    assert demo.input_warning(128, 128) is None and demo.input_warning(160, 140) is None
    seven = find_model("7B")[1]
    assert seven.input_warning(3840, 2160) is None  # 16:9 against 20:11, 3x: fitted without a word
    assert "real-world video" in seven.input_warning(1080, 1920)  # portrait


# --- item 7: torchrun stays quiet ------------------------------------------------------------------------


def test_failing_torchrun_run_prints_our_line_and_a_short_summary(tmp_path):
    """2 ranks on the CPU (gloo), an error every rank raises alike: rank 0 prints one line, rank 1 exits 0 at once,
    so torchrun sends no SIGTERM and its summary lists rank 0 alone, showing our message."""
    from tests.conftest import make_image
    from tests.test_parallel_cli import gen_args, stderr_errors, torchrun

    img = make_image(tmp_path / "in.png", 32, 32)
    proc, _ = torchrun(2, gen_args(tmp_path / "ckpt", img, tmp_path / "out", "--num-gpus", "2",
                                   "--num-input-frames", "5"))
    assert proc.returncode == 1
    line = "error: --num-input-frames 5: Cosmos-Predict1-Tiny-Video2World accepts 1 or 9 input frames"
    assert stderr_errors(proc.stderr) == [line], proc.stderr
    assert "SIGTERM" not in proc.stderr and "Sending process" not in proc.stderr, proc.stderr
    assert "<NO_OTHER_FAILURES>" in proc.stderr and "rank      : 1" not in proc.stderr, proc.stderr
    assert f"traceback : {line}" in proc.stderr and "To enable traceback" not in proc.stderr, proc.stderr


# --- README: the "Coming from cosmos-predict1" table cannot rot ------------------------------------------

SPEC = REPO.parent / "shared" / "reference" / "cosmos-predict1-spec.md"


def readme_migration_table() -> dict[str, str]:
    """original flag -> our name, from the README's "Coming from cosmos-predict1" table."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Coming from cosmos-predict1", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(--[a-z_0-9]+)` \| `(--[a-z0-9-]+)`", section, re.M)
    return dict(rows)


def test_readme_table_maps_every_flag_of_the_original():
    table = readme_migration_table()
    assert len(table) >= 26
    if SPEC.exists():  # the flag list of the original's video2world.py --help (spec section 1.1)
        section = SPEC.read_text().split("### 1.1 CLI arguments", 1)[1].split("\n### ", 1)[0]
        original = set(re.findall(r"^\| `(--[a-z_0-9]+)` \|", section, re.M))
        assert len(original) == 26 and original == set(table), original ^ set(table)


def test_every_original_flag_is_an_option_of_generate():
    from cosmos_cli.options import normalize_option_name

    names = set(declared_options("generate"))
    for original, ours in readme_migration_table().items():
        assert "--" + normalize_option_name(original[2:]) == ours, original
        assert ours in names, ours


def test_the_original_command_with_every_flag_parses(cli, tmp_path):
    """All 26 flags at once, as the original spells them (values valid for 7B): the run gets as far as reading the
    input (a missing file: one line, exit 1), so every flag parsed and passed its check."""
    values = {"--checkpoint_dir": str(tmp_path / "ckpt"), "--tokenizer_dir": "Cosmos-Tokenize1-CV8x8x8-720p",
              "--video_save_name": "v", "--video_save_folder": str(tmp_path / "out"), "--prompt": "a robot",
              "--negative_prompt": "blur", "--num_steps": "35", "--guidance": "7", "--num_video_frames": "121",
              "--height": "704", "--width": "1280", "--fps": "24", "--seed": "1", "--num_gpus": "1",
              "--diffusion_transformer_dir": "Cosmos-Predict1-7B-Video2World", "--prompt_upsampler_dir": "Pixtral-12B",
              "--input_image_or_video_path": str(tmp_path / "missing.jpg"), "--num_input_frames": "1"}
    switches = [f for f in readme_migration_table() if f not in values and f != "--batch_input_path"]
    assert len(values) + len(switches) == 25
    args = [*(x for kv in values.items() for x in kv), *switches, "--device", "cpu"]
    res = cli("generate", *args)
    assert res.exit_code == 1, res.stderr
    assert res.stderr.splitlines()[-2].startswith("error: ") and "missing.jpg" in res.stderr.splitlines()[-2]
    batch = cli("generate", "--batch_input_path", str(tmp_path / "missing.jsonl"), "--disable_guardrail")
    assert batch.exit_code in (1, 2) and "No such option" not in batch.stderr and "missing.jsonl" in batch.stderr


# --- item 10: the original's example inputs ship where its commands look -------------------------------


def test_the_readme_names_only_shipped_inputs():
    text = (REPO / "README.md").read_text()
    named = set(re.findall(r"assets/[\w/.-]+\.(?:jpg|png|mp4|jsonl)", text))
    assert {"assets/diffusion/video2world_input0.jpg", "assets/diffusion/video2world_input1.mp4"} <= named
    for path in named:
        assert (REPO / path).is_file(), path
    for name in ("video2world_input0.jpg", "video2world_input1.mp4"):
        assert (REPO / "assets" / "diffusion" / name).stat().st_size < 1_000_000  # modest: 198 KiB and 882 KiB
