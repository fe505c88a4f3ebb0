"""Tokenizer test fixtures in the released formats: random weights of a sensible scale, written as
``encoder.jit``, ``decoder.jit`` and ``mean_std.pt``."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from ..params import RGB, TokenizerParams
from .loading import DECODER_FILE, ENCODER_FILE, MEAN_STD_FILE
from .model import VideoTokenizer
from .modules import VideoDecoder, VideoEncoder


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


def trace_shape(params: TokenizerParams) -> tuple[int, int, int, int, int]:
    """The video shape :func:`write_tokenizer_checkpoint` traces the encoder with: 1 + temporal_compression
    frames of 2 x spatial_compression pixels square."""
    p = params
    return (1, RGB, 1 + p.temporal_compression, 2 * p.spatial_compression, 2 * p.spatial_compression)


def write_tokenizer_checkpoint(folder: Path, params: TokenizerParams, seed: int = 0) -> VideoTokenizer:
    """Write a tokenizer with random weights in the released formats: ``encoder.jit`` and ``decoder.jit`` as
    TorchScript traces of modules laid out like the originals (same keys; the encoder returns a tuple whose
    element 0 is the latent), traced on :func:`trace_shape`, and ``mean_std.pt`` as a pair of flat
    channel-major tensors of ``latent_channels x latent_chunk_duration`` values. Returns the fp32 tokenizer
    that holds the weights written, with its latent statistics set."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    p = params
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
