"""The tokenizer over chunks of frames gives the whole-clip result (tiny real architectures, CPU).

Tolerance: fp32 results must agree to 1e-6 of the output's largest magnitude (they come out identical on a CPU:
every chunk runs the same kernels on the same values); bf16 results to one bf16 rounding step of the largest
magnitude (2^-7), for kernels that may sum in another order on other shapes.
"""

from __future__ import annotations

import pytest
import torch

from cosmos_plugins.predict1.params import tokenizer_activation_bytes
from cosmos_plugins.predict1.tokenizer import (
    DOWNSAMPLE_2X,
    PATCH_4X,
    UNPATCH_4X,
    UPSAMPLE_2X,
    Downsample,
    Patcher3d,
    ResnetBlock,
    TokenizerParams,
    Unpatcher3d,
    Upsample,
    VideoTokenizer,
    causal_halo,
    randomize_,
    run_in_time_chunks,
    same_length,
)

# Attention at a level (resolution 64 / patch 4 = 16 -> 8 matches attn_resolutions) as well as in the middle block.
TINY = TokenizerParams(channels=4, channels_mult=(2, 4, 4), num_res_blocks=2, attn_resolutions=(8,), resolution=64,
                       patch_size=4, z_channels=8, latent_channels=8, spatial_compression=8, temporal_compression=8,
                       pixel_chunk_duration=33)
FP32_TOL = 1e-6
BF16_TOL = 2.0**-7


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


@pytest.fixture(scope="module")
def tok() -> VideoTokenizer:
    return randomize_(VideoTokenizer(TINY), seed=0).eval().requires_grad_(False)


def clip(frames: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, size, size, generator=gen) * 2 - 1


@pytest.mark.parametrize("frames, chunk", [(33, 3), (33, 4), (33, 8), (17, 2), (9, 1), (9, 5), (1, 1)])
@torch.inference_mode()
def test_chunked_encode_and_decode_match_whole(tok, frames, chunk):
    x = clip(frames, seed=frames)
    z = tok.encode(x)
    zc = tok.encode(x, chunk_frames=chunk)
    assert zc.shape == z.shape and rel(zc, z) <= FP32_TOL
    video = tok.decode(z)
    vc = tok.decode(z, chunk_frames=chunk)
    assert vc.shape == video.shape and rel(vc, video) <= FP32_TOL


@torch.inference_mode()
def test_chunked_bf16_within_one_rounding_step(tok):
    tb = VideoTokenizer(TINY).eval()
    tb.load_state_dict(tok.state_dict())
    tb = tb.to(torch.bfloat16)
    x = clip(33, seed=5)
    z = tb.encode(x)
    assert rel(tb.encode(x, chunk_frames=4), z) <= BF16_TOL
    assert rel(tb.decode(z, chunk_frames=4), tb.decode(z)) <= BF16_TOL


@pytest.mark.parametrize("chunk", [1, 2, 5])
@torch.inference_mode()
def test_time_maps_of_each_module(chunk):
    """Every module kind, run over chunks by its time map, equals the module on the whole input."""
    torch.manual_seed(0)
    x = torch.randn(1, 4, 13, 6, 6)
    cases = [
        (randomize_(ResnetBlock(4, 6)), same_length(4), x),
        (Upsample(4, spatial=True, temporal=True), UPSAMPLE_2X, x),
        (Upsample(4, spatial=True, temporal=False), same_length(0), x),
        (Downsample(4, spatial=True, temporal=True), DOWNSAMPLE_2X, x),
        (Patcher3d(4), PATCH_4X, torch.randn(1, 3, 17, 8, 8)),
        (Unpatcher3d(4), UNPATCH_4X, torch.randn(1, 192, 5, 2, 2)),
    ]
    for module, m, inp in cases:
        module.eval()
        whole = module(inp)
        chunked = run_in_time_chunks(module, inp, m, chunk)
        assert chunked.shape == whole.shape, type(module).__name__
        assert rel(chunked, whole) <= FP32_TOL, type(module).__name__


@torch.inference_mode()
def test_spatial_attention_over_query_chunks():
    from cosmos_plugins.predict1.tokenizer import SpatialAttention

    attn = randomize_(VideoTokenizer(TINY)).encoder.encoder.mid.attn_1[0].eval()
    x = torch.randn(1, attn.q.conv3d.in_channels, 3, 6, 7)  # 42 positions a frame
    whole = attn(x)
    assert isinstance(attn, SpatialAttention)
    for chunk in (1, 5, 41, 42, 100):
        assert rel(attn(x, query_chunk=chunk), whole) <= FP32_TOL, chunk


def test_causal_halo_counts_the_look_back():
    assert causal_halo(ResnetBlock(4, 4)) == 4  # two factorized convolutions with a 3-frame causal kernel each


def test_chunked_tokenizer_memory_is_bounded():
    whole = tokenizer_activation_bytes(121, 704, 1280, tiled=False)
    chunked = tokenizer_activation_bytes(121, 704, 1280, tiled=True)
    assert chunked < whole / 4
