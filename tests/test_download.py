"""`cosmos download` against a fake Hub on 127.0.0.1 (tests/fakehub.py): layout, trimming, resume, checksums,
gated and missing repositories, dry run, disk space, verify, and compatibility with huggingface_hub's own
local-folder downloads (what the original script uses). No test touches the network."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
from fakehub import Fault

from cosmos_cli import download as dl
from cosmos_cli import progress as bars
from cosmos_cli.download import plan as plan_mod
from cosmos_cli.errors import UsageError
from cosmos_cli.specs import GUARDRAIL, UPSAMPLER, CheckpointFile
from cosmos_plugins.predict1 import specs as p1
from tests.download_fixtures import (  # noqa: F401 - pytest fixtures
    M7,
    M14,
    SIGLIP_SNAPSHOT,
    TOK,
    KiB,
    cosmos,
    error_lines,
    files_under,
    hub,
    march_2025_guardrails,
    models,
)


def test_full_download_makes_the_original_layout_and_leaves_out_unused_files(cosmos, hub, tmp_path):
    ck = tmp_path / "checkpoints"
    r = cosmos("download", "--model", "fh7b", "--checkpoint_dir", str(ck))
    assert r.exit_code == 0, r.stderr
    assert "files ready" in r.stdout

    g1 = "nvidia/Cosmos-Guardrail1"
    plain = {
        f"{M7}/model.pt",
        f"{g1}/video_content_safety_filter/safety_filter.pt",
        f"{g1}/face_blur_filter/Resnet50_Final.pth",
        f"{g1}/blocklist/custom/words",
        f"{g1}/blocklist/exact_match/words",
        f"{g1}/blocklist/whitelist/words",
        f"{g1}/blocklist/nltk_data/corpora/wordnet/lexnames",
        f"{g1}/{SIGLIP_SNAPSHOT}/config.json",
        f"{g1}/{SIGLIP_SNAPSHOT}/preprocessor_config.json",
        f"{g1}/{SIGLIP_SNAPSHOT}/model.safetensors",
        *(
            f"meta-llama/LlamaGuard-7b/{n}"
            for n in (
                "config.json",
                "generation_config.json",
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors",
                "model.safetensors.index.json",
                "tokenizer.model",
                "tokenizer.json",
                "tokenizer_config.json",
                "special_tokens_map.json",
            )
        ),
        *(
            f"nvidia/Aegis-AI-Content-Safety-LlamaGuard-Defensive-1.0/{n}"
            for n in ("adapter_config.json", "adapter_model.safetensors")
        ),
        f"{TOK}/encoder.jit",
        f"{TOK}/decoder.jit",
        f"{TOK}/mean_std.pt",
        "google-t5/t5-11b/config.json",
        "google-t5/t5-11b/pytorch_model.bin",
        "google-t5/t5-11b/spiece.model",
        "google-t5/t5-11b/tokenizer.json",
        "Pixtral-12B/model.pt",
        "Pixtral-12B/config.json",
        *(
            f"mistral-community/pixtral-12b/{n}"
            for n in (
                "config.json",
                "tokenizer.json",
                "tokenizer_config.json",
                "preprocessor_config.json",
                "processor_config.json",
                "special_tokens_map.json",
            )
        ),
    }
    assert files_under(ck) == plain

    # the bytes are the Hub's, at the pinned revisions
    assert (ck / M7 / "model.pt").read_bytes() == hub.repos[f"nvidia/{M7}"].files["model.pt"]
    assert (ck / "google-t5/t5-11b/pytorch_model.bin").read_bytes() == hub.repos["google-t5/t5-11b"].files[
        "pytorch_model.bin"
    ]
    for repo, rev in (
        ("google-t5/t5-11b", p1.T5_REVISION),
        (g1, p1.GUARDRAIL_REVISION),
        ("meta-llama/LlamaGuard-7b", p1.LLAMAGUARD_REVISION),
        ("mistralai/Pixtral-12B-2409", p1.PIXTRAL_REVISION),
    ):
        assert any(
            f"/{repo}/resolve/{rev}/" in r.path or f"/api/models/{repo}/revision/{rev}" in r.path
            for r in hub.log
        ), repo
    # what the original downloads and generation never reads is not there
    for unused in (
        "google-t5/t5-11b/tf_model.h5",
        "google-t5/t5-11b/flax_model.msgpack",
        "google-t5/t5-11b/rust_model.ot",
        f"{TOK}/autoencoder.jit",
        f"{M7}/config.json",
        f"{M7}/README.md",
        f"{M7}/guardrail",
        "Pixtral-12B-2409",
        f"{M14}/model.pt",
        f"{g1}/README.md",
    ):
        assert not (ck / unused).exists(), unused
    assert not any(
        "pytorch_model-00001" in p or "open_clip" in p or "LICENSE" in p or "/blobs/" in p
        for p in files_under(ck)
    )
    assert not any(r.path.endswith(("tf_model.h5", "flax_model.msgpack")) for r in hub.log)

    # Pixtral-12B converted the way the original converts it
    import torch

    ckpt = torch.load(ck / "Pixtral-12B/model.pt", weights_only=True, mmap=True)
    assert set(ckpt) == {"model", "mm_projector", "vision_encoder"}
    assert set(ckpt["mm_projector"]) == {"projector.0.weight", "projector.2.weight"}
    assert set(ckpt["vision_encoder"]) == {"patch_conv.weight", "transformer.layers.0.attention.wk.weight"}
    assert set(ckpt["model"]) == {
        "model.tok_embeddings.weight",
        "model.layers.0.attention.wq.weight",
        "model.norm.weight",
        "mm_projector.projector.0.weight",
        "mm_projector.projector.2.weight",
        "vision_encoder.patch_conv.weight",
        "vision_encoder.transformer.layers.0.attention.wk.weight",
    }
    assert ckpt["model"]["vision_encoder.patch_conv.weight"].dtype == torch.bfloat16
    config = json.loads((ck / "Pixtral-12B/config.json").read_text())
    assert (
        config["ffn_hidden_size"] == 16
        and config["vision_encoder"] == "pixtral-12b-vit"
        and "hidden_dim" not in config
    )


def test_a_second_run_fetches_nothing_and_two_models_share_files(cosmos, hub, tmp_path):
    ck = tmp_path / "ck"
    assert cosmos("download", "fh7b", "--checkpoint-dir", str(ck)).exit_code == 0
    before = len(hub.data_requests())
    r = cosmos("download", "fh7b", "--checkpoint-dir", str(ck))
    assert r.exit_code == 0, r.stderr
    assert len(hub.data_requests()) == before
    assert "0 fetched" in r.stdout

    # 14B adds its own network only: tokenizer, T5, the guardrails and the upsampler are shared
    r = cosmos(
        "download",
        "--model_sizes",
        "fh7b",
        "fh14b",
        "--model_types",
        "Video2World",
        "--checkpoint-dir",
        str(ck),
    )
    assert r.exit_code == 0, r.stderr
    new = {x.path for x in hub.data_requests()[before:]}
    assert any(p.endswith(hub._sha_of(f"nvidia/{M14}/model.pt")) for p in new)
    assert not any(p.endswith(hub._sha_of("google-t5/t5-11b/pytorch_model.bin")) for p in new)
    assert not any(
        p.endswith(hub._sha_of("nvidia/Cosmos-Guardrail1/face_blur_filter/Resnet50_Final.pth")) for p in new
    )
    assert (ck / M14 / "model.pt").is_file() and not (ck / M14 / "guardrail").exists()


def test_no_upsampler_and_no_guardrail_leave_those_out(hub, models, tmp_path):
    spec = models.specs[0]
    files = dl.select_files([spec], upsampler=False, guardrail=False)
    assert not any(f.component in (UPSAMPLER, GUARDRAIL) for f in files)
    plan = dl.plan_download(files, tmp_path / "ck")
    assert not any("guardrail" in f.local or "Pixtral" in f.local or "pixtral" in f.local for f in plan.files)
    assert {r.repo for r in plan.repos} == {f"nvidia/{M7}", f"nvidia/{TOK}", "google-t5/t5-11b"}
    dl.download(plan, progress=False)
    assert files_under(tmp_path / "ck") == {
        f"{M7}/model.pt",
        f"{TOK}/encoder.jit",
        f"{TOK}/decoder.jit",
        f"{TOK}/mean_std.pt",
        "google-t5/t5-11b/config.json",
        "google-t5/t5-11b/pytorch_model.bin",
        "google-t5/t5-11b/spiece.model",
        "google-t5/t5-11b/tokenizer.json",
    }


def test_an_interrupted_transfer_resumes_where_it_stopped(cosmos, hub, tmp_path):
    ck = tmp_path / "ck"
    key = f"nvidia/{M7}/model.pt"
    data = hub.repos[f"nvidia/{M7}"].files["model.pt"]
    # the connection drops after 100 KiB, and the Hub then fails: the first run stops with a partial file
    hub.faults[key] = Fault(cut_after=100 * KiB, fail_next=1)
    r = cosmos("download", "fh7b", "--no-upsampler", "--no-guardrail", "--checkpoint-dir", str(ck))
    assert r.exit_code == 1
    assert "error: the Hub answered 503" in r.stderr and "resume" in r.stderr
    assert "Traceback" not in r.stderr
    partial = next((ck / M7 / ".cache").rglob("*.incomplete"))
    kept = partial.stat().st_size
    assert 0 < kept < len(data)
    assert not (ck / M7 / "model.pt").exists()

    plan = dl.plan_download(
        dl.select_files(dl.resolve_models(["fh7b"]), upsampler=False, guardrail=False), ck
    )
    entry = next(f for f in plan.files if f.local == f"{M7}/model.pt")
    assert entry.state == dl.PARTIAL and entry.partial_bytes == kept
    assert f"partial ({dl.human_bytes(kept)} here)" in dl.format_plan(plan)

    n = len(hub.data_requests(key))
    r = cosmos("download", "fh7b", "--no-upsampler", "--no-guardrail", "--checkpoint-dir", str(ck))
    assert r.exit_code == 0, r.stderr
    resumed = hub.data_requests(key)[n:]
    assert [x.range for x in resumed] == [f"bytes={kept}-"]  # one request, for the rest only
    assert (ck / M7 / "model.pt").read_bytes() == data
    assert not partial.exists()


def test_ctrl_c_keeps_the_partial_file(hub, models, tmp_path, monkeypatch):
    ck = tmp_path / "ck"
    files = [f for f in dl.select_files([models.specs[0]]) if f.filename == "model.pt"]
    plan = dl.plan_download(files, ck)
    seen = []

    def interrupt_later(self, n=1):
        seen.append(n)
        if sum(seen) > 64 * KiB:
            raise KeyboardInterrupt

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(bars._FileBar, "update", interrupt_later)
        dl.download(plan, progress=False)
    partial = next((ck / M7 / ".cache").rglob("*.incomplete"))
    assert partial.stat().st_size >= 48 * KiB
    kept = partial.stat().st_size
    plan = dl.plan_download(files, ck)
    dl.download(plan, progress=False)
    assert hub.data_requests(f"nvidia/{M7}/model.pt")[-1].range == f"bytes={kept}-"
    assert (ck / M7 / "model.pt").read_bytes() == hub.repos[f"nvidia/{M7}"].files["model.pt"]


def test_a_checksum_mismatch_is_named_and_the_bad_copy_dropped(cosmos, hub, tmp_path):
    ck = tmp_path / "ck"
    hub.faults["google-t5/t5-11b/pytorch_model.bin"] = Fault(corrupt=True)
    r = cosmos("download", "fh7b", "--no-upsampler", "--no-guardrail", "--checkpoint-dir", str(ck))
    assert r.exit_code == 1
    first = error_lines(r.stderr)[0]
    assert first.startswith("error: checksum mismatch for google-t5/t5-11b/pytorch_model.bin")
    assert "sha256" in first
    assert not (ck / "google-t5/t5-11b/pytorch_model.bin").exists()
    assert not list(ck.rglob("pytorch_model.bin*.incomplete"))


def test_an_md5_from_the_original_script_is_checked_too(hub, models, tmp_path):
    spec = models.specs[0]
    files = [
        replace(f, md5="0" * 32) if f.filename == "mean_std.pt" else f
        for f in dl.select_files([spec], upsampler=False, guardrail=False)
    ]
    plan = dl.plan_download(files, tmp_path / "ck")
    with pytest.raises(dl.ChecksumError) as exc:
        dl.download(plan, progress=False)
    assert f"{TOK}/mean_std.pt" in exc.value.message and "md5" in exc.value.message


def test_gated_repository_not_logged_in_names_the_license_page(cosmos, hub, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    ck = tmp_path / "ck"
    r = cosmos("download", "fh7b", "--no-guardrail", "--checkpoint-dir", str(ck))
    assert r.exit_code == 1
    lines = error_lines(r.stderr)
    assert lines[0] == "error: mistralai/Pixtral-12B-2409 is a gated repository and you are not logged in"
    assert f"{hub.url}/mistralai/Pixtral-12B-2409" in lines[1] and "hf auth login" in lines[1]
    assert hub.data_requests() == []  # refused before anything was transferred
    assert not ck.exists() or files_under(ck) == set()


def test_gated_repository_without_access_says_to_accept_the_license(cosmos, hub, tmp_path):
    r = cosmos(
        "download", "fh7b", "--no-guardrail", "--token", "hf_someone_else", "--checkpoint-dir", str(tmp_path)
    )
    assert r.exit_code == 1
    assert error_lines(r.stderr)[0] == (
        f"error: no access to the gated repository mistralai/Pixtral-12B-2409: accept its license at "
        f"{hub.url}/mistralai/Pixtral-12B-2409"
    )
    # the dry run shows the same, and still lists the sizes
    r = cosmos(
        "download",
        "fh7b",
        "--no-guardrail",
        "--token",
        "hf_someone_else",
        "--dry-run",
        "--checkpoint-dir",
        str(tmp_path),
    )
    assert r.exit_code == 0
    assert "! no access to the gated repository mistralai/Pixtral-12B-2409" in r.stdout


def test_rejected_token(cosmos, tmp_path):
    r = cosmos("download", "fh7b", "--token", "hf_invalid", "--checkpoint-dir", str(tmp_path))
    assert r.exit_code == 1
    assert error_lines(r.stderr)[0] == "error: the Hub rejected the token"


def test_missing_repository_and_missing_file(hub, models, tmp_path):
    spec = models.specs[0]
    gone = [CheckpointFile("diffusion_transformer", "nvidia/No-Such-Repo", "model.pt", "X/model.pt")]
    with pytest.raises(dl.RemoteMissingError, match="repository nvidia/No-Such-Repo not found"):
        dl.plan_download(gone, tmp_path)
    del hub.repos[f"nvidia/{TOK}"].files["decoder.jit"]
    with pytest.raises(dl.RemoteMissingError, match=f"decoder.jit is missing from nvidia/{TOK}"):
        dl.plan_download(dl.select_files([spec]), tmp_path)
    # a file that disappears between the listing and the transfer
    plan = dl.plan_download(
        [f for f in dl.select_files([spec]) if f.filename == "mean_std.pt"], tmp_path / "ck"
    )
    del hub.repos[f"nvidia/{TOK}"].files["mean_std.pt"]
    with pytest.raises(dl.RemoteMissingError, match="mean_std.pt is missing"):
        dl.download(plan, progress=False)


def test_no_network_and_offline_mode(cosmos, hub, tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    r = cosmos("download", "fh7b", "--checkpoint-dir", str(tmp_path))
    assert r.exit_code == 1
    assert error_lines(r.stderr)[0].startswith(f"error: cannot reach the Hub at http://127.0.0.1:{port}")

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    r = cosmos("download", "fh7b", "--checkpoint-dir", str(tmp_path))
    assert r.exit_code == 1
    assert "offline mode is on" in r.stderr and "HF_HUB_OFFLINE" in r.stderr


def test_dry_run_lists_repositories_files_sizes_total_and_free_disk(cosmos, hub, tmp_path, monkeypatch):
    monkeypatch.setattr(
        plan_mod, "free_bytes", lambda path: 123_456_789_000
    )  # the real value moves under other writers
    ck = tmp_path / "ck"
    r = cosmos("download", "fh7b", "--dry-run", "--checkpoint-dir", str(ck))
    assert r.exit_code == 0, r.stderr
    out = r.stdout
    plan = dl.plan_download(dl.select_files(dl.resolve_models(["fh7b"])), ck)
    model_pt = hub.repos[f"nvidia/{M7}"].files["model.pt"]
    assert f"nvidia/{M7} @ main ({hub.repos[f'nvidia/{M7}'].commit[:10]})" in out
    assert f"  model.pt -> {M7}/model.pt  {dl.human_bytes(len(model_pt))}  to fetch" in out
    assert "  tokenizer.model -> meta-llama/LlamaGuard-7b/tokenizer.model  " in out
    assert f"nvidia/Cosmos-Guardrail1 @ {p1.GUARDRAIL_REVISION} ({p1.GUARDRAIL_REVISION[:10]})" in out
    assert f"mistralai/Pixtral-12B-2409 @ {p1.PIXTRAL_REVISION} ({p1.PIXTRAL_REVISION[:10]}), gated" in out
    assert (
        "consolidated.safetensors -> Pixtral-12B-2409/consolidated.safetensors (converted into Pixtral-12B/model.pt, Pixtral-12B/config.json)"
        in out
    )
    assert "tf_model.h5" not in out
    total = sum(f.size for f in plan.files)
    assert f"Total: {len(plan.files)} files, {dl.human_bytes(total)}" in out
    assert f"to fetch: {dl.human_bytes(total)}" in out
    assert "123.46 GB free" in out and "(enough)" in out
    assert not ck.exists()  # nothing written
    assert hub.data_requests() == []


def test_a_disk_too_small_is_refused_before_starting(cosmos, hub, tmp_path, monkeypatch):
    monkeypatch.setattr(plan_mod, "free_bytes", lambda path: 100 * KiB)
    ck = tmp_path / "ck"
    r = cosmos("download", "fh7b", "--checkpoint-dir", str(ck))
    assert r.exit_code == 1
    assert error_lines(r.stderr)[0].startswith(f"error: not enough disk space in {ck}: the download needs ")
    assert f"{dl.human_bytes(100 * KiB)} is free" in r.stderr
    assert hub.data_requests() == []
    r = cosmos("download", "fh7b", "--dry-run", "--checkpoint-dir", str(ck))
    assert "(NOT ENOUGH)" in r.stdout


def test_a_disk_that_fills_up_midway_keeps_the_partial_file(hub, models, tmp_path, monkeypatch):
    import errno

    ck = tmp_path / "ck"
    files = [f for f in dl.select_files([models.specs[0]]) if f.filename == "model.pt"]
    written = []

    def fill_up(self, n=1):
        written.append(n)
        if sum(written) > 64 * KiB:
            raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m, pytest.raises(dl.DiskSpaceError, match="the disk is full") as exc:
        m.setattr(bars._FileBar, "update", fill_up)
        dl.download(dl.plan_download(files, ck), progress=False)
    assert "resumes" in exc.value.hint
    assert next((ck / M7 / ".cache").rglob("*.incomplete")).stat().st_size > 0


def test_free_space_is_measured_on_the_nearest_existing_folder(tmp_path):
    import shutil

    assert abs(dl.free_bytes(tmp_path / "not" / "yet") - shutil.disk_usage(tmp_path).free) < 1 << 30


def test_verify_names_bad_files_and_the_next_download_repairs_them(cosmos, hub, tmp_path):
    ck = tmp_path / "ck"
    assert cosmos("download", "fh7b", "--checkpoint-dir", str(ck)).exit_code == 0
    r = cosmos("download", "fh7b", "--verify", "--checkpoint-dir", str(ck))
    assert r.exit_code == 0, r.stderr
    assert " 0 bad" in r.stdout

    enc = ck / TOK / "encoder.jit"
    data = bytearray(enc.read_bytes())
    data[1000] ^= 1  # bit rot: same size
    enc.write_bytes(bytes(data))
    (ck / "google-t5/t5-11b/spiece.model").unlink()
    cached = ck / "meta-llama/LlamaGuard-7b/tokenizer.model"
    cached.write_bytes(b"x" * cached.stat().st_size)
    import torch

    pixtral = ck / "Pixtral-12B/model.pt"  # damage one stored tensor inside the converted checkpoint
    needle = (
        torch.load(pixtral, weights_only=True)["model"]["model.tok_embeddings.weight"]
        .view(torch.int16)
        .numpy()
        .tobytes()
    )
    raw = bytearray(pixtral.read_bytes())
    at = raw.find(needle[:64]) + 10
    raw[at] ^= 0xFF
    pixtral.write_bytes(bytes(raw))
    r = cosmos("download", "fh7b", "--verify", "--checkpoint-dir", str(ck))
    assert r.exit_code == 1
    assert f"BAD {TOK}/encoder.jit: sha256 " in r.stdout and "md5 " in r.stdout
    assert "BAD google-t5/t5-11b/spiece.model: missing" in r.stdout
    assert "BAD Pixtral-12B/model.pt" in r.stdout
    assert f"BAD {cached.relative_to(ck).as_posix()}: sha256 " in r.stdout
    assert error_lines(r.stderr)[0].startswith("error: 4 file(s) missing or damaged")

    Path(ck / "Pixtral-12B/model.pt").unlink()  # a converted file is re-made from its source
    r = cosmos("download", "fh7b", "--checkpoint-dir", str(ck))
    assert r.exit_code == 0, r.stderr
    assert cosmos("download", "fh7b", "--verify", "--checkpoint-dir", str(ck)).exit_code == 0
    assert enc.read_bytes() == hub.repos[f"nvidia/{TOK}"].files["encoder.jit"]
    assert cached.read_bytes() == hub.repos["meta-llama/LlamaGuard-7b"].files["tokenizer.model"]


def test_cache_entries_make_a_huggingface_hub_cache_that_it_reads(hub, tmp_path):
    """March 2025's layout is still served by the model repositories, and cache entries still work."""
    from huggingface_hub import try_to_load_from_cache

    ck = tmp_path / "ck"
    report = dl.download(dl.plan_download(march_2025_guardrails(M7), ck), progress=False)
    assert f"{M7}/guardrail/face_blur_filter/Resnet50_Final.pth" in report.fetched
    lg = ck / M7 / "guardrail/aegis/models--meta-llama--LlamaGuard-7b"
    assert (lg / "snapshots" / p1.LLAMAGUARD_REVISION / "config.json").is_symlink()
    found = try_to_load_from_cache(
        "meta-llama/LlamaGuard-7b",
        "config.json",
        cache_dir=str(ck / M7 / "guardrail/aegis"),
        revision=p1.LLAMAGUARD_REVISION,
    )
    assert found is not None and Path(found).read_bytes() == b'{"model_type": "llama"}'
    ae = ck / M7 / "guardrail/aegis/models--nvidia--Aegis-AI-Content-Safety-LlamaGuard-Defensive-1.0"
    assert (ae / "refs" / "main").read_text() == hub.repos[
        "nvidia/Aegis-AI-Content-Safety-LlamaGuard-Defensive-1.0"
    ].commit
    # a cache blob damaged through its link is named by --verify
    cached = next(lg.rglob("snapshots/*/tokenizer.model"))
    cached.write_bytes(b"x" * cached.stat().st_size)
    report = dl.verify(dl.plan_download(march_2025_guardrails(M7), ck), progress=False)
    assert [b[0] for b in report.bad] == [cached.relative_to(ck).as_posix()]


def test_a_folder_made_by_huggingface_hub_is_taken_as_it_is_and_ours_is_current_for_it(hub, models, tmp_path):
    """Both directions of compatibility with the original script, which calls snapshot_download(local_dir=...)."""
    from huggingface_hub import snapshot_download

    ck = tmp_path / "ck"
    snapshot_download(f"nvidia/{TOK}", local_dir=ck / TOK, endpoint=hub.url)  # the original: the whole repo
    n = len(hub.data_requests())
    files = [f for f in dl.select_files([models.specs[0]]) if f.repo == f"nvidia/{TOK}"]
    plan = dl.plan_download(files, ck)
    assert {f.state for f in plan.files} == {dl.DONE}
    dl.download(plan, progress=False)
    assert len(hub.data_requests()) == n

    # and the other way: our model.pt needs no transfer when huggingface_hub looks at it
    files = [f for f in dl.select_files([models.specs[0]]) if f.filename == "model.pt"]
    dl.download(dl.plan_download(files, ck), progress=False)
    n = len(hub.data_requests())
    snapshot_download(f"nvidia/{M7}", local_dir=ck / M7, allow_patterns=["model.pt"], endpoint=hub.url)
    assert len(hub.data_requests()) == n

    # a file that is there without any record (copied by hand) is hashed, not fetched
    (ck / M7 / ".cache").rename(tmp_path / "moved-away")
    plan = dl.plan_download(files, ck)
    assert plan.files[0].state == dl.PRESENT and plan.fetch_bytes == 0
    report = dl.download(plan, progress=False)
    assert report.checked == [f"{M7}/model.pt"] and report.fetched == []


def test_a_repository_that_ships_a_guardrail_cache_is_not_fetched_twice(hub, tmp_path):
    shipped = f"guardrail/aegis/models--meta-llama--LlamaGuard-7b/snapshots/{'a' * 40}/config.json"
    hub.repos[f"nvidia/{M7}"].files[shipped] = b"{}"
    hub.repos["meta-llama/LlamaGuard-7b"].gated = True
    plan = dl.plan_download(march_2025_guardrails(M7), tmp_path / "ck")
    assert f"{M7}/{shipped}" in {f.local for f in plan.files}
    assert "meta-llama/LlamaGuard-7b" not in {r.repo for r in plan.repos}
    assert any(item.startswith("meta-llama/LlamaGuard-7b") for item in plan.left_out)
    assert hub.requests_for("meta-llama/LlamaGuard-7b") == []


def test_model_names_and_the_original_spellings(models):
    assert [s.name for s in dl.resolve_models(["fh7b", "FakeHub-14B"])] == ["FakeHub-7B", "FakeHub-14B"]
    assert [s.name for s in dl.resolve_models(["fh7b,fh14b", "Video2World"])] == ["FakeHub-7B", "FakeHub-14B"]
    assert [s.name for s in dl.resolve_models(["fh7b"], ["Video2World"])] == ["FakeHub-7B"]
    with pytest.raises(UsageError, match="Text2World"):
        dl.resolve_models(["fh7b"], ["Text2World"])
    with pytest.raises(UsageError, match="Text2World"):
        dl.resolve_models(["fh7b", "Text2World"])
    assert [s.name for s in dl.resolve_models(["7B"])] == [p1.PREDICT1_7B.name]


def test_usage_errors_exit_2(cosmos, tmp_path):
    r = cosmos("download", "fh7b", "--dry-run", "--verify")
    assert r.exit_code == 2 and "do not go together" in r.stderr
    r = cosmos("download", "--model_types", "Text2World")
    assert r.exit_code == 2 and "Video2World" in r.stderr
    r = cosmos("download", "no-such-model")
    assert r.exit_code == 2 and "unknown model" in r.stderr


def test_the_predict1_file_lists_follow_the_original_layout():
    """No network: the real 7B/14B entries, trimmed, in the original's folders, at the original's pinned revisions."""
    for spec, model_dir in ((p1.PREDICT1_7B, M7), (p1.PREDICT1_14B, M14)):
        by_local = {f.local: f for f in spec.files}
        assert by_local[f"{model_dir}/model.pt"].repo == f"nvidia/{model_dir}"
        assert by_local[f"{model_dir}/model.pt"].md5 in (
            "ebcdb19c4c4a6a0e1e0bb65e346f6867",
            "eaa7aa3678f61d88108c41d7fe201b18",
        )
        assert by_local["google-t5/t5-11b/pytorch_model.bin"].md5 == "f890878d8a162e0045a25196e27089a3"
        g1 = by_local["nvidia/Cosmos-Guardrail1/video_content_safety_filter/safety_filter.pt"]
        assert g1.md5 == p1.SAFETY_FILTER_MD5 and g1.repo == "nvidia/Cosmos-Guardrail1"
        assert {f.filename for f in spec.files if f.repo == "google-t5/t5-11b"} == {
            "config.json",
            "pytorch_model.bin",
            "spiece.model",
            "tokenizer.json",
        }
        assert by_local["Pixtral-12B/model.pt"].convert == "pixtral-12b"
        assert all(f.convert in (None, *dl.CONVERSIONS) for f in spec.files)
        revisions = {f.repo: f.revision for f in spec.files}
        assert revisions["mistralai/Pixtral-12B-2409"] == "db3e3ed01201248694fcb170c7bd292ecfcad22b"
        assert revisions["meta-llama/LlamaGuard-7b"] == "3e764390d6b39028ddea5b20603c89476107b41e"
        assert revisions["nvidia/Cosmos-Guardrail1"] == "d6d4bfa899a71454a700907664f3e88f503950cf"
        assert revisions["google-t5/t5-11b"] == "90f37703b3334dfe9d2b009bfcbfbf1ac9d28ea3"
        # no guardrail/ folder of the model repository, no cache entries: today's layout
        assert not any(
            f.hf_cache or f.repo == f"nvidia/{model_dir}" and "guardrail" in f.filename for f in spec.files
        )
        for f in spec.files:
            assert not f.filename.endswith((".h5", ".msgpack")), f


def test_the_fake_hub_answers_huggingface_hubs_own_calls(hub):
    from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError, GatedRepoError, RepositoryNotFoundError

    api = HfApi(endpoint=hub.url, token="hf_granted")
    repo = hub.repos[f"nvidia/{M7}"]
    tree = {f.path: f for f in api.list_repo_tree(repo.repo_id, recursive=True) if hasattr(f, "size")}
    assert set(tree) == set(repo.files)
    assert tree["model.pt"].lfs.sha256 == hashlib.sha256(repo.files["model.pt"]).hexdigest()
    (info,) = api.get_paths_info(repo.repo_id, ["model.pt"])
    assert info.size == len(repo.files["model.pt"])
    meta = get_hf_file_metadata(hf_hub_url(repo.repo_id, "model.pt", endpoint=hub.url), token="hf_granted")
    assert (meta.commit_hash, meta.size) == (repo.commit, len(repo.files["model.pt"]))
    assert meta.etag == hashlib.sha256(repo.files["model.pt"]).hexdigest()
    with pytest.raises(GatedRepoError):
        get_hf_file_metadata(
            hf_hub_url("mistralai/Pixtral-12B-2409", "params.json", endpoint=hub.url), token=False
        )
    with pytest.raises(EntryNotFoundError):
        get_hf_file_metadata(hf_hub_url(repo.repo_id, "nope.bin", endpoint=hub.url), token=False)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("nvidia/nope")
