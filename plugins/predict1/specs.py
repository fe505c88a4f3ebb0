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
)

from .params import (
    DiTParams,
    T5Params,
    TokenizerParams,
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
# blocks). Only figures measured with the code as it now runs each strategy are listed.
MEASURED_PEAK_BYTES = {
    (4096, 28): (("resident", 76_907_078_656), ("offload-upsampler", 64_268_118_528),
                 ("offload-guardrails", 49_878_799_872), ("offload-text-encoder", 40_082_896_384),
                 ("offload-tokenizer", 39_871_083_008), ("stream", 14_353_362_944),
                 ("stream-sequential", 10_461_432_320)),
    (5120, 36): (("offload-guardrails", 63_939_638_784), ("offload-text-encoder", 54_144_257_536),
                 ("offload-tokenizer", 53_932_947_968), ("stream", 18_369_951_744),
                 ("stream-sequential", 10_865_314_304), ("stream-lean", 5_769_234_944)),
}


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


def _components(p: DiTParams, t5: T5Params, tokenizer_params: int, frames: int, height: int, width: int,
                latent: tuple[int, int, int], upsampler_params: int, guardrail_params: int) -> tuple[Component, ...]:
    tok = {stage: tokenizer_activation_bytes(frames, height, width, tiled=False, stage=stage)
           for stage in ("encode_video", "decode")}
    tiled = {f"{stage}_tiled": tokenizer_activation_bytes(frames, height, width, tiled=True, stage=stage)
             for stage in ("encode_video", "decode")}
    tokens = dit_tokens(p, *latent)
    video_guardrail = min(guardrail_params, VIDEO_GUARDRAIL_PARAMS)
    network = replace(_network_component(p, *latent),
                      activation_bytes=(("denoise", dit_activation_bytes(p, tokens, batch=2)),
                                        ("denoise_lean", dit_lean_activation_bytes(p, tokens, batch=1))),
                      measured_peak_bytes=MEASURED_PEAK_BYTES.get((p.model_channels, p.num_blocks), ())
                      if (frames, height, width) == (121, 704, 1280) else ())
    return (
        Component(UPSAMPLER, ("upsample",), upsampler_params, activation_bytes=(("upsample", GiB),),
                  cpu_capable=True),
        # Two entries of one component: the text check (LlamaGuard) and the video check (SigLIP, RetinaFace) are
        # placed alike but each moves only its own models to the GPU when swapped.
        Component(GUARDRAIL, ("text_guardrail",), guardrail_params - video_guardrail,
                  activation_bytes=(("text_guardrail", GiB),), cpu_capable=True),
        Component(GUARDRAIL, ("video_guardrail",), video_guardrail,
                  activation_bytes=(("video_guardrail", 2 * GiB),), cpu_capable=True),
        Component(TEXT_ENCODER, ("encode_text",), t5_params(t5),
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
T5_REPO = "google-t5/t5-11b"
SAFETY_FILTER_MD5 = "b46dc2ad821fc3b0d946549d7ade19cf"
# The guardrail's Hugging Face models, which the original loads with `from_pretrained(id, cache_dir=<folder>)`
# (section 9): LlamaGuard-7b + the Aegis adapter in guardrail/aegis, SigLIP in guardrail/video_content_safety_filter.
LLAMAGUARD_REPO = "meta-llama/LlamaGuard-7b"
AEGIS_ADAPTER_REPO = "nvidia/Aegis-AI-Content-Safety-LlamaGuard-Defensive-1.0"
SIGLIP_REPO = "google/siglip-so400m-patch14-384"
# The prompt upsampler: Mistral's Pixtral-12B release, converted to Pixtral-12B/{model.pt,config.json} as the
# original does, plus the tokenizer/processor files the original fetched at run time from mistral-community.
PIXTRAL_REPO = "mistralai/Pixtral-12B-2409"
PIXTRAL_PROCESSOR_REPO = "mistral-community/pixtral-12b"
PIXTRAL_PROCESSOR_DIR = "mistral-community/pixtral-12b"


def _files(model_dir: str, md5: str | None) -> tuple[CheckpointFile, ...]:
    repo = f"nvidia/{model_dir}"
    tok = f"nvidia/{TOKENIZER_DIR}"
    guardrail = f"{model_dir}/guardrail"
    return (
        CheckpointFile(NETWORK, repo, "model.pt", f"{model_dir}/model.pt", md5),
        CheckpointFile(TOKENIZER, tok, "encoder.jit", f"{TOKENIZER_DIR}/encoder.jit", "f5834d03645c379bc0f8ad14b9bc0299"),
        CheckpointFile(TOKENIZER, tok, "decoder.jit", f"{TOKENIZER_DIR}/decoder.jit", "ff21a63ed817ffdbe4b6841111ec79a8"),
        CheckpointFile(TOKENIZER, tok, "mean_std.pt", f"{TOKENIZER_DIR}/mean_std.pt", "f07680ad7eefae57d698778e2a0c7c96"),
        CheckpointFile(TEXT_ENCODER, T5_REPO, "config.json", f"{T5_DIR}/config.json"),
        CheckpointFile(TEXT_ENCODER, T5_REPO, "pytorch_model.bin", f"{T5_DIR}/pytorch_model.bin",
                       "f890878d8a162e0045a25196e27089a3"),
        CheckpointFile(TEXT_ENCODER, T5_REPO, "spiece.model", f"{T5_DIR}/spiece.model"),
        CheckpointFile(TEXT_ENCODER, T5_REPO, "tokenizer.json", f"{T5_DIR}/tokenizer.json"),
        # The model repository's guardrail/ folder, whole, as the original fetches it (blocklist, face blur
        # and safety-filter weights); the two weight files are named so that a missing one is an error.
        CheckpointFile(GUARDRAIL, repo, "guardrail/*", model_dir),
        CheckpointFile(GUARDRAIL, repo, "guardrail/video_content_safety_filter/safety_filter.pt",
                       f"{guardrail}/video_content_safety_filter/safety_filter.pt", SAFETY_FILTER_MD5),
        CheckpointFile(GUARDRAIL, repo, "guardrail/face_blur_filter/Resnet50_Final.pth",
                       f"{guardrail}/face_blur_filter/Resnet50_Final.pth"),
        CheckpointFile(GUARDRAIL, LLAMAGUARD_REPO, "*.json", f"{guardrail}/aegis", hf_cache=True),
        CheckpointFile(GUARDRAIL, LLAMAGUARD_REPO, "*.safetensors", f"{guardrail}/aegis", hf_cache=True),
        CheckpointFile(GUARDRAIL, LLAMAGUARD_REPO, "tokenizer.model", f"{guardrail}/aegis", hf_cache=True),
        CheckpointFile(GUARDRAIL, AEGIS_ADAPTER_REPO, "adapter_config.json", f"{guardrail}/aegis", hf_cache=True),
        CheckpointFile(GUARDRAIL, AEGIS_ADAPTER_REPO, "adapter_model.safetensors", f"{guardrail}/aegis", hf_cache=True),
        CheckpointFile(GUARDRAIL, SIGLIP_REPO, "*.json", f"{guardrail}/video_content_safety_filter", hf_cache=True),
        CheckpointFile(GUARDRAIL, SIGLIP_REPO, "model.safetensors", f"{guardrail}/video_content_safety_filter",
                       hf_cache=True),
        CheckpointFile(GUARDRAIL, SIGLIP_REPO, "spiece.model", f"{guardrail}/video_content_safety_filter",
                       hf_cache=True),
        CheckpointFile(UPSAMPLER, PIXTRAL_REPO, "consolidated.safetensors", f"{UPSAMPLER_DIR}/model.pt",
                       convert="pixtral-12b"),
        CheckpointFile(UPSAMPLER, PIXTRAL_REPO, "params.json", f"{UPSAMPLER_DIR}/config.json", convert="pixtral-12b"),
        CheckpointFile(UPSAMPLER, PIXTRAL_PROCESSOR_REPO, "*.json", PIXTRAL_PROCESSOR_DIR),
    )


DIT_7B = DiTParams()
DIT_14B = DiTParams(model_channels=5120, num_blocks=36, num_heads=40,
                    rope_h_extrapolation_ratio=2.0, rope_w_extrapolation_ratio=2.0, rope_t_extrapolation_ratio=2.0)
T5_11B = T5Params()
TOKENIZER_720P = TokenizerParams()

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
    checkpoint_subdir="Cosmos-Predict1-7B-Video2World",
    files=_files("Cosmos-Predict1-7B-Video2World", "ebcdb19c4c4a6a0e1e0bb65e346f6867"),
    components=_components(DIT_7B, T5_11B, TOKENIZER_CV8X8X8_PARAMS, 121, 704, 1280, _LATENT,
                           PIXTRAL_12B_PARAMS, GUARDRAIL_PARAMS),
    step_flops=_step_flops(DIT_7B, _LATENT, T5_11B.max_length),
    expects="real-world video (driving, robotics, people, nature) at 1280x704, about 16:9",
)

PREDICT1_14B = replace(
    PREDICT1_7B,
    name="Cosmos-Predict1-14B-Video2World",
    description="Cosmos-Predict1 14B Video2World: 121 frames at 704x1280 from 1 or 9 input frames",
    aliases=("14B", "predict1-14b"),
    is_default=False,
    network=DIT_14B,
    checkpoint_subdir="Cosmos-Predict1-14B-Video2World",
    files=_files("Cosmos-Predict1-14B-Video2World", "eaa7aa3678f61d88108c41d7fe201b18"),
    components=_components(DIT_14B, T5_11B, TOKENIZER_CV8X8X8_PARAMS, 121, 704, 1280, _LATENT,
                           PIXTRAL_12B_PARAMS, GUARDRAIL_PARAMS),
    step_flops=_step_flops(DIT_14B, _LATENT, T5_11B.max_length),
)

SPECS: tuple[ModelSpec, ...] = (PREDICT1_7B, PREDICT1_14B)


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
    checkpoint_subdir=TINY_DIR,
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
)

SPECS = (*SPECS, PREDICT1_TINY)


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
    checkpoint_subdir=DEMO_DIR,
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
)

SPECS = (*SPECS, PREDICT1_DEMO)
