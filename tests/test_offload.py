"""The placement engine on a tiny model (CPU): every strategy gives the resident output, the engine's moves, the
lean network forward, and the out-of-memory retry of `generate`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cosmos_cli.jobs import GenerationJob, GenerationResult
from cosmos_cli.planner import plan_memory
from cosmos_cli.progress import NullProgress
from cosmos_cli.specs import PLACEMENTS
from cosmos_plugins.predict1 import offload as O
from cosmos_plugins.predict1.network import VideoExtendGeneralDIT
from cosmos_plugins.predict1.pipeline import Predict1Pipeline
from cosmos_plugins.predict1.specs import DIT_TINY, PREDICT1_TINY
from cosmos_plugins.predict1.strategies import STRATEGY_NAMES, lean_network, tiled_tokenizer
from tests.conftest import checkpoint_folder, make_image


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return checkpoint_folder(tmp_path_factory.mktemp("ckpt"), PREDICT1_TINY, seed=0)


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> GenerationJob:
    image = make_image(tmp_path_factory.mktemp("in") / "scene.png", 40, 40)
    return GenerationJob(visual_input=image, prompt="a red ball rolls to the left", num_steps=2, seed=3)


def _plan(strategy: str):
    return plan_memory(PREDICT1_TINY, None, strategy=strategy, upsampler=False, guardrail=False)


def _stages(pipe: Predict1Pipeline, job: GenerationJob):
    """The four stages: (clean latent, uint8 frames)."""
    try:
        with torch.inference_mode():
            latent, n_cond = pipe.encode_video(job)
            text = pipe.encode_text(job.prompt, job.negative_prompt)
            out = pipe.denoise(job, latent, n_cond, text, NullProgress())
            return out, pipe.decode(out)
    finally:
        pipe.close()


@pytest.fixture(scope="module")
def models(root):
    """The tiny model's network, tokenizer and T5 through the real loaders, loaded once and placed by every test
    (as a batch places them once per run)."""
    pipe = Predict1Pipeline.load(PREDICT1_TINY, _plan("resident"), checkpoint_dir=root, device="cpu")
    return pipe.network.obj, pipe.tokenizer.obj, pipe.text_encoder.obj


def _run(models, job: GenerationJob, strategy: str):
    plan = _plan(strategy)
    return (*_stages(Predict1Pipeline(PREDICT1_TINY, plan, torch.device("cpu"), *models), job), plan)


@pytest.fixture(scope="module")
def resident(models, job):
    return _run(models, job, "resident")


@pytest.mark.parametrize("strategy", [s for s in STRATEGY_NAMES if s != "resident"])
def test_every_strategy_gives_the_resident_output(models, job, resident, strategy):
    """Same weights, same dtype (fp32 on a CPU): the placements change nothing, bit for bit. One guidance branch at
    a time and the lean forward change the shapes the kernels see: fp32 rounding differences, which the bf16 latent
    the sampler returns turns into a few one-step differences (relative L2 ~1e-4 here)."""
    latent, frames, plan = _run(models, job, strategy)
    ref_latent, ref_frames, _ = resident
    exact = plan.cfg_batched and not lean_network(plan)
    rel = ((latent.float() - ref_latent.float()).norm() / ref_latent.float().norm()).item()
    pixels = np.abs(frames.astype(int) - ref_frames.astype(int)).max()
    # Inexact strategies: a flipped bf16 rounding moves an element by one ulp (<= 2^-7 of it), so a fraction f of
    # flipped elements gives a relative L2 of about 2^-8 * sqrt(f): 1e-3 allows f ~ 6%; a misplaced weight or a
    # lost block changes every element. Pixels decoded from latents one ulp apart: a rounding step or two.
    assert (rel == 0.0 and pixels == 0) if exact else (rel < 1e-3 and pixels <= 2), (strategy, rel, pixels)


def test_loading_places_as_planned(root, job, resident):
    """Loaded for the leanest strategy: T5 and the network streamed, the tokenizer swapped; same result."""
    pipe = Predict1Pipeline.load(PREDICT1_TINY, _plan("stream-lean"), checkpoint_dir=root, device="cpu")
    assert (type(pipe.network), type(pipe.text_encoder), type(pipe.tokenizer)) == (O.Streamed, O.Streamed, O.Swapped)
    assert pipe.tokenizer_chunk is not None and tiled_tokenizer(pipe.plan) and lean_network(pipe.plan)
    assert not pipe.plan.cfg_batched
    latent, _ = _stages(pipe, job)
    # one branch at a time and the lean forward: bf16 rounding flips, bounded as above
    assert ((latent.float() - resident[0].float()).norm() / resident[0].float().norm()).item() < 1e-3


def test_loading_maps_the_network_for_a_mapped_strategy(root, job):
    """stream-mapped-lean loads the network's blocks and T5's layers as their files' mappings and streams them: the
    output of stream-lean (same shapes and kernels, the values read from the files instead of pinned copies)
    exactly."""
    from cosmos_plugins.predict1.mapped import MappedStreamed

    pipe = Predict1Pipeline.load(PREDICT1_TINY, _plan("stream-mapped-lean"), checkpoint_dir=root, device="cpu")
    assert type(pipe.network) is MappedStreamed and type(pipe.text_encoder) is MappedStreamed
    assert len(pipe.text_encoder.blocks) == PREDICT1_TINY.text_encoder.num_layers
    mapped = _stages(pipe, job)
    pinned = _stages(Predict1Pipeline.load(PREDICT1_TINY, _plan("stream-lean"), checkpoint_dir=root, device="cpu"),
                     job)
    assert torch.equal(mapped[0], pinned[0]) and np.array_equal(mapped[1], pinned[1])


def test_text_encoder_computed_on_the_host(models, job, resident):
    """The ``cpu`` placement (no strategy puts T5 there on a GPU: streaming its layers is faster)."""
    from dataclasses import replace

    plan = _plan("resident")
    plan = replace(plan, components=tuple(replace(c, placement="cpu") if c.name == "text_encoder" else c
                                          for c in plan.components))
    pipe = Predict1Pipeline(PREDICT1_TINY, plan, torch.device("cpu"), *models)
    assert type(pipe.text_encoder) is O.OnHost
    latent, frames = _stages(pipe, job)
    assert torch.equal(latent, resident[0]) and np.array_equal(frames, resident[1])


def test_memory_plan_shows_measured_peaks(cli):
    # 14 GB: fp32 T5 (18.1 GiB) fits only streamed, and LlamaGuard (12.6 GiB) finds no room on the GPU, so the
    # guardrails stay on the CPU as when stream-lean was measured
    data = cli("memory-plan", "--model", "14B", "--vram", "14GB", "--json").json()
    assert data["strategy"] == "stream-lean" and data["fits"]
    by_name = {s["name"]: s for s in data["strategies"]}
    assert by_name["resident"]["measured_peak_bytes"] is None
    lean = by_name["stream-lean"]
    assert abs(lean["predicted_peak_bytes"] - lean["measured_peak_bytes"]) < 0.1 * lean["measured_peak_bytes"]
    text = cli("memory-plan", "--model", "14B", "--vram", "14GB").stdout
    assert "measured peak" in text
    # 16 GB: the guardrails move onto the GPU for their stage; the measurement (with them on the CPU) is not shown
    moved = cli("memory-plan", "--model", "14B", "--vram", "16GB", "--json").json()
    assert moved["strategy"] == "stream-lean" and next(c for c in moved["components"]
                                                       if c["name"] == "guardrail")["placement"] == "swap"
    assert {s["name"]: s["measured_peak_bytes"] for s in moved["strategies"]}["stream-lean"] is None
    no_upsampler = cli("memory-plan", "--model", "14B", "--vram", "16GB", "--no-upsampler", "--json").json()
    assert all(s["measured_peak_bytes"] is None for s in no_upsampler["strategies"])  # measured with it


def test_strategies_use_every_placement():
    spec = __import__("cosmos_cli.registry", fromlist=["find_model"]).find_model("7B")[1]
    used = {c.placement for s in STRATEGY_NAMES for c in plan_memory(spec, None, strategy=s).components}
    assert used == set(O.PLACEMENTS) == set(PLACEMENTS) == {"gpu", "swap", "cpu", "stream", "map"}


# ----------------------------------------------------------------------------------------------------------
# The engine's moves


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(8, 8), nn.GELU()) for _ in range(5))
        self.head = nn.Linear(8, 2)
        self.register_buffer("scale", torch.tensor([0.5, 2.0]))

    def forward(self, x):
        x = self.embed(x)
        for b in self.blocks:
            x = x + b(x)
        return self.head(x) * self.scale


def test_park_keeps_parameters_and_values():
    torch.manual_seed(0)
    m = Tiny().eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    params = list(m.parameters())
    groups = O.park(m, list(m.blocks))
    assert len(groups) == 1 + len(m.blocks)
    assert O.park(m, list(m.blocks)) is groups  # parked once
    assert [p for p in m.parameters()] == params  # same Parameter objects
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k])
    # everything but the blocks is in group 0, each block in its own
    assert groups[0].numel[torch.float32] == 4 * 8 + 8 + 8 * 2 + 2 + 2
    assert all(g.numel[torch.float32] == 8 * 8 + 8 for g in groups[1:])


def test_swapped_moves_copies_only_while_active():
    torch.manual_seed(0)
    m = Tiny().eval()
    x = torch.randn(3, 4)
    ref = m(x)
    placed = O.place(m, "swap", "cpu")
    host = [p.data_ptr() for p in m.parameters()]
    with placed.active() as mod:
        assert mod is m
        inside = [p.data_ptr() for p in m.parameters()]
        assert not set(inside) & set(host)  # working copies, not the host copy
        assert torch.equal(m(x), ref)
    assert [p.data_ptr() for p in m.parameters()] == host
    assert torch.equal(m(x), ref)


def test_streamed_brings_each_block_in_around_its_forward():
    torch.manual_seed(0)
    m = Tiny().eval()
    x = torch.randn(3, 4)
    ref = m(x)
    placed = O.place(m, "stream", "cpu", blocks=list(m.blocks))
    host = {id(b): b[0].weight.data_ptr() for b in m.blocks}
    seen = []

    def spy(block, args):
        loaded = sum(b[0].weight.data_ptr() != host[id(b)] for b in m.blocks)
        seen.append((block[0].weight.data_ptr() != host[id(block)], loaded))

    handles = [b.register_forward_pre_hook(spy) for b in m.blocks]  # after the streamer's own hooks? no: before
    try:
        with placed.active():
            out1, out2 = m(x), m(x)  # two forwards: the second's first blocks were prefetched by the first
            for b in m.blocks:
                assert b[0].weight.data_ptr() == host[id(b)]  # between blocks, every block points at the host
    finally:
        for h in handles:
            h.remove()
    assert torch.equal(out1, ref) and torch.equal(out2, ref)
    assert len(seen) == 2 * len(m.blocks)
    assert not m.blocks[0]._forward_pre_hooks or all(h is not spy for h in m.blocks[0]._forward_pre_hooks.values())
    assert not any(b._forward_hooks for b in m.blocks)  # the streamer's hooks are gone


def test_streamed_slots_bound_the_blocks_on_the_device():
    torch.manual_seed(0)
    m = Tiny().eval()
    placed = O.Streamed(m, "cpu", list(m.blocks), slots=2)
    with placed.active():
        m(torch.randn(2, 4))
        assert len(placed.slots) == 2
    assert placed.slots == []


def test_torch_modules_finds_wrapped_models():
    class Helper:
        def __init__(self):
            self.net = nn.Linear(2, 2)

    class Outside:  # an object of another package: not searched
        def __init__(self):
            self.net = nn.Linear(4, 4)

    Helper.__module__ = O.__name__  # a helper object of the wrapper's own package
    Outside.__module__ = "elsewhere.module"
    wrapper = type("Wrapper", (), {"__module__": O.__name__})()
    wrapper.model, wrapper.helper, wrapper.other, wrapper.name = nn.Linear(3, 3), Helper(), Outside(), "x"
    found = O.torch_modules(wrapper)
    assert wrapper.model in found and wrapper.helper.net in found and len(found) == 2


def test_unknown_placement():
    with pytest.raises(ValueError, match="unknown placement"):
        O.place(nn.Linear(2, 2), "tape", "cpu")


# ----------------------------------------------------------------------------------------------------------
# The lean forward


@torch.inference_mode()
def test_lean_forward_matches_the_network():
    torch.manual_seed(0)
    net = VideoExtendGeneralDIT(DIT_TINY, rope_mode="fp32").eval()
    for p in net.parameters():
        p.data.normal_(0, 0.3)
    T, H, W = 3, 8, 8  # 48 tokens
    x = torch.randn(2, DIT_TINY.in_channels, T, H, W)
    t = torch.tensor([0.3, 0.3])
    emb = torch.randn(2, 7, DIT_TINY.crossattn_emb_channels)
    mask = torch.zeros(1, 1, T, H, W)
    mask[:, :, :1] = 1
    ref = net(x, t, emb, 24.0, mask)
    for chunk in (5, 16, 48, 1000):
        out = O.lean_forward(net, x, t, emb, 24.0, mask, chunk=chunk)
        # fp32, tokens chunked: the same sums in another order (reassociation, <= K * 2^-24 with K <= 128)
        assert ((out - ref).norm() / ref.norm()).item() < 1e-5, chunk


# ----------------------------------------------------------------------------------------------------------
# Out of memory during a run: retry once leaner under auto, else name the strategy


class _OomOnce:
    """A pipeline that runs out of GPU memory under the strategies in ``fail``; otherwise writes the video."""

    def __init__(self, plan, fail, log):
        self.plan, self.fail, self.log = plan, fail, log

    def generate(self, job, progress, *, video_path, prompt_path=None):
        self.log.append(self.plan.strategy)
        if self.plan.strategy in self.fail:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        Path(video_path).write_bytes(b"video")
        return GenerationResult(Path(video_path), None, job.prompt)

    def close(self):
        self.log.append("closed")


@pytest.fixture
def oom_setup(fake_backend, monkeypatch, tmp_path):
    import cosmos_cli.generation as G

    log: list[str] = []
    fail: set[str] = set()
    fake_backend.build_pipeline = lambda spec, plan, **kw: _OomOnce(plan, fail, log)
    monkeypatch.setattr(G, "pick_device", lambda device: "cuda")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (80 << 30, 80 << 30))
    image = make_image(tmp_path / "in.png", 40, 40)
    return G, log, fail, image, tmp_path


def _request(G, image, out, **kw):
    return G.GenerateRequest(input_path=image, prompt="a ball", model="fake", output_dir=out, **kw)


def test_oom_under_auto_retries_once_leaner(oom_setup):
    G, log, fail, image, out = oom_setup
    fail.add("resident")

    class Warnings(NullProgress):
        said: list[str] = []

        def warning(self, text):
            self.said.append(text)

    progress = Warnings()
    result = G.generate(_request(G, image, out / "o"), progress)
    assert log == ["resident", "closed", STRATEGY_NAMES[1], "closed"]
    assert result.video_path.read_bytes() == b"video"
    assert any("retrying once" in w and STRATEGY_NAMES[1] in w for w in progress.said)


def test_oom_twice_under_auto_gives_up(oom_setup):
    G, log, fail, image, out = oom_setup
    fail.update({"resident", STRATEGY_NAMES[1]})
    with pytest.raises(G.GenerationError, match=f"use --offload {STRATEGY_NAMES[2]}"):
        G.generate(_request(G, image, out / "o"), NullProgress())
    assert log == ["resident", "closed", STRATEGY_NAMES[1], "closed"]
    assert not (out / "o" / "output.mp4").exists()


def test_oom_under_an_explicit_strategy_names_the_next_one(oom_setup):
    G, log, fail, image, out = oom_setup
    fail.add("offload-all")
    with pytest.raises(G.GenerationError) as err:
        G.generate(_request(G, image, out / "o", offload="offload-all"), NullProgress())
    assert "offload-all" in err.value.message and "--offload stream" in err.value.message
    assert "\n" not in err.value.message
    assert log == ["offload-all", "closed"]
    assert not list((out / "o").glob("*.mp4"))
