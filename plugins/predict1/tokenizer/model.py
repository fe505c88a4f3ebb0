"""The tokenizer as the diffusion model sees it: :class:`VideoTokenizer`, normalized latents, chunked like the
original."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..params import RGB, TokenizerParams, latent_chunks, pixel_chunks
from .chunked import decode_in_chunks, encode_in_chunks
from .modules import VideoDecoder, VideoEncoder


def num_params(p: TokenizerParams) -> int:
    """Parameters of encoder + decoder: 105,653,696 for CV8x8x8-720p (encoder 42,914,864 incl. quant_conv,
    decoder 62,738,832 incl. post_quant_conv), as diffusers' ``AutoencoderKLCosmos()``. The Haar constant
    buffers are not counted."""
    with torch.device("meta"):
        tok = VideoTokenizer(p)
    return sum(t.numel() for t in tok.parameters())


class VideoTokenizer(nn.Module):
    """The tokenizer as the diffusion model sees it: normalized latents, chunked like the original.

    ``encode(x)`` = (E(x) - mean) / std and ``decode(z)`` = D(z * std + mean), with mean and std per channel and
    per latent frame (``latent_mean``/``latent_std``, [1, C, L, 1, 1], L = ``latent_chunk_duration``; zeros and
    ones until :meth:`set_latent_stats`). Multiples of ``pixel_chunk_duration`` frames (121) are encoded chunk
    by chunk, each chunk normalized with the first 16 entries, as the original; any other 1 + 8k frames up to one
    chunk are encoded in one go and latent frame j uses entry j. The diffusion model's sigma_data scaling is
    not applied here. Both run in the dtype of the weights and return that dtype.
    """

    def __init__(self, p: TokenizerParams):
        super().__init__()
        self.params = p
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
        for frames, latent in pixel_chunks(p, x.shape[2]):
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
        for latent in latent_chunks(p, z.shape[2]):
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

