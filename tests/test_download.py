"""`cosmos download` against a fake Hub on 127.0.0.1 (tests/fakehub.py): layout, trimming, resume, checksums,
gated and missing repositories, dry run, disk space, verify, and compatibility with huggingface_hub's own
local-folder downloads (what the original script uses). No test touches the network."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
from fakehub import FakeHub, FakeRepo, Fault

import cosmos_cli.app
from cosmos_cli import download as dl
from cosmos_cli import progress as bars
from cosmos_cli.backend import Backend
from cosmos_cli.commands import download as download_cmd
from cosmos_cli.download import plan as plan_mod
from cosmos_cli.errors import CheckpointError, UsageError
from cosmos_cli.specs import GUARDRAIL, UPSAMPLER, CheckpointFile
from cosmos_plugins.predict1 import specs as p1

M7 = "Cosmos-Predict1-7B-Video2World"
M14 = "Cosmos-Predict1-14B-Video2World"
TOK = "Cosmos-Tokenize1-CV8x8x8-720p"
KiB = 1024


def blob(name: str, n: int) -> bytes:
    """Deterministic bytes that differ per name."""
    out, i = bytearray(), 0
    while len(out) < n:
        out += hashlib.sha256(f"{name}:{i}".encode()).digest()
        i += 1
    return bytes(out[:n])


def pixtral_files(*, today: bool = False) -> dict[str, bytes]:
    """Mistral's release as the pinned revision has it; ``today``: ``main``'s params.json, which gained
    ``max_position_embeddings`` (the reason the original pins the revision)."""
    import torch
    from safetensors.torch import save

    tensors = {
        "tok_embeddings.weight": torch.randn(100, 8),
        "layers.0.attention.wq.weight": torch.randn(8, 8),
        "norm.weight": torch.ones(8),
        "vision_encoder.patch_conv.weight": torch.randn(4, 3, 2, 2),
        "vision_encoder.transformer.layers.0.attention.wk.weight": torch.randn(4, 4),
        "vision_language_adapter.w_in.weight": torch.randn(8, 4),
        "vision_language_adapter.w_out.weight": torch.randn(8, 8),
    }
    vit = {"hidden_size": 1024, "num_channels": 3, "image_size": 1024, "patch_size": 16, "rope_theta": 10000.0,
           "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16, "image_token_id": 10,
           "image_break_token_id": 12, "image_end_token_id": 13, "adapter_bias": True}
    params = {"dim": 8, "n_layers": 1, "head_dim": 2, "hidden_dim": 16, "n_heads": 4, "n_kv_heads": 2,
              "rope_theta": 1e9, "norm_eps": 1e-5, "vocab_size": 100, "vision_encoder": vit}
    if today:
        params["max_position_embeddings"] = 1024000
    return {"params.json": json.dumps(params).encode(),
            "consolidated.safetensors": save({k: v.to(torch.bfloat16) for k, v in tensors.items()}),
            "tekken.json": b'{"vocab": []}', "README.md": b"# Pixtral"}


SIGLIP_SNAPSHOT = "video_content_safety_filter/models--google--siglip-so400m-patch14-384/snapshots/9fdffc58afc957d1a03a25b10dba0329ab15c2a3"


def guardrail1_repo() -> FakeRepo:
    """nvidia/Cosmos-Guardrail1 at the pinned commit, with the huggingface_hub cache it ships for SigLIP (its blob
    copy and ref included, which we leave out) and files nothing reads."""
    siglip = blob("g1-siglip", 25 * KiB)
    return FakeRepo(p1.GUARDRAIL_REPO, {
        "README.md": b"# guardrail",
        "blocklist/custom/words": b"badword\n", "blocklist/exact_match/words": b"other\n",
        "blocklist/whitelist/words": b"fine\n", "blocklist/nltk_data/corpora/wordnet/lexnames": b"00\tadj.all\t3\n",
        "face_blur_filter/Resnet50_Final.pth": blob("g1-retinaface", 5 * KiB),
        "video_content_safety_filter/safety_filter.pt": blob("g1-safety_filter", 3 * KiB),
        f"{SIGLIP_SNAPSHOT}/config.json": b'{"model_type": "siglip"}',
        f"{SIGLIP_SNAPSHOT}/preprocessor_config.json": b"{}",
        f"{SIGLIP_SNAPSHOT}/model.safetensors": siglip,
        f"video_content_safety_filter/models--google--siglip-so400m-patch14-384/blobs/{hashlib.sha256(siglip).hexdigest()}.safetensors": siglip,
        "video_content_safety_filter/models--google--siglip-so400m-patch14-384/refs/main": b"9fdffc58",
    }, commit=p1.GUARDRAIL_REVISION)


def model_repo(name: str) -> FakeRepo:
    """A model repository; it still has March 2025's guardrail/ folder, which we no longer fetch."""
    return FakeRepo(f"nvidia/{name}", {
        "model.pt": blob(name + "/model.pt", 200 * KiB),
        "config.json": b'{"unused": true}',
        "README.md": b"# model",
        "guardrail/video_content_safety_filter/safety_filter.pt": blob("safety_filter", 3 * KiB),
        "guardrail/face_blur_filter/Resnet50_Final.pth": blob("retinaface", 5 * KiB),
        "guardrail/blocklist/custom/words": b"badword\n",
        "guardrail/blocklist/exact_match/words": b"other\n",
    })


def fake_repos() -> list[FakeRepo]:
    return [
        model_repo(M7),
        model_repo(M14),
        FakeRepo(f"nvidia/{TOK}", {"encoder.jit": blob("enc", 40 * KiB), "decoder.jit": blob("dec", 50 * KiB),
                                   "mean_std.pt": blob("mean_std", 2 * KiB), "autoencoder.jit": blob("ae", 60 * KiB),
                                   "config.json": b"{}", "README.md": b"# tok"}),
        FakeRepo("google-t5/t5-11b", {"config.json": b'{"d_model": 1024}', "pytorch_model.bin": blob("t5", 120 * KiB),
                                      "tf_model.h5": blob("t5tf", 150 * KiB), "flax_model.msgpack": blob("t5fx", 90 * KiB),
                                      "rust_model.ot": blob("t5rs", 30 * KiB), "spiece.model": blob("spiece", 4 * KiB),
                                      "tokenizer.json": b'{"model": "unigram"}', "README.md": b"# t5"},
                 commit=p1.T5_REVISION),
        guardrail1_repo(),
        FakeRepo("meta-llama/LlamaGuard-7b", {
            "config.json": b'{"model_type": "llama"}', "generation_config.json": b"{}",
            "model-00001-of-00002.safetensors": blob("lg1", 30 * KiB), "model-00002-of-00002.safetensors": blob("lg2", 20 * KiB),
            "model.safetensors.index.json": b'{"weight_map": {}}', "pytorch_model-00001-of-00002.bin": blob("lgbin", 40 * KiB),
            "tokenizer.model": blob("lgtok", 3 * KiB), "tokenizer.json": b"{}", "tokenizer_config.json": b"{}",
            "special_tokens_map.json": b"{}", "LICENSE": b"llama2", "USE_POLICY.md": b"policy"}, gated=True,
            commit=p1.LLAMAGUARD_REVISION),
        FakeRepo("nvidia/Aegis-AI-Content-Safety-LlamaGuard-Defensive-1.0", {
            "adapter_config.json": b'{"peft_type": "LORA"}', "adapter_model.safetensors": blob("aegis", 8 * KiB),
            "README.md": b"# aegis"}),
        FakeRepo("google/siglip-so400m-patch14-384", {
            "config.json": b'{"model_type": "siglip"}', "model.safetensors": blob("siglip", 25 * KiB),
            "preprocessor_config.json": b"{}", "spiece.model": blob("sigsp", 2 * KiB), "tokenizer_config.json": b"{}",
            "special_tokens_map.json": b"{}", "open_clip_pytorch_model.bin": blob("openclip", 25 * KiB),
            "README.md": b"# siglip"}),
        FakeRepo("mistralai/Pixtral-12B-2409", pixtral_files(today=True), gated=True,
                 history={p1.PIXTRAL_REVISION: pixtral_files()}),
        FakeRepo("mistral-community/pixtral-12b", {
            "config.json": b"{}", "tokenizer.json": b"{}", "tokenizer_config.json": b"{}",
            "preprocessor_config.json": b"{}", "processor_config.json": b"{}", "special_tokens_map.json": b"{}",
            "model-00001-of-00006.safetensors": blob("pxm", 20 * KiB), "README.md": b"# px"}),
    ]


def renamed_spec(spec, hub: FakeHub, name: str, aliases: tuple[str, ...]):
    """The real spec under another name, with the original's MD5s replaced by the fake contents' MD5s."""
    def md5_of(f: CheckpointFile) -> str | None:
        if f.md5 is None:
            return None
        return hashlib.md5(hub.repos[f.repo].at(f.revision).files[f.filename]).hexdigest()

    files = tuple(replace(f, md5=md5_of(f)) for f in spec.files)
    return replace(spec, name=name, aliases=aliases, files=files, hidden=True, is_default=False)



class _Backend(Backend):
    id = "fakehub-test"
    version = "0.0.1"

    def __init__(self, specs):
        self.specs = specs

    def models(self):
        return self.specs

    def build_pipeline(self, spec, plan, *, checkpoint_dir, device):
        raise NotImplementedError


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The fake Hub, huggingface_hub pointed at it, and no stored token or user cache in sight."""
    from huggingface_hub import constants

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-stored-token"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "user-hf-cache"))
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 16 * KiB)  # small chunks: partial transfers keep bytes
    with FakeHub() as fake:
        for repo in fake_repos():
            fake.add(repo)
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        monkeypatch.setenv("HF_TOKEN", "hf_granted")
        yield fake


@pytest.fixture
def models(hub, register_backend):
    """FakeHub-7B / FakeHub-14B: the real 7B/14B file lists, registered for the CLI; unregistered afterwards."""
    return register_backend(_Backend((renamed_spec(p1.PREDICT1_7B, hub, "FakeHub-7B", ("fh7b",)),
                                      renamed_spec(p1.PREDICT1_14B, hub, "FakeHub-14B", ("fh14b",)))))


@pytest.fixture
def cosmos(cli, monkeypatch, models):
    """`cosmos ...` through main(), on an app that has the download command registered."""
    app = cosmos_cli.app.create_app()

    @app.callback()
    def _root() -> None:
        """cosmos"""

    app.command("download")(download_cmd.download)
    monkeypatch.setattr(cosmos_cli.app, "app", app)
    return cli


def error_lines(stderr: str) -> list[str]:
    """The one-line error and its hint (progress bars may come before them on stderr)."""
    return [line for line in stderr.splitlines() if line.startswith(("error: ", "hint: "))]


def files_under(root: Path) -> set[str]:
    """Every file and link under root, relative, leaving out huggingface_hub's bookkeeping folders."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*")
            if (p.is_file() or p.is_symlink()) and ".cache" not in p.relative_to(root).parts}


# ------------------------------------------------------------------------------------------------- tests


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
        f"{g1}/blocklist/custom/words", f"{g1}/blocklist/exact_match/words", f"{g1}/blocklist/whitelist/words",
        f"{g1}/blocklist/nltk_data/corpora/wordnet/lexnames",
        f"{g1}/{SIGLIP_SNAPSHOT}/config.json", f"{g1}/{SIGLIP_SNAPSHOT}/preprocessor_config.json",
        f"{g1}/{SIGLIP_SNAPSHOT}/model.safetensors",
        *(f"meta-llama/LlamaGuard-7b/{n}" for n in ("config.json", "generation_config.json",
                                                    "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                                                    "model.safetensors.index.json", "tokenizer.model", "tokenizer.json",
                                                    "tokenizer_config.json", "special_tokens_map.json")),
        *(f"nvidia/Aegis-AI-Content-Safety-LlamaGuard-Defensive-1.0/{n}" for n in ("adapter_config.json",
                                                                                  "adapter_model.safetensors")),
        f"{TOK}/encoder.jit", f"{TOK}/decoder.jit", f"{TOK}/mean_std.pt",
        "google-t5/t5-11b/config.json", "google-t5/t5-11b/pytorch_model.bin", "google-t5/t5-11b/spiece.model",
        "google-t5/t5-11b/tokenizer.json",
        "Pixtral-12B/model.pt", "Pixtral-12B/config.json",
        *(f"mistral-community/pixtral-12b/{n}" for n in ("config.json", "tokenizer.json", "tokenizer_config.json",
                                                         "preprocessor_config.json", "processor_config.json",
                                                         "special_tokens_map.json")),
    }
    assert files_under(ck) == plain

    # the bytes are the Hub's, at the pinned revisions
    assert (ck / M7 / "model.pt").read_bytes() == hub.repos[f"nvidia/{M7}"].files["model.pt"]
    assert (ck / "google-t5/t5-11b/pytorch_model.bin").read_bytes() == hub.repos["google-t5/t5-11b"].files["pytorch_model.bin"]
    for repo, rev in (("google-t5/t5-11b", p1.T5_REVISION), (g1, p1.GUARDRAIL_REVISION),
                      ("meta-llama/LlamaGuard-7b", p1.LLAMAGUARD_REVISION), ("mistralai/Pixtral-12B-2409", p1.PIXTRAL_REVISION)):
        assert any(f"/{repo}/resolve/{rev}/" in r.path or f"/api/models/{repo}/revision/{rev}" in r.path
                   for r in hub.log), repo
    # what the original downloads and generation never reads is not there
    for unused in ("google-t5/t5-11b/tf_model.h5", "google-t5/t5-11b/flax_model.msgpack", "google-t5/t5-11b/rust_model.ot",
                   f"{TOK}/autoencoder.jit", f"{M7}/config.json", f"{M7}/README.md", f"{M7}/guardrail", "Pixtral-12B-2409",
                   f"{M14}/model.pt", f"{g1}/README.md"):
        assert not (ck / unused).exists(), unused
    assert not any("pytorch_model-00001" in p or "open_clip" in p or "LICENSE" in p or "/blobs/" in p for p in files_under(ck))
    assert not any(r.path.endswith(("tf_model.h5", "flax_model.msgpack")) for r in hub.log)

    # Pixtral-12B converted the way the original converts it
    import torch

    ckpt = torch.load(ck / "Pixtral-12B/model.pt", weights_only=True, mmap=True)
    assert set(ckpt) == {"model", "mm_projector", "vision_encoder"}
    assert set(ckpt["mm_projector"]) == {"projector.0.weight", "projector.2.weight"}
    assert set(ckpt["vision_encoder"]) == {"patch_conv.weight", "transformer.layers.0.attention.wk.weight"}
    assert set(ckpt["model"]) == {"model.tok_embeddings.weight", "model.layers.0.attention.wq.weight", "model.norm.weight",
                                  "mm_projector.projector.0.weight", "mm_projector.projector.2.weight",
                                  "vision_encoder.patch_conv.weight",
                                  "vision_encoder.transformer.layers.0.attention.wk.weight"}
    assert ckpt["model"]["vision_encoder.patch_conv.weight"].dtype == torch.bfloat16
    config = json.loads((ck / "Pixtral-12B/config.json").read_text())
    assert config["ffn_hidden_size"] == 16 and config["vision_encoder"] == "pixtral-12b-vit" and "hidden_dim" not in config


def test_a_second_run_fetches_nothing_and_two_models_share_files(cosmos, hub, tmp_path):
    ck = tmp_path / "ck"
    assert cosmos("download", "fh7b", "--checkpoint-dir", str(ck)).exit_code == 0
    before = len(hub.data_requests())
    r = cosmos("download", "fh7b", "--checkpoint-dir", str(ck))
    assert r.exit_code == 0, r.stderr
    assert len(hub.data_requests()) == before
    assert "0 fetched" in r.stdout

    # 14B adds its own network only: tokenizer, T5, the guardrails and the upsampler are shared
    r = cosmos("download", "--model_sizes", "fh7b", "fh14b", "--model_types", "Video2World", "--checkpoint-dir", str(ck))
    assert r.exit_code == 0, r.stderr
    new = {x.path for x in hub.data_requests()[before:]}
    assert any(p.endswith(hub._sha_of(f"nvidia/{M14}/model.pt")) for p in new)
    assert not any(p.endswith(hub._sha_of("google-t5/t5-11b/pytorch_model.bin")) for p in new)
    assert not any(p.endswith(hub._sha_of("nvidia/Cosmos-Guardrail1/face_blur_filter/Resnet50_Final.pth")) for p in new)
    assert (ck / M14 / "model.pt").is_file() and not (ck / M14 / "guardrail").exists()


def test_no_upsampler_and_no_guardrail_leave_those_out(hub, models, tmp_path):
    spec = models.specs[0]
    files = dl.select_files([spec], upsampler=False, guardrail=False)
    assert not any(f.component in (UPSAMPLER, GUARDRAIL) for f in files)
    plan = dl.plan_download(files, tmp_path / "ck")
    assert not any("guardrail" in f.local or "Pixtral" in f.local or "pixtral" in f.local for f in plan.files)
    assert {r.repo for r in plan.repos} == {f"nvidia/{M7}", f"nvidia/{TOK}", "google-t5/t5-11b"}
    dl.download(plan, progress=False)
    assert files_under(tmp_path / "ck") == {f"{M7}/model.pt", f"{TOK}/encoder.jit", f"{TOK}/decoder.jit",
                                            f"{TOK}/mean_std.pt", "google-t5/t5-11b/config.json",
                                            "google-t5/t5-11b/pytorch_model.bin", "google-t5/t5-11b/spiece.model",
                                            "google-t5/t5-11b/tokenizer.json"}


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

    plan = dl.plan_download(dl.select_files(dl.resolve_models(["fh7b"]), upsampler=False, guardrail=False), ck)
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
    files = [replace(f, md5="0" * 32) if f.filename == "mean_std.pt" else f
             for f in dl.select_files([spec], upsampler=False, guardrail=False)]
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
    r = cosmos("download", "fh7b", "--no-guardrail", "--token", "hf_someone_else", "--checkpoint-dir", str(tmp_path))
    assert r.exit_code == 1
    assert error_lines(r.stderr)[0] == (
        f"error: no access to the gated repository mistralai/Pixtral-12B-2409: accept its license at "
        f"{hub.url}/mistralai/Pixtral-12B-2409")
    # the dry run shows the same, and still lists the sizes
    r = cosmos("download", "fh7b", "--no-guardrail", "--token", "hf_someone_else", "--dry-run", "--checkpoint-dir",
               str(tmp_path))
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
    plan = dl.plan_download([f for f in dl.select_files([spec]) if f.filename == "mean_std.pt"], tmp_path / "ck")
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
    monkeypatch.setattr(plan_mod, "free_bytes", lambda path: 123_456_789_000)  # the real value moves under other writers
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
    assert "consolidated.safetensors -> Pixtral-12B-2409/consolidated.safetensors (converted into Pixtral-12B/model.pt, Pixtral-12B/config.json)" in out
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
    needle = torch.load(pixtral, weights_only=True)["model"]["model.tok_embeddings.weight"].view(torch.int16).numpy().tobytes()
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


def _march_2025_guardrails(model_dir: str) -> list[CheckpointFile]:
    """The guardrails as March 2025's spec fetched them: the model repository's guardrail/ folder, LlamaGuard-7b,
    the adapter and SigLIP as huggingface_hub caches inside it (the cache-entry kind of CheckpointFile)."""
    repo, g = f"nvidia/{model_dir}", f"{model_dir}/guardrail"
    return [
        CheckpointFile(GUARDRAIL, repo, "guardrail/*", model_dir),
        CheckpointFile(GUARDRAIL, "meta-llama/LlamaGuard-7b", "*.json", f"{g}/aegis", hf_cache=True,
                       revision=p1.LLAMAGUARD_REVISION),
        CheckpointFile(GUARDRAIL, "meta-llama/LlamaGuard-7b", "tokenizer.model", f"{g}/aegis", hf_cache=True,
                       revision=p1.LLAMAGUARD_REVISION),
        CheckpointFile(GUARDRAIL, "nvidia/Aegis-AI-Content-Safety-LlamaGuard-Defensive-1.0", "adapter_config.json",
                       f"{g}/aegis", hf_cache=True),
        CheckpointFile(GUARDRAIL, "google/siglip-so400m-patch14-384", "model.safetensors",
                       f"{g}/video_content_safety_filter", hf_cache=True),
    ]


def test_cache_entries_make_a_huggingface_hub_cache_that_it_reads(hub, tmp_path):
    """March 2025's layout is still served by the model repositories, and cache entries still work."""
    from huggingface_hub import try_to_load_from_cache

    ck = tmp_path / "ck"
    report = dl.download(dl.plan_download(_march_2025_guardrails(M7), ck), progress=False)
    assert f"{M7}/guardrail/face_blur_filter/Resnet50_Final.pth" in report.fetched
    lg = ck / M7 / "guardrail/aegis/models--meta-llama--LlamaGuard-7b"
    assert (lg / "snapshots" / p1.LLAMAGUARD_REVISION / "config.json").is_symlink()
    found = try_to_load_from_cache("meta-llama/LlamaGuard-7b", "config.json", cache_dir=str(ck / M7 / "guardrail/aegis"),
                                   revision=p1.LLAMAGUARD_REVISION)
    assert found is not None and Path(found).read_bytes() == b'{"model_type": "llama"}'
    ae = ck / M7 / "guardrail/aegis/models--nvidia--Aegis-AI-Content-Safety-LlamaGuard-Defensive-1.0"
    assert (ae / "refs" / "main").read_text() == hub.repos["nvidia/Aegis-AI-Content-Safety-LlamaGuard-Defensive-1.0"].commit
    # a cache blob damaged through its link is named by --verify
    cached = next(lg.rglob("snapshots/*/tokenizer.model"))
    cached.write_bytes(b"x" * cached.stat().st_size)
    report = dl.verify(dl.plan_download(_march_2025_guardrails(M7), ck), progress=False)
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
    plan = dl.plan_download(_march_2025_guardrails(M7), tmp_path / "ck")
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
        assert by_local[f"{model_dir}/model.pt"].md5 in ("ebcdb19c4c4a6a0e1e0bb65e346f6867", "eaa7aa3678f61d88108c41d7fe201b18")
        assert by_local["google-t5/t5-11b/pytorch_model.bin"].md5 == "f890878d8a162e0045a25196e27089a3"
        g1 = by_local["nvidia/Cosmos-Guardrail1/video_content_safety_filter/safety_filter.pt"]
        assert g1.md5 == p1.SAFETY_FILTER_MD5 and g1.repo == "nvidia/Cosmos-Guardrail1"
        assert {f.filename for f in spec.files if f.repo == "google-t5/t5-11b"} == {
            "config.json", "pytorch_model.bin", "spiece.model", "tokenizer.json"}
        assert by_local["Pixtral-12B/model.pt"].convert == "pixtral-12b"
        assert all(f.convert in (None, *dl.CONVERSIONS) for f in spec.files)
        revisions = {f.repo: f.revision for f in spec.files}
        assert revisions["mistralai/Pixtral-12B-2409"] == "db3e3ed01201248694fcb170c7bd292ecfcad22b"
        assert revisions["meta-llama/LlamaGuard-7b"] == "3e764390d6b39028ddea5b20603c89476107b41e"
        assert revisions["nvidia/Cosmos-Guardrail1"] == "d6d4bfa899a71454a700907664f3e88f503950cf"
        assert revisions["google-t5/t5-11b"] == "90f37703b3334dfe9d2b009bfcbfbf1ac9d28ea3"
        # no guardrail/ folder of the model repository, no cache entries: today's layout
        assert not any(f.hf_cache or f.repo == f"nvidia/{model_dir}" and "guardrail" in f.filename for f in spec.files)
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
        get_hf_file_metadata(hf_hub_url("mistralai/Pixtral-12B-2409", "params.json", endpoint=hub.url), token=False)
    with pytest.raises(EntryNotFoundError):
        get_hf_file_metadata(hf_hub_url(repo.repo_id, "nope.bin", endpoint=hub.url), token=False)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("nvidia/nope")


# ------------------------------------------------------------------------ hostile listings (issue 15.2)

G1 = "nvidia/Cosmos-Guardrail1"
ESCAPE = "blocklist/a/b/../../../../../../x"  # from <ck>/nvidia/Cosmos-Guardrail1/: lands beside <ck>


def nothing_written(root: Path) -> bool:
    return not root.exists() or not any(p.is_file() for p in root.rglob("*"))


@pytest.mark.parametrize("name, why", [
    (ESCAPE, "contains '..'"),
    ("blocklist/../../x", "contains '..'"),
    ("/tmp/evil.json", "is absolute"),  # matches LlamaGuard's "*.json" (fnmatch's * crosses /)
    ("blocklist/a\0b", "contains a NUL byte"),
    ("blocklist/..\\..\\..\\x", "contains a backslash"),
    ("blocklist//x", "has an empty or '.' path segment"),
    ("blocklist/./x", "has an empty or '.' path segment"),
    ("blocklist/a\nb", "contains a control character"),
])
def test_a_listed_name_that_could_escape_is_refused_before_anything_is_written(cosmos, hub, tmp_path, name, why):
    repo = "meta-llama/LlamaGuard-7b" if name.endswith(".json") else G1
    hub.repos[repo].files[name] = b"pwned"
    ck = tmp_path / "deep" / "er" / "ck"
    r = cosmos("download", "fh7b", "--checkpoint-dir", str(ck))
    assert r.exit_code == 1, r.stdout
    lines = error_lines(r.stderr)
    assert lines[0] == f"error: refusing the file {name!r} listed by {repo}: its name {why}"
    assert lines[1].startswith("hint: Nothing was written.") and "Traceback" not in r.stderr
    assert nothing_written(tmp_path) and not Path("/tmp/evil.json").exists()
    assert hub.data_requests() == []
    # the dry run refuses the same way: it plans from the same listing
    r = cosmos("download", "fh7b", "--dry-run", "--checkpoint-dir", str(ck))
    assert r.exit_code == 1 and error_lines(r.stderr)[0].startswith("error: refusing the file")


def test_the_escaping_name_of_march_2025s_guardrail_folder_is_refused(hub, tmp_path):
    hub.repos[f"nvidia/{M7}"].files["guardrail/a/b/../../../../../x"] = b"pwned"
    ck = tmp_path / "a" / "b" / "ck"
    with pytest.raises(dl.UnsafeListingError, match=r"guardrail/a/b/\.\./\.\./\.\./\.\./\.\./x"):
        dl.plan_download(_march_2025_guardrails(M7), ck)
    assert nothing_written(tmp_path)


@pytest.mark.parametrize("sha", ["../../../x", "a" * 39, "g" * 40, "", "0" * 40 + "/.."])
def test_a_commit_id_that_is_not_40_hex_digits_is_refused(cosmos, hub, tmp_path, sha):
    hub.repos["nvidia/Aegis-AI-Content-Safety-LlamaGuard-Defensive-1.0"].listed_sha = sha
    ck = tmp_path / "x" / "y" / "ck"
    r = cosmos("download", "fh7b", "--checkpoint-dir", str(ck))
    assert r.exit_code == 1
    assert error_lines(r.stderr)[0] == (
        f"error: nvidia/Aegis-AI-Content-Safety-LlamaGuard-Defensive-1.0 answered the commit id {sha!r} for revision "
        "'main': a commit id must be 40 hex digits")
    assert nothing_written(tmp_path) and hub.data_requests() == []


def test_a_pinned_revision_answered_with_another_commit_is_refused(hub, models, tmp_path):
    hub.repos["meta-llama/LlamaGuard-7b"].listed_sha = "f" * 40
    with pytest.raises(dl.UnsafeListingError, match=f"asked for commit {p1.LLAMAGUARD_REVISION}, the Hub answered f{{40}}"):
        dl.plan_download(dl.select_files([models.specs[0]]), tmp_path / "ck")


@pytest.mark.parametrize("lie, kind", [({"lfs": {"sha256": "../../../x"}}, "SHA-256"), ({"blobId": "../x"}, "blob id"),
                                       ({"lfs": {"sha256": "a" * 63}}, "SHA-256")])
def test_a_digest_that_would_name_a_path_is_refused(hub, models, tmp_path, lie, kind):
    path = "video_content_safety_filter/safety_filter.pt" if "lfs" in lie else "blocklist/custom/words"
    hub.repos[G1].lies[path] = lie
    with pytest.raises(dl.UnsafeListingError, match=f"lists {path} with the {kind}"):
        dl.plan_download(dl.select_files([models.specs[0]]), tmp_path / "ck")


def test_a_symbolic_link_out_of_the_checkpoint_folder_is_not_followed(hub, models, tmp_path):
    ck, outside = tmp_path / "ck", tmp_path / "outside"
    (ck / "nvidia").mkdir(parents=True)
    outside.mkdir()
    (ck / "nvidia" / "Cosmos-Guardrail1").symlink_to(outside)
    files = [f for f in dl.select_files([models.specs[0]]) if f.repo == G1]
    with pytest.raises(dl.UnsafeListingError, match="resolves to .*outside"):
        dl.plan_download(files, ck)
    assert list(outside.iterdir()) == []
    # and at write time, for a link made after the plan
    (ck / "nvidia" / "Cosmos-Guardrail1").unlink()
    plan = dl.plan_download(files, ck)
    (ck / "nvidia" / "Cosmos-Guardrail1").symlink_to(outside)
    with pytest.raises(dl.UnsafeListingError, match="outside"):
        dl.download(plan, progress=False)
    assert list(outside.iterdir()) == []


def test_check_listing_name_accepts_plain_names():
    for name in ("model.pt", "a/b/c.json", "guardrail/blocklist/custom/words", "x..y/z", "..x", "a b/c"):
        assert dl.check_listing_name("r", name) == name
    assert dl.check_commit("r", "A" * 40, "main") == "A" * 40


# ------------------------------------------------------------------------ no model, bundled models (issue 16.1)


def test_download_without_a_model_is_a_one_line_usage_error_listing_the_models(cli, hub):
    for args in (("download",), ("download", "--dry-run"), ("download", "--model_types", "Video2World")):
        r = cli(*args)
        assert r.exit_code == 2, (args, r.stderr)
        lines = error_lines(r.stderr)
        assert lines[0] == "error: name the model(s) to download"
        assert "cosmos download 7B" in lines[1] and "7B (Cosmos-Predict1-7B-Video2World)" in lines[1]
        assert "14B (Cosmos-Predict1-14B-Video2World)" in lines[1] and "Nothing to download for demo" in lines[1]
        assert "Traceback" not in r.stderr and "HFValidationError" not in r.stderr
    assert hub.log == []


def test_download_of_the_bundled_demo_says_so_and_exits_0(cli, hub, tmp_path):
    for args in (("download", "demo"), ("download", "demo", "--dry-run"), ("download", "--model", "predict1-demo")):
        r = cli(*args, "--checkpoint-dir", str(tmp_path / "ck"))
        assert r.exit_code == 0, (args, r.stderr)
        assert "nothing to download for Cosmos-Predict1-Demo-Video2World" in r.stderr
        assert "Traceback" not in r.stderr
    assert hub.log == [] and not (tmp_path / "ck").exists()


def test_the_demo_next_to_a_hub_model_is_skipped_with_a_note(cosmos, hub, tmp_path):
    r = cosmos("download", "demo", "fh7b", "--no-guardrail", "--no-upsampler", "--dry-run",
               "--checkpoint-dir", str(tmp_path))
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
    TG._write_siglip(src / "siglip")  # -> src/siglip/google/siglip-so400m-patch14-384, moved into the cache layout
    snapshot = vcsf / SIGLIP_SNAPSHOT.split("/", 1)[1]
    snapshot.parent.mkdir(parents=True)
    (src / "siglip" / TG.SIGLIP_REPO).rename(snapshot)
    TG._write_aegis(src / "text", adapter_says_unsafe=False, cache_layout=False)
    hub.add(FakeRepo(G1, {**_tree(g1), "README.md": b"# g"}, commit=p1.GUARDRAIL_REVISION))
    hub.add(FakeRepo("meta-llama/LlamaGuard-7b", {**_tree(src / "text" / "meta-llama/LlamaGuard-7b"), "LICENSE": b"l",
                                                   "tokenizer.model": blob("spm", KiB)},  # the real repo has both
                     gated=True, commit=p1.LLAMAGUARD_REVISION))
    hub.add(FakeRepo("nvidia/Aegis-AI-Content-Safety-LlamaGuard-Defensive-1.0",
                     _tree(src / "text" / "nvidia/Aegis-AI-Content-Safety-LlamaGuard-Defensive-1.0")))

    ck = tmp_path / "ck"
    files = [replace(f, md5=None) for f in p1.guardrail_files()]  # the MD5s are the released files', not these
    dl.download(dl.plan_download(files, ck), progress=False)
    assert not (ck / "nvidia/Cosmos-Guardrail1/README.md").exists() and not (ck / "meta-llama/LlamaGuard-7b/LICENSE").exists()
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
    with pytest.raises(G.CheckpointError, match="has meta-llama/Llama-Guard-3-8B .* but not meta-llama/LlamaGuard-7b"):
        G.aegis_folder(today)
    (tmp_path / "meta-llama" / "LlamaGuard-7b").mkdir()
    assert G.aegis_folder(today) == tmp_path
    (today / "aegis").mkdir()  # a Cosmos-Guardrail1 folder that carries its own aegis/ is read as it is
    assert G.aegis_folder(today) == today / "aegis"
