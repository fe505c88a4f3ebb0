"""The ``map`` placement: a module's blocks streamed from the memory-mapped checkpoint file, no host copy made.

:class:`cosmos_torch.placement.Streamed` keeps every block in pinned host memory: the 14B network's 26.6 GiB, more than a desktop
can spare next to T5. :class:`MappedStreamed` streams the same blocks through the same device slots and the same
schedule (its subclass: every caller of a streamer drives it alike, :class:`~.offload.LeanBlocks` included), but
the source of each block is the tensors the loader left in the module: ``torch.load(mmap=True, weights_only=True)``
tensors mapped from ``model.pt`` (:func:`~.checkpoint.load_network` with ``map_blocks=True`` leaves the blocks so,
in the file's dtype). Their pages are page cache, which the kernel may drop and read again.

A side thread does the reading: for each block asked for (in the order :meth:`issue` asks, a block or two ahead of
the computation) it takes one of :data:`STAGING_SLOTS` pinned staging buffers, copies the block's mapped tensors
into it (the page faults, that is the disk reads, happen here, and the cast to the compute dtype, the one
``Tensor.to`` does), and starts the copy to the block's device slot on a side CUDA stream, after the event that
marks the slot free. The staging buffer is reused once that copy's event has completed. The compute thread waits
for the block's copy (a thread event, then a CUDA event) before the block runs. Without a GPU the same thread and
buffers run with the CPU as the device (the tests do that): same values, the same code path.

The module's non-block weights (embedders, final layer: 0.1 GiB for 7B) get a small pinned copy, as under ``stream``.
"""

from __future__ import annotations

import queue
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from cosmos_torch.placement import (
    STREAM_SLOTS,
    Placed,
    Streamed,
    TensorGroup,
    _collect,
    _cuda_host_unregister,
    _set_wrapper_device,
    host_buffer,
    torch_modules,
)

STAGING_SLOTS = 2  # pinned staging buffers, one block each (cosmos_cli.planner.MAP_STAGING_BLOCKS)


class MappedBlock:
    """One block's tensors left where the loader put them (the file's mapping), with the flat layout of their
    copies in the compute dtype: :meth:`stage` copies (and casts) them into flat buffers, :meth:`attach` points
    the block at views of flat buffers, :meth:`detach` points it back at the mapped tensors."""

    def __init__(self, block: nn.Module, dtype: torch.dtype):
        self.entries = _collect(block)
        self.sources: list[Tensor] = [e.tensor.data if e.is_param else e.tensor for e in self.entries]
        self.layout: list[tuple[torch.dtype, int, torch.Size]] = []
        self.numel: dict[torch.dtype, int] = {}
        for src in self.sources:
            dt = dtype if src.is_floating_point() else src.dtype
            self.layout.append((dt, self.numel.get(dt, 0), src.shape))
            self.numel[dt] = self.numel.get(dt, 0) + src.numel()
        self.device = torch.device("cpu")

    @property
    def source_bytes(self) -> int:
        return sum(s.numel() * s.element_size() for s in self.sources)

    def views(self, flats: dict[torch.dtype, Tensor]) -> list[Tensor]:
        return [flats[dt][off:off + shape.numel()].view(shape) for dt, off, shape in self.layout]

    def stage(self, flats: dict[torch.dtype, Tensor]) -> None:
        with torch.no_grad():
            for view, src in zip(self.views(flats), self.sources, strict=True):
                view.copy_(src)

    def attach(self, flats: dict[torch.dtype, Tensor]) -> None:
        for e, t in zip(self.entries, self.views(flats), strict=True):
            TensorGroup._assign_one(e, t)
        self.device = next(iter(flats.values())).device if flats else self.device

    def detach(self) -> None:
        for e, t in zip(self.entries, self.sources, strict=True):
            TensorGroup._assign_one(e, t)
        self.device = torch.device("cpu")


@dataclass
class _Request:
    index: int
    slot: int
    free_event: object  # CUDA event: the slot's last block finished computing (None: free already)
    done: threading.Event = field(default_factory=threading.Event)
    ready_event: object = None  # CUDA event: the copy into the slot finished
    error: BaseException | None = None


class MappedStreamed(Streamed):
    """Blocks streamed from the module's own (mapped) tensors through a pinned staging ring (module doc).

    ``dtype`` is the compute dtype the blocks are cast to; by default that of the module's non-block weights
    (the loader casts those)."""

    placement = "map"

    def __init__(self, obj, device, blocks: Sequence[nn.Module], slots: int = STREAM_SLOTS,
                 module: nn.Module | None = None, dtype: torch.dtype | None = None, staging: int = STAGING_SLOTS):
        Placed.__init__(self, obj, device)
        if not blocks:
            raise ValueError("streaming needs the module's list of blocks")
        module = module if module is not None else (obj if isinstance(obj, nn.Module) else torch_modules(obj)[0])
        self.block_modules = list(blocks)
        self.rest = TensorGroup(module, self.block_modules, pin=True)
        if dtype is None:
            floats = [e.tensor.dtype for e in self.rest.entries if e.tensor.is_floating_point()]
            dtype = floats[0] if floats else torch.float32
        self.dtype = dtype
        self.blocks = [MappedBlock(b, dtype) for b in self.block_modules]
        self.num_slots = max(2, min(slots, len(self.blocks)))
        self.sizes: dict[torch.dtype, int] = {}
        for b in self.blocks:
            for dt, n in b.numel.items():
                self.sizes[dt] = max(self.sizes.get(dt, 0), n)
        registered: list[int] = []
        self.staging: list[dict[torch.dtype, Tensor]] = []
        for _ in range(max(1, staging)):
            bufs = {}
            for dt, n in self.sizes.items():
                bufs[dt], _, ours = host_buffer(n, dt, pin=True)
                if ours:
                    registered.append(bufs[dt].data_ptr())
            self.staging.append(bufs)
        self._finalizer = weakref.finalize(self, lambda ptrs: [_cuda_host_unregister(p) for p in ptrs], registered)
        self._handles: list = []
        self._live = False
        self._thread: threading.Thread | None = None

    @property
    def staging_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for bufs in self.staging for t in bufs.values())

    # -- the reader thread ---------------------------------------------------------------------------------

    def _read(self) -> None:
        cuda = self.device.type == "cuda"
        if cuda:  # a new thread starts on GPU 0: the device this stage runs on, as the compute thread resolved it
            torch.cuda.set_device(self._device_index)
        with torch.inference_mode():  # the slots may be inference tensors (made under the caller's inference mode)
            self._serve(cuda)

    def _serve(self, cuda: bool) -> None:
        while True:
            req = self._requests.get()
            if req is None:
                return
            k, last_copy = self._staging_free.get()
            try:
                if last_copy is not None:
                    last_copy.synchronize()  # the staging buffer's previous copy to the GPU has finished
                block, bufs, slot = self.blocks[req.index], self.staging[k], self.slots[req.slot]
                block.stage(bufs)
                if cuda:
                    with torch.cuda.stream(self.copy_stream):
                        if req.free_event is not None:
                            self.copy_stream.wait_event(req.free_event)
                        for dt, n in block.numel.items():
                            slot[dt][:n].copy_(bufs[dt][:n], non_blocking=True)
                        req.ready_event = torch.cuda.Event()
                        req.ready_event.record(self.copy_stream)
                else:
                    for dt, n in block.numel.items():
                        slot[dt][:n].copy_(bufs[dt][:n])
            except BaseException as e:  # noqa: BLE001 - handed to the compute thread, which raises it
                req.error = e
            finally:
                self._staging_free.put((k, req.ready_event))  # reusable once that copy has finished
                req.done.set()

    # -- the schedule (Streamed's, with the copies made by the reader) -------------------------------------

    def _start(self) -> None:
        dev = self.device
        self.slots = [{dt: torch.empty(n, dtype=dt, device=dev) for dt, n in self.sizes.items()}
                      for _ in range(self.num_slots)]
        self.copy_stream = torch.cuda.Stream(dev) if dev.type == "cuda" else None
        self._device_index = self.copy_stream.device.index if self.copy_stream is not None else None
        self.slot_free = [None] * self.num_slots
        self.slot_of: dict[int, int] = {}
        self.ready: dict[int, object] = {}
        self.pending: dict[int, _Request] = {}
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._staging_free: queue.SimpleQueue = queue.SimpleQueue()
        for k in range(len(self.staging)):
            self._staging_free.put((k, None))
        self.rest_flats = self.rest.empty_device(dev)
        self.rest.load(self.rest_flats)
        self.rest.attach(self.rest_flats)
        _set_wrapper_device(self.obj, dev, move=False)
        self._thread = threading.Thread(target=self._read, name="cosmos-mapped-reader", daemon=True)
        self._thread.start()
        self._live = True
        self.issue(0)

    def issue(self, i: int) -> None:
        """Ask the reader for block ``i`` into a slot that holds no block waiting to run (once)."""
        if i in self.slot_of:
            return
        taken = set(self.slot_of.values())
        slot = next(k for k in range(self.num_slots) if k not in taken)
        self.slot_of[i] = slot
        req = _Request(i, slot, self.slot_free[slot])
        self.pending[i] = req
        self._requests.put(req)

    def before_block(self, i: int) -> None:
        self.issue(i)
        for ahead in range(1, self.num_slots):
            self.issue((i + ahead) % len(self.blocks))
        req = self.pending.pop(i)
        req.done.wait()
        if req.error is not None:
            raise req.error
        if req.ready_event is not None:
            torch.cuda.current_stream(self.device).wait_event(req.ready_event)
        self.blocks[i].attach(self.slots[self.slot_of[i]])

    def _stop(self) -> None:
        if self._thread is not None:
            self._requests.put(None)  # after the blocks still asked for (read, then dropped)
            self._thread.join()
            self._thread = None
        self.pending = {}
        super()._stop()
