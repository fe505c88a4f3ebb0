"""Sizes of the Cosmos-Predict1 components, as pure arithmetic (no torch import).

The planner reasons about bytes; these functions derive them from the architecture parameters so that a
new configuration needs no hand-written sizes. Parameter counts are checked against the real modules
(built on the meta device) in the tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Calibration constants of the activation formulas, measured on the GPU machine (benchmarks/bench_memory.py,
# benchmarks/results/memory-h100.json) and rounded up. The network's are multiples of one token-wide tensor,
# tokens * model_channels * 2 bytes (a "unit"); the tokenizer's are bytes per pixel of the clip.
DIT_ACTIVATION_FACTOR = 13.45  # units per batch element of the plain forward's peak
DIT_SHARED_FACTOR = 1.0  # units shared by the batch (the learnable position embedding, sampler state)
DIT_LEAN_FACTOR = 3.0  # units per batch element of lean_forward's peak (the residual stream, keys, values)
DIT_LEAN_CHUNK_FACTOR = 12.0  # units per batch element of one chunk of tokens in lean_forward, per chunk fraction
DIT_LEAN_CHUNK_TOKENS = 8192  # tokens per chunk in lean_forward (cosmos_plugins.predict1.offload)
TOKENIZER_DECODE_BYTES_PER_PIXEL = 292  # whole-clip decode of 121 frames (measured 29.4 GiB at 704x1280)
TOKENIZER_ENCODE_BYTES_PER_PIXEL = 292  # whole-clip encode (29.4 GiB)
# Chunked tokenizer (every module over chunks of frames): whole-clip tensors of the widest level, plus one chunk's
# intermediates, which scale with (chunk + halo) / frames at the widest level.
TOKENIZER_CHUNK_FRAMES = 4  # frames per chunk, at every level of the encoder and decoder
TOKENIZER_CHUNK_HALO = 4  # look-back frames of a ResNet block
TOKENIZER_DECODE_CHUNKED_BYTES_PER_PIXEL = 29  # fit to 4.6 / 5.0 / 6.0 GiB at chunks of 2 / 4 / 8 frames (720p)
TOKENIZER_DECODE_CHUNK_BYTES_PER_PIXEL = 80
TOKENIZER_ENCODE_CHUNKED_BYTES_PER_PIXEL = 47  # with the input clip: 5.0 GiB at 4 frames, nearly flat in the chunk
TOKENIZER_ENCODE_CHUNK_BYTES_PER_PIXEL = 10


@dataclass(frozen=True)
class DiTParams:
    """Architecture of the Video2World diffusion transformer (defaults: 7B)."""

    model_channels: int = 4096
    num_blocks: int = 28
    num_heads: int = 32
    mlp_ratio: float = 4.0
    in_channels: int = 16
    out_channels: int = 16
    patch_spatial: int = 2
    patch_temporal: int = 1
    crossattn_emb_channels: int = 1024
    max_img_h: int = 240
    max_img_w: int = 240
    max_frames: int = 128
    adaln_lora_dim: int = 256
    rope_h_extrapolation_ratio: float = 1.0
    rope_w_extrapolation_ratio: float = 1.0
    rope_t_extrapolation_ratio: float = 2.0
    concat_padding_mask: bool = True
    base_fps: int = 24

    def __post_init__(self):
        positive = ("model_channels", "num_blocks", "num_heads", "in_channels", "out_channels", "patch_spatial",
                    "patch_temporal", "crossattn_emb_channels", "max_img_h", "max_img_w", "max_frames",
                    "adaln_lora_dim", "base_fps", "mlp_ratio", "rope_h_extrapolation_ratio",
                    "rope_w_extrapolation_ratio", "rope_t_extrapolation_ratio")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"DiTParams.{name} must be positive, got {getattr(self, name)}")
        if self.model_channels % self.num_heads:
            raise ValueError(f"model_channels {self.model_channels} is not divisible by num_heads {self.num_heads}")
        if self.mlp_hidden < 1:
            raise ValueError(f"mlp_ratio {self.mlp_ratio} gives an empty MLP")
        dim_h, dim_t = self.rope_dims
        if self.head_dim % 2 or dim_h < 4 or dim_t < 4:
            raise ValueError(f"head dim {self.head_dim} does not fit the 3D RoPE split: it must be even with "
                             f"dim_h = hd//6*2 >= 4 and dim_t = hd - 2*dim_h >= 4 (got {dim_h}, {dim_t})")
        for name, patch in (("max_frames", self.patch_temporal), ("max_img_h", self.patch_spatial),
                            ("max_img_w", self.patch_spatial)):
            if getattr(self, name) % patch:
                raise ValueError(f"DiTParams.{name}={getattr(self, name)} is not divisible by its patch size {patch}")

    @property
    def head_dim(self) -> int:
        return self.model_channels // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.model_channels * self.mlp_ratio)

    @property
    def rope_dims(self) -> tuple[int, int]:
        """(dim_h == dim_w, dim_t): how a head's channels are split between the three RoPE axes."""
        dim_h = self.head_dim // 6 * 2
        return dim_h, self.head_dim - 2 * dim_h

    @property
    def patch_in_features(self) -> int:
        channels = self.in_channels + 1 + int(self.concat_padding_mask)  # + condition mask (+ padding mask)
        return channels * self.patch_spatial**2 * self.patch_temporal

    @property
    def patch_out_features(self) -> int:
        return self.out_channels * self.patch_spatial**2 * self.patch_temporal

    @property
    def pos_lens(self) -> tuple[int, int, int]:
        """Lengths (t, h, w) of the learnable position embeddings, in patches."""
        return (self.max_frames // self.patch_temporal, self.max_img_h // self.patch_spatial,
                self.max_img_w // self.patch_spatial)


@dataclass(frozen=True)
class T5Params:
    """A T5 encoder (defaults: the encoder of google-t5/t5-11b)."""

    d_model: int = 1024
    d_kv: int = 128
    num_heads: int = 128
    d_ff: int = 65536
    num_layers: int = 24
    vocab_size: int = 32128
    relative_attention_num_buckets: int = 32
    max_length: int = 512
    gated: bool = False


def dit_block_params(p: DiTParams) -> int:
    d, a, c = p.model_channels, p.adaln_lora_dim, p.crossattn_emb_channels
    head_dim = d // p.num_heads
    hidden = int(d * p.mlp_ratio)
    adaln = 3 * (d * a + a * 3 * d)
    self_attn = 4 * d * d + 2 * head_dim
    cross_attn = 2 * d * d + 2 * d * c + 2 * head_dim
    mlp = 2 * d * hidden
    return adaln + self_attn + cross_attn + mlp


def dit_params(p: DiTParams) -> int:
    """Learnable parameters of the network (the checkpoint's ``net.*`` tensors less ``pos_embedder.seq``)."""
    d, a = p.model_channels, p.adaln_lora_dim
    in_ch = p.in_channels + 1 + (1 if p.concat_padding_mask else 0)
    patch = in_ch * p.patch_spatial**2 * p.patch_temporal
    out = p.out_channels * p.patch_spatial**2 * p.patch_temporal
    pos = (p.max_img_h // p.patch_spatial + p.max_img_w // p.patch_spatial + p.max_frames // p.patch_temporal) * d
    t_embed = d * d + 3 * d * d
    final = d * a + a * 2 * d + d * out
    return patch * d + pos + t_embed + d + final + p.num_blocks * dit_block_params(p)


def dit_tokens(p: DiTParams, latent_t: int, latent_h: int, latent_w: int) -> int:
    return (latent_t // p.patch_temporal) * (latent_h // p.patch_spatial) * (latent_w // p.patch_spatial)


def dit_activation_bytes(p: DiTParams, tokens: int, batch: int) -> int:
    """Peak transient bytes of one bf16 forward over ``tokens`` tokens for ``batch`` stacked inputs."""
    return int((DIT_ACTIVATION_FACTOR * batch + DIT_SHARED_FACTOR) * tokens * p.model_channels * 2)


def dit_lean_activation_bytes(p: DiTParams, tokens: int, batch: int, chunk_tokens: int = DIT_LEAN_CHUNK_TOKENS) -> int:
    """Peak transient bytes of one bf16 ``lean_forward`` (attention and MLP over chunks of ``chunk_tokens``)."""
    chunk = min(1.0, chunk_tokens / tokens)
    units = (DIT_LEAN_FACTOR + DIT_LEAN_CHUNK_FACTOR * chunk) * batch + DIT_SHARED_FACTOR
    return int(units * tokens * p.model_channels * 2)


def t5_layer_params(p: T5Params) -> int:
    """Parameters of one encoder layer (self-attention, feed-forward, their two norms)."""
    attn = 4 * p.d_model * p.num_heads * p.d_kv
    ff = (3 if p.gated else 2) * p.d_model * p.d_ff
    return attn + ff + 2 * p.d_model


def t5_params(p: T5Params) -> int:
    layers = p.num_layers * t5_layer_params(p)
    return p.vocab_size * p.d_model + layers + p.relative_attention_num_buckets * p.num_heads + p.d_model


T5_FF_FACTOR = 7  # feed-forward-sized tensors alive at the peak of one encode (measured: 0.68 GiB for T5-11B)


def t5_activation_bytes(p: T5Params, dtype_bytes: int = 2) -> int:
    """Peak of one 512-token encode: the feed-forward hidden state dominates, plus the attention scores."""
    tokens = p.max_length
    return T5_FF_FACTOR * tokens * p.d_ff * dtype_bytes + 2 * p.num_heads * tokens * tokens * 4


def tokenizer_activation_bytes(frames: int, height: int, width: int, tiled: bool, stage: str = "decode",
                               chunk: int = TOKENIZER_CHUNK_FRAMES, patch: int = 4) -> int:
    """Peak transient bytes of the tokenizer's ``stage`` ("encode_video" or "decode") on a clip, whole or chunked."""
    pixels = frames * height * width
    decode = stage == "decode"
    if not tiled:
        return (TOKENIZER_DECODE_BYTES_PER_PIXEL if decode else TOKENIZER_ENCODE_BYTES_PER_PIXEL) * pixels
    widest = (frames + patch - 1) // patch  # frames at the widest level (after the Haar patching)
    share = min(1.0, (chunk + TOKENIZER_CHUNK_HALO) / widest)
    whole, part = ((TOKENIZER_DECODE_CHUNKED_BYTES_PER_PIXEL, TOKENIZER_DECODE_CHUNK_BYTES_PER_PIXEL) if decode else
                   (TOKENIZER_ENCODE_CHUNKED_BYTES_PER_PIXEL, TOKENIZER_ENCODE_CHUNK_BYTES_PER_PIXEL))
    return int(pixels * (whole + part * share))


def latent_condition_frames(num_input_frames: int, temporal_compression: int = 8) -> int:
    """Latent frames that hold ``num_input_frames`` pixel frames of a causal 1+8k tokenizer (1 -> 1, 9 -> 2)."""
    return 1 + (num_input_frames - 1 + temporal_compression - 1) // temporal_compression


def condition_pixel_frames(num_input_frames: int, temporal_compression: int = 8) -> int:
    """The pixel frames the condition encode runs on (the input zero-padded to 1 + 8k frames): those the
    :func:`latent_condition_frames` latent frames see (1 -> 1, 9 -> 9, 5 -> 9)."""
    return 1 + temporal_compression * (latent_condition_frames(num_input_frames, temporal_compression) - 1)


RGB = 3


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@dataclass(frozen=True)
class TokenizerParams:
    """The causal continuous video tokenizer (defaults: Cosmos-Tokenize1-CV8x8x8-720p), validated.

    ``resolution`` is a nominal image size: together with ``attn_resolutions`` it only decides which levels have
    attention (at the defaults, none but the middle block).
    """

    channels: int = 128
    channels_mult: tuple[int, ...] = (2, 4, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (32,)
    resolution: int = 1024
    patch_size: int = 4
    z_channels: int = 16
    latent_channels: int = 16
    spatial_compression: int = 8
    temporal_compression: int = 8
    pixel_chunk_duration: int = 121

    def __post_init__(self):
        for name in ("channels", "num_res_blocks", "resolution", "patch_size", "z_channels", "latent_channels",
                     "spatial_compression", "temporal_compression", "pixel_chunk_duration"):
            if not getattr(self, name) > 0:
                raise ValueError(f"TokenizerParams.{name} must be positive, got {getattr(self, name)}")
        if not self.channels_mult or min(self.channels_mult) < 1:
            raise ValueError(f"TokenizerParams.channels_mult must be non-empty and positive, got {self.channels_mult}")
        for name in ("patch_size", "spatial_compression", "temporal_compression"):
            if not _is_power_of_two(getattr(self, name)):
                raise ValueError(f"TokenizerParams.{name} must be a power of two, got {getattr(self, name)}")
        for name, downs in (("spatial", self.num_spatial_downs), ("temporal", self.num_temporal_downs)):
            if not 0 <= downs <= self.num_levels - 1:
                raise ValueError(f"{name} compression {getattr(self, name + '_compression')} needs {downs} "
                                 f"down-samplings after the x{self.patch_size} patching; "
                                 f"{self.num_levels} levels allow 0..{self.num_levels - 1}")
        ups = self.up_plan
        if (sum(s for s, _ in ups), sum(t for _, t in ups)) != (self.num_spatial_downs, self.num_temporal_downs):
            raise ValueError(f"the decoder of this configuration would not invert the encoder's down-sampling "
                             f"(spatial {self.num_spatial_downs}, temporal {self.num_temporal_downs})")
        if (self.pixel_chunk_duration - 1) % self.temporal_compression:
            raise ValueError(f"pixel_chunk_duration {self.pixel_chunk_duration} is not 1 + a multiple of "
                             f"temporal_compression {self.temporal_compression}")

    @property
    def num_levels(self) -> int:
        return len(self.channels_mult)

    @property
    def num_spatial_downs(self) -> int:
        return int(math.log2(self.spatial_compression)) - int(math.log2(self.patch_size))

    @property
    def num_temporal_downs(self) -> int:
        return int(math.log2(self.temporal_compression)) - int(math.log2(self.patch_size))

    @property
    def patch_channels(self) -> int:
        """Channels after the 3D patching: RGB x patch_size**3."""
        return RGB * self.patch_size**3

    @property
    def down_plan(self) -> tuple[tuple[bool, bool], ...]:
        """(spatial, temporal) down-sampling at the end of encoder level i, for i < num_levels - 1."""
        return tuple((i < self.num_spatial_downs, i < self.num_temporal_downs) for i in range(self.num_levels - 1))

    @property
    def up_plan(self) -> tuple[tuple[bool, bool], ...]:
        """(spatial, temporal) up-sampling after the r-th decoder level run (r = num_levels - 1 - level index),
        for r < num_levels - 1, with the original's non-legacy placement: the first level run never
        up-samples in time, so that time and space are up-sampled together as late as possible."""
        ns, nt = self.num_spatial_downs, self.num_temporal_downs
        plan = []
        for r in range(self.num_levels - 1):
            temporal = 0 < r < nt + 1
            plan.append((temporal or (r < ns and ns > nt), temporal))
        return tuple(plan)

    @property
    def latent_chunk_duration(self) -> int:
        """Latent frames of one pixel chunk: 16 for 121 frames."""
        return (self.pixel_chunk_duration - 1) // self.temporal_compression + 1

    def latent_frames(self, num_frames: int) -> int:
        """Latent frames of ``num_frames`` pixel frames (1 + 8k, or a multiple of the chunk)."""
        return sum(latent for _, latent in pixel_chunks(self, num_frames))

    def pixel_frames(self, num_latent_frames: int) -> int:
        """Pixel frames decoded from ``num_latent_frames`` latent frames."""
        return sum((n - 1) * self.temporal_compression + 1 for n in latent_chunks(self, num_latent_frames))


def pixel_chunks(p: TokenizerParams, num_frames: int) -> list[tuple[int, int]]:
    """(pixel frames, latent frames) of each chunk the encoder runs on, in order.

    Multiples of ``pixel_chunk_duration`` are cut into chunks, as the original does (121 -> 16 each); any other
    1 + 8k frames up to one chunk are encoded as one causal sequence."""
    tc, chunk = p.temporal_compression, p.pixel_chunk_duration
    if num_frames >= chunk and num_frames % chunk == 0:
        return [(chunk, p.latent_chunk_duration)] * (num_frames // chunk)
    if num_frames < 1 or (num_frames - 1) % tc or num_frames > chunk:
        raise ValueError(f"the tokenizer encodes 1 + {tc}k frames up to {chunk}, or a multiple of {chunk}; "
                         f"got {num_frames}")
    return [(num_frames, (num_frames - 1) // tc + 1)]


def latent_chunks(p: TokenizerParams, num_latent_frames: int) -> list[int]:
    """Latent frames of each chunk the decoder runs on: the inverse of :func:`pixel_chunks`."""
    chunk = p.latent_chunk_duration
    if num_latent_frames >= chunk and num_latent_frames % chunk == 0:
        return [chunk] * (num_latent_frames // chunk)
    if not 1 <= num_latent_frames <= chunk:
        raise ValueError(f"the tokenizer decodes 1..{chunk} latent frames, or a multiple of {chunk}; "
                         f"got {num_latent_frames}")
    return [num_latent_frames]
