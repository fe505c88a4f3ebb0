"""The ``map`` placement: a module's blocks streamed from the memory-mapped checkpoint file, no host copy made.

:class:`cosmos_torch.placement.Streamed` keeps every block in pinned host memory: the 14B network's 26.6 GiB, more than a desktop
can spare next to T5. :class:`MappedStreamed` streams the same blocks through the same device slots and the same
schedule (its subclass: every caller of a streamer drives it alike, :class:`~.offload.LeanBlocks` included), but
the source of each block is the tensors the loader left in the module: ``torch.load(mmap=True, weights_only=True)``
tensors mapped from ``model.pt`` (:func:`~.checkpoint.load_network` with ``map_blocks=True`` leaves the blocks so,
in the file's dtype). Their pages are page cache, which the kernel may drop and read again.

A side thread does the reading: for each block asked for (in the order :meth:`issue` asks, a block or two ahead of
the computation) it takes one of :data:`STAGING_SLOTS` pinned staging buffers, reads the block's tensors into it
with ``pread`` from the file where :class:`FileMappings` finds their bytes (one system call per tensor, the
kernel reading ahead along the file; the disk reads happen here), else copies them from the mapping (a page fault
per page not yet touched, and the cast to the compute dtype where the file's differs, the one ``Tensor.to``
does), and starts the copy to the block's device slot on a side CUDA stream, after the event that
marks the slot free. The staging buffer is reused once that copy's event has completed. The compute thread waits
for the block's copy (a thread event, then a CUDA event) before the block runs. Without a GPU the same thread and
buffers run with the CPU as the device (the tests do that): same values, the same code path.

The module's non-block weights (embedders, final layer: 0.1 GiB for 7B) get a small pinned copy, as under ``stream``.
"""

from __future__ import annotations

import os
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


class FileMappings:
    """Where the mapped tensors' bytes are in their files, from ``/proc/self/maps`` (Linux), so that the reader can
    ``pread`` them into the staging buffer instead of copying from the mapping: a copy from a mapping takes a page
    fault per 4 KiB page it has not touched yet (millions a pass over a 14 GiB network, seconds of the reader's
    time), a ``pread`` one system call per tensor, and the kernel reads ahead along the file. Elsewhere (no
    /proc), or for a tensor that is not a plain run of a mapped file's bytes, nothing is found and the reader
    copies from the mapping. One file descriptor per file, closed by :meth:`close`."""

    def __init__(self):
        self.regions: list[tuple[int, int, int, str]] = []  # (start, end, file offset, path)
        try:
            lines = open("/proc/self/maps").read().splitlines()  # noqa: SIM115 - read once, whole
        except OSError:
            lines = []
        for line in lines:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].startswith("/"):
                start, end = (int(x, 16) for x in parts[0].split("-"))
                self.regions.append((start, end, int(parts[2], 16), parts[5]))
        self.fds: dict[str, int] = {}

    def span(self, t: Tensor) -> tuple[int, int] | None:
        """(file descriptor, offset) of ``t``'s bytes in the file it is mapped from; None where it is not one run of
        a mapped file's bytes. Checked: the first bytes read from there must be the tensor's."""
        if t.device.type != "cpu" or not t.is_contiguous() or t.numel() == 0:
            return None
        ptr, size = t.data_ptr(), t.numel() * t.element_size()
        for start, end, offset, path in self.regions:
            if start <= ptr and ptr + size <= end:
                if path not in self.fds:
                    try:
                        self.fds[path] = os.open(path, os.O_RDONLY)
                    except OSError:
                        return None
                    if hasattr(os, "posix_fadvise"):
                        os.posix_fadvise(self.fds[path], 0, 0, os.POSIX_FADV_SEQUENTIAL)
                    # (a region that is one file's mapping throughout: the loader maps the whole file at once)
                fd, at = self.fds[path], ptr - start + offset
                head = min(size, 64)
                if os.pread(fd, head, at) != bytes(t.view(-1).view(torch.uint8)[:head].numpy()):
                    return None
                return fd, at
        return None

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}


def _read_into(fd: int, offset: int, out: Tensor) -> None:
    """``out``'s bytes (a contiguous host tensor) from ``fd`` at ``offset``, whole."""
    buf = memoryview(out.view(-1).view(torch.uint8).numpy())
    done = 0
    while done < len(buf):
        n = os.preadv(fd, [buf[done:]], offset + done)
        if n <= 0:
            raise OSError(f"short read from the checkpoint file at byte {offset + done}: the file changed under us")
        done += n


class MappedBlock:
    """One block's tensors left where the loader put them (the file's mapping), with the flat layout of their
    copies in the compute dtype: :meth:`stage` copies (and casts) them into flat buffers, :meth:`attach` points
    the block at views of flat buffers, :meth:`detach` points it back at the mapped tensors. A tensor already in
    the compute dtype whose bytes :class:`FileMappings` finds in its file is read with ``pread`` instead."""

    def __init__(self, block: nn.Module, dtype: torch.dtype, files: FileMappings | None = None):
        self.entries = _collect(block)
        self.sources: list[Tensor] = [e.tensor.data if e.is_param else e.tensor for e in self.entries]
        self.layout: list[tuple[torch.dtype, int, torch.Size]] = []
        self.numel: dict[torch.dtype, int] = {}
        self.spans: list[tuple[int, int] | None] = []
        for src in self.sources:
            dt = dtype if src.is_floating_point() else src.dtype
            self.layout.append((dt, self.numel.get(dt, 0), src.shape))
            self.numel[dt] = self.numel.get(dt, 0) + src.numel()
            self.spans.append(files.span(src) if files is not None and src.dtype == dt else None)
        self.device = torch.device("cpu")

    @property
    def source_bytes(self) -> int:
        return sum(s.numel() * s.element_size() for s in self.sources)

    def views(self, flats: dict[torch.dtype, Tensor]) -> list[Tensor]:
        return [flats[dt][off:off + shape.numel()].view(shape) for dt, off, shape in self.layout]

    def stage(self, flats: dict[torch.dtype, Tensor]) -> None:
        with torch.no_grad():
            for view, src, span in zip(self.views(flats), self.sources, self.spans, strict=True):
                if span is None:
                    view.copy_(src)
                else:
                    _read_into(*span, view)

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
        self.files = FileMappings()
        self.blocks = [MappedBlock(b, dtype, self.files) for b in self.block_modules]
        weakref.finalize(self, self.files.close)  # the file descriptors, with the placement
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
