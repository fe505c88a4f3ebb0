"""The causal continuous video tokenizer Cosmos-Tokenize1-CV8x8x8-720p, in plain PyTorch.

A video of 1 + 8k frames in [-1, 1] maps to 1 + k latent frames with 16 channels at 1/8 of the size:

    x [B,3,1+8k,H,W] -> Haar wavelet patching (x4 in t, h, w) -> factorized causal convs, ResNet blocks,
    one hybrid down-sampling (x2 in t, h, w), spatial + causal temporal attention in the middle
    -> quant_conv -> latent [B,16,1+k,H/8,W/8]

and the decoder mirrors it, ending with the inverse Haar transform. Everything is causal in time: latent
frame j (j >= 1) sees pixel frames up to 8j only, and pixel frame t is decoded from latent frames up to
ceil(t/8) only. Frame 0 stands alone: the patcher repeats it ``patch_size`` times.

Checkpoint layout. The released files are TorchScript traces of the original modules. We read their tensors
with :func:`cosmos_cli.torchscript_archive.read_state_dict`, never with TorchScript's ``jit.load``: loading a
TorchScript archive runs its code (a class's ``__setstate__`` can write files), while our reader unpickles the
module tree as inert data, resolves no global and refuses modules with custom ``__setstate__`` code:

- ``encoder.jit`` traces ``Sequential(encoder, quant_conv, distribution)``; its keys are ``encoder.*`` and
  ``quant_conv.conv3d.*`` (the identity ``distribution`` has none) and it returns ``(latent, (zero, zero))``.
- ``decoder.jit`` traces ``Sequential(post_quant_conv, decoder)``; keys ``post_quant_conv.conv3d.*``, ``decoder.*``.
- ``mean_std.pt`` is a pickled pair ``(mean, std)`` of tensors holding ``latent_channels x N`` values in
  channel-major order (N >= 16 latent frames); latent frame j of channel c is normalized with entry [c, j].

:class:`VideoEncoder` and :class:`VideoDecoder` have exactly those keys (module attribute names mirror the
original's, including the Haar constant buffers ``wavelets``, ``_arange`` and ``patch_size_buffer``), so
``VideoEncoder(p).load_state_dict(read_state_dict("encoder.jit"), strict=True)`` works as is.

Numerics. The modules run in the dtype of their weights (bf16 for inference, as the original). The Haar taps
are read from the ``wavelets`` buffer, which is cast with the weights as the original's ``.to(bf16)`` casts
it. Attention uses ``F.scaled_dot_product_attention`` (one head of all channels, scale 1/sqrt(C)) where the
original multiplies and soft-maxes in the compute dtype, and SiLU is ``F.silu`` where the original computes
``x * sigmoid(x)``: in fp32 the two agree to rounding; in bf16 ours rounds less often.

Memory. Untiled, the full-size decode of 121 frames at 704x1280 peaks near 30 GiB: every level holds whole-video
tensors, and the middle block's spatial attention over 88x160 positions is large. ``encode(x, chunk_frames=n)``
and ``decode(z, chunk_frames=n)`` bound that: every module of the encoder and decoder is run over chunks of n
frames of its input (:func:`run_in_time_chunks`), each chunk preceded by the few frames its causal convolutions
look back at (its halo), so only one chunk's intermediate tensors exist at a time, next to the module's whole
input and output. Every operation is causal in time with a finite look-back, per frame (GroupNorm, spatial
attention) or pointwise, except the temporal attention, which runs whole (it is small: latent resolution).
The result is the unchunked one up to floating-point rounding (kernels see other shapes): no blending, no
seams. Measured at full size in bf16 on an H100 (benchmarks/results/memory-h100.md): the convolutions give
identical bits; the spatial attention's query chunks move the decoded output by at most a few bf16 steps. We do not tile in space: the per-frame GroupNorm and the spatial attention see the whole frame, so
spatial tiles would change the output, and the temporal chunks already bound the memory.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cosmos_cli.errors import CheckpointError
from cosmos_cli.integrity import verify_pinned
from cosmos_cli.torchscript_archive import read_state_dict

from . import params as _params

ENCODER_FILE = "encoder.jit"
DECODER_FILE = "decoder.jit"
MEAN_STD_FILE = "mean_std.pt"
RGB = 3
HAAR_TAP = 0.7071067811865476  # 1/sqrt(2), both taps of the Haar low-pass filter
_SHOWN = 3  # offending keys named in an error message


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@dataclass(frozen=True)
class TokenizerParams(_params.TokenizerParams):
    """Architecture of the causal continuous video tokenizer (defaults: CV8x8x8-720p), validated.

    The fields are those of :class:`cosmos_plugins.predict1.params.TokenizerParams`, the torch-free class the
    model specs carry (``channels=128, channels_mult=(2, 4, 4), num_res_blocks=2, attn_resolutions=(32,),
    resolution=1024, patch_size=4, z_channels=16, latent_channels=16, spatial_compression=8,
    temporal_compression=8, pixel_chunk_duration=121``); the modules accept either and convert with
    :func:`as_tokenizer_params`. ``resolution`` is a nominal image size: together with ``attn_resolutions``
    it only decides which levels have attention (at the defaults, none but the middle block).
    """

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
        return sum(latent for _, latent in _pixel_chunks(self, num_frames))

    def pixel_frames(self, num_latent_frames: int) -> int:
        """Pixel frames decoded from ``num_latent_frames`` latent frames."""
        return sum((n - 1) * self.temporal_compression + 1 for n in _latent_chunks(self, num_latent_frames))


def as_tokenizer_params(p: _params.TokenizerParams) -> TokenizerParams:
    """Validate any ``TokenizerParams`` (e.g. the torch-free one of a model spec) as this module's class."""
    return p if isinstance(p, TokenizerParams) else TokenizerParams(**dataclasses.asdict(p))


def num_params(p: _params.TokenizerParams) -> int:
    """Parameters of encoder + decoder: 105,653,696 for CV8x8x8-720p (encoder 42,914,864 incl. quant_conv,
    decoder 62,738,832 incl. post_quant_conv), as diffusers' ``AutoencoderKLCosmos()``. The Haar constant
    buffers are not counted."""
    with torch.device("meta"):
        tok = VideoTokenizer(p)
    return sum(t.numel() for t in tok.parameters())


def _pixel_chunks(p: TokenizerParams, num_frames: int) -> list[tuple[int, int]]:
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


def _latent_chunks(p: TokenizerParams, num_latent_frames: int) -> list[int]:
    """Latent frames of each chunk the decoder runs on: the inverse of :func:`_pixel_chunks`."""
    chunk = p.latent_chunk_duration
    if num_latent_frames >= chunk and num_latent_frames % chunk == 0:
        return [chunk] * (num_latent_frames // chunk)
    if not 1 <= num_latent_frames <= chunk:
        raise ValueError(f"the tokenizer decodes 1..{chunk} latent frames, or a multiple of {chunk}; "
                         f"got {num_latent_frames}")
    return [num_latent_frames]


# ----------------------------------------------------------------------------------------------------------
# Building blocks


class CausalConv3d(nn.Module):
    """A 3D convolution that is causal in time: the first frame is repeated in front so that output frame t
    sees input frames <= t (for time stride 1), and height/width get ``padding`` zeros on each side."""

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, int, int] = (1, 1, 1),
                 stride: tuple[int, int, int] = (1, 1, 1), padding: int = 0):
        super().__init__()
        self.time_pad = kernel[0] - stride[0]
        self.conv3d = nn.Conv3d(in_channels, out_channels, kernel, stride=stride, padding=(0, padding, padding))

    def forward(self, x: Tensor) -> Tensor:
        if self.time_pad > 0:
            first = x[:, :, :1].expand(-1, -1, self.time_pad, -1, -1)
            x = torch.cat([first, x], dim=2)
        return self.conv3d(x)


class FactorizedConv3d(nn.Sequential):
    """A 1x3x3 spatial convolution followed by a 3x1x1 causal temporal one (keys ``0.*`` and ``1.*``)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            CausalConv3d(in_channels, out_channels, (1, 3, 3), padding=1),
            CausalConv3d(out_channels, out_channels, (3, 1, 1)),
        )


class CausalGroupNorm(nn.Module):
    """GroupNorm with one group applied to each frame on its own (statistics over C, H, W per frame)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(1, channels, eps=1e-6, affine=True)

    def forward(self, x: Tensor) -> Tensor:
        B, C, T, H, W = x.shape
        y = x.transpose(1, 2).reshape(B * T, C, H, W)  # (B*T, C, H, W)
        y = F.group_norm(y, 1, self.norm.weight, self.norm.bias, self.norm.eps)
        return y.reshape(B, T, C, H, W).transpose(1, 2)  # (B, C, T, H, W)


class ResnetBlock(nn.Module):
    """norm -> SiLU -> factorized conv, twice, plus a (1x1x1-projected) shortcut."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = CausalGroupNorm(in_channels)
        self.conv1 = FactorizedConv3d(in_channels, out_channels)
        self.norm2 = CausalGroupNorm(out_channels)
        self.conv2 = FactorizedConv3d(out_channels, out_channels)
        self.nin_shortcut = CausalConv3d(in_channels, out_channels) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class _AttnBase(nn.Module):
    """Single-head self-attention over all channels with 1x1x1 projections (keys norm, q, k, v, proj_out)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = CausalGroupNorm(channels)
        self.q = CausalConv3d(channels, channels)
        self.k = CausalConv3d(channels, channels)
        self.v = CausalConv3d(channels, channels)
        self.proj_out = CausalConv3d(channels, channels)

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h = self.norm(x)
        return self.q(h), self.k(h), self.v(h)


class SpatialAttention(_AttnBase):
    """Attention among the H*W positions of each frame. ``query_chunk`` bounds the memory: the queries go through
    in chunks of that many positions (each query's result is independent of the others)."""

    def forward(self, x: Tensor, query_chunk: int | None = None) -> Tensor:
        B, C, T, H, W = x.shape

        def tokens(t: Tensor) -> Tensor:
            return t.permute(0, 2, 3, 4, 1).reshape(B * T, 1, H * W, C)  # (B*T, 1, HW, C)

        q, k, v = (tokens(t) for t in self._qkv(x))
        if query_chunk is None or query_chunk >= H * W:
            h = F.scaled_dot_product_attention(q, k, v)
        else:
            h = torch.cat([F.scaled_dot_product_attention(q[:, :, a:a + query_chunk], k, v)
                           for a in range(0, H * W, query_chunk)], dim=2)
        h = h.reshape(B, T, H, W, C).permute(0, 4, 1, 2, 3)  # (B, C, T, H, W)
        return x + self.proj_out(h)


class TemporalAttention(_AttnBase):
    """Causal attention along time at each position: frame t attends to frames <= t."""

    def forward(self, x: Tensor) -> Tensor:
        B, C, T, H, W = x.shape

        def tokens(t: Tensor) -> Tensor:
            return t.permute(0, 3, 4, 2, 1).reshape(B * H * W, 1, T, C)  # (B*H*W, 1, T, C)

        q, k, v = self._qkv(x)
        h = F.scaled_dot_product_attention(tokens(q), tokens(k), tokens(v), is_causal=True)
        h = h.reshape(B, H, W, T, C).permute(0, 4, 3, 1, 2)  # (B, C, T, H, W)
        return x + self.proj_out(h)


class AttentionPair(nn.Sequential):
    """Spatial then causal temporal attention (keys ``0.*`` and ``1.*``)."""

    def __init__(self, channels: int):
        super().__init__(SpatialAttention(channels), TemporalAttention(channels))


class Downsample(nn.Module):
    """Hybrid down-sampling by 2 in space and/or time: a strided conv plus an average pool, then a 1x1x1 conv.

    Space: zero-pad right/bottom by 1, 1x3x3 conv with stride 2 + 2x2 average. Time: repeat the first frame,
    then 3x1x1 causal conv with stride 2 + average of frame pairs, so frame 0 stays alone (T -> (T+1)//2)."""

    def __init__(self, channels: int, spatial: bool, temporal: bool):
        super().__init__()
        self.spatial, self.temporal = spatial, temporal
        self.conv1 = CausalConv3d(channels, channels, (1, 3, 3), stride=(1, 2, 2)) if spatial else nn.Identity()
        self.conv2 = CausalConv3d(channels, channels, (3, 1, 1), stride=(2, 1, 1)) if temporal else nn.Identity()
        self.conv3 = CausalConv3d(channels, channels) if spatial or temporal else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if self.spatial:
            x = F.pad(x, (0, 1, 0, 1))
            x = self.conv1(x) + _pair_mean(x, 3, 4)  # (B, C, T, H/2, W/2)
        if self.temporal:
            x = torch.cat([x[:, :, :1], x], dim=2)
            x = self.conv2(x) + _pair_mean(x, 2)  # (B, C, (T+1)/2, H, W)
        return self.conv3(x)


def _pair_mean(x: Tensor, *dims: int) -> Tensor:
    """Average pooling with window and stride 2 along ``dims`` (a trailing odd element is dropped), as
    ``F.avg_pool3d`` but also for bf16 on the CPU: one reduction, accumulated in fp32 for bf16."""
    for dim in dims:
        x = x.narrow(dim, 0, x.shape[dim] // 2 * 2)
    for dim in sorted(dims, reverse=True):
        x = x.unflatten(dim, (-1, 2))
    return x.mean([d + 1 + i for i, d in enumerate(sorted(dims))])


class Upsample(nn.Module):
    """Hybrid up-sampling by 2 in time and/or space, each step a nearest copy plus a conv residual.

    Time: every frame but the first is doubled (T -> 2T-1), then + 3x1x1 causal conv. Space: nearest x2,
    then + 1x3x3 conv. Then a 1x1x1 conv."""

    def __init__(self, channels: int, spatial: bool, temporal: bool):
        super().__init__()
        self.spatial, self.temporal = spatial, temporal
        self.conv1 = CausalConv3d(channels, channels, (3, 1, 1)) if temporal else nn.Identity()
        self.conv2 = CausalConv3d(channels, channels, (1, 3, 3), padding=1) if spatial else nn.Identity()
        self.conv3 = CausalConv3d(channels, channels) if spatial or temporal else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if self.temporal and x.shape[2] > 1:
            x = x.repeat_interleave(2, dim=2)[:, :, 1:]  # (B, C, 2T-1, H, W)
        if self.temporal:
            x = x + self.conv1(x)
        if self.spatial:
            x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")  # (B, C, T, 2H, 2W)
            x = x + self.conv2(x)
        return self.conv3(x)


# ----------------------------------------------------------------------------------------------------------
# Haar wavelet patching


def _haar_split(x: Tensor, dim: int, lo: tuple[Tensor, Tensor], hi: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """One 1D analysis step along ``dim`` (even length): pairs (a, b) -> low lo0*a + lo1*b, high hi0*a + hi1*b."""
    a, b = x.unflatten(dim, (-1, 2)).unbind(dim + 1)
    return a * lo[0] + b * lo[1], a * hi[0] + b * hi[1]


def _haar_merge(low: Tensor, high: Tensor, dim: int, lo: tuple[Tensor, Tensor], hi: tuple[Tensor, Tensor]
                ) -> Tensor:
    """The inverse of :func:`_haar_split` (the filters are orthonormal): interleave back along ``dim``."""
    a = low * lo[0] + high * hi[0]
    b = low * lo[1] + high * hi[1]
    return torch.stack([a, b], dim=dim + 1).flatten(dim, dim + 1)


class _HaarBase(nn.Module):
    """Holds the constant buffers of the original (``wavelets`` = the two low-pass taps, ``_arange`` = [0, 1])."""

    def __init__(self, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.levels = int(math.log2(patch_size))
        self.register_buffer("wavelets", torch.tensor([HAAR_TAP, HAAR_TAP]))
        self.register_buffer("_arange", torch.arange(2))

    def _filters(self, dtype: torch.dtype) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """Low-pass (h1, h0) and high-pass (h0, -h1) taps, as the original's flipped / sign-alternated wavelets."""
        h = self.wavelets.to(dtype)
        return (h[1], h[0]), (h[0], -h[1])


class Patcher3d(_HaarBase):
    """Repeat frame 0 ``patch_size`` times, then ``log2(patch_size)`` levels of the 3D Haar transform.

    Each level halves T, H and W and multiplies the channels by 8, ordered (time band, height band, width
    band, channel) with low before high, and rescales by 1/(2*sqrt(2)) so that the LLL band is the mean."""

    def __init__(self, patch_size: int):
        super().__init__(patch_size)
        self.register_buffer("patch_size_buffer", torch.tensor([patch_size], dtype=torch.int32))

    def forward(self, x: Tensor) -> Tensor:
        # (B, C, T, H, W) -> (B, C, T - 1 + p, H, W): frame 0 stands alone in the first patch
        x = torch.cat([x[:, :, :1].expand(-1, -1, self.patch_size, -1, -1), x[:, :, 1:]], dim=2)
        lo, hi = self._filters(x.dtype)
        for _ in range(self.levels):
            bands = [x]
            for dim in (2, 3, 4):  # time, then height, then width
                bands = [part for band in bands for part in _haar_split(band, dim, lo, hi)]
            x = torch.cat(bands, dim=1) / 8**0.5  # (B, 8C, T/2, H/2, W/2)
        return x


class Unpatcher3d(_HaarBase):
    """The inverse of :class:`Patcher3d`: ``log2(patch_size)`` inverse Haar levels, then drop the
    ``patch_size - 1`` copies of frame 0."""

    def forward(self, x: Tensor) -> Tensor:
        lo, hi = self._filters(x.dtype)
        for _ in range(self.levels):
            bands = list(x.chunk(8, dim=1))
            for dim in (4, 3, 2):  # width, then height, then time
                bands = [_haar_merge(bands[i], bands[i + 1], dim, lo, hi) for i in range(0, len(bands), 2)]
            x = bands[0] * 8**0.5  # (B, C/8, 2T, 2H, 2W)
        return x[:, :, self.patch_size - 1:]


# ----------------------------------------------------------------------------------------------------------
# Encoder and decoder


class DownLevel(nn.Module):
    """One encoder level: ResNet blocks (each followed by attention at attention resolutions), then an
    optional down-sampling (keys ``block.*``, ``attn.*``, ``downsample.*``)."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, attention: bool,
                 down: tuple[bool, bool] | None):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(in_channels if i == 0 else out_channels, out_channels)
                                   for i in range(num_blocks))
        self.attn = nn.ModuleList(AttentionPair(out_channels) for _ in range(num_blocks if attention else 0))
        if down is not None:
            self.downsample = Downsample(out_channels, *down)

    def forward(self, x: Tensor) -> Tensor:
        for i, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[i](x)
        if hasattr(self, "downsample"):
            x = self.downsample(x)
        return x


class UpLevel(nn.Module):
    """One decoder level: ResNet blocks (+ attention), then an optional up-sampling (keys ``block.*``,
    ``attn.*``, ``upsample.*``)."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, attention: bool,
                 up: tuple[bool, bool] | None):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(in_channels if i == 0 else out_channels, out_channels)
                                   for i in range(num_blocks))
        self.attn = nn.ModuleList(AttentionPair(out_channels) for _ in range(num_blocks if attention else 0))
        if up is not None:
            self.upsample = Upsample(out_channels, *up)

    def forward(self, x: Tensor) -> Tensor:
        for i, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[i](x)
        if hasattr(self, "upsample"):
            x = self.upsample(x)
        return x


class MidBlock(nn.Module):
    """ResNet block, spatial + temporal attention, ResNet block (keys ``block_1``, ``attn_1.{0,1}``, ``block_2``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttentionPair(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder3d(nn.Module):
    """The original ``EncoderFactorized``: video [B,3,1+8k,H,W] -> [B,z_channels,1+k,H/8,W/8] (defaults)."""

    def __init__(self, p: _params.TokenizerParams):
        super().__init__()
        p = as_tokenizer_params(p)
        widths = [p.channels] + [p.channels * m for m in p.channels_mult]
        res = p.resolution // p.patch_size
        self.patcher3d = Patcher3d(p.patch_size)
        self.conv_in = FactorizedConv3d(p.patch_channels, p.channels)
        self.down = nn.ModuleList()
        for i in range(p.num_levels):
            down = p.down_plan[i] if i < p.num_levels - 1 else None
            self.down.append(DownLevel(widths[i], widths[i + 1], p.num_res_blocks, res in p.attn_resolutions, down))
            if down is not None:
                res //= 2
        self.mid = MidBlock(widths[-1])
        self.norm_out = CausalGroupNorm(widths[-1])
        self.conv_out = FactorizedConv3d(widths[-1], p.z_channels)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patcher3d(x)  # (B, 3p^3, (T+p-1)/p, H/p, W/p)
        x = self.conv_in(x)
        for level in self.down:
            x = level(x)  # (B, C_i, ., ., .), down-sampled at the end of the first levels
        x = self.mid(x)
        return self.conv_out(F.silu(self.norm_out(x)))  # (B, z, 1+k, H/8, W/8)


class Decoder3d(nn.Module):
    """The original ``DecoderFactorized`` (non-legacy): [B,z_channels,1+k,h,w] -> video [B,3,1+8k,8h,8w].

    ``up[i]`` is the mirror of encoder level i; they run from the last to the first."""

    def __init__(self, p: _params.TokenizerParams):
        super().__init__()
        p = as_tokenizer_params(p)
        n = p.num_levels
        widths = [p.channels * m for m in p.channels_mult]
        res = p.resolution // p.patch_size // 2 ** (n - 1)
        self.conv_in = FactorizedConv3d(p.z_channels, widths[-1])
        self.mid = MidBlock(widths[-1])
        levels: list[UpLevel] = []
        block_in = widths[-1]
        for r, i in enumerate(reversed(range(n))):
            up = p.up_plan[r] if i != 0 else None
            levels.append(UpLevel(block_in, widths[i], p.num_res_blocks + 1, res in p.attn_resolutions, up))
            block_in = widths[i]
            if up is not None:
                res *= 2
        self.up = nn.ModuleList(reversed(levels))
        self.norm_out = CausalGroupNorm(widths[0])
        self.conv_out = FactorizedConv3d(widths[0], p.patch_channels)
        self.unpatcher3d = Unpatcher3d(p.patch_size)

    def forward(self, z: Tensor) -> Tensor:
        x = self.mid(self.conv_in(z))  # (B, C, 1+k, h, w)
        for level in reversed(self.up):
            x = level(x)
        x = self.conv_out(F.silu(self.norm_out(x)))  # (B, 3p^3, (T+p-1)/p, H/p, W/p)
        return self.unpatcher3d(x)  # (B, 3, T, H, W)


# ----------------------------------------------------------------------------------------------------------
# Bounded memory: every module over chunks of frames


@dataclass(frozen=True)
class TimeMap:
    """How a module maps input frames to output frames, for running it over chunks of its input frames.

    ``halo``: input frames before a chunk that the chunk's outputs depend on (causal look-back).
    ``first_out(a)``: the first output frame computed from the chunk that starts at input frame ``a``; a chunk
    ``[a, b)`` owns the output frames ``[first_out(a), first_out(b))`` and ``first_out(T)`` is the output length.
    ``offset(s)``: the output frame that the module's output frame 0 is, when it runs on the input from frame s.
    ``align``, ``rem``: chunk starts (after 0) are the frames ``a`` with ``a % align == rem``.
    """

    halo: int
    first_out: Callable[[int], int]
    offset: Callable[[int], int]
    align: int = 1
    rem: int = 0


def same_length(halo: int) -> TimeMap:
    """Output frame t from input frames t - halo .. t (causal convolutions, per-frame norms, pointwise ops)."""
    return TimeMap(halo, lambda a: a, lambda s: s)


# Temporal up-sampling (T -> 2T - 1): output frame j is input frame (j + 1) // 2 plus a causal 3-tap residual.
UPSAMPLE_2X = TimeMap(2, lambda a: max(0, 2 * a - 1), lambda s: 2 * s)
# Temporal down-sampling (T -> (T + 1) // 2): output frame k from input frames 2k - 2 .. 2k; chunks start on even frames.
DOWNSAMPLE_2X = TimeMap(2, lambda a: (a + 1) // 2, lambda s: s // 2, align=2)
# The Haar patcher (1 + 4k frames -> 1 + k): output 0 is frame 0, output k >= 1 is frames 4k - 3 .. 4k. A chunk runs
# from the frame before it, whose (repeated) copy makes a discarded first output.
PATCH_4X = TimeMap(1, lambda a: (a + 3) // 4, lambda s: s // 4, align=4, rem=1)
# Its inverse (T -> 4T - 3): input 0 makes output 0, input t >= 1 makes outputs 4t - 3 .. 4t.
UNPATCH_4X = TimeMap(1, lambda a: max(0, 4 * a - 3), lambda s: 4 * s)


ATTENTION_QUERY_CHUNK = 4096  # query positions per attention call in the chunked encode/decode


def _chunk_starts(T: int, chunk: int, m: TimeMap) -> list[int]:
    starts = [0]
    while True:
        a = starts[-1] + chunk
        a += (m.rem - a) % m.align
        if a >= T:
            return starts
        starts.append(a)


def run_in_time_chunks(fn: Callable[[Tensor], Tensor], x: Tensor, m: TimeMap, chunk: int) -> Tensor:
    """``fn(x)`` for a module ``fn`` with time map ``m``, computed over chunks of ``chunk`` input frames (dim 2).

    Each chunk runs on its frames preceded by ``m.halo`` more; the outputs the halo spoils are dropped and the
    rest is written into one output tensor. Exact up to floating-point rounding."""
    T = x.shape[2]
    starts = _chunk_starts(T, max(1, chunk), m)
    if len(starts) == 1:
        return fn(x)
    out = None
    for a, b in zip(starts, [*starts[1:], T], strict=True):
        s = max(0, a - m.halo)
        y = fn(x[:, :, s:b])
        lo, hi = m.first_out(a) - m.offset(s), m.first_out(b) - m.offset(s)
        if out is None:
            out = y.new_empty(*y.shape[:2], m.first_out(T), *y.shape[3:])
        out[:, :, m.first_out(a):m.first_out(b)] = y[:, :, lo:hi]
        del y
    return out


def causal_halo(module: nn.Module) -> int:
    """Frames of look-back of a chain of stride-1 causal convolutions (a ResnetBlock: 4, a FactorizedConv3d: 2)."""
    return sum(m.time_pad for m in module.modules() if isinstance(m, CausalConv3d))


def _attention_chunked(pair: AttentionPair, x: Tensor, chunk: int) -> Tensor:
    spatial, temporal = pair
    # one frame at a time, its queries in chunks: a whole frame's attention weights (14,080^2 at the 720p latent
    # size; the 512-wide heads take no fused kernel) cost ~1.8 GiB (measured), a chunk's about a quarter of that
    x = run_in_time_chunks(lambda t: spatial(t, query_chunk=ATTENTION_QUERY_CHUNK), x, same_length(0), 1)
    return temporal(x)  # causal over all frames: runs whole (latent resolution)


def _blocks_chunked(blocks: nn.ModuleList, attn: nn.ModuleList, x: Tensor, chunk: int) -> Tensor:
    for i, block in enumerate(blocks):
        x = run_in_time_chunks(block, x, same_length(causal_halo(block)), chunk)
        if len(attn):
            x = _attention_chunked(attn[i], x, chunk)
    return x


def _mid_chunked(mid: MidBlock, x: Tensor, chunk: int) -> Tensor:
    x = run_in_time_chunks(mid.block_1, x, same_length(causal_halo(mid.block_1)), chunk)
    x = _attention_chunked(mid.attn_1, x, chunk)
    return run_in_time_chunks(mid.block_2, x, same_length(causal_halo(mid.block_2)), chunk)


def _head(norm: CausalGroupNorm, conv: FactorizedConv3d) -> Callable[[Tensor], Tensor]:
    return lambda x: conv(F.silu(norm(x)))


def encode_in_chunks(enc: VideoEncoder, x: Tensor, chunk: int) -> Tensor:
    """``enc(x)`` with every module run over chunks of ``chunk`` frames (:func:`run_in_time_chunks`)."""
    e = enc.encoder
    x = run_in_time_chunks(e.patcher3d, x, PATCH_4X, chunk)  # (B, 3p^3, (T+p-1)/p, H/p, W/p)
    x = run_in_time_chunks(e.conv_in, x, same_length(causal_halo(e.conv_in)), chunk)
    for level in e.down:
        x = _blocks_chunked(level.block, level.attn, x, chunk)
        if hasattr(level, "downsample"):
            ds = level.downsample
            x = run_in_time_chunks(ds, x, DOWNSAMPLE_2X if ds.temporal else same_length(0), chunk)
    x = _mid_chunked(e.mid, x, chunk)
    x = run_in_time_chunks(_head(e.norm_out, e.conv_out), x, same_length(causal_halo(e.conv_out)), chunk)
    return enc.quant_conv(x)  # (B, latent, 1+k, H/8, W/8)


def decode_in_chunks(dec: VideoDecoder, z: Tensor, chunk: int) -> Tensor:
    """``dec(z)`` with every module run over chunks of ``chunk`` frames (:func:`run_in_time_chunks`)."""
    d = dec.decoder
    x = run_in_time_chunks(d.conv_in, dec.post_quant_conv(z), same_length(causal_halo(d.conv_in)), chunk)
    x = _mid_chunked(d.mid, x, chunk)
    for level in reversed(d.up):
        x = _blocks_chunked(level.block, level.attn, x, chunk)
        if hasattr(level, "upsample"):
            us = level.upsample
            x = run_in_time_chunks(us, x, UPSAMPLE_2X if us.temporal else same_length(0), chunk)
    x = run_in_time_chunks(_head(d.norm_out, d.conv_out), x, same_length(causal_halo(d.conv_out)), chunk)
    return run_in_time_chunks(d.unpatcher3d, x, UNPATCH_4X, chunk)  # (B, 3, T, H, W)


class VideoEncoder(nn.Module):
    """encoder + quant_conv, with the keys of the released ``encoder.jit``. Returns the raw latent."""

    def __init__(self, p: _params.TokenizerParams):
        super().__init__()
        p = as_tokenizer_params(p)
        self.encoder = Encoder3d(p)
        self.quant_conv = CausalConv3d(p.z_channels, p.latent_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.quant_conv(self.encoder(x))


class VideoDecoder(nn.Module):
    """post_quant_conv + decoder, with the keys of the released ``decoder.jit``. Takes the raw latent."""

    def __init__(self, p: _params.TokenizerParams):
        super().__init__()
        p = as_tokenizer_params(p)
        self.post_quant_conv = CausalConv3d(p.latent_channels, p.z_channels)
        self.decoder = Decoder3d(p)

    def forward(self, z: Tensor) -> Tensor:
        return self.decoder(self.post_quant_conv(z))


class VideoTokenizer(nn.Module):
    """The tokenizer as the diffusion model sees it: normalized latents, chunked like the original.

    ``encode(x)`` = (E(x) - mean) / std and ``decode(z)`` = D(z * std + mean), with mean and std per channel and
    per latent frame (``latent_mean``/``latent_std``, [1, C, L, 1, 1], L = ``latent_chunk_duration``; zeros and
    ones until :meth:`set_latent_stats`). Multiples of ``pixel_chunk_duration`` frames (121) are encoded chunk
    by chunk, each chunk normalized with the first 16 entries, as the original; any other 1 + 8k frames up to one
    chunk are encoded in one go and latent frame j uses entry j. The diffusion model's sigma_data scaling is
    not applied here. Both run in the dtype of the weights and return that dtype.
    """

    def __init__(self, p: _params.TokenizerParams):
        super().__init__()
        self.params = p = as_tokenizer_params(p)
        self.encoder = VideoEncoder(p)
        self.decoder = VideoDecoder(p)
        shape = (1, p.latent_channels, p.latent_chunk_duration, 1, 1)
        self.register_buffer("latent_mean", torch.zeros(shape), persistent=False)
        self.register_buffer("latent_std", torch.ones(shape), persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.quant_conv.conv3d.weight.dtype

    def set_latent_stats(self, mean: Tensor, std: Tensor) -> None:
        """Set the normalization from ``mean_std.pt``'s tensors: ``latent_channels x N`` values, channel-major,
        N >= ``latent_chunk_duration`` (only the first L frames are used)."""
        self.latent_mean = _frame_stats(mean, self.params).to(self.latent_mean.device, self.dtype)
        self.latent_std = _frame_stats(std, self.params).to(self.latent_std.device, self.dtype)

    def encode(self, x: Tensor, chunk_frames: int | None = None) -> Tensor:
        """x [B,3,T,H,W] in [-1, 1], T = 1 + 8k (<= 121) or n * 121, H and W multiples of 8
        -> normalized latent [B,16,T',H/8,W/8] with T' = 1 + k or n * 16.

        ``chunk_frames``: run every module over chunks of that many frames (bounded memory, the same result up
        to rounding); None runs each module on the whole clip."""
        p = self.params
        if x.ndim != 5 or x.shape[1] != RGB:
            raise ValueError(f"expected a video [B, 3, T, H, W], got shape {list(x.shape)}")
        if x.shape[3] % p.spatial_compression or x.shape[4] % p.spatial_compression:
            raise ValueError(f"height and width must be multiples of {p.spatial_compression}, got "
                             f"{x.shape[3]}x{x.shape[4]}")
        x = x.to(self.dtype)
        out, start = [], 0
        for frames, latent in _pixel_chunks(p, x.shape[2]):
            clip = x[:, :, start:start + frames]
            z = self.encoder(clip) if chunk_frames is None else encode_in_chunks(self.encoder, clip, chunk_frames)
            out.append((z - self.latent_mean[:, :, :latent]) / self.latent_std[:, :, :latent])
            start += frames
        return torch.cat(out, dim=2) if len(out) > 1 else out[0]

    def decode(self, z: Tensor, chunk_frames: int | None = None) -> Tensor:
        """Normalized latent [B,16,T',h,w] (T' <= 16 or a multiple of 16) -> video [B,3,T,8h,8w], T = 1 + 8(T'-1)
        per chunk, nominally in [-1, 1] (not clamped). ``chunk_frames`` as for :meth:`encode`."""
        p = self.params
        if z.ndim != 5 or z.shape[1] != p.latent_channels:
            raise ValueError(f"expected a latent [B, {p.latent_channels}, T, H, W], got shape {list(z.shape)}")
        z = z.to(self.dtype)
        out, start = [], 0
        for latent in _latent_chunks(p, z.shape[2]):
            chunk = z[:, :, start:start + latent] * self.latent_std[:, :, :latent] + self.latent_mean[:, :, :latent]
            video = self.decoder(chunk) if chunk_frames is None else decode_in_chunks(self.decoder, chunk, chunk_frames)
            out.append(video)  # (B, 3, 1 + 8(latent-1), 8h, 8w)
            start += latent
        return torch.cat(out, dim=2) if len(out) > 1 else out[0]


def _frame_stats(t: Tensor, p: TokenizerParams) -> Tensor:
    """``mean_std.pt`` entry -> [1, C, L, 1, 1] (the original's ``view(C, -1)[:, :L]``)."""
    C, L = p.latent_channels, p.latent_chunk_duration
    if t.numel() % C or t.numel() // C < L:
        raise ValueError(f"{t.numel()} values are not {C} channels x >= {L} latent frames")
    return t.detach().reshape(C, -1)[:, :L].reshape(1, C, L, 1, 1)


# ----------------------------------------------------------------------------------------------------------
# Loading the released files


def _constant_buffers(p: TokenizerParams) -> dict[str, Tensor]:
    """The Haar buffers of both files: constants that carry no learned values."""
    haar = {"wavelets": torch.tensor([HAAR_TAP, HAAR_TAP]), "_arange": torch.arange(2)}
    consts = {f"encoder.patcher3d.{k}": v for k, v in haar.items()}
    consts["encoder.patcher3d.patch_size_buffer"] = torch.tensor([p.patch_size], dtype=torch.int32)
    consts.update({f"decoder.unpatcher3d.{k}": v for k, v in haar.items()})
    return consts


def _summary(kind: str, items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN]) + (", ..." if len(items) > _SHOWN else "")
    return f"{len(items)} {kind} ({shown})"


def _read_jit_state(path: Path) -> dict[str, Tensor]:
    """The state dict of a ``.jit`` file, read as data: no TorchScript code runs (see the module docstring)."""
    if not path.is_file():
        raise CheckpointError(f"tokenizer file not found: {path}")
    return read_state_dict(path)


def _load_part(module: nn.Module, path: Path, consts: Mapping[str, Tensor], *, device: torch.device | str,
               dtype: torch.dtype) -> None:
    """Load one .jit file's state dict strictly into ``module`` (built on the meta device), one tensor at a time
    cast to ``dtype`` (floating point only) on ``device``.

    The Haar constant buffers may be absent from the file (they are filled in); if present they must hold the
    Haar constants. Any other missing, unexpected or mis-shaped key raises CheckpointError."""
    state = _read_jit_state(path)
    expected = module.state_dict()
    missing = [k for k in expected if k not in state and k not in consts]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} {list(state[k].shape)} != {list(ref.shape)}" for k, ref in expected.items()
                  if k in state and tuple(state[k].shape) != tuple(ref.shape)]
    wrong = [k for k in consts if k in state and k in expected and not mismatched
             and not torch.allclose(state[k].double(), consts[k].double(), rtol=1e-3, atol=0)]
    problems = [_summary(kind, items) for kind, items in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched),
                 ("constants that are not the Haar transform's of this patch size", wrong)) if items]
    if problems:
        raise CheckpointError(f"{path}: does not match the tokenizer: " + "; ".join(problems))
    loaded = {}
    for key in expected:
        tensor = state.pop(key) if key in state else consts[key]
        loaded[key] = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
    module.load_state_dict(loaded, strict=True, assign=True)


def read_mean_std(path: Path, p: _params.TokenizerParams) -> tuple[Tensor, Tensor]:
    """``mean_std.pt`` -> (mean, std), each [1, C, L, 1, 1] in fp32."""
    p = as_tokenizer_params(p)
    if not path.is_file():
        raise CheckpointError(f"tokenizer file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refusing to load: it is not a plain tensor file "
                              f"(torch.load(weights_only=True) failed: {str(e).splitlines()[0]})") from e
    except (RuntimeError, EOFError) as e:
        raise CheckpointError(f"{path}: not a readable PyTorch file ({str(e).strip().splitlines()[0]})") from e
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2 and all(isinstance(t, Tensor) for t in obj)):
        raise CheckpointError(f"{path}: expected a pair (mean, std) of tensors, found {type(obj).__name__}")
    try:
        mean, std = (_frame_stats(t, p).float() for t in obj)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from e
    if not (bool(torch.isfinite(mean).all()) and bool(torch.isfinite(std).all())):  # NaN/inf: a black video
        raise CheckpointError(f"{path}: the latent mean or std holds NaN or infinite values")
    if not bool((std > 0).all()):
        raise CheckpointError(f"{path}: the latent std has entries <= 0")
    return mean, std


def load_tokenizer(folder: Path, params: _params.TokenizerParams, *, device: torch.device | str,
                   dtype: torch.dtype = torch.bfloat16, md5: Mapping[str, str | None] | None = None) -> VideoTokenizer:
    """Build the tokenizer for ``params`` on the meta device and load ``folder``'s ``encoder.jit`` and
    ``decoder.jit`` (their tensors only, read as data by :func:`cosmos_cli.torchscript_archive.read_state_dict`:
    TorchScript's ``jit.load`` is never called, no code from the files runs) and ``mean_std.pt`` (``weights_only``).

    ``md5``: file name -> pinned MD5 (the model spec's ``CheckpointFile.md5`` of the released files); each file
    with one is checked before it is read (:func:`cosmos_cli.integrity.verify_pinned`, cached by size and mtime).
    Files without a pinned checksum (fixtures, the demo model) are not checked.

    Raises :class:`~cosmos_cli.errors.CheckpointError` for a missing file, a checksum mismatch, a file that is not
    a plain TorchScript archive of tensors, or a key mismatch. Returns the tokenizer in eval mode without
    gradients, on ``device`` in ``dtype``."""
    folder = Path(folder)
    p = as_tokenizer_params(params)
    absent = [name for name in (ENCODER_FILE, DECODER_FILE, MEAN_STD_FILE) if not (folder / name).is_file()]
    if absent:
        raise CheckpointError(f"tokenizer file(s) not found in {folder}: {', '.join(absent)}")
    for name in (ENCODER_FILE, DECODER_FILE, MEAN_STD_FILE):
        verify_pinned(folder / name, (md5 or {}).get(name))
    mean, std = read_mean_std(folder / MEAN_STD_FILE, p)
    with torch.device("meta"):
        tok = VideoTokenizer(p)
    consts = _constant_buffers(p)
    _load_part(tok.encoder, folder / ENCODER_FILE, consts, device=device, dtype=dtype)
    _load_part(tok.decoder, folder / DECODER_FILE, consts, device=device, dtype=dtype)
    tok.latent_mean = mean.to(device=device, dtype=dtype)
    tok.latent_std = std.to(device=device, dtype=dtype)
    return tok.eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------------------
# Test fixtures in the released formats


class _IdentityDistribution(nn.Module):
    """The original's AE "distribution": the latent and a placeholder pair of zeros."""

    def forward(self, z: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        return z, (z.new_zeros(1), z.new_zeros(1))


class _EncoderJit(nn.Module):
    """The layout traced into ``encoder.jit``: encoder, quant_conv, distribution (returns a tuple)."""

    def __init__(self, part: VideoEncoder):
        super().__init__()
        self.encoder, self.quant_conv, self.distribution = part.encoder, part.quant_conv, _IdentityDistribution()

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        return self.distribution(self.quant_conv(self.encoder(x)))


class _DecoderJit(nn.Module):
    """The layout traced into ``decoder.jit``: post_quant_conv, decoder."""

    def __init__(self, part: VideoDecoder):
        super().__init__()
        self.post_quant_conv, self.decoder = part.post_quant_conv, part.decoder

    def forward(self, z: Tensor) -> Tensor:
        return self.decoder(self.post_quant_conv(z))


def randomize_(tok: VideoTokenizer, seed: int = 0) -> VideoTokenizer:
    """Random weights of a sensible scale, in place: convolutions with std 1/sqrt(fan_in) and biases of 0.02,
    GroupNorm gains about 1 and shifts about 0, so activations stay of unit order through the tiny networks."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in tok.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if ".norm." in name and name.endswith("weight"):
                value = 1.0 + 0.1 * noise
            elif param.ndim == 1:
                value = 0.02 * noise
            else:
                value = noise / math.prod(param.shape[1:]) ** 0.5
            param.copy_(value)
    return tok


def trace_shape(params: _params.TokenizerParams) -> tuple[int, int, int, int, int]:
    """The video shape :func:`write_tokenizer_checkpoint` traces the encoder with: 1 + temporal_compression
    frames of 2 x spatial_compression pixels square."""
    p = as_tokenizer_params(params)
    return (1, RGB, 1 + p.temporal_compression, 2 * p.spatial_compression, 2 * p.spatial_compression)


def write_tokenizer_checkpoint(folder: Path, params: _params.TokenizerParams, seed: int = 0) -> VideoTokenizer:
    """Write a tokenizer with random weights in the released formats: ``encoder.jit`` and ``decoder.jit`` as
    TorchScript traces of modules laid out like the originals (same keys; the encoder returns a tuple whose
    element 0 is the latent), traced on :func:`trace_shape`, and ``mean_std.pt`` as a pair of flat
    channel-major tensors of ``latent_channels x latent_chunk_duration`` values. Returns the fp32 tokenizer
    that holds the weights written, with its latent statistics set."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    p = as_tokenizer_params(params)
    tok = randomize_(VideoTokenizer(p), seed).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(seed + 1)
    count = p.latent_channels * p.latent_chunk_duration
    mean = 0.1 * torch.randn(count, generator=gen)
    std = 0.5 + torch.rand(count, generator=gen)
    tok.set_latent_stats(mean, std)
    x = torch.rand(trace_shape(p), generator=gen) * 2 - 1
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        enc = torch.jit.trace(_EncoderJit(tok.encoder), x, check_trace=False)
        dec = torch.jit.trace(_DecoderJit(tok.decoder), tok.encoder(x), check_trace=False)
    torch.jit.save(enc, str(folder / ENCODER_FILE))
    torch.jit.save(dec, str(folder / DECODER_FILE))
    torch.save((mean, std), folder / MEAN_STD_FILE)
    return tok
