"""`cosmos memory-plan` from the command line: --vram, detected GPUs (faked), JSON shape."""

from __future__ import annotations

import pytest

import cosmos_cli.commands.memory_plan as mp
from cosmos_cli.gpu import GpuInfo, parse_size


@pytest.mark.parametrize("model", ["7B", "14B", "Cosmos-Predict1-14B-Video2World"])
def test_json_shape(cli, model):
    res = cli("memory-plan", "--model", model, "--vram", "80GB", "--json")
    assert res.exit_code == 0, res.stderr
    data = res.json()
    for key in ("model", "vram_bytes", "strategy", "fits", "predicted_peak_bytes", "components"):
        assert key in data
    assert data["vram_bytes"] == 80 * 10**9
    assert isinstance(data["fits"], bool) and isinstance(data["predicted_peak_bytes"], int)
    for c in data["components"]:
        assert set(c) >= {"name", "placement", "weight_bytes"}
    assert {c["name"] for c in data["components"]} == {
        "prompt_upsampler", "guardrail", "text_encoder", "tokenizer", "diffusion_transformer"}


def test_no_gpu_no_vram_says_so(cli, monkeypatch):
    monkeypatch.setattr(mp, "detect_gpus", lambda: [])
    res = cli("memory-plan", "--model", "7B")
    assert res.exit_code == 0
    assert "No CUDA GPU detected" in res.stdout
    data = cli("memory-plan", "--model", "7B", "--json").json()
    assert data["vram_bytes"] is None and data["fits"] is False


def test_detected_gpu_free_memory_is_used(cli, monkeypatch):
    monkeypatch.setattr(mp, "detect_gpus", lambda: [GpuInfo(0, "Fake H100", 80 * 2**30, 79 * 2**30)])
    data = cli("memory-plan", "--model", "7B", "--json").json()
    assert data["vram_bytes"] == 79 * 2**30
    assert data["gpus"][0]["name"] == "Fake H100"
    text = cli("memory-plan", "--model", "7B").stdout
    assert "Fake H100" in text and "strategy:" in text


def test_no_upsampler_no_guardrail(cli):
    data = cli("memory-plan", "--model", "7B", "--vram", "80GB", "--no-upsampler", "--no-guardrail", "--json").json()
    assert {c["name"] for c in data["components"]} == {"text_encoder", "tokenizer", "diffusion_transformer"}


def test_table_lists_every_strategy(cli):
    out = cli("memory-plan", "--model", "14B", "--vram", "40GB").stdout
    for name in ("resident", "offload-upsampler", "offload-guardrails", "offload-text-encoder",
                 "offload-tokenizer", "offload-all"):
        assert name in out


@pytest.mark.parametrize("text, value", [("24GB", 24 * 10**9), ("24GiB", 24 << 30), ("24g", 24 << 30),
                                         ("24000MiB", 24000 << 20), ("1.5GB", 1_500_000_000),
                                         (" 12 GB ", 12 * 10**9)])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "GB", "-3GB", "12 parsecs", "0", "0GB", "80"])
def test_parse_size_rejects(text):
    from cosmos_cli.errors import UsageError

    with pytest.raises(UsageError):
        parse_size(text)
