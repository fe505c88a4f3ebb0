"""`cosmos download` without a model or for bundled models (issue 16.1), and against today's Hub layout (issue
16.2)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from fakehub import FakeRepo

from cosmos_cli import download as dl
from cosmos_cli.errors import CheckpointError
from cosmos_plugins.predict1 import specs as p1
from tests.download_fixtures import G1, M7, M14, SIGLIP_SNAPSHOT, KiB, blob, cosmos, error_lines, hub, models  # noqa: F401 - pytest fixtures

# ------------------------------------------------------------------------ no model, bundled models (issue 16.1)


def test_download_without_a_model_is_a_one_line_usage_error_listing_the_models(cli, hub):
    for args in (("download",), ("download", "--dry-run"), ("download", "--model_types", "Video2World")):
        r = cli(*args)
        assert r.exit_code == 2, (args, r.stderr)
        lines = error_lines(r.stderr)
        assert lines[0] == "error: name the model(s) to download"
        assert "cosmos download 7B" in lines[1] and "7B (Cosmos-Predict1-7B-Video2World)" in lines[1]
        assert (
            "14B (Cosmos-Predict1-14B-Video2World)" in lines[1] and "Nothing to download for demo" in lines[1]
        )
        assert "Traceback" not in r.stderr and "HFValidationError" not in r.stderr
    assert hub.log == []


def test_download_of_the_bundled_demo_says_so_and_exits_0(cli, hub, tmp_path):
    for args in (
        ("download", "demo"),
        ("download", "demo", "--dry-run"),
        ("download", "--model", "predict1-demo"),
    ):
        r = cli(*args, "--checkpoint-dir", str(tmp_path / "ck"))
        assert r.exit_code == 0, (args, r.stderr)
        assert "nothing to download for Cosmos-Predict1-Demo-Video2World" in r.stderr
        assert "Traceback" not in r.stderr
    assert hub.log == [] and not (tmp_path / "ck").exists()


def test_the_demo_next_to_a_hub_model_is_skipped_with_a_note(cosmos, hub, tmp_path):
    r = cosmos(
        "download",
        "demo",
        "fh7b",
        "--no-guardrail",
        "--no-upsampler",
        "--dry-run",
        "--checkpoint-dir",
        str(tmp_path),
    )
    assert r.exit_code == 0, r.stderr
    assert "nothing to download for Cosmos-Predict1-Demo-Video2World" in r.stderr
    assert f"model.pt -> {M7}/model.pt" in r.stdout


# ---------------------------------------------------------------------------------- today's Hub (issue 16.2)


def test_pixtral_on_main_today_is_refused_by_the_conversion_and_the_pin_converts(hub, models, tmp_path):
    """Why the revision is pinned: `main`'s params.json has max_position_embeddings, the conversion wants the
    original key set."""
    px = [f for f in dl.select_files([models.specs[0]]) if f.repo == "mistralai/Pixtral-12B-2409"]
    on_main = [replace(f, revision="main") for f in px]
    with pytest.raises(CheckpointError, match="max_position_embeddings"):
        dl.download(dl.plan_download(on_main, tmp_path / "main"), progress=False)
    dl.download(dl.plan_download(px, tmp_path / "pinned"), progress=False)
    assert json.loads((tmp_path / "pinned/Pixtral-12B/config.json").read_text())["ffn_hidden_size"] == 16


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_guardrails_downloaded_in_todays_layout_load_and_pass(hub, tmp_path):
    """Real (tiny) guardrail files served as today's Hub has them: what the spec fetches is what the loaders read."""
    import test_guardrails as TG
    import torch

    from cosmos_plugins.predict1 import guardrails as G

    src = tmp_path / "src"
    g1 = src / "g1"
    TG._write_blocklist(g1 / "blocklist")
    TG._write_retinaface(g1 / "face_blur_filter")
    vcsf = g1 / "video_content_safety_filter"
    vcsf.mkdir(parents=True)
    TG._write_safety_filter(vcsf, unsafe_class=None)
    TG._write_siglip(
        src / "siglip"
    )  # -> src/siglip/google/siglip-so400m-patch14-384, moved into the cache layout
    snapshot = vcsf / SIGLIP_SNAPSHOT.split("/", 1)[1]
    snapshot.parent.mkdir(parents=True)
    (src / "siglip" / TG.SIGLIP_REPO).rename(snapshot)
    TG._write_aegis(src / "text", adapter_says_unsafe=False, cache_layout=False)
    hub.add(FakeRepo(G1, {**_tree(g1), "README.md": b"# g"}, commit=p1.GUARDRAIL_REVISION))
    hub.add(
        FakeRepo(
            "meta-llama/LlamaGuard-7b",
            {
                **_tree(src / "text" / "meta-llama/LlamaGuard-7b"),
                "LICENSE": b"l",
                "tokenizer.model": blob("spm", KiB),
            },  # the real repo has both
            gated=True,
            commit=p1.LLAMAGUARD_REVISION,
        )
    )
    hub.add(
        FakeRepo(
            "nvidia/Aegis-AI-Content-Safety-LlamaGuard-Defensive-1.0",
            _tree(src / "text" / "nvidia/Aegis-AI-Content-Safety-LlamaGuard-Defensive-1.0"),
        )
    )

    ck = tmp_path / "ck"
    files = [
        replace(f, md5=None) for f in p1.guardrail_files()
    ]  # the MD5s are the released files', not these
    dl.download(dl.plan_download(files, ck), progress=False)
    assert (
        not (ck / "nvidia/Cosmos-Guardrail1/README.md").exists()
        and not (ck / "meta-llama/LlamaGuard-7b/LICENSE").exists()
    )
    folder = G.find_guardrail_dir(ck, M7)
    assert folder == ck / "nvidia" / "Cosmos-Guardrail1"
    text = G.TextGuardrail.load(folder, device="cpu", dtype=torch.float32)
    assert text.check("a cat walks").safe
    assert not text.check("a grimwug appears").safe  # the blocklist came along
    video = G.VideoGuardrail.load(folder, device="cpu")
    verdict, frames = video.check(TG._frames())
    assert verdict.safe and frames.shape == TG._frames().shape


def test_find_guardrail_dir_accepts_both_layouts_the_models_own_first(tmp_path):
    from cosmos_plugins.predict1 import guardrails as G

    today = tmp_path / "nvidia" / "Cosmos-Guardrail1"
    (today / "blocklist").mkdir(parents=True)
    assert G.find_guardrail_dir(tmp_path, M7) == today
    assert G.aegis_folder(today) == tmp_path  # meta-llama/LlamaGuard-7b and nvidia/Aegis-... beside it
    march = tmp_path / M7 / "guardrail"
    (march / "aegis").mkdir(parents=True)
    assert G.find_guardrail_dir(tmp_path, M7) == march
    assert G.aegis_folder(march) == march / "aegis"
    assert G.find_guardrail_dir(tmp_path, M14) == today  # 14B has no folder of its own: the shared one
    # the original's latest scripts fetch Llama-Guard-3-8B instead of LlamaGuard-7b + Aegis: named, not a traceback
    (tmp_path / "meta-llama" / "Llama-Guard-3-8B").mkdir(parents=True)
    with pytest.raises(
        G.CheckpointError, match="has meta-llama/Llama-Guard-3-8B .* but not meta-llama/LlamaGuard-7b"
    ):
        G.aegis_folder(today)
    (tmp_path / "meta-llama" / "LlamaGuard-7b").mkdir()
    assert G.aegis_folder(today) == tmp_path
    (today / "aegis").mkdir()  # a Cosmos-Guardrail1 folder that carries its own aegis/ is read as it is
    assert G.aegis_folder(today) == today / "aegis"
