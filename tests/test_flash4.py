"""The flash-attn-4 self-attention kernel (plugins/predict1/flash4.py): when it is chosen, and that the network and
the pipeline give it the layout it reads and take back what it returns.

flash-attn-4 needs a Hopper or Blackwell GPU; here a stand-in module under its import name computes the same
function with PyTorch's SDPA and checks what a caller hands it: (B, S, H, hd) tensors with a contiguous last
dimension, as its ``flash_attn_func`` expects. The real kernel against SDPA is the GPU test at the end.
"""

from __future__ import annotations

import copy
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cosmos_cli.jobs import GenerationJob
from cosmos_cli.planner import plan_memory
from cosmos_cli.progress import NullProgress
from cosmos_plugins.predict1 import flash4
from cosmos_plugins.predict1 import network as N
from cosmos_plugins.predict1 import pipeline as P
from cosmos_plugins.predict1.specs import DIT_TINY, PREDICT1_TINY

LATENT = (1, DIT_TINY.in_channels, 3, 8, 8)  # 3 x 4 x 4 = 48 tokens (heads: 2)


@pytest.fixture
def fake_flash4(monkeypatch):
    """flash_attn.cute.interface as a module of ours; ``calls`` records the shapes it was given."""
    calls: list[tuple[int, ...]] = []

    def flash_attn_func(q, k, v):
        for t in (q, k, v):
            assert t.dim() == 4 and t.stride(-1) == 1, "flash-attn-4 reads (B, S, H, hd) with a contiguous hd"
            assert t.shape[2] == DIT_TINY.num_heads, f"heads expected in dim 2, got shape {tuple(t.shape)}"
        calls.append(tuple(q.shape))
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2).contiguous(), None  # (out, lse) as flash_attn_func returns them

    interface = types.ModuleType(flash4.FLASH4_MODULE)
    interface.flash_attn_func = flash_attn_func
    for name in ("flash_attn", "flash_attn.cute"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, flash4.FLASH4_MODULE, interface)
    return calls


def _net(seed: int = 0) -> N.VideoExtendGeneralDIT:
    torch.manual_seed(seed)
    net = N.VideoExtendGeneralDIT(DIT_TINY, rope_mode="fp32").eval().requires_grad_(False)
    for p in net.parameters():
        p.data.normal_(0, 0.3)
    return net


def _inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, *LATENT[1:], generator=g)
    text = torch.randn(2, 8, DIT_TINY.crossattn_emb_channels, generator=g)
    mask = torch.zeros(1, 1, *LATENT[2:])
    mask[:, :, :1] = 1
    return x, torch.tensor([0.3, 0.3]), text, mask


def test_chosen_only_where_it_can_run(monkeypatch, fake_flash4):
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert flash4.unusable_reason(cpu, torch.bfloat16, 128) == "the network runs on cpu"
    assert flash4.self_attention_kernel(cpu, torch.bfloat16, 128) is None
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert flash4.unusable_reason(cuda, torch.bfloat16, 128) is None
    assert flash4.self_attention_kernel(cuda, torch.bfloat16, 128) is flash4.flash4_attention
    assert flash4.self_attention_kernel(cuda, torch.bfloat16, 128, "sdpa") is None
    assert flash4.self_attention_kernel(cuda, torch.bfloat16, 128, "flash-attn-4") is flash4.flash4_attention
    assert flash4.unusable_reason(cuda, torch.float32, 128) == "the network computes in torch.float32"
    assert flash4.unusable_reason(cuda, torch.bfloat16, 256) == "head dimension 256"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert "compute capability 8.x" in flash4.unusable_reason(cuda, torch.bfloat16, 128)
    assert flash4.self_attention_kernel(cuda, torch.bfloat16, 128) is None  # auto: SDPA there
    with pytest.raises(ValueError, match=r"^flash-attn-4 cannot run here: compute capability 8\.x"):
        flash4.self_attention_kernel(cuda, torch.bfloat16, 128, "flash-attn-4")  # asked for: refused
    with pytest.raises(ValueError, match="unknown attention kernel 'flash3'"):
        flash4.self_attention_kernel(cuda, torch.bfloat16, 128, "flash3")


def test_not_installed_means_sdpa(monkeypatch):
    monkeypatch.setitem(sys.modules, flash4.FLASH4_MODULE, None)  # import raises ImportError
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert flash4.flash4_module() is None
    assert flash4.unusable_reason(torch.device("cuda", 0), torch.bfloat16, 128) == "flash-attn-4 is not installed"


def test_a_broken_install_is_named_not_called_absent(monkeypatch):
    """flash-attn-4 there but a library it needs missing (cutlass-dsl's ``cutlass``, as on the GPU machine when its
    .pth was not read): the reason names that library; only flash-attn-4's own modules missing read "not installed"."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    cuda = torch.device("cuda", 0)

    def raising(exc):
        def import_module(name):
            raise exc
        return import_module

    monkeypatch.setattr(flash4.importlib, "import_module", raising(ModuleNotFoundError("No module named 'cutlass'",
                                                                                     name="cutlass")))
    reason = flash4.unusable_reason(cuda, torch.bfloat16, 128)
    assert reason.startswith("flash-attn-4 is installed but does not import (ModuleNotFoundError: No module named "
                             "'cutlass')"), reason
    assert "--attention sdpa" in reason
    monkeypatch.setattr(flash4.importlib, "import_module", raising(OSError("libcuda.so.1: cannot open shared object")))
    assert "OSError: libcuda.so.1" in flash4.unusable_reason(cuda, torch.bfloat16, 128)
    for own in ("flash_attn", "flash_attn.cute", flash4.FLASH4_MODULE):
        monkeypatch.setattr(flash4.importlib, "import_module", raising(ModuleNotFoundError("absent", name=own)))
        assert flash4.unusable_reason(cuda, torch.bfloat16, 128) == "flash-attn-4 is not installed", own
    monkeypatch.setattr(flash4.importlib, "import_module", raising(ModuleNotFoundError("x", name="flash_at")))
    assert "does not import" in flash4.unusable_reason(cuda, torch.bfloat16, 128)  # a prefix, not a parent module


def test_same_function_as_sdpa_on_the_networks_layout(fake_flash4):
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 48, DIT_TINY.num_heads, DIT_TINY.head_dim, generator=g) for _ in range(3))
    args = (q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # (B, H, S, hd) views, as Attention passes
    out = flash4.flash4_attention(*args)
    assert out.shape == args[0].shape
    assert torch.equal(out, N.attention(*args))
    assert fake_flash4 == [(2, 48, DIT_TINY.num_heads, DIT_TINY.head_dim)]


def test_a_set_tile_is_asked_for_on_hopper_only(monkeypatch, fake_flash4):
    """``flash4.SM90_TILE`` goes to the package's ``_flash_attn_fwd(..., tile_mn=)`` on compute capability 9 (the
    tile flash_attn_func does not take); elsewhere, and while it is None, the public call runs."""
    tiles: list[tuple[int, int]] = []

    def _flash_attn_fwd(q, k, v, tile_mn=None):
        tiles.append(tile_mn)
        return sys.modules[flash4.FLASH4_MODULE].flash_attn_func(q, k, v)

    sys.modules[flash4.FLASH4_MODULE]._flash_attn_fwd = _flash_attn_fwd
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 48, DIT_TINY.num_heads, DIT_TINY.head_dim, generator=g) for _ in range(3))
    args = (q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    capability = [(9, 0)]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability[0])
    assert torch.equal(flash4.flash4_attention(*args), N.attention(*args)) and tiles == []  # None: the public call
    monkeypatch.setattr(flash4, "SM90_TILE", (128, 176))
    assert torch.equal(flash4.flash4_attention(*args), N.attention(*args))
    capability[0] = (10, 0)
    flash4.flash4_attention(*args)
    assert tiles == [(128, 176)] and len(fake_flash4) == 3


def test_network_forward_with_the_kernel_equals_the_plain_one(fake_flash4):
    net, (x, t, text, mask) = _net(), _inputs()
    with torch.inference_mode():
        plain = net(x, t, text, 24.0, mask)
        fa = net(x, t, text, 24.0, mask, runner=N.PlainBlocks(flash4.flash4_attention))
    assert len(fake_flash4) == DIT_TINY.num_blocks  # the self-attention of every block; cross-attention is SDPA's
    assert torch.equal(fa, plain)


def test_the_custom_operator_is_traced_by_torch_compile(fake_flash4):
    """Inside a compiled block the kernel is one opaque operator (``backend="eager"``: dynamo's graph, no inductor,
    so this runs without a C++ toolchain)."""
    net, text = _net(), _inputs()[2]
    block = net.blocks["block0"]
    tables = net.prepare(*LATENT[2:], 24.0)
    h = torch.randn(2, 48, DIT_TINY.model_channels)
    emb, lora = torch.randn(2, DIT_TINY.model_channels), torch.randn(2, 3 * DIT_TINY.model_channels)
    args = (h, emb, lora, text, tables.rope, tables.extra_pos)
    with torch.inference_mode():
        eager = block(*args)
        first = block(*args, flash4.flash4_attention)  # registers the operator (the pipeline does at load)
        compiled = torch.compile(block.forward, backend="eager", fullgraph=True)(*args, flash4.flash4_attention)
    assert len(fake_flash4) == 2  # the eager call and the compiled one (traced with the fake implementation)
    assert torch.equal(first, eager)
    assert torch.allclose(compiled, eager, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("strategy, used", [("resident", True), ("stream", True), ("stream-lean", False)])
def test_pipeline_uses_it_for_the_plain_forward_only(monkeypatch, fake_flash4, strategy, used):
    """The pipeline asks flash4 for the kernel (here: the stand-in, as on a Hopper GPU with flash-attn-4) and gets
    the video of the SDPA run; the memory-lean forward keeps its chunked SDPA."""
    monkeypatch.setattr(P, "self_attention_kernel", lambda device, dtype, head_dim, choice: flash4.flash4_attention)
    net = _net()
    g = torch.Generator().manual_seed(3)
    latent = (torch.randn(*LATENT, generator=g) * 0.5).to(torch.bfloat16)
    text = torch.randn(2, 8, DIT_TINY.crossattn_emb_channels, generator=g)
    job = GenerationJob(visual_input=Path("x.png"), prompt="p", num_steps=3, seed=5)

    def denoise(choice: str):
        plan = plan_memory(PREDICT1_TINY, None, strategy=strategy, upsampler=False, guardrail=False)
        pipe = P.Predict1Pipeline(PREDICT1_TINY, plan, torch.device("cpu"), copy.deepcopy(net), None, None)
        pipe.attention_choice = choice
        try:
            with torch.inference_mode():
                return pipe.denoise(job, latent, 1, text, NullProgress()), pipe.attention, pipe.notes
        finally:
            pipe.close()

    out, kernel, notes = denoise("auto")
    assert kernel == ("flash-attn-4" if used else "sdpa") and notes == []
    assert (len(fake_flash4) > 0) == used
    _, kernel, notes = denoise("flash-attn-4")  # asked for: the lean forward says it keeps its own
    assert kernel == ("flash-attn-4" if used else "sdpa")
    assert notes == ([] if used else ["--attention flash-attn-4: memory strategy stream-lean runs the network's "
                                      "chunked forward, which has its own attention (SDPA)"])
    monkeypatch.setattr(P, "self_attention_kernel", lambda device, dtype, head_dim, choice: None)
    reference, kernel, _ = denoise("sdpa")
    assert kernel == "sdpa"
    assert torch.equal(out, reference)


@pytest.mark.gpu
def test_flash4_matches_sdpa_on_the_gpu():
    """The real kernel (skips where flash-attn-4 cannot run: it needs the package and a Hopper/Blackwell GPU)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    device = torch.device("cuda", 0)
    reason = flash4.unusable_reason(device, torch.bfloat16, 128)
    if reason is not None:
        pytest.skip(f"flash-attn-4 cannot run here: {reason}")
    g = torch.Generator(device).manual_seed(0)
    q, k, v = (torch.randn(2, 4096, 8, 128, generator=g, device=device, dtype=torch.bfloat16) for _ in range(3))
    args = (q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    ref = F.scaled_dot_product_attention(*(a.double() for a in args))
    for out in (flash4.flash4_attention(*args), N.attention(*args)):
        err = ((out.double() - ref).norm() / ref.norm()).item()
        # the same bf16 inputs as the float64 reference: what differs is the bf16 rounding of the softmax weights
        # before their product with v (flash kernels) and of the output, at most 2^-9 relative each
        assert err < 2 ** -8, err
