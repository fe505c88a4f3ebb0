"""The CV8x8x8 causal video tokenizer and its loader, on tiny real architectures (CPU, fp32).

Parity is checked against diffusers' independent port, ``AutoencoderKLCosmos``, given the same random weights
through a key-renaming table written here (original key -> diffusers key). Our module's keys are the original
ones, so the table is also a check that our layout is the one diffusers' conversion reads from the released
``autoencoder.jit``.
"""

from __future__ import annotations

import dataclasses
import re
import shutil

import pytest
import torch

import cosmos_plugins.predict1.params
from cosmos_cli.errors import CheckpointError
from cosmos_plugins.predict1.tokenizer import (
    DECODER_FILE,
    ENCODER_FILE,
    MEAN_STD_FILE,
    Patcher3d,
    TokenizerParams,
    Unpatcher3d,
    VideoTokenizer,
    load_tokenizer,
    num_params,
    randomize_,
    write_tokenizer_checkpoint,
)

# The 720p layout (3 levels, Haar x4 then one hybrid x2 down-sampling in t, h, w) at tiny widths 8/16/16.
# resolution 64 puts attention (spatial + causal temporal) in encoder level 1 and decoder level 1 as well as in
# the middle blocks, which the full-size model never has (its attn_resolutions=(32,) matches no level).
TINY = TokenizerParams(channels=4, channels_mult=(2, 4, 4), num_res_blocks=2, attn_resolutions=(8,), resolution=64,
                       patch_size=4, z_channels=8, latent_channels=8, spatial_compression=8, temporal_compression=8,
                       pixel_chunk_duration=33)
FULL = TokenizerParams()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def video(frames: int, size: int = 32, batch: int = 1, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, frames, size, size, generator=gen) * 2 - 1


@pytest.fixture(scope="module")
def tiny() -> VideoTokenizer:
    return randomize_(VideoTokenizer(TINY), seed=0).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    tok = write_tokenizer_checkpoint(folder, TINY, seed=3)
    return folder, tok


# ----------------------------------------------------------------------------------------------------------
# Layout


def original_state_keys(tok: VideoTokenizer) -> dict[str, torch.Tensor]:
    """encoder.jit's keys plus decoder.jit's keys = the released autoencoder.jit's keys."""
    return {**tok.encoder.state_dict(), **tok.decoder.state_dict()}


def to_diffusers_key(key: str, num_levels: int) -> str | None:
    """Original tokenizer key -> AutoencoderKLCosmos key (None for the Haar constants diffusers does not store)."""
    if ".patcher3d." in key or ".unpatcher3d." in key:
        return None
    key = re.sub(r"^encoder\.down\.(\d+)\.", r"encoder.down_blocks.\1.", key)
    key = re.sub(r"^decoder\.up\.(\d+)\.", lambda m: f"decoder.up_blocks.{num_levels - 1 - int(m[1])}.", key)
    for old, new in (("mid.block_1.", "mid_block.resnets.0."), ("mid.block_2.", "mid_block.resnets.1."),
                     ("mid.attn_1.0.", "mid_block.attentions.0."), ("mid.attn_1.1.", "mid_block.temp_attentions.0."),
                     (".block.", ".resnets."), (".downsample.", ".downsamplers.0."), (".upsample.", ".upsamplers.0."),
                     (".proj_out.conv3d.", ".to_out.0."), (".nin_shortcut.conv3d.", ".conv_shortcut.")):
        key = key.replace(old, new)
    key = re.sub(r"\.attn\.(\d+)\.0\.", r".attentions.\1.", key)
    key = re.sub(r"\.attn\.(\d+)\.1\.", r".temp_attentions.\1.", key)
    key = re.sub(r"\.([qkv])\.conv3d\.", r".to_\1.", key)
    key = key.replace(".0.conv3d.", ".conv_s.").replace(".1.conv3d.", ".conv_t.")  # factorized (1x3x3, 3x1x1) pairs
    return re.sub(r"(^|\.)(conv[123]|quant_conv|post_quant_conv)\.conv3d\.", r"\1\2.", key)


def diffusers_vae(p: TokenizerParams, device: str = "cpu"):
    # Imported outside the device context on purpose: a first import of the diffusers module under
    # torch.device("meta") would create its module-level Haar taps on the meta device for good.
    from diffusers import AutoencoderKLCosmos  # the test extra has it: parity must fail, never skip

    widths = [p.channels * m for m in p.channels_mult]
    with torch.device(device):
        return AutoencoderKLCosmos(
            in_channels=3, out_channels=3, latent_channels=p.latent_channels,
            encoder_block_out_channels=(p.channels, *widths), decode_block_out_channels=(*widths, widths[-1]),
            attention_resolutions=p.attn_resolutions, resolution=p.resolution, num_layers=p.num_res_blocks,
            patch_size=p.patch_size, patch_type="haar", spatial_compression_ratio=p.spatial_compression,
            temporal_compression_ratio=p.temporal_compression, latents_mean=None, latents_std=None)


def test_full_size_layout_is_the_released_one():
    with torch.device("meta"):
        tok = VideoTokenizer(FULL)
    ref = diffusers_vae(FULL, device="meta")
    enc, dec = tok.encoder.state_dict(), tok.decoder.state_dict()
    # encoder.jit: encoder.* + quant_conv.*; decoder.jit: post_quant_conv.* + decoder.*; Haar buffers are persistent
    assert {k.split(".")[0] for k in enc} == {"encoder", "quant_conv"}
    assert {k.split(".")[0] for k in dec} == {"post_quant_conv", "decoder"}
    assert {"encoder.patcher3d.wavelets", "encoder.patcher3d._arange", "encoder.patcher3d.patch_size_buffer"} <= set(enc)
    assert {"decoder.unpatcher3d.wavelets", "decoder.unpatcher3d._arange"} <= set(dec)
    assert enc["encoder.conv_in.0.conv3d.weight"].shape == (128, 192, 1, 3, 3)  # 3 x 4^3 Haar channels
    assert enc["encoder.conv_in.1.conv3d.weight"].shape == (128, 128, 3, 1, 1)
    assert enc["quant_conv.conv3d.weight"].shape == (16, 16, 1, 1, 1)
    assert enc["encoder.down.0.downsample.conv2.conv3d.weight"].shape == (256, 256, 3, 1, 1)
    assert not [k for k in enc if k.startswith("encoder.down.1.downsample.")]  # the x8 is reached at level 0
    assert not [k for k in enc if ".attn." in k] and not [k for k in dec if ".attn." in k]
    assert dec["decoder.up.1.upsample.conv1.conv3d.weight"].shape == (512, 512, 3, 1, 1)
    assert not [k for k in dec if k.startswith("decoder.up.2.upsample.")]
    assert dec["decoder.conv_out.1.conv3d.weight"].shape == (192, 192, 3, 1, 1)
    assert (len(enc), len(dec)) == (141, 174)
    mapped = {to_diffusers_key(k, FULL.num_levels) for k in original_state_keys(tok)} - {None}
    assert mapped == set(ref.state_dict())
    assert num_params(FULL) == 105_653_696 == sum(t.numel() for t in ref.parameters())


def test_params_validation():
    # one class: the model specs' torch-free TokenizerParams is the one the modules take
    assert TokenizerParams is cosmos_plugins.predict1.params.TokenizerParams
    assert FULL.latent_chunk_duration == 16 and FULL.latent_frames(121) == 16 and FULL.pixel_frames(16) == 121
    assert FULL.latent_frames(242) == 32 and FULL.pixel_frames(32) == 242 and FULL.latent_frames(9) == 2
    assert FULL.down_plan == ((True, True), (False, False)) and FULL.up_plan == ((False, False), (True, True))
    for bad in (dict(patch_size=3), dict(spatial_compression=32), dict(pixel_chunk_duration=120),
                dict(channels=0), dict(channels_mult=()), dict(patch_size=2)):  # patch 2: decoder cannot invert 8x
        with pytest.raises(ValueError):
            dataclasses.replace(FULL, **bad)
    for frames in (0, 8, 122, 129):
        with pytest.raises(ValueError):
            FULL.latent_frames(frames)


# ----------------------------------------------------------------------------------------------------------
# Parity with diffusers


def test_parity_with_diffusers(tiny):
    ref = diffusers_vae(TINY).eval()
    state = {to_diffusers_key(k, TINY.num_levels): v for k, v in original_state_keys(tiny).items()}
    state.pop(None)
    ref.load_state_dict(state, strict=True)
    x = video(17, size=32, batch=2)
    with torch.no_grad():
        ours_z = tiny.encoder(x)
        ref_z = ref.encode(x).latent_dist.mode()
        assert ours_z.shape == ref_z.shape == (2, 8, 3, 4, 4)
        assert rel_err(ours_z, ref_z) <= fp32_bound(tiny.encoder)
        ours_x = tiny.decoder(ref_z)
        ref_x = ref.decode(ref_z).sample
        assert ours_x.shape == ref_x.shape == x.shape
        assert rel_err(ours_x, ref_x) <= fp32_bound(tiny.decoder)
        assert ours_x.abs().max() > 0.1  # not a degenerate (all-zero) output


def test_haar_patcher_is_orthonormal_and_its_low_band_is_the_block_mean():
    x = video(9, size=16, batch=2)
    patched = Patcher3d(4)(x)
    assert patched.shape == (2, 192, 3, 4, 4)
    # an orthonormal Haar transform and its inverse in fp32 on values in [-1, 1]: 3 levels of +/- sums, each
    # rounding by 2^-24 relative: ~1e-7; 1e-6 leaves a factor 8, a wrong coefficient is off by > 0.1
    assert torch.allclose(Unpatcher3d(4)(patched), x, atol=1e-6)
    padded = torch.cat([x[:, :, :1].expand(-1, -1, 3, -1, -1), x], dim=2)  # frame 0 fills the first patch
    block_mean = torch.nn.functional.avg_pool3d(padded, 4)
    assert torch.allclose(patched[:, :3], block_mean, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------
# Fixture files and loading


def fp32_bound(part: torch.nn.Module) -> float:
    """How far two fp32 implementations of the same network may drift apart, relative to max|output|, when they
    differ only in the order of their sums (conv kernels, SDPA vs matmul-softmax, Haar as conv vs as splits): a
    sum of K products rounds to within about sqrt(K) ulps of the exact value for terms of random sign (K ulps at
    worst), and the differences of L layers in series add. Bound: L x sqrt(max K) x eps(fp32), with L the number
    of convolutions (the attention's sums have fan-ins of the same order). For TINY: ~3e-4 (encoder), ~2.4e-4."""
    convs = [m for m in part.modules() if isinstance(m, torch.nn.Conv3d)]
    return len(convs) * max(m.weight[0].numel() for m in convs) ** 0.5 * torch.finfo(torch.float32).eps


def reference_from_files(folder):
    """An independent reference for the fixture files: diffusers' AutoencoderKLCosmos given the files' own state
    dicts (read by torch.jit.load, on files this test wrote) and the normalization written out here from
    mean_std.pt: z = (E(x) - mean[c, j]) / std[c, j] for latent frame j of channel c."""
    state = {}
    for name in (ENCODER_FILE, DECODER_FILE):
        state.update(torch.jit.load(str(folder / name), map_location="cpu").state_dict())
    ref = diffusers_vae(TINY).eval()
    mapped = {to_diffusers_key(k, TINY.num_levels): v for k, v in state.items()}
    mapped.pop(None)
    ref.load_state_dict(mapped, strict=True)
    mean, std = (t.view(TINY.latent_channels, -1) for t in torch.load(folder / MEAN_STD_FILE, weights_only=True))

    def stats(frames):
        return mean[:, :frames].view(1, -1, frames, 1, 1), std[:, :frames].view(1, -1, frames, 1, 1)

    def encode(x):
        raw = ref.encode(x).latent_dist.mode()
        m, s = stats(raw.shape[2])
        return (raw - m) / s

    def decode(z):
        m, s = stats(z.shape[2])
        return ref.decode(z * s + m).sample

    return state, encode, decode


def test_fixture_files_load_strictly_and_match_an_independent_reference(fixture_dir):
    folder, _ = fixture_dir
    state, ref_encode, ref_decode = reference_from_files(folder)
    mean, std = torch.load(folder / MEAN_STD_FILE, weights_only=True)
    assert mean.shape == std.shape == (8 * 5,)

    tok = load_tokenizer(folder, TINY, device="cpu", dtype=torch.float32)
    assert not tok.training and not any(t.requires_grad for t in tok.parameters())
    loaded = original_state_keys(tok)
    assert set(loaded) == set(state)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key

    x = video(17, size=32, batch=2, seed=5)
    with torch.no_grad():
        z, ref_z = tok.encode(x), ref_encode(x)
        assert z.shape == ref_z.shape == (2, 8, 3, 4, 4)
        assert rel_err(z, ref_z) <= fp32_bound(tok.encoder)
        out, ref_out = tok.decode(ref_z), ref_decode(ref_z)
        assert out.shape == ref_out.shape == x.shape
        assert rel_err(out, ref_out) <= fp32_bound(tok.decoder)
        assert ref_z.std() > 0.1 and ref_out.abs().max() > 0.1  # not a degenerate reference

        # the files' own traced forward (the released layout: the encoder returns (latent, (zero, zero)))
        traced = torch.jit.load(str(folder / ENCODER_FILE), map_location="cpu")(x)
        assert isinstance(traced, tuple) and len(traced) == 2
        assert rel_err(tok.encoder(x), traced[0]) <= fp32_bound(tok.encoder)


def test_load_in_bf16_keeps_integer_buffers(fixture_dir):
    folder, _ = fixture_dir
    tok = load_tokenizer(folder, TINY, device="cpu", dtype=torch.bfloat16)
    assert tok.dtype == torch.bfloat16 and tok.latent_mean.dtype == torch.bfloat16
    assert tok.encoder.encoder.patcher3d.wavelets.dtype == torch.bfloat16  # as the original's .to(bf16)
    assert tok.encoder.encoder.patcher3d._arange.dtype == torch.int64
    assert tok.encoder.encoder.patcher3d.patch_size_buffer.dtype == torch.int32
    _, ref_encode, _ = reference_from_files(folder)
    x = video(9, seed=6)
    with torch.no_grad():
        z = tok.encode(x)
        assert z.dtype == torch.bfloat16
        # bf16 keeps 8 significant bits (unit roundoff u = 2^-8): the weights and every layer's output round once
        # each, with independent signs, so over L convolutions in series the relative error grows like
        # sqrt(2L) u (about 0.045 for the encoder's 66); the bar is twice that estimate.
        L = sum(isinstance(m, torch.nn.Conv3d) for m in tok.encoder.modules())
        assert rel_err(z.float(), ref_encode(x)) < 2 * (2 * L) ** 0.5 * 2.0**-8
        assert tok.decode(z).dtype == torch.bfloat16


def test_missing_file_is_a_checkpoint_error(fixture_dir, tmp_path):
    folder, _ = fixture_dir
    for name in (ENCODER_FILE, DECODER_FILE, MEAN_STD_FILE):
        partial = tmp_path / name.replace(".", "_")
        shutil.copytree(folder, partial)
        (partial / name).unlink()
        with pytest.raises(CheckpointError, match=re.escape(name)):
            load_tokenizer(partial, TINY, device="cpu", dtype=torch.float32)


def test_wrong_keys_are_a_checkpoint_error(fixture_dir, tmp_path):
    folder, _ = fixture_dir
    shutil.copytree(folder, tmp_path / "swapped")
    shutil.copy(folder / DECODER_FILE, tmp_path / "swapped" / ENCODER_FILE)  # decoder keys in encoder.jit
    with pytest.raises(CheckpointError, match=r"encoder\.jit: does not match the tokenizer: \d+ missing keys "
                                              r"\(encoder\.conv_in\.0\.conv3d\.weight.*unexpected keys \(post_quant"):
        load_tokenizer(tmp_path / "swapped", TINY, device="cpu", dtype=torch.float32)

    with pytest.raises(CheckpointError, match=r"encoder\.jit: does not match the tokenizer: \d+ shape mismatches "
                                              r"\(encoder\.conv_in\.0\.conv3d\.weight \[4, 192, 1, 3, 3\] != \[2, 192"):
        load_tokenizer(folder, dataclasses.replace(TINY, channels=2), device="cpu", dtype=torch.float32)

    shutil.copytree(folder, tmp_path / "badstats")
    torch.save({"mean": torch.zeros(40)}, tmp_path / "badstats" / MEAN_STD_FILE)
    with pytest.raises(CheckpointError, match=r"mean_std\.pt: expected a pair"):
        load_tokenizer(tmp_path / "badstats", TINY, device="cpu", dtype=torch.float32)

    (tmp_path / "badstats" / ENCODER_FILE).write_bytes(b"not an archive")
    torch.save((torch.zeros(40), torch.ones(40)), tmp_path / "badstats" / MEAN_STD_FILE)
    with pytest.raises(CheckpointError, match=r"encoder\.jit: not a TorchScript archive"):
        load_tokenizer(tmp_path / "badstats", TINY, device="cpu", dtype=torch.float32)


# ----------------------------------------------------------------------------------------------------------
# Behaviour


@pytest.mark.parametrize("frames", [1, 9, 17, 33])
def test_shapes(tiny, frames):
    x = video(frames, size=24)
    with torch.no_grad():
        z = tiny.encode(x)
        assert z.shape == (1, 8, 1 + (frames - 1) // 8, 3, 3)
        assert tiny.decode(z).shape == x.shape


def test_multiples_of_the_chunk_are_encoded_chunk_by_chunk(tiny):
    x = video(66, size=16)  # 2 x 33 frames -> 2 x 5 latent frames
    with torch.no_grad():
        z = tiny.encode(x)
        assert z.shape == (1, 8, 10, 2, 2)
        assert torch.allclose(z, torch.cat([tiny.encode(x[:, :, :33]), tiny.encode(x[:, :, 33:])], dim=2))
        decoded = tiny.decode(z)
        assert decoded.shape == x.shape
        assert torch.allclose(decoded[:, :, 33:], tiny.decode(z[:, :, 5:]))
    for bad in (video(8, size=16), video(41, size=16), video(9, size=20)):
        with pytest.raises(ValueError):
            tiny.encode(bad)
    with pytest.raises(ValueError):
        tiny.decode(torch.zeros(1, 8, 6, 2, 2))


def test_normalization_is_per_channel_and_per_latent_frame():
    tok = randomize_(VideoTokenizer(TINY), seed=1).eval()
    C, L = 8, 5
    mean = torch.arange(C * L, dtype=torch.float32) / 10  # channel-major: mean[c, j] = (c*L + j)/10
    std = 1 + torch.arange(C * L, dtype=torch.float32).flip(0) / 20
    tok.set_latent_stats(mean, std)
    m, s = mean.view(1, C, L, 1, 1), std.view(1, C, L, 1, 1)
    x = video(17, size=16)
    with torch.no_grad():
        raw = tok.encoder(x)  # 3 latent frames: entries j = 0, 1, 2 of each channel
        z = tok.encode(x)
        # one subtraction and one division in fp32 either way, of values below 10: a few 2^-24 relative
        assert torch.allclose(z, (raw - m[:, :, :3]) / s[:, :, :3], atol=1e-6)
        assert torch.allclose(tok.decode(z), tok.decoder(z * s[:, :, :3] + m[:, :, :3]), atol=1e-6)


def test_encoder_is_causal(tiny):
    x = video(17, size=16)
    with torch.no_grad():
        z = tiny.encode(x)
        for frame, first_changed in ((1, 1), (8, 1), (9, 2), (16, 2)):
            y = x.clone()
            y[:, :, frame] = -y[:, :, frame]
            zy = tiny.encode(y)  # latent frame j holds pixel frames 8j-7..8j
            assert torch.equal(zy[:, :, :first_changed], z[:, :, :first_changed]), frame
            assert not torch.allclose(zy[:, :, first_changed], z[:, :, first_changed]), frame


def test_decoder_is_causal(tiny):
    z = torch.randn(1, 8, 3, 2, 2, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = tiny.decode(z)
        w = z.clone()
        w[:, :, 2] += 1
        changed = tiny.decode(w)  # latent frame 2 -> pixel frames 9..16
    assert torch.equal(changed[:, :, :9], out[:, :, :9])
    assert not torch.allclose(changed[:, :, 9], out[:, :, 9])
