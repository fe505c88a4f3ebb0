"""The Predict1 diffusion network and its checkpoint loader, on tiny real architectures (CPU, fp32)."""

from __future__ import annotations

import dataclasses
import enum
import types

import pytest
import torch
import torch.nn.functional as F

import cosmos_plugins.predict1.params
from cosmos_cli.errors import CheckpointError
from cosmos_plugins.predict1.checkpoint import (
    diffusers_key,
    load_network,
    random_state_dict,
    write_random_checkpoint,
)
from cosmos_plugins.predict1.network import (
    RopePosition3D,
    VideoExtendGeneralDIT,
    block_num_params,
    num_params,
)
from cosmos_plugins.predict1.params import DiTParams

# Head dim 32: RoPE split dim_h = dim_w = 10, dim_t = 12. h and w extrapolation differ to catch an axis swap.
TINY = DiTParams(model_channels=64, num_blocks=2, num_heads=2, mlp_ratio=4.0, in_channels=4, out_channels=4,
                 crossattn_emb_channels=32, max_img_h=32, max_img_w=32, max_frames=8, adaln_lora_dim=8,
                 rope_h_extrapolation_ratio=1.0, rope_w_extrapolation_ratio=2.0, rope_t_extrapolation_ratio=2.0)
P7B = DiTParams()
P14B = DiTParams(model_channels=5120, num_blocks=36, num_heads=40, rope_h_extrapolation_ratio=2.0,
                 rope_w_extrapolation_ratio=2.0, rope_t_extrapolation_ratio=2.0)
T, H, W, M = 3, 8, 12, 12  # latent frames, height, width; text tokens


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def make_inputs(batch: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cond = torch.zeros(batch, 1, T, H, W)
    cond[:, :, 0] = 1.0  # the first latent frame is the conditioning frame
    return dict(
        x=torch.randn(batch, TINY.in_channels, T, H, W, generator=g),
        crossattn_emb=torch.randn(batch, M, TINY.crossattn_emb_channels, generator=g),
        condition_video_input_mask=cond,
        padding_mask=(torch.rand(1, 1, 8 * H, 8 * W, generator=g) > 0.7).float(),  # pixel-size, resized inside
    )


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    state = write_random_checkpoint(path, TINY, seed=0)
    return path, state


@pytest.fixture(scope="module")
def model(ckpt):
    return load_network(ckpt[0], TINY, device="cpu", dtype=torch.float32, rope_mode="fp32")


# ---------------------------------------------------------------------------------------------------------
# Parameters


@pytest.mark.parametrize("params, total, keys", [(P7B, 7_236_208_640, 570), (P14B, 14_267_169_792, 730)])
def test_param_count_matches_meta_model(params, total, keys):
    with torch.device("meta"):
        net = VideoExtendGeneralDIT(params)
    assert num_params(params) == sum(p.numel() for p in net.parameters()) == total
    assert block_num_params(params) == sum(p.numel() for p in net.blocks.block0.parameters())
    assert len(net.state_dict()) == keys  # the file has 4 more: net.pos_embedder.seq and 3 logvar.* keys
    assert len(random_state_dict(TINY)) == len(VideoExtendGeneralDIT(TINY).state_dict()) + 4


@pytest.mark.parametrize("change", [
    dict(num_heads=3),  # 64 channels do not split into 3 heads
    dict(model_channels=16, num_heads=2),  # head dim 8: dim_h = 8//6*2 = 2 leaves one RoPE frequency
    dict(model_channels=42, num_heads=2),  # odd head dim
    dict(max_img_h=33),  # not divisible by the spatial patch
    dict(mlp_ratio=0.0),
    dict(num_blocks=0),
])
def test_invalid_params_raise(change):
    with pytest.raises(ValueError):
        dataclasses.replace(TINY, **change)


def test_smallest_head_dim_is_valid():
    assert dataclasses.replace(TINY, model_channels=48, num_heads=4).rope_dims == (4, 4)


def test_network_accepts_and_validates_the_specs_params():
    spec_params = cosmos_plugins.predict1.params.DiTParams(**dataclasses.asdict(TINY))
    assert VideoExtendGeneralDIT(spec_params).params == TINY
    with pytest.raises(ValueError, match="num_heads"):
        VideoExtendGeneralDIT(dataclasses.replace(spec_params, num_heads=3))


def test_invalid_rope_mode_raises():
    with pytest.raises(ValueError, match="rope_mode"):
        VideoExtendGeneralDIT(TINY, rope_mode="fp16")


# ---------------------------------------------------------------------------------------------------------
# Parity with diffusers


@pytest.fixture(scope="module")
def diffusers_model(ckpt):
    # the test extra has diffusers, and conftest refuses to run in CI without it: parity fails, never skips
    import diffusers.models.transformers.transformer_cosmos as tc
    if not hasattr(tc, "transforms"):  # torchvision has no CPU build here: shim its one NEAREST resize
        class InterpolationMode(enum.Enum):
            NEAREST = "nearest"

        def resize(x, size, interpolation=None):
            return F.interpolate(x, size=list(size), mode="nearest")

        tc.transforms = types.SimpleNamespace(InterpolationMode=InterpolationMode,
                                              functional=types.SimpleNamespace(resize=resize))
    p = TINY
    net = tc.CosmosTransformer3DModel(
        in_channels=p.in_channels + 1, out_channels=p.out_channels, num_attention_heads=p.num_heads,
        attention_head_dim=p.model_channels // p.num_heads, num_layers=p.num_blocks, mlp_ratio=p.mlp_ratio,
        text_embed_dim=p.crossattn_emb_channels, adaln_lora_dim=p.adaln_lora_dim,
        max_size=(p.max_frames, p.max_img_h, p.max_img_w), patch_size=(p.patch_temporal, p.patch_spatial, p.patch_spatial),
        rope_scale=(p.rope_t_extrapolation_ratio, p.rope_h_extrapolation_ratio, p.rope_w_extrapolation_ratio),
        concat_padding_mask=True, extra_pos_embed_type="learnable",
    ).eval()
    state = {diffusers_key(k.removeprefix("net.")): v for k, v in ckpt[1].items()
             if k.startswith("net.") and k != "net.pos_embedder.seq"}
    net.load_state_dict(state, strict=True)
    for block in net.transformer_blocks:  # the original's q/k RMSNorm eps is 1e-6, diffusers' default 1e-5
        for attn in (block.attn1, block.attn2):
            attn.norm_q.eps = attn.norm_k.eps = 1e-6
    return net


@pytest.mark.parametrize("fps", [24, 30])
def test_parity_with_diffusers(model, diffusers_model, fps):
    inputs = make_inputs()
    tables = model.prepare(T, H, W, fps)
    for c_noise in (1.09, 0.2, -1.8):
        t = torch.tensor([c_noise])
        with torch.no_grad():
            ours = model(inputs["x"], t, inputs["crossattn_emb"], fps, inputs["condition_video_input_mask"],
                         inputs["padding_mask"], tables=tables)
            ref = diffusers_model(hidden_states=inputs["x"], timestep=t, encoder_hidden_states=inputs["crossattn_emb"],
                                  fps=fps, condition_mask=inputs["condition_video_input_mask"],
                                  padding_mask=inputs["padding_mask"]).sample
        assert ours.shape == ref.shape == (1, TINY.out_channels, T, H, W)
        assert ref.std() > 0.1  # a non-degenerate output
        # Both fp32, the same arithmetic in another order (fused vs separate projections, other kernels): a
        # length-K fp32 sum moves by at most K * 2^-24 of its sum of |terms|, K <= 128 in this tiny network
        # (7.6e-6 worst case per layer, typically sqrt(K) * 2^-24 = 7e-7); a wrong operation is off by order one.
        assert rel_err(ours, ref) <= 1e-5, (c_noise, fps, rel_err(ours, ref))


# ---------------------------------------------------------------------------------------------------------
# Forward


def test_batched_forward_equals_two_single_forwards(model):
    a, b = make_inputs(seed=1), make_inputs(seed=2)
    t = torch.tensor([0.7, 0.7])
    with torch.no_grad():
        both = model(torch.cat([a["x"], b["x"]]), t, torch.cat([a["crossattn_emb"], b["crossattn_emb"]]),
                     torch.tensor([24.0, 24.0]), torch.cat([a["condition_video_input_mask"]] * 2), None)
        one = model(a["x"], t[:1], a["crossattn_emb"], 24.0, a["condition_video_input_mask"], None)
        two = model(b["x"], t[:1], b["crossattn_emb"], 24.0, b["condition_video_input_mask"], None)
    # batch 2 and batch 1 give the GEMMs other shapes, so other blockings: fp32 reassociation, as in the parity test
    assert rel_err(both[:1], one) <= 1e-5
    assert rel_err(both[1:], two) <= 1e-5


def test_prepared_tables_equal_computed_ones(model):
    inputs = make_inputs()
    t = torch.tensor([0.3])
    with torch.no_grad():
        direct = model(inputs["x"], t, inputs["crossattn_emb"], 30.0, inputs["condition_video_input_mask"])
        reused = model(inputs["x"], t, inputs["crossattn_emb"], None, inputs["condition_video_input_mask"],
                       tables=model.prepare(T, H, W, 30.0))
    assert torch.equal(direct, reused)


def test_bad_sizes_and_fps_raise(model):
    with pytest.raises(ValueError, match="exceeds"):
        model.prepare(T, 2 * TINY.max_img_h, W, 24.0)
    with pytest.raises(ValueError, match="divisible"):
        model.prepare(T, H + 1, W, 24.0)
    with pytest.raises(ValueError, match="fps"):
        model.prepare(T, H, W, torch.tensor([24.0, 30.0]))
    with pytest.raises(ValueError, match="prepared for"):
        inputs = make_inputs()
        model(inputs["x"], torch.tensor([0.0]), inputs["crossattn_emb"], 24.0, inputs["condition_video_input_mask"],
              tables=model.prepare(1, H, W, 24.0))


def test_bf16_forward_is_close_to_fp32(ckpt, model):
    net16 = load_network(ckpt[0], TINY, device="cpu", dtype=torch.bfloat16, rope_mode="fp32")
    inputs = make_inputs()
    t = torch.tensor([0.5])
    with torch.no_grad():
        ref = model(inputs["x"], t, inputs["crossattn_emb"], 24.0, inputs["condition_video_input_mask"])
        out = net16(inputs["x"], t, inputs["crossattn_emb"], 24.0, inputs["condition_video_input_mask"])
    assert out.dtype == torch.bfloat16
    assert rel_err(out.float(), ref) < 0.05


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_forward_matches_cpu_fp32(ckpt, model):
    net = load_network(ckpt[0], TINY, device="cuda", dtype=torch.bfloat16, rope_mode="fp32")
    inputs = make_inputs(batch=2)
    t = torch.tensor([0.5, 0.5])
    with torch.no_grad():
        ref = model(inputs["x"], t, inputs["crossattn_emb"], 24.0, inputs["condition_video_input_mask"])
        out = net(*(v.cuda() for v in (inputs["x"], t, inputs["crossattn_emb"])), 24.0,
                  inputs["condition_video_input_mask"].cuda())
    assert rel_err(out.float().cpu(), ref) < 0.05


# ---------------------------------------------------------------------------------------------------------
# RoPE: compat (bf16, as released) versus fp32


def _bf16_reference_angles(p: DiTParams, T: int, H: int, W: int, fps: float) -> torch.Tensor:
    """The released code's table, step by step: float buffers cast to bf16, every op then in bf16."""
    bf = torch.bfloat16
    dim_h, dim_t = p.head_dim // 6 * 2, p.head_dim - 2 * (p.head_dim // 6 * 2)
    seq = torch.arange(max(p.pos_lens), dtype=torch.float32).to(bf)
    range_h = (torch.arange(0, dim_h, 2)[: dim_h // 2].float() / dim_h).to(bf)
    range_t = (torch.arange(0, dim_t, 2)[: dim_t // 2].float() / dim_t).to(bf)
    theta_h = torch.tensor(10000.0 * p.rope_h_extrapolation_ratio ** (dim_h / (dim_h - 2))).to(bf)
    theta_w = torch.tensor(10000.0 * p.rope_w_extrapolation_ratio ** (dim_h / (dim_h - 2))).to(bf)
    theta_t = torch.tensor(10000.0 * p.rope_t_extrapolation_ratio ** (dim_t / (dim_t - 2))).to(bf)
    f_h = (theta_h.float() ** range_h.float()).to(bf).float().reciprocal().to(bf)
    f_w = (theta_w.float() ** range_h.float()).to(bf).float().reciprocal().to(bf)
    f_t = (theta_t.float() ** range_t.float()).to(bf).float().reciprocal().to(bf)
    pos_t = (seq[:T].float() / torch.tensor(fps).to(bf).float()).to(bf)
    pos_t = (pos_t.float() * p.base_fps).to(bf)
    a_t = (pos_t.float()[:, None] * f_t.float()[None]).to(bf).float()
    a_h = (seq[:H].float()[:, None] * f_h.float()[None]).to(bf).float()
    a_w = (seq[:W].float()[:, None] * f_w.float()[None]).to(bf).float()
    rows = [torch.cat([a_t[t], a_h[h], a_w[w]] * 2) for t in range(T) for h in range(H) for w in range(W)]
    return torch.stack(rows)


@pytest.mark.parametrize("fps", [24.0, 30.0, 29.97])
def test_compat_rope_is_the_bf16_computation(fps):
    p = dataclasses.replace(TINY, max_img_h=128, max_img_w=128)  # positions up to 63: coarse bf16 steps
    rope = RopePosition3D(p, "compat")
    ours = rope.angles(4, 40, 64, fps)
    assert torch.equal(ours, _bf16_reference_angles(p, 4, 40, 64, fps))
    assert torch.equal(ours, ours.bfloat16().float())  # every angle is a bf16 value
    exact = RopePosition3D(p, "fp32").angles(4, 40, 64, fps)
    assert 0 < (ours - exact).abs().max() < 0.25


@pytest.mark.parametrize("params, expected", [(P7B, (0.074, 0.148, 0.026)), (P14B, (0.087, 0.285, 0.026))])
def test_compat_rope_error_at_full_size(params, expected):
    """Spec 3.2.5: max angle error of the bf16 table at 16 x 44 x 80 tokens, per axis (h, w, t)."""
    compat = RopePosition3D(params, "compat").angles(16, 44, 80, 24.0).view(16, 44, 80, -1)
    exact = RopePosition3D(params, "fp32").angles(16, 44, 80, 24.0).view(16, 44, 80, -1)
    h, t = params.rope_dims[0] // 2, params.rope_dims[1] // 2  # frequencies per axis; layout [t, h, w] * 2
    err = (compat - exact).abs()
    axes = (err[..., t:t + h], err[..., t + h:t + 2 * h], err[..., :t])
    for got, want in zip(axes, expected, strict=True):
        # the expected maxima are the spec's figures to 3 decimals (half a unit: 5e-4); the bf16 table itself
        # is computed in fp32 then rounded, so the max may sit on a neighbouring token on another CPU: 2e-3
        # is 1/4 of one bf16 ulp at angles near 1 (2^-7) and far below the 0.07-0.29 being checked
        assert got.max().item() == pytest.approx(want, abs=2e-3)


# ---------------------------------------------------------------------------------------------------------
# Loader


def test_loaded_weights_equal_the_file(ckpt, model):
    state = ckpt[1]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state["net." + name]), name
    assert torch.equal(model.pos_embedder.seq, torch.arange(max(TINY.pos_lens), dtype=torch.float32))


@pytest.mark.parametrize("wrapper", ["model", "state_dict"])
def test_wrapped_state_dicts_load(tmp_path, wrapper, ckpt, model):
    path = tmp_path / "model.pt"
    write_random_checkpoint(path, TINY, seed=0, wrapper=wrapper)
    net = load_network(path, TINY, device="cpu", dtype=torch.float32)
    assert torch.equal(net.final_layer.linear.weight, model.final_layer.linear.weight)


def test_unprefixed_keys_and_extra_state_are_accepted(tmp_path, model):
    state = {k.removeprefix("net."): v for k, v in random_state_dict(TINY).items()}
    state["blocks.block0.blocks.0.block.attn.attn_op._extra_state"] = torch.zeros(4, dtype=torch.uint8)
    path = tmp_path / "model.pt"
    torch.save(state, path)
    net = load_network(path, TINY, device="cpu", dtype=torch.float32)
    assert torch.equal(net.x_embedder.proj[1].weight, model.x_embedder.proj[1].weight)


def test_safetensors_loads_in_bf16_with_nothing_on_meta(tmp_path, model):
    path = tmp_path / "model.safetensors"
    write_random_checkpoint(path, TINY, seed=0)
    net = load_network(path, TINY, device="cpu", dtype=torch.bfloat16)
    tensors = list(net.parameters()) + list(net.buffers())
    assert not any(t.is_meta for t in tensors)
    assert {p.dtype for p in net.parameters()} == {torch.bfloat16}
    assert not any(p.requires_grad for p in net.parameters())
    assert torch.equal(net.affline_norm.weight, model.affline_norm.weight.bfloat16())


def _broken(tmp_path, edit) -> str:
    state = random_state_dict(TINY)
    edit(state)
    path = tmp_path / "model.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_network(path, TINY, device="cpu", dtype=torch.float32)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


def test_missing_key_raises(tmp_path):
    message = _broken(tmp_path, lambda s: s.pop("net.blocks.block1.blocks.2.block.layer2.weight"))
    assert "1 missing keys (net.blocks.block1.blocks.2.block.layer2.weight)" in message


def test_unexpected_key_raises(tmp_path):
    message = _broken(tmp_path, lambda s: s.update({"net.blocks.block2.blocks.0.adaLN_modulation.1.weight": torch.ones(1)}))
    assert "1 unexpected keys (net.blocks.block2.blocks.0.adaLN_modulation.1.weight)" in message


def test_wrong_shape_raises(tmp_path):
    message = _broken(tmp_path, lambda s: s.update({"net.final_layer.linear.weight": torch.ones(3, 64)}))
    assert "1 shape mismatches (net.final_layer.linear.weight [3, 64] != [16, 64])" in message


def test_key_both_with_and_without_prefix_raises(tmp_path):
    message = _broken(tmp_path, lambda s: s.update({"affline_norm.weight": s["net.affline_norm.weight"]}))
    assert "1 unexpected keys (affline_norm.weight)" in message


def test_many_problems_are_counted(tmp_path):
    message = _broken(tmp_path, lambda s: [s.pop(k) for k in list(s) if ".block1." in k])
    assert "20 missing keys" in message and ", ...)" in message


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"net.x": types.SimpleNamespace(a=1)}, path)
    with pytest.raises(CheckpointError, match="refusing"):
        load_network(path, TINY, device="cpu")


def test_missing_file_raises(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_network(tmp_path / "nope.pt", TINY, device="cpu")
