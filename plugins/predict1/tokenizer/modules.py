"""The modules of the causal continuous video tokenizer: causal convolutions, ResNet blocks, attention, hybrid
down- and up-sampling, the Haar wavelet patcher, and the encoder and decoder with the released files' keys.

Numerics. The modules run in the dtype of their weights (bf16 for inference, as the original). The Haar taps
are read from the ``wavelets`` buffer, which is cast with the weights as the original's ``.to(bf16)`` casts
it. Attention uses ``F.scaled_dot_product_attention`` (one head of all channels, scale 1/sqrt(C)) where the
original multiplies and soft-maxes in the compute dtype, and SiLU is ``F.silu`` where the original computes
``x * sigmoid(x)``: in fp32 the two agree to rounding; in bf16 ours rounds less often.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..params import TokenizerParams

HAAR_TAP = 0.7071067811865476  # 1/sqrt(2), both taps of the Haar low-pass filter


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

    def __init__(self, p: TokenizerParams):
        super().__init__()
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

    def __init__(self, p: TokenizerParams):
        super().__init__()
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



class VideoEncoder(nn.Module):
    """encoder + quant_conv, with the keys of the released ``encoder.jit``. Returns the raw latent."""

    def __init__(self, p: TokenizerParams):
        super().__init__()
        self.encoder = Encoder3d(p)
        self.quant_conv = CausalConv3d(p.z_channels, p.latent_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.quant_conv(self.encoder(x))


class VideoDecoder(nn.Module):
    """post_quant_conv + decoder, with the keys of the released ``decoder.jit``. Takes the raw latent."""

    def __init__(self, p: TokenizerParams):
        super().__init__()
        self.post_quant_conv = CausalConv3d(p.latent_channels, p.z_channels)
        self.decoder = Decoder3d(p)

    def forward(self, z: Tensor) -> Tensor:
        return self.decoder(self.post_quant_conv(z))

