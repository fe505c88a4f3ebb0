"""The ``map`` placement on a tiny network (CPU): blocks streamed from the memory-mapped checkpoint file give the
resident output exactly, and no host copy of the blocks is made."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from cosmos_plugins.predict1 import offload as O
from cosmos_plugins.predict1.checkpoint import load_network, write_random_checkpoint
from cosmos_plugins.predict1.mapped import STAGING_SLOTS, MappedStreamed
from cosmos_plugins.predict1.specs import DIT_TINY

LATENT = (3, 4, 4)  # the tiny spec's latent T, H, W


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("net") / "model.pt"
    write_random_checkpoint(path, DIT_TINY, seed=5, dtype=torch.float32)
    return path


def _inputs(dtype: torch.dtype):
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(2, DIT_TINY.in_channels, *LATENT, generator=gen).to(dtype)
    emb = torch.randn(2, 6, DIT_TINY.crossattn_emb_channels, generator=gen).to(dtype)
    mask = torch.zeros(1, 1, *LATENT, dtype=dtype)
    mask[:, :, :1] = 1
    t = torch.full((1,), 0.25 * math.log(10.0))
    return x, t, emb, torch.tensor([24.0]), mask


def _file_ranges(path: Path) -> list[tuple[int, int]]:
    """Address ranges of this process that map ``path`` (Linux /proc/self/maps)."""
    out = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and Path(fields[5].strip()) == path.resolve():
            start, end = (int(a, 16) for a in fields[0].split("-"))
            out.append((start, end))
    return out


def _in_file(t: torch.Tensor, ranges) -> bool:
    return any(a <= t.data_ptr() < b for a, b in ranges)


def _forward(placed: O.Placed, lean: bool, dtype: torch.dtype, repeats: int = 2) -> list[torch.Tensor]:
    """``repeats`` forwards in a row (the second one gets the blocks the first one read ahead, wrapping round)."""
    with torch.inference_mode(), placed.active():
        forward = O.network_forward(placed, lean, chunk=5)  # 5 tokens a chunk: the lean forward's chunks too
        return [forward(*_inputs(dtype)) for _ in range(repeats)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("lean", [False, True])
def test_mapped_stream_gives_the_resident_output_exactly(checkpoint, dtype, lean):
    """fp32 file: in fp32 the staging copy is a memcpy; in bf16 it is the cast ``Tensor.to`` makes (round to
    nearest even, elementwise), the one the resident load makes. Same weights, same kernels, same shapes: equal."""
    resident = O.place(load_network(checkpoint, DIT_TINY, device="cpu", dtype=dtype), "gpu", "cpu")
    net = load_network(checkpoint, DIT_TINY, device="cpu", dtype=dtype, map_blocks=True)
    placed = O.place(net, "map", "cpu", blocks=list(net.blocks.values()))
    assert isinstance(placed, MappedStreamed) and placed.dtype == dtype
    if sys.platform.startswith("linux"):  # fp32: every tensor read from the file with pread; bf16: cast from the mapping
        assert all((span is not None) == (dtype == torch.float32) for b in placed.blocks for span in b.spans)
    ours, ref = _forward(placed, lean, dtype), _forward(resident, lean, dtype)
    for a, b in zip(ours, ref, strict=True):
        assert a.dtype == dtype and torch.equal(a, b)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_blocks_stay_in_the_file_mapping(checkpoint):
    """The blocks' tensors are the file's pages before, during and after a stage (no host copy); the placement
    holds only the staging ring (STAGING_SLOTS blocks) and the small non-block weights."""
    net = load_network(checkpoint, DIT_TINY, device="cpu", dtype=torch.bfloat16, map_blocks=True)
    ranges = _file_ranges(checkpoint)
    assert ranges, "torch.load(mmap=True) maps the file"
    block_params = [p for b in net.blocks.values() for p in b.parameters()]
    assert all(_in_file(p, ranges) and p.dtype == torch.float32 for p in block_params)  # as in the file
    assert not any(_in_file(p, ranges) for p in net.final_layer.parameters())  # cast to bf16 on load
    placed = O.place(net, "map", "cpu", blocks=list(net.blocks.values()))
    assert all(_in_file(p, ranges) for p in block_params)
    block_bytes = max(sum(p.numel() for p in b.parameters()) for b in net.blocks.values()) * 2  # bf16 copy
    assert placed.staging_bytes == STAGING_SLOTS * block_bytes
    seen = []
    first = net.blocks["block0"]
    hook = first.register_forward_hook(lambda m, a, o: seen.append(all(not _in_file(p, ranges) and
                                                                       p.dtype == torch.bfloat16
                                                                       for p in m.parameters())))
    _forward(placed, False, torch.bfloat16, repeats=1)
    hook.remove()
    assert seen == [True]  # while it computed, the block was in a slot, in the compute dtype
    assert all(_in_file(p, ranges) for p in block_params)  # and back in the mapping after the stage


def test_reader_errors_reach_the_compute_thread(checkpoint):
    """A block the reader cannot stage raises in the compute thread; the placement stops cleanly and, the source
    put back, streams right the next time (the staging buffer of the failed read was given back to the ring)."""
    net = load_network(checkpoint, DIT_TINY, device="cpu", dtype=torch.float32, map_blocks=True)
    placed = O.place(net, "map", "cpu", blocks=list(net.blocks.values()))
    block = placed.blocks[1]
    good, span = block.sources[0], block.spans[0]
    block.sources[0], block.spans[0] = torch.zeros(3), None  # a source of the wrong size: the staging copy fails
    with pytest.raises(RuntimeError), torch.inference_mode(), placed.active() as n:
        n(*_inputs(torch.float32))
    assert placed._thread is None and not placed._live  # the reader was stopped and the slots given back
    block.sources[0], block.spans[0] = good, (-1, 0)  # a file that cannot be read: the pread fails
    with pytest.raises(OSError), torch.inference_mode(), placed.active() as n:
        n(*_inputs(torch.float32))
    assert placed._thread is None and not placed._live
    block.spans[0] = span
    block.detach()
    resident = O.place(load_network(checkpoint, DIT_TINY, device="cpu", dtype=torch.float32), "gpu", "cpu")
    ours, ref = _forward(placed, False, torch.float32, repeats=3), _forward(resident, False, torch.float32, repeats=1)
    assert all(torch.equal(o, ref[0]) for o in ours)


@pytest.mark.gpu
@pytest.mark.parametrize("lean", [False, True])
def test_mapped_stream_on_the_gpu_gives_the_resident_output_exactly(checkpoint, lean):
    """The CUDA path: pinned staging ring, side copy stream, events; the reader thread on the compute thread's GPU."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    dev = torch.device("cuda")
    resident = O.place(load_network(checkpoint, DIT_TINY, device=dev, dtype=torch.bfloat16), "gpu", dev)
    net = load_network(checkpoint, DIT_TINY, device="cpu", dtype=torch.bfloat16, map_blocks=True)
    placed = O.place(net, "map", dev, blocks=list(net.blocks.values()))
    assert placed.rest.pinned and all(t.is_pinned() for bufs in placed.staging for t in bufs.values())

    def run(p):
        with torch.inference_mode(), p.active():
            forward = O.network_forward(p, lean, chunk=5)
            return [forward(*(t.to(dev) for t in _inputs(torch.bfloat16))) for _ in range(3)]

    ours, ref = run(placed), run(resident)
    assert all(torch.equal(a, b) for a, b in zip(ours, ref, strict=True))
    assert all(p.device.type == "cpu" for b in net.blocks.values() for p in b.parameters())  # back in the mapping
