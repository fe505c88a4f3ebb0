"""Speed options on tiny models (CPU): the exact-mode paths give the plain path's output, the fast-mode options
change what they should and nothing else, FP8 rounding stays within e4m3's bounds, and the CLI takes or refuses
the options with one-line errors."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from cosmos_cli.errors import UsageError
from cosmos_cli.fastmode import (
    DEFAULT_GUIDANCE_TRUNC_FRACTION,
    DEFAULT_STEP_CACHE_THRESHOLD,
    FastMode,
    check_fast,
    parse_fast,
)
from cosmos_cli.jobs import GenerationJob
from cosmos_cli.planner import plan_memory
from cosmos_cli.progress import NullProgress
from cosmos_plugins.predict1 import fast as F
from cosmos_plugins.predict1 import offload as O
from cosmos_plugins.predict1 import sampler as S
from cosmos_plugins.predict1.network import AdaLNSubBlock, FeedForward, VideoExtendGeneralDIT, gelu, modulate
from cosmos_plugins.predict1.pipeline import Predict1Pipeline
from cosmos_plugins.predict1.specs import DIT_TINY, PREDICT1_TINY

LATENT = (1, DIT_TINY.in_channels, 3, 8, 8)  # 3 x 4 x 4 = 48 tokens


# ----------------------------------------------------------------------------------------------------------
# Parsing --fast


@pytest.mark.parametrize("text, expected", [
    (None, FastMode()),
    ("", FastMode()),
    ("none", FastMode()),
    ("step-cache", FastMode(step_cache=DEFAULT_STEP_CACHE_THRESHOLD)),
    ("guidance-trunc", FastMode(guidance_trunc=DEFAULT_GUIDANCE_TRUNC_FRACTION)),
    ("step-cache=0.2, guidance_trunc=0.3", FastMode(step_cache=0.2, guidance_trunc=0.3)),
    ("fp8", FastMode(fp8="scaled_mm")),
    ("FP8-SIM,step-cache=0", FastMode(step_cache=0.0, fp8="simulate")),
])
def test_parse_fast(text, expected):
    mode = parse_fast(text)
    assert mode == expected
    assert parse_fast(mode.describe()) == mode
    assert mode.exact == (expected == FastMode())


@pytest.mark.parametrize("text, message", [
    ("turbo", "unknown option 'turbo'; choose from step-cache, guidance-trunc, fp8, fp8-sim"),
    ("step-cache,step-cache=0.2", "step-cache is given twice"),
    ("step-cache=fast", "step-cache=fast: the value must be a number"),
    ("step-cache=-1", "the threshold must be a number >= 0"),
    ("step-cache=nan", "the threshold must be a number >= 0"),
    ("guidance-trunc=1", "the fraction must be in [0, 1)"),
    ("fp8=2", "fp8 takes no value"),
    ("fp8,fp8-sim", "choose fp8 or fp8-sim, not both"),
])
def test_parse_fast_refuses(text, message):
    with pytest.raises(UsageError) as err:
        parse_fast(text)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_check_fast_refuses_fp8_without_fp8_hardware():
    check_fast(parse_fast("step-cache,guidance-trunc,fp8-sim"), "cpu")
    with pytest.raises(UsageError, match="fp8 needs a GPU with FP8 tensor cores.*the device is cpu") as err:
        check_fast(parse_fast("fp8"), "cpu")
    assert "fp8-sim" in err.value.hint
    with pytest.raises(UsageError, match="--num-gpus > 1"):
        check_fast(parse_fast("step-cache"), "cuda", num_gpus=2)
    check_fast(FastMode(), "cuda", num_gpus=2)  # exact mode: nothing to refuse


def test_guided_step_count():
    assert S.guided_step_count(35, None) == S.guided_step_count(35, 0.0) == 35
    assert S.guided_step_count(35, 0.25) == 26  # 8.75 -> the last 9 steps without guidance
    assert S.guided_step_count(4, 0.5) == 2
    with pytest.raises(ValueError):
        S.guided_step_count(10, 1.0)


# ----------------------------------------------------------------------------------------------------------
# The pipeline's denoising stage with each option (a random tiny network)


def _network(seed: int = 0) -> VideoExtendGeneralDIT:
    torch.manual_seed(seed)
    net = VideoExtendGeneralDIT(DIT_TINY, rope_mode="fp32").eval().requires_grad_(False)
    for p in net.parameters():
        p.data.normal_(0, 0.3)
    return net


@pytest.fixture(scope="module")
def net() -> VideoExtendGeneralDIT:
    return _network()


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    latent = (torch.randn(*LATENT, generator=g) * 0.5).to(torch.bfloat16)
    text = torch.randn(2, 8, DIT_TINY.crossattn_emb_channels, generator=g)
    return latent, text


def _denoise(net, inputs, fast: FastMode = FastMode(), *, steps: int = 8, strategy: str = "resident",
             compile: bool = False):
    """The pipeline's denoising stage (the product's model_fn, sampler and options): (latent, forward counts)."""
    plan = plan_memory(PREDICT1_TINY, None, strategy=strategy, upsampler=False, guardrail=False)
    pipe = Predict1Pipeline(PREDICT1_TINY, plan, torch.device("cpu"), copy.deepcopy(net), None, None,
                            fast=fast, compile=compile)
    job = GenerationJob(visual_input=Path("x.png"), prompt="p", num_steps=steps, seed=5)
    latent, text = inputs
    try:
        with torch.inference_mode():
            out = pipe.denoise(job, latent, 1, text, NullProgress())
        return out, pipe.denoise_stats
    finally:
        pipe.close()


@pytest.fixture(scope="module")
def exact(net, inputs):
    return _denoise(net, inputs)


def test_exact_mode_counts_every_forward(exact):
    assert exact[1] == {"branch_forwards": 16, "full_forwards": 16, "cached_forwards": 0, "blocks_run": 32}


def test_step_cache_threshold_zero_is_exact(net, inputs, exact):
    out, stats = _denoise(net, inputs, FastMode(step_cache=0.0))
    assert torch.equal(out, exact[0])
    assert stats == exact[1]


def test_step_cache_large_threshold_skips_blocks(net, inputs, exact):
    out, stats = _denoise(net, inputs, FastMode(step_cache=1e9))
    cacheable = 8 - F.CACHE_FIRST_STEPS - F.CACHE_LAST_STEPS
    assert stats["branch_forwards"] == 16 and stats["cached_forwards"] == 2 * cacheable  # both branches
    assert stats["blocks_run"] == 2 * (8 - cacheable) * 2 + 2 * cacheable * 1
    assert torch.isfinite(out.float()).all() and not torch.equal(out, exact[0])
    assert ((out.float() - exact[0].float()).norm() / exact[0].float().norm()).item() < 1.0


def test_step_cache_keeps_each_branch_apart():
    """Batched branches skip together, each adding its own cached residual; a branch computed alone later
    (guidance truncation) goes on with its own state."""
    cache = F.StepCache(1e9, num_steps=4, num_blocks=3, first_steps=1, last_steps=0)
    offsets = torch.tensor([1.0, 100.0]).reshape(2, 1, 1)
    calls = []

    def run_blocks(x, start, stop):  # block i adds (i + 1) * row offset
        calls.append((start, stop))
        return x + sum(i + 1 for i in range(start, stop)) * offsets[: x.shape[0]]

    x = torch.zeros(2, 3, 4)
    full = cache.for_branches("cond", "uncond")(x, run_blocks)
    assert calls == [(0, 1), (1, 3)] and torch.equal(full, run_blocks(x, 0, 3))
    calls.clear()
    skipped = cache.for_branches("cond", "uncond")(x, run_blocks)
    assert calls == [(0, 1)] and torch.equal(skipped, full)  # rest reused per row: 5 and 500
    cond_only = cache.for_branches("cond")(x[:1], run_blocks)
    assert torch.equal(cond_only, full[:1])
    assert cache.stats() == {"full_forwards": 2, "cached_forwards": 3, "blocks_run": 9}
    assert cache.states["cond"].calls == 3 and cache.states["uncond"].calls == 2


def test_guidance_truncation(net, inputs, exact):
    out, stats = _denoise(net, inputs, FastMode(guidance_trunc=0.0))
    assert torch.equal(out, exact[0]) and stats == exact[1]
    out, stats = _denoise(net, inputs, FastMode(guidance_trunc=0.25))
    assert stats["branch_forwards"] == 16 - 2  # the last 2 of 8 steps: the prompt's branch only
    assert torch.isfinite(out.float()).all() and not torch.equal(out, exact[0])


def test_fp8_sim_denoises_close_to_exact(net, inputs, exact):
    out, stats = _denoise(net, inputs, FastMode(fp8="simulate"))
    assert stats == exact[1]
    err = ((out.float() - exact[0].float()).norm() / exact[0].float().norm()).item()
    assert 0 < err < 0.3  # ~2.5% per product on an untrained network, magnified by guidance 7 (x15) over 8 steps


@pytest.mark.parametrize("strategy", ["stream", "stream-sequential", "stream-lean"])
def test_fast_options_under_other_memory_strategies(net, inputs, strategy):
    """Streamed blocks (skipped blocks leave prefetched blocks in the slots: the next forward must still get the
    right weights), the branches one after the other (a cache state per branch), the lean forward: the same
    video as resident, bit for bit when the branches are batched, else within fp32 rounding."""
    fast = FastMode(step_cache=1e9, guidance_trunc=0.25)
    resident = _denoise(net, inputs, fast)
    out, stats = _denoise(net, inputs, fast, strategy=strategy)
    # 8 steps: 0-2 full, 3-5 cached (both branches), 6-7 (last steps) full, the prompt's branch only
    assert stats == resident[1] == {"branch_forwards": 14, "full_forwards": 8, "cached_forwards": 6,
                                    "blocks_run": 22}
    rel = ((out.float() - resident[0].float()).norm() / resident[0].float().norm()).item()
    assert rel == 0.0 if strategy == "stream" else rel < 1e-3, rel


@pytest.mark.parametrize("strategy", ["stream-sequential", "stream-lean"])
def test_fp8_under_other_memory_strategies(net, inputs, strategy):
    """FP8 (simulated: the same e4m3 values and scales as scaled_mm) with the branches one after the other and with
    the lean forward, whose self-attention calls the sub-block's pieces itself (its linears quantize their own
    input; the MLP still goes through Fp8Gelu): the resident FP8 video within fp32 rounding."""
    fast = FastMode(fp8="simulate")
    resident = _denoise(net, inputs, fast, steps=4)
    out, stats = _denoise(net, inputs, fast, steps=4, strategy=strategy)
    assert stats == resident[1]
    rel = ((out.float() - resident[0].float()).norm() / resident[0].float().norm()).item()
    assert rel < 1e-3, rel


def test_streamed_forward_with_skipped_blocks_uses_the_right_weights():
    torch.manual_seed(0)
    blocks = nn.ModuleList(nn.Linear(4, 4, bias=False) for _ in range(5))
    holder = nn.Module()
    holder.blocks = blocks
    x = torch.randn(2, 4)
    expected = {n: x for n in (1, 5)}
    for n in (1, 5):
        for b in blocks[:n]:
            expected[n] = b(expected[n])
    placed = O.place(holder, "stream", "cpu", blocks=list(blocks))
    with placed.active():
        for n in (1, 1, 5, 1, 5, 5, 1):  # forwards that stop after block 0, and full ones
            y = x
            for b in blocks[:n]:
                y = b(y)
            assert torch.equal(y, expected[n]), n


# ----------------------------------------------------------------------------------------------------------
# FP8 numerics


def test_quantize_rows_round_trip_bounds():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(64, 256, generator=g) * torch.logspace(-3, 3, 64).reshape(64, 1)  # rows of very different size
    t[5] = 0
    q, scale = F.quantize_rows(t)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (64, 1)
    back = F.dequantize(q, scale)
    assert torch.equal(back[5], torch.zeros(256))
    amax = t.abs().amax(-1, keepdim=True)
    assert torch.allclose(back.abs().amax(-1, keepdim=True), amax, rtol=2**-4)  # the largest is kept (~exactly)
    # e4m3: 3 mantissa bits -> relative error <= 2^-4 for normal values; subnormal spacing 2^-9 (of scale)
    bound = torch.maximum(t.abs() * 2**-4, scale * 2**-10)
    assert ((back - t).abs() <= bound * (1 + 1e-6)).all()
    rel = ((back - t).norm() / t.norm()).item()
    assert 0.005 < rel < 0.05  # ~2.5% for Gaussian rows


def test_quantize_rows_keeps_representable_values_and_saturates():
    vals = torch.tensor([[448.0, -448.0, 1.0, 0.5, -2.0, 0.0, 240.0, 2**-6]])
    q, scale = F.quantize_rows(vals)
    assert scale.item() == 1.0 and torch.equal(F.dequantize(q, scale), vals)


def test_fp8_linear_matches_the_reference_and_is_close_to_float():
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(64, 48, bias=False)
    with torch.no_grad():
        lin.weight.normal_(0, 0.1, generator=g)
    x = torch.randn(2, 10, 64, generator=g)
    fp8 = F.Fp8Linear(lin.weight, "simulate")
    y = fp8(x)
    assert y.shape == (2, 10, 48) and y.dtype == x.dtype
    xq, xs = F.quantize_rows(x.reshape(-1, 64))
    wq, ws = F.quantize_rows(lin.weight)
    manual = (F.dequantize(xq, xs) @ F.dequantize(wq, ws).t()).reshape(2, 10, 48)
    assert torch.equal(fp8.qweight, wq) and torch.equal(fp8.weight_scale, ws.t())
    # the same dequantized fp32 operands, multiplied by another kernel: reassociation over K = 64 (64 * 2^-24)
    assert torch.allclose(y, manual, rtol=1e-5, atol=1e-6)
    rel = ((y - lin(x)).norm() / lin(x).norm()).item()
    assert rel < 0.06
    with pytest.raises(ValueError, match="divisible by 16"):
        F.Fp8Linear(torch.randn(10, 64), "scaled_mm")


def test_to_fp8_replaces_the_blocks_matrix_products_only():
    net = _network()
    n = F.to_fp8(net, "simulate")
    assert n == DIT_TINY.num_blocks * (4 + 4 + 2)  # self- and cross-attention q, k, v, out; MLP in, out
    for sub in net.modules():
        if hasattr(sub, "adaLN_modulation"):
            assert all(not isinstance(m, F.Fp8Linear) for m in sub.adaLN_modulation.modules())
    assert isinstance(net.x_embedder.proj[1], nn.Linear) and isinstance(net.t_embedder[1].linear_1, nn.Linear)


def _forward_inputs(device: str = "cpu", dtype: torch.dtype = torch.float32):
    g = torch.Generator(device).manual_seed(4)
    x = torch.randn(2, *LATENT[1:], generator=g, device=device).to(dtype)
    text = torch.randn(2, 8, DIT_TINY.crossattn_emb_channels, generator=g, device=device).to(dtype)
    mask = torch.zeros(1, 1, *LATENT[2:], device=device, dtype=dtype)
    mask[:, :, :1] = 1
    return x, torch.tensor([0.3, 0.3], device=device, dtype=dtype), text, mask


def _plain_fp8_inputs(net: VideoExtendGeneralDIT) -> VideoExtendGeneralDIT:
    """``net`` with every AdaLN sub-block's modulation and every MLP's GELU back to the plain ones (each FP8 linear
    quantizes its own input)."""
    for sub in net.modules():
        if isinstance(sub, AdaLNSubBlock):
            sub.modulate = modulate
        if isinstance(sub, FeedForward):
            sub.activation = gelu
    return net


def _counting_quantizations(monkeypatch) -> list[int]:
    calls = [0]
    quantize = F.quantize_rows

    def counted(t):
        calls[0] += 1
        return quantize(t)

    monkeypatch.setattr(F, "quantize_rows", counted)
    return calls


def test_fp8_sub_blocks_hand_their_linears_the_input_quantized_once(monkeypatch):
    """to_fp8 gives every AdaLN sub-block an Fp8Modulate and every MLP an Fp8Gelu: the linears get their input as
    QuantizedRows, the e4m3 values each linear computed itself before (simulate: the same products, so the same
    output bit for bit; the GELU's row amax is taken from the row's maximum, the same number here), and the
    self-attention's q, k and v share one quantization instead of three."""
    net = _network()
    F.to_fp8(net, "simulate")
    subs = [m for m in net.modules() if isinstance(m, AdaLNSubBlock)]
    assert len(subs) == 3 * DIT_TINY.num_blocks and all(isinstance(m.modulate, F.Fp8Modulate) for m in subs)
    mlps = [m for m in net.modules() if isinstance(m, FeedForward)]
    assert len(mlps) == DIT_TINY.num_blocks and all(isinstance(m.activation, F.Fp8Gelu) for m in mlps)
    plain = _plain_fp8_inputs(copy.deepcopy(net))
    args = _forward_inputs()
    calls = _counting_quantizations(monkeypatch)
    with torch.inference_mode():
        out = net(*args[:3], 24.0, args[3])
        shared, calls[0] = calls[0], 0
        ref = plain(*args[:3], 24.0, args[3])
    assert torch.equal(out, ref)
    # per block: self-attention's input once (was q, k, v: 3) and its out projection; cross-attention's q (the
    # modulated input), k, v (the text) and out; the MLP's input (its down projection's input is quantized with
    # the GELU, by gelu_quantized: plain, one more quantize_rows)
    assert (shared, calls[0]) == (7 * DIT_TINY.num_blocks, 10 * DIT_TINY.num_blocks)


def _eager_scaled_mm(monkeypatch) -> None:
    """scaled_mm mode on the CPU (skipped where this torch has no CPU ``_scaled_mm``), with the compiled functions
    replaced by the eager ones they compile (no C++ toolchain needed)."""
    try:
        q = torch.ones(16, 16).to(F.FP8)
        torch._scaled_mm(q, q.t(), scale_a=torch.ones(16, 1), scale_b=torch.ones(1, 16), out_dtype=torch.float32)
    except (RuntimeError, NotImplementedError):
        pytest.skip("this torch has no CPU torch._scaled_mm")
    monkeypatch.setattr(F, "_modulate_quantized_compiled", lambda: F.modulate_quantized)
    monkeypatch.setattr(F, "fp8_linear_fused", F.fp8_linear_eager)
    monkeypatch.setattr(F, "_fp8_matmul_compiled", lambda: F.fp8_matmul_scaled_mm)
    monkeypatch.setattr(F, "_gelu_quantized_compiled", lambda: F.gelu_quantized)


def _assert_block_traces_to_itself(net: VideoExtendGeneralDIT, seed: int) -> None:
    """The first block of ``net`` traced by torch.compile with fullgraph (no graph break) and backend "eager" (no
    C++ toolchain) gives its eager output on random inputs."""
    block = net.blocks["block0"]
    tables = net.prepare(*LATENT[2:], 24.0)
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(2, 48, DIT_TINY.model_channels, generator=g)
    emb = torch.randn(2, DIT_TINY.model_channels, generator=g)
    lora = torch.randn(2, 3 * DIT_TINY.model_channels, generator=g)
    text = torch.randn(2, 8, DIT_TINY.crossattn_emb_channels, generator=g)
    args = (h, emb, lora, text, tables.rope, tables.extra_pos)
    with torch.inference_mode():
        eager = block(*args)
        torch._dynamo.reset()
        compiled = torch.compile(block.forward, backend="eager", fullgraph=True)(*args)
    assert torch.equal(compiled, eager)


def test_fp8_modulation_in_scaled_mm_mode_feeds_scaled_mm(monkeypatch):
    """The scaled_mm wiring on the CPU (where this torch has a CPU ``_scaled_mm``), with the compiled functions
    replaced by the eager ones they compile (no C++ toolchain needed): the same products as each linear quantizing
    its own input, bit for bit. The compiled kernels themselves are a GPU test in test_fp8_fused.py."""
    _eager_scaled_mm(monkeypatch)
    net = _network()
    F.to_fp8(net, "scaled_mm")
    plain = _plain_fp8_inputs(copy.deepcopy(net))
    args = _forward_inputs()
    with torch.inference_mode():
        out, ref = net(*args[:3], 24.0, args[3]), plain(*args[:3], 24.0, args[3])
    assert torch.equal(out, ref)  # the same e4m3 values into the same _scaled_mm calls


def test_row_kernels_wiring(monkeypatch):
    """With ``ROW_KERNELS`` on, to_fp8 hands the attention outputs' linears (and only those: two a block) the
    operator ``cosmos_predict1::quantize_rows`` and each MLP's Fp8Gelu ``cosmos_predict1::gelu_quantize_rows`` (on
    the CPU: quantize_rows and gelu_quantized themselves; the GPU's Triton kernels are GPU tests in
    test_fp8_fused.py): the same products as without them, bit for bit, eager and traced in a compiled block (one
    opaque call each: no graph break)."""
    _eager_scaled_mm(monkeypatch)
    plain = _network()
    F.to_fp8(plain, "scaled_mm")
    monkeypatch.setattr(F, "ROW_KERNELS", True)
    net = _network()
    F.to_fp8(net, "scaled_mm")
    with_kernel = [n for n, m in net.named_modules() if isinstance(m, F.Fp8Linear) and m.row_quantize is not None]
    assert len(with_kernel) == 2 * DIT_TINY.num_blocks and all(n.endswith("attn.to_out.0") for n in with_kernel)
    mlps = [m for m in net.modules() if isinstance(m, FeedForward)]
    assert all(m.activation.kernel is not None for m in mlps)
    assert not any(m.row_quantize for m in plain.modules() if isinstance(m, F.Fp8Linear))
    assert not any(m.activation.kernel for m in plain.modules() if isinstance(m, FeedForward))
    x = torch.randn(37, 96).to(torch.bfloat16)
    (q_op, s_op), (q_ref, s_ref) = torch.ops.cosmos_predict1.quantize_rows(x), F.quantize_rows(x)
    assert torch.equal(s_op, s_ref) and torch.equal(q_op.float(), q_ref.float())
    (q_op, s_op), (q_ref, s_ref) = torch.ops.cosmos_predict1.gelu_quantize_rows(x), F.gelu_quantized(x)
    assert torch.equal(s_op, s_ref) and torch.equal(q_op.float(), q_ref.float())
    calls = [0]

    def counted(op):
        return lambda t: calls.__setitem__(0, calls[0] + 1) or op(t)

    for m in net.modules():
        if isinstance(m, F.Fp8Linear) and m.row_quantize is not None:
            m.row_quantize = counted(m.row_quantize)
        if isinstance(m, FeedForward):
            m.activation.kernel = counted(m.activation.kernel)
    args = _forward_inputs()
    with torch.inference_mode():
        assert torch.equal(net(*args[:3], 24.0, args[3]), plain(*args[:3], 24.0, args[3]))
    assert calls[0] == 3 * DIT_TINY.num_blocks  # used: one call per attention output and per MLP
    _assert_block_traces_to_itself(net, seed=6)


def test_fp8_modulation_is_the_plain_one_inside_a_compiled_block():
    """Under --compile the block's graph has the plain modulation (inductor fuses it with each linear's
    quantization); traced with fullgraph (no graph break) and backend "eager" (no C++ toolchain)."""
    net = _network()
    F.to_fp8(net, "simulate")
    _assert_block_traces_to_itself(net, seed=5)


@pytest.mark.gpu
def test_scaled_mm_matches_the_simulation():
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("needs a GPU with FP8 tensor cores")
    g = torch.Generator("cuda").manual_seed(0)
    w = (torch.randn(512, 256, generator=g, device="cuda") * 0.05).to(torch.bfloat16)
    x = torch.randn(4, 100, 256, generator=g, device="cuda").to(torch.bfloat16)
    real, sim = F.Fp8Linear(w, "scaled_mm")(x), F.Fp8Linear(w, "simulate")(x)
    assert ((real.float() - sim.float()).norm() / sim.float().norm()).item() < 5e-3  # bf16 output rounding
    ref = x.float() @ w.float().t()
    assert ((real.float() - ref).norm() / ref.norm()).item() < 0.05


# ----------------------------------------------------------------------------------------------------------
# torch.compile of the blocks (exact mode)


@pytest.mark.slow  # about 30 s of compilation on 2 CPU cores
def test_compiled_blocks_give_the_eager_output(net, inputs, exact):
    try:
        out, stats = _denoise(net, inputs, compile=True, steps=8)
    except Exception as exc:  # noqa: BLE001 - no C++ toolchain / inductor unsupported here
        pytest.skip(f"torch.compile (inductor) is not usable on this machine: {type(exc).__name__}")
    assert stats == exact[1]
    assert ((out.float() - exact[0].float()).norm() / exact[0].float().norm()).item() < 1e-2


# ----------------------------------------------------------------------------------------------------------
# The command line


def test_cli_refuses_bad_fast_options(cli, tmp_path):
    res = cli("generate", "-i", str(tmp_path / "none.png"), "--prompt", "a ball", "--fast", "warp")
    assert res.exit_code == 2 and "unknown option 'warp'" in res.stderr
    res = cli("batch", str(tmp_path / "jobs.jsonl"), "--fast", "guidance-trunc=2")
    assert res.exit_code == 2 and "the fraction must be in [0, 1)" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    from tests.conftest import checkpoint_folder

    return checkpoint_folder(tmp_path_factory.mktemp("checkpoints"), PREDICT1_TINY, seed=0)


def _generate(cli, ckpt, tmp_path, *extra):
    from tests.conftest import make_image

    image = make_image(tmp_path / "in.png", 40, 40)
    return cli("generate", "-i", str(image), "--prompt", "a ball moves left", "--model", "predict1-tiny",
               "--checkpoint-dir", str(ckpt), "--disable-prompt-upsampler", "--disable-guardrail", "--device", "cpu",
               "--num-steps", "6", "--video-save-folder", str(tmp_path / "out"), *extra)


def test_cli_refuses_fp8_on_the_cpu(cli, ckpt, tmp_path):
    res = _generate(cli, ckpt, tmp_path, "--fast", "fp8")
    assert res.exit_code == 2 and "--fast fp8 needs a GPU with FP8 tensor cores" in res.stderr
    assert "fp8-sim" in res.stderr and not (tmp_path / "out").exists()


def test_cli_generates_with_fast_options_and_compile_in_help(cli, ckpt, tmp_path):
    res = _generate(cli, ckpt, tmp_path, "--fast", "step-cache,guidance-trunc,fp8-sim", "--json")
    assert res.exit_code == 0, res.stderr
    assert Path(res.json()["video"]).exists()
    for command in ("generate", "batch"):
        help_text = cli(command, "--help").stdout
        assert "--fast" in help_text and "--compile" in help_text


def test_batch_resume_key_includes_the_fast_mode():
    from cosmos_cli.batch import job_params
    from cosmos_cli.generation import GenerateRequest

    job = GenerationJob(visual_input=Path("/x.png"), prompt="p")
    req = GenerateRequest(input_path=Path("/x.png"), prompt="p")
    params, exact_key = job_params(job, PREDICT1_TINY, req)
    assert "fast" not in params  # exact mode: the keys of earlier runs are unchanged
    _, fast_key = job_params(job, PREDICT1_TINY, GenerateRequest(input_path=Path("/x.png"), prompt="p",
                                                                 fast=parse_fast("step-cache")))
    assert fast_key != exact_key


def test_backend_without_fast_mode_refuses_the_options(cli, fake_backend, tmp_path):
    """A backend that does not implement --fast or --compile refuses them before loading, never ignores them."""
    from tests.conftest import make_image

    image = make_image(tmp_path / "in.png", 40, 40)
    base = ("generate", "-i", str(image), "--prompt", "a ball", "--model", "fake", "--disable-prompt-upsampler",
            "--disable-guardrail", "--device", "cpu", "--video-save-folder", str(tmp_path / "out"))
    res = cli(*base, "--fast", "guidance-trunc")
    assert res.exit_code == 2 and "the fake backend" in res.stderr and "has no fast mode" in res.stderr, res.stderr
    res = cli(*base, "--compile")
    assert res.exit_code == 2 and "does not compile" in res.stderr, res.stderr
    assert fake_backend.built == []
    assert "Traceback" not in res.stderr


def test_step_cache_memory_is_set_aside_by_the_plan(monkeypatch):
    """The step cache's tensors (10 x tokens x width bf16: 4.3 GiB for 7B) come off the free memory the plan
    uses, so a GPU that fits offload-all in exact mode gets a leaner plan with step-cache on."""
    import torch

    from cosmos_cli.fastmode import parse_fast
    from cosmos_cli.generation import GenerateRequest, plan_for
    from cosmos_cli.registry import find_model

    backend, spec = find_model("7B")
    assert backend.fast_mode_bytes(spec, parse_fast("step-cache")) == 10 * 56_320 * 4096 * 2
    assert backend.fast_mode_bytes(spec, parse_fast("guidance-trunc,fp8-sim")) == 0
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (22 * 2**30, 24 * 2**30))
    base = GenerateRequest(Path("in.png"), "a ball", model="7B", disable_prompt_upsampler=True,
                           disable_guardrail=True, device="cuda")
    exact = plan_for(spec, base, "cuda")
    cached = plan_for(spec, replace(base, fast=parse_fast("step-cache")), "cuda")
    assert exact.strategy == "offload-all" and cached.strategy == "stream-lean", (exact, cached)
    assert "4.3 GiB set aside for --fast step-cache=0.2" in cached.reason
    assert plan_for(spec, replace(base, fast=parse_fast("guidance-trunc")), "cuda").strategy == exact.strategy
