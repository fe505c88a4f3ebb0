"""The fake Hub's repositories (the real 7B/14B file lists, Pixtral, the guardrails), the ``hub``, ``models`` and
``cosmos`` fixtures, and helpers, shared by the `cosmos download` tests (test_download*.py)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
from fakehub import FakeHub, FakeRepo

import cosmos_cli.app
from cosmos_cli.backend import Backend
from cosmos_cli.commands import download as download_cmd
from cosmos_cli.specs import GUARDRAIL, CheckpointFile
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
    vit = {
        "hidden_size": 1024,
        "num_channels": 3,
        "image_size": 1024,
        "patch_size": 16,
        "rope_theta": 10000.0,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "image_token_id": 10,
        "image_break_token_id": 12,
        "image_end_token_id": 13,
        "adapter_bias": True,
    }
    params = {
        "dim": 8,
        "n_layers": 1,
        "head_dim": 2,
        "hidden_dim": 16,
        "n_heads": 4,
        "n_kv_heads": 2,
        "rope_theta": 1e9,
        "norm_eps": 1e-5,
        "vocab_size": 100,
        "vision_encoder": vit,
    }
    if today:
        params["max_position_embeddings"] = 1024000
    return {
        "params.json": json.dumps(params).encode(),
        "consolidated.safetensors": save({k: v.to(torch.bfloat16) for k, v in tensors.items()}),
        "tekken.json": b'{"vocab": []}',
        "README.md": b"# Pixtral",
    }


G1 = "nvidia/Cosmos-Guardrail1"
SIGLIP_SNAPSHOT = "video_content_safety_filter/models--google--siglip-so400m-patch14-384/snapshots/9fdffc58afc957d1a03a25b10dba0329ab15c2a3"


def guardrail1_repo() -> FakeRepo:
    """nvidia/Cosmos-Guardrail1 at the pinned commit, with the huggingface_hub cache it ships for SigLIP (its blob
    copy and ref included, which we leave out) and files nothing reads."""
    siglip = blob("g1-siglip", 25 * KiB)
    return FakeRepo(
        p1.GUARDRAIL_REPO,
        {
            "README.md": b"# guardrail",
            "blocklist/custom/words": b"badword\n",
            "blocklist/exact_match/words": b"other\n",
            "blocklist/whitelist/words": b"fine\n",
            "blocklist/nltk_data/corpora/wordnet/lexnames": b"00\tadj.all\t3\n",
            "face_blur_filter/Resnet50_Final.pth": blob("g1-retinaface", 5 * KiB),
            "video_content_safety_filter/safety_filter.pt": blob("g1-safety_filter", 3 * KiB),
            f"{SIGLIP_SNAPSHOT}/config.json": b'{"model_type": "siglip"}',
            f"{SIGLIP_SNAPSHOT}/preprocessor_config.json": b"{}",
            f"{SIGLIP_SNAPSHOT}/model.safetensors": siglip,
            f"video_content_safety_filter/models--google--siglip-so400m-patch14-384/blobs/{hashlib.sha256(siglip).hexdigest()}.safetensors": siglip,
            "video_content_safety_filter/models--google--siglip-so400m-patch14-384/refs/main": b"9fdffc58",
        },
        commit=p1.GUARDRAIL_REVISION,
    )


def model_repo(name: str) -> FakeRepo:
    """A model repository; it still has March 2025's guardrail/ folder, which we no longer fetch."""
    return FakeRepo(
        f"nvidia/{name}",
        {
            "model.pt": blob(name + "/model.pt", 200 * KiB),
            "config.json": b'{"unused": true}',
            "README.md": b"# model",
            "guardrail/video_content_safety_filter/safety_filter.pt": blob("safety_filter", 3 * KiB),
            "guardrail/face_blur_filter/Resnet50_Final.pth": blob("retinaface", 5 * KiB),
            "guardrail/blocklist/custom/words": b"badword\n",
            "guardrail/blocklist/exact_match/words": b"other\n",
        },
    )


def fake_repos() -> list[FakeRepo]:
    return [
        model_repo(M7),
        model_repo(M14),
        FakeRepo(
            f"nvidia/{TOK}",
            {
                "encoder.jit": blob("enc", 40 * KiB),
                "decoder.jit": blob("dec", 50 * KiB),
                "mean_std.pt": blob("mean_std", 2 * KiB),
                "autoencoder.jit": blob("ae", 60 * KiB),
                "config.json": b"{}",
                "README.md": b"# tok",
            },
        ),
        FakeRepo(
            "google-t5/t5-11b",
            {
                "config.json": b'{"d_model": 1024}',
                "pytorch_model.bin": blob("t5", 120 * KiB),
                "tf_model.h5": blob("t5tf", 150 * KiB),
                "flax_model.msgpack": blob("t5fx", 90 * KiB),
                "rust_model.ot": blob("t5rs", 30 * KiB),
                "spiece.model": blob("spiece", 4 * KiB),
                "tokenizer.json": b'{"model": "unigram"}',
                "README.md": b"# t5",
            },
            commit=p1.T5_REVISION,
        ),
        guardrail1_repo(),
        FakeRepo(
            "meta-llama/LlamaGuard-7b",
            {
                "config.json": b'{"model_type": "llama"}',
                "generation_config.json": b"{}",
                "model-00001-of-00002.safetensors": blob("lg1", 30 * KiB),
                "model-00002-of-00002.safetensors": blob("lg2", 20 * KiB),
                "model.safetensors.index.json": b'{"weight_map": {}}',
                "pytorch_model-00001-of-00002.bin": blob("lgbin", 40 * KiB),
                "tokenizer.model": blob("lgtok", 3 * KiB),
                "tokenizer.json": b"{}",
                "tokenizer_config.json": b"{}",
                "special_tokens_map.json": b"{}",
                "LICENSE": b"llama2",
                "USE_POLICY.md": b"policy",
            },
            gated=True,
            commit=p1.LLAMAGUARD_REVISION,
        ),
        FakeRepo(
            "nvidia/Aegis-AI-Content-Safety-LlamaGuard-Defensive-1.0",
            {
                "adapter_config.json": b'{"peft_type": "LORA"}',
                "adapter_model.safetensors": blob("aegis", 8 * KiB),
                "README.md": b"# aegis",
            },
        ),
        FakeRepo(
            "google/siglip-so400m-patch14-384",
            {
                "config.json": b'{"model_type": "siglip"}',
                "model.safetensors": blob("siglip", 25 * KiB),
                "preprocessor_config.json": b"{}",
                "spiece.model": blob("sigsp", 2 * KiB),
                "tokenizer_config.json": b"{}",
                "special_tokens_map.json": b"{}",
                "open_clip_pytorch_model.bin": blob("openclip", 25 * KiB),
                "README.md": b"# siglip",
            },
        ),
        FakeRepo(
            "mistralai/Pixtral-12B-2409",
            pixtral_files(today=True),
            gated=True,
            history={p1.PIXTRAL_REVISION: pixtral_files()},
        ),
        FakeRepo(
            "mistral-community/pixtral-12b",
            {
                "config.json": b"{}",
                "tokenizer.json": b"{}",
                "tokenizer_config.json": b"{}",
                "preprocessor_config.json": b"{}",
                "processor_config.json": b"{}",
                "special_tokens_map.json": b"{}",
                "model-00001-of-00006.safetensors": blob("pxm", 20 * KiB),
                "README.md": b"# px",
            },
        ),
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

    for var in (
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_OIDC_RESOURCE",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-stored-token"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "user-hf-cache"))
    monkeypatch.setattr(
        constants, "DOWNLOAD_CHUNK_SIZE", 16 * KiB
    )  # small chunks: partial transfers keep bytes
    with FakeHub() as fake:
        for repo in fake_repos():
            fake.add(repo)
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        monkeypatch.setenv("HF_TOKEN", "hf_granted")
        yield fake


@pytest.fixture
def models(hub, register_backend):
    """FakeHub-7B / FakeHub-14B: the real 7B/14B file lists, registered for the CLI; unregistered afterwards."""
    return register_backend(
        _Backend(
            (
                renamed_spec(p1.PREDICT1_7B, hub, "FakeHub-7B", ("fh7b",)),
                renamed_spec(p1.PREDICT1_14B, hub, "FakeHub-14B", ("fh14b",)),
            )
        )
    )


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
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if (p.is_file() or p.is_symlink()) and ".cache" not in p.relative_to(root).parts
    }


def march_2025_guardrails(model_dir: str) -> list[CheckpointFile]:
    """The guardrails as March 2025's spec fetched them: the model repository's guardrail/ folder, LlamaGuard-7b,
    the adapter and SigLIP as huggingface_hub caches inside it (the cache-entry kind of CheckpointFile)."""
    repo, g = f"nvidia/{model_dir}", f"{model_dir}/guardrail"
    return [
        CheckpointFile(GUARDRAIL, repo, "guardrail/*", model_dir),
        CheckpointFile(
            GUARDRAIL,
            "meta-llama/LlamaGuard-7b",
            "*.json",
            f"{g}/aegis",
            hf_cache=True,
            revision=p1.LLAMAGUARD_REVISION,
        ),
        CheckpointFile(
            GUARDRAIL,
            "meta-llama/LlamaGuard-7b",
            "tokenizer.model",
            f"{g}/aegis",
            hf_cache=True,
            revision=p1.LLAMAGUARD_REVISION,
        ),
        CheckpointFile(
            GUARDRAIL,
            "nvidia/Aegis-AI-Content-Safety-LlamaGuard-Defensive-1.0",
            "adapter_config.json",
            f"{g}/aegis",
            hf_cache=True,
        ),
        CheckpointFile(
            GUARDRAIL,
            "google/siglip-so400m-patch14-384",
            "model.safetensors",
            f"{g}/video_content_safety_filter",
            hf_cache=True,
        ),
    ]
