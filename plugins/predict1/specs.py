"""The Cosmos-Predict1 Video2World model specs: one literal table.

Names follow the original's checkpoint folder names (``Cosmos-Predict1-7B-Video2World``) with short aliases.
Checkpoint files and MD5 checksums are the original download script's (spec section 11). Component sizes
are computed from the architecture parameters (:mod:`.params`), never typed in, except for the prompt
upsampler and guardrail models, whose parameter counts come from their published configurations.
"""

from __future__ import annotations

from dataclasses import replace

from cosmos_cli.specs import (
    GUARDRAIL,
    NETWORK,
    TEXT_ENCODER,
    TOKENIZER,
    UPSAMPLER,
    CheckpointFile,
    Component,
    ModelSpec,
    PixelNormalisation,
)

from .params import (
    DiTParams,
    T5Params,
    TokenizerParams,
    condition_pixel_frames,
    dit_activation_bytes,
    dit_block_params,
    dit_lean_activation_bytes,
    dit_params,
    dit_tokens,
    t5_activation_bytes,
    t5_layer_params,
    t5_params,
    tokenizer_activation_bytes,
)
from .pixtral_convert import PIXTRAL_12B
from .strategies import PLAN_FLAGS, STRATEGIES

BACKEND_ID = "predict1"

TOKENIZER_DIR = "Cosmos-Tokenize1-CV8x8x8-720p"
T5_DIR = "google-t5/t5-11b"
UPSAMPLER_DIR = "Pixtral-12B"

# Published sizes of the models we run through `transformers` (from their config.json arithmetic):
# Pixtral-12B = Mistral-NeMo-12B language model (12.25e9) + Pixtral ViT (0.40e9) + projector (0.03e9).
PIXTRAL_12B_PARAMS = 12_682_294_272
# Guardrails: LlamaGuard-7b (Llama-2-7B, 6,738,415,616) + SigLIP so400m vision tower (~428e6)
# + safety MLP (0.7e6) + RetinaFace ResNet-50 (27.3e6).
VIDEO_GUARDRAIL_PARAMS = 428_225_600 + 724_487 + 27_293_600  # what the video check loads (the rest is the text's)
GUARDRAIL_PARAMS = 6_738_415_616 + VIDEO_GUARDRAIL_PARAMS
# Tokenizer parameter counts (encoder + decoder), checked against the modules by tests/test_specs.py.
TOKENIZER_CV8X8X8_PARAMS = 105_653_696
TOKENIZER_TINY_PARAMS = 220_968

GiB = 1 << 30

# Peak GPU memory of a whole generation of the default job under each strategy, measured by benchmarks/bench_memory.py
# on an H100 (torch.cuda.max_memory_allocated; benchmarks/results/memory-h100.md), keyed by the network's (width,
# blocks). Only figures measured with the code as it now runs each strategy are listed. They were measured with T5 in
# bf16; T5 is fp32 now (TEXT_ENCODER_DTYPE), which adds 9.06 GiB to every stage T5 is whole on the GPU in: the
# figures whose peak that changes (all but 14B stream-lean, whose streamed T5 stays under its denoising peak) are
# left out until bench_memory measures them again (memory-h100.md keeps them).
MEASURED_PEAK_BYTES = {
    (5120, 36): (("stream-lean", 5_769_234_944),),
}

# The T5 encoder's weights in fp32, as the original keeps them (reference spec section 7: no torch_dtype). bf16
# weights would save 9.06 GiB while T5 is on the GPU and 0.09 s a prompt, and move the embedding by 1.1e-2
# relative on a T5-11B-shaped encoder, 6.6x the bf16 rounding the network's copy of it gets anyway
# (benchmarks/bench_t5_numerics.py, results/t5-numerics-h200.json). The pipeline loads T5 in this dtype
# (pipeline.text_encoder_dtype), so the plan counts what runs. Its activation peak is not scaled with the dtype:
# one 512-token encode measured 0.54 GiB above the weights in fp32 and 0.52 GiB in bf16 (same file).
TEXT_ENCODER_DTYPE = "float32"


def _network_component(p: DiTParams, latent_t: int, latent_h: int, latent_w: int) -> Component:
    tokens = dit_tokens(p, latent_t, latent_h, latent_w)
    return Component(
        name=NETWORK,
        stages=("denoise",),
        num_params=dit_params(p),
        activation_bytes=(("denoise", dit_activation_bytes(p, tokens, batch=2)),),
        activation_bytes_sequential=dit_activation_bytes(p, tokens, batch=1),
        num_blocks=p.num_blocks,
        block_params=dit_block_params(p),
    )


UPSAMPLER_MAX_NEW_TOKENS = 400  # upsampler.MAX_NEW_TOKENS
TEXT_GUARDRAIL_MAX_NEW_TOKENS = 100  # guardrails.AEGIS_MAX_NEW_TOKENS


def _components(p: DiTParams, t5: T5Params, tokenizer_params: int, frames: int, height: int, width: int,
                latent: tuple[int, int, int], upsampler_params: int, guardrail_params: int,
                input_frames: tuple[int, ...] = (1, 9)) -> tuple[Component, ...]:
    # the condition encode runs on the input frames (padded to 1 + 8k: 9 at most), the decode on all ``frames``
    clip = {"encode_video": condition_pixel_frames(max(input_frames)), "decode": frames}
    tok = {stage: tokenizer_activation_bytes(n, height, width, tiled=False, stage=stage) for stage, n in clip.items()}
    tiled = {f"{stage}_tiled": tokenizer_activation_bytes(n, height, width, tiled=True, stage=stage)
             for stage, n in clip.items()}
    tokens = dit_tokens(p, *latent)
    video_guardrail = min(guardrail_params, VIDEO_GUARDRAIL_PARAMS)
    network = replace(_network_component(p, *latent),
                      activation_bytes=(("denoise", dit_activation_bytes(p, tokens, batch=2)),
                                        ("denoise_lean", dit_lean_activation_bytes(p, tokens, batch=1))),
                      measured_peak_bytes=MEASURED_PEAK_BYTES.get((p.model_channels, p.num_blocks), ())
                      if (frames, height, width) == (121, 704, 1280) else ())
    return (
        # loaded_on_host: Pixtral and the guardrail models are built by transformers' from_pretrained on the CPU,
        # then moved (upsampler.py, guardrails.py); T5 is read through the file's mapping tensor by tensor onto its
        # device (text_encoder.py): not counted (measured: 2.3 GiB RssAnon at the peak of a resident 7B run,
        # benchmarks/results/host-memory-h200.md). A legacy-format (pre-zip) file cannot be mapped and is read whole:
        # text_encoder refuses one larger than the host memory available, before reading it.
        # gpu_when_room: on the GPU for their stage where the stream strategies leave room (planner.py);
        # cpu_weight_reads: one read of the weights per generated token, at most upsampler.MAX_NEW_TOKENS and
        # guardrails.AEGIS_MAX_NEW_TOKENS (a test checks they agree); the video check has no estimate (per-frame
        # classifiers, bound by arithmetic rather than memory).
        Component(UPSAMPLER, ("upsample",), upsampler_params, activation_bytes=(("upsample", GiB),),
                  cpu_capable=True, loaded_on_host=True, left_out_by="upsampler", gpu_when_room=True,
                  cpu_weight_reads=UPSAMPLER_MAX_NEW_TOKENS),
        # Two entries of one component: the text check (LlamaGuard) and the video check (SigLIP, RetinaFace) are
        # placed alike but each moves only its own models to the GPU when swapped.
        Component(GUARDRAIL, ("text_guardrail",), guardrail_params - video_guardrail,
                  activation_bytes=(("text_guardrail", GiB),), cpu_capable=True, loaded_on_host=True,
                  left_out_by="guardrail", gpu_when_room=True, cpu_weight_reads=TEXT_GUARDRAIL_MAX_NEW_TOKENS),
        Component(GUARDRAIL, ("video_guardrail",), video_guardrail,
                  activation_bytes=(("video_guardrail", 2 * GiB),), cpu_capable=True, loaded_on_host=True,
                  left_out_by="guardrail", gpu_when_room=True),
        Component(TEXT_ENCODER, ("encode_text",), t5_params(t5), dtype=TEXT_ENCODER_DTYPE,
                  activation_bytes=(("encode_text", t5_activation_bytes(t5)),), cpu_capable=True,
                  num_blocks=t5.num_layers, block_params=t5_layer_params(t5)),
        Component(TOKENIZER, ("encode_video", "decode"), tokenizer_params,
                  activation_bytes=(*tok.items(), *tiled.items())),
        network,
    )


def _step_flops(p: DiTParams, latent: tuple[int, int, int], text_tokens: int) -> float:
    """Matrix-product FLOPs (2 per multiply-add) of one sampler step: the network's forward on both guidance
    branches (4.42 PFLOP for 7B, as benchmarks/bench_network.forward_flops counts: speed-7b-h100.json). Per block
    and token: self-attention projections 4d^2, cross-attention query/output 2d^2, MLP 2d*hidden; per block: the
    text keys/values 2*text*d*c, attention scores and mixing 4n^2*d (self) and 4n*text*d (cross)."""
    n, d, c, hidden = dit_tokens(p, *latent), p.model_channels, p.crossattn_emb_channels, p.mlp_hidden
    linear = 2 * n * (6 * d * d + 2 * d * hidden) + 2 * 2 * text_tokens * d * c
    attention = 4 * n * n * d + 4 * n * text_tokens * d
    return 2.0 * p.num_blocks * (linear + attention)


# Where every checkpoint file comes from (spec section 11, trimmed to what generation reads) and where the
# original project keeps it. The T5 repository's TensorFlow/Flax weights and the model repositories' README and
# config.json are left out: nothing reads them.
#
# Revisions follow the original's later download scripts, not the Hub's `main` of today:
# * Pixtral-12B at db3e3ed0...: Kris57880/cosmos-predict1 scripts/download_diffusion_checkpoints.py
#   (commit 7ed75a73fd6be253220a38e5657d586834f17674, "fix version of Pixtral to ensure compatibility"): `main`'s
#   params.json gained `max_position_embeddings`, and the conversion requires the original key set exactly.
# * T5-11B at 90f37703... and Cosmos-Guardrail1 at d6d4bfa8...: nvidia-cosmos/cosmos-predict2
#   scripts/download_checkpoints.py (commit 877dc689eddbc1c6ba91d12e2f0294e60065e7ce, REPO_ID_MAPPING).
# * LlamaGuard-7b at 3e764390...: the original's scripts/download_guardrail_checkpoints.py as first written
#   (Kris57880/cosmos-predict1 commit bff2ab4b4ca150480e48d446c5cb5450fbf95c01, "Update guardrails to point to
#   its own model"), which also fetches the Aegis adapter (unpinned) and nvidia/Cosmos-Guardrail1.
T5_REPO = "google-t5/t5-11b"
T5_REVISION = "90f37703b3334dfe9d2b009bfcbfbf1ac9d28ea3"
SAFETY_FILTER_MD5 = "b46dc2ad821fc3b0d946549d7ade19cf"
# The guardrails. Since April 2025 the original fetches them from one repository, nvidia/Cosmos-Guardrail1, into
# `<checkpoint_dir>/nvidia/Cosmos-Guardrail1/{blocklist,face_blur_filter,video_content_safety_filter}` (the SigLIP
# encoder as a huggingface_hub cache inside video_content_safety_filter/), and the text guard's models next to it as
# `<checkpoint_dir>/meta-llama/LlamaGuard-7b/` and `<checkpoint_dir>/nvidia/Aegis-AI-Content-Safety-LlamaGuard-
# Defensive-1.0/` (commit bff2ab4 above: blocklist.py, face_blur_filter.py, video_content_safety_filter.py and
# aegis.py join those paths). The MD5s of Cosmos-Guardrail1's files: NVIDIA/paidf-anomalygen
# scripts/download_checkpoints.py (commit 0fd52825e961ff8a50d3ba6aac4a4601ba076774). Before that, each model
# repository carried a guardrail/ folder (blocklist, face blur, safety filter) and the original loaded LlamaGuard,
# Aegis and SigLIP with `from_pretrained(id, cache_dir=<guardrail>/...)`; find_guardrail_dir reads both layouts.
# The original's scripts from commit e41e265 (April 15 2025) on replace LlamaGuard-7b + Aegis with
# meta-llama/Llama-Guard-3-8B; that model is not supported here (see guardrails.py).
GUARDRAIL_REPO = "nvidia/Cosmos-Guardrail1"
GUARDRAIL_REVISION = "d6d4bfa899a71454a700907664f3e88f503950cf"
GUARDRAIL_DIR = GUARDRAIL_REPO  # <checkpoint_dir>/nvidia/Cosmos-Guardrail1
RETINAFACE_MD5 = "bce939bc22d8cec91229716dd932e56e"
LLAMAGUARD_REPO = "meta-llama/LlamaGuard-7b"
LLAMAGUARD_REVISION = "3e764390d6b39028ddea5b20603c89476107b41e"
AEGIS_ADAPTER_REPO = "nvidia/Aegis-AI-Content-Safety-LlamaGuard-Defensive-1.0"
SIGLIP_REPO = "google/siglip-so400m-patch14-384"
_SIGLIP_CACHE = "video_content_safety_filter/models--google--siglip-so400m-patch14-384/snapshots/*"
# The prompt upsampler: Mistral's Pixtral-12B release, converted to Pixtral-12B/{model.pt,config.json} as the
# original does, plus the tokenizer/processor files the original fetched at run time from mistral-community.
PIXTRAL_REPO = "mistralai/Pixtral-12B-2409"
PIXTRAL_REVISION = "db3e3ed01201248694fcb170c7bd292ecfcad22b"
PIXTRAL_PROCESSOR_REPO = "mistral-community/pixtral-12b"
PIXTRAL_PROCESSOR_DIR = "mistral-community/pixtral-12b"


def guardrail_files() -> tuple[CheckpointFile, ...]:
    """The guardrails in today's layout: Cosmos-Guardrail1 (the blocklist whole, the two classifier weights, the
    SigLIP snapshot's config and weights), LlamaGuard-7b and the Aegis adapter."""
    g = GUARDRAIL_DIR
    return (
        CheckpointFile(GUARDRAIL, GUARDRAIL_REPO, "blocklist/*", g, revision=GUARDRAIL_REVISION),
        CheckpointFile(GUARDRAIL, GUARDRAIL_REPO, "video_content_safety_filter/safety_filter.pt",
                       f"{g}/video_content_safety_filter/safety_filter.pt", SAFETY_FILTER_MD5,
                       revision=GUARDRAIL_REVISION),
        CheckpointFile(GUARDRAIL, GUARDRAIL_REPO, "face_blur_filter/Resnet50_Final.pth",
                       f"{g}/face_blur_filter/Resnet50_Final.pth", RETINAFACE_MD5, revision=GUARDRAIL_REVISION),
        CheckpointFile(GUARDRAIL, GUARDRAIL_REPO, f"{_SIGLIP_CACHE}/*.json", g, revision=GUARDRAIL_REVISION),
        CheckpointFile(GUARDRAIL, GUARDRAIL_REPO, f"{_SIGLIP_CACHE}/model.safetensors", g,
                       revision=GUARDRAIL_REVISION),
        CheckpointFile(GUARDRAIL, LLAMAGUARD_REPO, "*.json", LLAMAGUARD_REPO, revision=LLAMAGUARD_REVISION),
        CheckpointFile(GUARDRAIL, LLAMAGUARD_REPO, "*.safetensors", LLAMAGUARD_REPO, revision=LLAMAGUARD_REVISION),
        CheckpointFile(GUARDRAIL, LLAMAGUARD_REPO, "tokenizer.model", f"{LLAMAGUARD_REPO}/tokenizer.model",
                       revision=LLAMAGUARD_REVISION),
        CheckpointFile(GUARDRAIL, AEGIS_ADAPTER_REPO, "adapter_config.json",
                       f"{AEGIS_ADAPTER_REPO}/adapter_config.json"),
        CheckpointFile(GUARDRAIL, AEGIS_ADAPTER_REPO, "adapter_model.safetensors",
                       f"{AEGIS_ADAPTER_REPO}/adapter_model.safetensors"),
    )


def _files(model_dir: str, md5: str | None) -> tuple[CheckpointFile, ...]:
    repo = f"nvidia/{model_dir}"
    tok = f"nvidia/{TOKENIZER_DIR}"
    return (
        CheckpointFile(NETWORK, repo, "model.pt", f"{model_dir}/model.pt", md5),
        CheckpointFile(TOKENIZER, tok, "encoder.jit", f"{TOKENIZER_DIR}/encoder.jit", "f5834d03645c379bc0f8ad14b9bc0299"),
        CheckpointFile(TOKENIZER, tok, "decoder.jit", f"{TOKENIZER_DIR}/decoder.jit", "ff21a63ed817ffdbe4b6841111ec79a8"),
        CheckpointFile(TOKENIZER, tok, "mean_std.pt", f"{TOKENIZER_DIR}/mean_std.pt", "f07680ad7eefae57d698778e2a0c7c96"),
        CheckpointFile(TEXT_ENCODER, T5_REPO, "config.json", f"{T5_DIR}/config.json", revision=T5_REVISION),
        CheckpointFile(TEXT_ENCODER, T5_REPO, "pytorch_model.bin", f"{T5_DIR}/pytorch_model.bin",
                       "f890878d8a162e0045a25196e27089a3", revision=T5_REVISION),
        CheckpointFile(TEXT_ENCODER, T5_REPO, "spiece.model", f"{T5_DIR}/spiece.model", revision=T5_REVISION),
        CheckpointFile(TEXT_ENCODER, T5_REPO, "tokenizer.json", f"{T5_DIR}/tokenizer.json", revision=T5_REVISION),
        *guardrail_files(),
        CheckpointFile(UPSAMPLER, PIXTRAL_REPO, "consolidated.safetensors", f"{UPSAMPLER_DIR}/model.pt",
                       convert=PIXTRAL_12B.name, revision=PIXTRAL_REVISION),
        CheckpointFile(UPSAMPLER, PIXTRAL_REPO, "params.json", f"{UPSAMPLER_DIR}/config.json", convert=PIXTRAL_12B.name,
                       revision=PIXTRAL_REVISION),
        CheckpointFile(UPSAMPLER, PIXTRAL_PROCESSOR_REPO, "*.json", PIXTRAL_PROCESSOR_DIR),
    )


DIT_7B = DiTParams()
DIT_14B = DiTParams(model_channels=5120, num_blocks=36, num_heads=40,
                    rope_h_extrapolation_ratio=2.0, rope_w_extrapolation_ratio=2.0, rope_t_extrapolation_ratio=2.0)
T5_11B = T5Params()
TOKENIZER_720P = TokenizerParams()

# Printed by `generate` and `batch` under --disable-guardrail (ModelSpec.guardrail_disabled_warning), for every model
# of this backend: the NVIDIA Open Model License's terms on the guardrails.
GUARDRAIL_DISABLED_WARNING = (
    "the safety guardrails are disabled. The NVIDIA Open Model License ties your rights to use the model to keeping "
    "its guardrails; you are responsible for what you generate."
)

# The original's default negative prompt (cosmos-predict1 inference_utils), used verbatim.
DEFAULT_NEGATIVE_PROMPT = (
    "The video captures a series of frames showing ugly scenes, static with no motion, motion blur, "
    "over-saturation, shaky footage, low resolution, grainy texture, pixelated images, poorly lit areas, "
    "underexposed and overexposed scenes, poor color balance, washed out colors, choppy sequences, jerky "
    "movements, low frame rate, artifacting, color banding, unnatural transitions, outdated special effects, "
    "fake elements, unconvincing visuals, poorly edited content, jump cuts, visual noise, and flickering. "
    "Overall, the video is of poor quality."
)
# What every model of this backend tells the core (ModelSpec's "model facts"): the negative prompt, the original's
# x / 128 - 1 pixel normalisation (black -1.0, white 0.9921875), its post-trained folder names, its download
# script's model types and the Pixtral-12B conversion of the upsampler's files.
MODEL_FACTS = dict(
    default_negative_prompt=DEFAULT_NEGATIVE_PROMPT,
    input_normalisation=PixelNormalisation(scale=1 / 128, offset=-1.0),
    network_dir_suffixes=("_post-trained", "-post-trained"),
    model_type="Video2World",
    other_model_types=("Text2World", "Text2World-Sample-AV-Multiview", "Video2World-Sample-AV-Multiview"),
    conversions=(PIXTRAL_12B,),
)
# The stages of one Video2World generation, in the order they run (ModelSpec.stages).
STAGES = ("upsample", "text_guardrail", "encode_text", "encode_video", "denoise", "decode", "video_guardrail")

_LATENT = (16, 88, 160)  # latent T, H, W of the default job (121 x 704 x 1280)

PREDICT1_7B = ModelSpec(
    name="Cosmos-Predict1-7B-Video2World",
    backend=BACKEND_ID,
    description="Cosmos-Predict1 7B Video2World: 121 frames at 704x1280 from 1 or 9 input frames",
    aliases=("7B", "predict1-7b"),
    is_default=False,
    network=DIT_7B,
    tokenizer=TOKENIZER_720P,
    text_encoder=T5_11B,
    files=_files("Cosmos-Predict1-7B-Video2World", "ebcdb19c4c4a6a0e1e0bb65e346f6867"),
    components=_components(DIT_7B, T5_11B, TOKENIZER_CV8X8X8_PARAMS, 121, 704, 1280, _LATENT,
                           PIXTRAL_12B_PARAMS, GUARDRAIL_PARAMS),
    step_flops=_step_flops(DIT_7B, _LATENT, T5_11B.max_length),
    expects="real-world video (driving, robotics, people, nature) at 1280x704, about 16:9",
    guardrail_disabled_warning=GUARDRAIL_DISABLED_WARNING,
    **MODEL_FACTS,
    stages=STAGES,
    strategies=STRATEGIES,
    plan_flags=PLAN_FLAGS,
)

PREDICT1_14B = replace(
    PREDICT1_7B,
    name="Cosmos-Predict1-14B-Video2World",
    description="Cosmos-Predict1 14B Video2World: 121 frames at 704x1280 from 1 or 9 input frames",
    aliases=("14B", "predict1-14b"),
    is_default=False,
    network=DIT_14B,
    files=_files("Cosmos-Predict1-14B-Video2World", "eaa7aa3678f61d88108c41d7fe201b18"),
    components=_components(DIT_14B, T5_11B, TOKENIZER_CV8X8X8_PARAMS, 121, 704, 1280, _LATENT,
                           PIXTRAL_12B_PARAMS, GUARDRAIL_PARAMS),
    step_flops=_step_flops(DIT_14B, _LATENT, T5_11B.max_length),
)


# A tiny configuration of the same architecture, for tests: 17 frames of 32x32 (latent 3x4x4, 12 tokens).
TINY_DIR = "Cosmos-Predict1-Tiny-Video2World"
DIT_TINY = DiTParams(model_channels=32, num_blocks=2, num_heads=2, mlp_ratio=2.0, crossattn_emb_channels=32,
                     max_img_h=32, max_img_w=32, max_frames=16, adaln_lora_dim=8)
TOKENIZER_TINY = TokenizerParams(channels=4, channels_mult=(2, 4, 4), num_res_blocks=1, attn_resolutions=(8,),
                                 resolution=64, pixel_chunk_duration=17)
T5_TINY = T5Params(d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2, vocab_size=512, max_length=32)

PREDICT1_TINY = ModelSpec(
    name="Cosmos-Predict1-Tiny-Video2World",
    backend=BACKEND_ID,
    description="tiny random configuration of the Video2World architecture (tests)",
    aliases=("predict1-tiny",),
    hidden=True,
    network=DIT_TINY,
    tokenizer=TOKENIZER_TINY,
    text_encoder=T5_TINY,
    files=(
        CheckpointFile(NETWORK, "", "model.pt", f"{TINY_DIR}/model.pt"),
        CheckpointFile(TOKENIZER, "", "encoder.jit", "Cosmos-Tokenize1-Tiny/encoder.jit"),
        CheckpointFile(TOKENIZER, "", "decoder.jit", "Cosmos-Tokenize1-Tiny/decoder.jit"),
        CheckpointFile(TOKENIZER, "", "mean_std.pt", "Cosmos-Tokenize1-Tiny/mean_std.pt"),
        CheckpointFile(TEXT_ENCODER, "", "config.json", "t5-tiny/config.json"),
        CheckpointFile(TEXT_ENCODER, "", "pytorch_model.bin", "t5-tiny/pytorch_model.bin"),
    ),
    components=tuple(c for c in _components(DIT_TINY, T5_TINY, TOKENIZER_TINY_PARAMS, 17, 32, 32, (3, 4, 4), 0, 0)
                     if c.name not in (UPSAMPLER, GUARDRAIL)),  # no upsampler or guardrail models
    num_frames=17,
    height=32,
    width=32,
    guardrail_disabled_warning=GUARDRAIL_DISABLED_WARNING,
    **MODEL_FACTS,
    stages=STAGES,
    strategies=STRATEGIES,
    plan_flags=PLAN_FLAGS,
)


# The bundled demo model: the same network, sampler, conditioning, tokenizer family and T5-style encoder at a
# small size, trained by tools/demo/train.py on the procedural clips of tools/demo/scenes.py (33 frames of
# 128x128, latent 5x16x16, 320 tokens). Its files ship with the package (assets/demo, the `cosmos_demo_assets`
# package) and the backend reads them from there whatever --checkpoint-dir says. The text encoder has random,
# frozen weights; its tokenizer knows the captions' words (`build_word_tokenizer`).
DEMO_DIR = "Cosmos-Predict1-Demo-Video2World"
DEMO_TOKENIZER_DIR = "Cosmos-Tokenize1-CV8x8x8-Demo"
DEMO_T5_DIR = "t5-demo"
DIT_DEMO = DiTParams(model_channels=256, num_blocks=8, num_heads=4, crossattn_emb_channels=128, max_img_h=16,
                     max_img_w=16, max_frames=8, adaln_lora_dim=64)
TOKENIZER_DEMO = TokenizerParams(channels=24, channels_mult=(2, 4, 4), num_res_blocks=1, attn_resolutions=(),
                                 resolution=128, pixel_chunk_duration=33)
T5_DEMO = T5Params(d_model=128, d_kv=32, num_heads=4, d_ff=512, num_layers=2, vocab_size=271, max_length=32)
TOKENIZER_DEMO_PARAMS = 2_960_208

PREDICT1_DEMO = ModelSpec(
    name="Cosmos-Predict1-Demo-Video2World",
    backend=BACKEND_ID,
    description="bundled demo: 33 frames at 128x128 from 1 or 9 input frames, trained on procedural clips "
                "(a ball or a box moving left or right); runs on a CPU in seconds",
    aliases=("demo", "predict1-demo"),
    is_default=True,
    network=DIT_DEMO,
    tokenizer=TOKENIZER_DEMO,
    text_encoder=T5_DEMO,
    files=(
        CheckpointFile(NETWORK, "", "model.pt", f"{DEMO_DIR}/model.pt"),
        CheckpointFile(TOKENIZER, "", "encoder.jit", f"{DEMO_TOKENIZER_DIR}/encoder.jit"),
        CheckpointFile(TOKENIZER, "", "decoder.jit", f"{DEMO_TOKENIZER_DIR}/decoder.jit"),
        CheckpointFile(TOKENIZER, "", "mean_std.pt", f"{DEMO_TOKENIZER_DIR}/mean_std.pt"),
        CheckpointFile(TEXT_ENCODER, "", "config.json", f"{DEMO_T5_DIR}/config.json"),
        CheckpointFile(TEXT_ENCODER, "", "pytorch_model.bin", f"{DEMO_T5_DIR}/pytorch_model.bin"),
        CheckpointFile(TEXT_ENCODER, "", "tokenizer.json", f"{DEMO_T5_DIR}/tokenizer.json"),
    ),
    components=tuple(c for c in _components(DIT_DEMO, T5_DEMO, TOKENIZER_DEMO_PARAMS, 33, 128, 128, (5, 16, 16), 0, 0)
                     if c.name not in (UPSAMPLER, GUARDRAIL)),
    num_frames=33,
    height=128,
    width=128,
    step_flops=_step_flops(DIT_DEMO, (5, 16, 16), T5_DEMO.max_length),
    expects="a square 128x128 picture of one ball or box on a plain floor (the procedural clips it was trained on); "
            "a photo or film of a real scene gives blobs",
    guardrail_disabled_warning=GUARDRAIL_DISABLED_WARNING,
    **MODEL_FACTS,
    stages=STAGES,
    strategies=STRATEGIES,
    plan_flags=PLAN_FLAGS,
)

# Every model of this backend, keyed by its name, in the order `cosmos backends` lists them.
SPECS: dict[str, ModelSpec] = {
    PREDICT1_7B.name: PREDICT1_7B,
    PREDICT1_14B.name: PREDICT1_14B,
    PREDICT1_TINY.name: PREDICT1_TINY,
    PREDICT1_DEMO.name: PREDICT1_DEMO,
}
