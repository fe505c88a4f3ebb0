"""Placement engines: where a model's weights live while a pipeline runs, model-agnostic (any torch backend).

Each engine wraps a component (a torch module, or a wrapper object holding modules) as a :class:`Placed`; the
pipeline enters ``placed.active()`` around each stage that uses it:

* :class:`Resident`: on the compute device for the whole run.
* :class:`Swapped`: a master copy lives in pinned host memory, packed in one flat buffer per dtype
  (:class:`TensorGroup`); each stage that uses the component copies it to the device (one asynchronous copy per
  buffer) and drops the copy afterwards. The disk is read once, at load, so a batch pays the load once.
* :class:`OnHost`: kept and computed on the host.
* :class:`Streamed`: each block's weights live in their own pinned host buffer; a few device slots hold the block
  being computed and the next ones, which a side CUDA stream copies in while the current block computes (CUDA
  events order the copies against the compute). The rest of the module is on the device for the stage. Block
  hooks drive it, so the module's own ``forward`` streams unchanged; a forward that drives its blocks itself
  uses :meth:`Streamed.block`.

Which engine each component gets is the backend's choice (the predict1 backend: ``cosmos_plugins.predict1.offload``
maps the memory plan's placement names to these, and adds its memory-mapped streamer).

Host dtype: the host copies keep the dtype the weights are computed in (bf16 on a GPU).

Pinned memory is plain host memory registered with CUDA (``cudaHostRegister``) at its exact size: PyTorch's
pinned allocator rounds each allocation up to a power of two, 28% more for the 14B network's 5120-wide matrices.
Without a GPU the host copies are ordinary memory, and every placement still runs its real code path with the
CPU as the compute device (the tests do that).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

STREAM_SLOTS = 3  # device slots when streaming: the block computing and two being copied ahead


# ----------------------------------------------------------------------------------------------------------
# Host memory


def _cuda_host_register(t: Tensor) -> bool:
    """Page-lock ``t``'s memory in place (exact size). False when there is no GPU or the driver refuses."""
    if not torch.cuda.is_available() or t.numel() == 0:
        return False
    err = torch.cuda.cudart().cudaHostRegister(t.data_ptr(), t.numel() * t.element_size(), 0)
    return int(err) == 0


def _cuda_host_unregister(ptr: int) -> None:
    try:
        torch.cuda.cudart().cudaHostUnregister(ptr)
    except Exception:  # noqa: BLE001 - interpreter shutdown or CUDA already torn down: nothing to release
        pass


def host_buffer(numel: int, dtype: torch.dtype, pin: bool) -> tuple[Tensor, bool, bool]:
    """An uninitialized flat host tensor, page-locked when ``pin`` and a GPU is present:
    (tensor, pinned, registered by us). Where the driver refuses to register, PyTorch's pinned allocator."""
    t = torch.empty(numel, dtype=dtype, device="cpu")
    if not pin or not torch.cuda.is_available():
        return t, False, False
    if _cuda_host_register(t):
        return t, True, True
    return torch.empty(numel, dtype=dtype, device="cpu", pin_memory=True), True, False


# ----------------------------------------------------------------------------------------------------------
# Groups of tensors: a module's weights packed in one flat buffer per dtype


@dataclass
class _Entry:
    tensor: Tensor  # the Parameter (kept, its .data is swapped) or the buffer tensor
    owners: list[tuple[nn.Module, str]]  # modules holding it as a buffer (parameters need none: .data is shared)
    is_param: bool


def _collect(module: nn.Module, skip: Sequence[nn.Module] = ()) -> list[_Entry]:
    """Every parameter and buffer of ``module`` outside the submodules in ``skip``, each tensor once."""
    skipped = {id(m) for m in skip}
    by_id: dict[int, _Entry] = {}
    visited: set[int] = set()

    def walk(m: nn.Module) -> None:
        if id(m) in skipped or id(m) in visited:
            return
        visited.add(id(m))
        for p in m._parameters.values():
            if p is not None and id(p) not in by_id:
                by_id[id(p)] = _Entry(p, [], True)
        for name, b in m._buffers.items():
            if b is not None:
                by_id.setdefault(id(b), _Entry(b, [], False)).owners.append((m, name))
        for child in m._modules.values():
            if child is not None:
                walk(child)

    walk(module)
    return list(by_id.values())


class TensorGroup:
    """The weights of one module (less some submodules) with a master copy on the host.

    The master copy is one flat buffer per dtype (pinned when a GPU is present); :meth:`load` copies it into
    flat device buffers, :meth:`attach` points the module's tensors at views of those, :meth:`detach` points
    them back at the host copy. Parameters keep their identity (their ``.data`` is swapped)."""

    def __init__(self, module: nn.Module, skip: Sequence[nn.Module] = (), pin: bool = True):
        self.entries = _collect(module, skip)
        self.layout: list[tuple[torch.dtype, int, torch.Size]] = []
        self.numel: dict[torch.dtype, int] = {}
        for e in self.entries:
            dt = e.tensor.dtype
            self.layout.append((dt, self.numel.get(dt, 0), e.tensor.shape))
            self.numel[dt] = self.numel.get(dt, 0) + e.tensor.numel()
        self.host: dict[torch.dtype, Tensor] = {}
        registered = []
        self.pinned = bool(self.numel)
        for dt, n in self.numel.items():
            self.host[dt], pinned, ours = host_buffer(n, dt, pin)
            self.pinned = self.pinned and pinned
            if ours:
                registered.append(self.host[dt].data_ptr())
        self._finalizer = weakref.finalize(self, lambda ptrs: [_cuda_host_unregister(p) for p in ptrs], registered)
        self.host_views = self.views(self.host)
        with torch.no_grad():
            for e, v in zip(self.entries, self.host_views, strict=True):
                v.copy_(e.tensor)
                self._assign_one(e, v)  # the original tensor can go now
        self.device: torch.device = torch.device("cpu")

    @property
    def nbytes(self) -> int:
        return sum(n * torch.empty((), dtype=dt).element_size() for dt, n in self.numel.items())

    def views(self, flats: dict[torch.dtype, Tensor]) -> list[Tensor]:
        return [flats[dt][off:off + shape.numel()].view(shape) for dt, off, shape in self.layout]

    def _assign(self, tensors: list[Tensor]) -> None:
        for e, t in zip(self.entries, tensors, strict=True):
            self._assign_one(e, t)

    @staticmethod
    def _assign_one(e: _Entry, t: Tensor) -> None:
        if e.is_param:
            e.tensor.data = t
        else:
            for owner, name in e.owners:
                owner._buffers[name] = t
            e.tensor = t

    def empty_device(self, device: torch.device) -> dict[torch.dtype, Tensor]:
        return {dt: torch.empty(n, dtype=dt, device=device) for dt, n in self.numel.items()}

    def load(self, flats: dict[torch.dtype, Tensor]) -> None:
        """Copy the host copy into ``flats`` (device buffers at least as large), asynchronously where pinned."""
        for dt, host in self.host.items():
            flats[dt][: host.numel()].copy_(host, non_blocking=self.pinned)

    def attach(self, flats: dict[torch.dtype, Tensor]) -> None:
        self._assign(self.views(flats))
        self.device = next(iter(flats.values())).device if flats else self.device

    def detach(self) -> None:
        self._assign(self.host_views)
        self.device = torch.device("cpu")


# Host copies live as long as their module: module -> (the block list it was split by, its groups).
_PARKED: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[int, ...], list[TensorGroup]]] = weakref.WeakKeyDictionary()


def park(module: nn.Module, blocks: Sequence[nn.Module] = (), pin: bool = True) -> list[TensorGroup]:
    """Give ``module`` a host master copy (once): group 0 is everything but ``blocks``, then one group per block.

    The module's tensors then live in the host copy. A module parked before with another split is repacked."""
    key = tuple(id(b) for b in blocks)
    known = _PARKED.get(module)
    if known is not None and known[0] == key:
        return known[1]
    if known is not None:
        for g in known[1]:
            g.detach()
    groups = [TensorGroup(module, blocks, pin)] + [TensorGroup(b, (), pin) for b in blocks]
    _PARKED[module] = (key, groups)
    return groups


def parked_groups(module: nn.Module) -> list[TensorGroup] | None:
    known = _PARKED.get(module)
    return None if known is None else known[1]


def torch_modules(obj) -> list[nn.Module]:
    """The torch modules a component holds: itself if it is one, else the modules among its attributes (and
    those of its helper objects from the wrapper's own package, e.g. a guardrail's classifier and face
    detector)."""
    if isinstance(obj, nn.Module):
        return [obj]
    found: dict[int, nn.Module] = {}
    package = type(obj).__module__.split(".")[0] + "."

    def walk(o, depth: int) -> None:
        for v in vars(o).values():
            if isinstance(v, nn.Module):
                found.setdefault(id(v), v)
            elif depth < 3 and hasattr(v, "__dict__") and (type(v).__module__ + ".").startswith(package):
                walk(v, depth + 1)

    walk(obj, 0)
    return list(found.values())


def _set_wrapper_device(obj, device: torch.device, move: bool = True) -> None:
    """A wrapper object (T5TextEncoder, PromptUpsampler, guardrails) may remember its device: tell it. With
    ``move``, through its ``to`` (its tensors are already there, so that moves nothing); without (a streamed
    module, whose blocks must stay on the host), by setting a plain ``device`` attribute if it has one."""
    if isinstance(obj, nn.Module):
        return
    if move and hasattr(obj, "to"):
        obj.to(str(device))
    elif "device" in vars(obj):
        obj.device = str(device)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------------------
# Placements


class Placed:
    """A component under a placement; ``active()`` is entered around every stage that uses it."""

    placement = ""

    def __init__(self, obj, device: torch.device | str):
        self.obj, self.device = obj, torch.device(device)

    @property
    def module(self):
        return self.obj

    @contextmanager
    def active(self) -> Iterator:
        yield self.obj

    def close(self) -> None:
        """Release what this placement holds on the device; the component is left on the host or where it was."""


class OnHost(Placed):
    """Kept and computed on the host."""

    placement = "cpu"


class Resident(Placed):
    """On the device for the whole run. A component with a host copy (parked) is copied to the device here
    and back to its host copy by :meth:`close`; one loaded straight onto the device simply stays."""

    placement = "gpu"

    def __init__(self, obj, device):
        super().__init__(obj, device)
        self._attached: list[TensorGroup] = []
        for m in torch_modules(obj):
            for g in parked_groups(m) or ():
                if g.device != self.device:
                    flats = g.empty_device(self.device)
                    g.load(flats)
                    g.attach(flats)
                    self._attached.append(g)
        if self._attached:
            _set_wrapper_device(obj, self.device)
            _synchronize(self.device)

    def close(self) -> None:
        for g in self._attached:
            g.detach()
        if self._attached:
            _set_wrapper_device(self.obj, torch.device("cpu"))
        self._attached = []


class Swapped(Placed):
    """A pinned host master copy; on the device only while one of its stages runs."""

    placement = "swap"

    def __init__(self, obj, device, blocks: Sequence[nn.Module] = ()):
        super().__init__(obj, device)
        mods = torch_modules(obj)
        self.groups = [g for m in mods for g in (parked_groups(m) or park(m, blocks if m is obj else ()))]

    @contextmanager
    def active(self) -> Iterator:
        for g in self.groups:
            flats = g.empty_device(self.device)
            g.load(flats)
            g.attach(flats)
        _set_wrapper_device(self.obj, self.device)
        try:
            yield self.obj
        finally:
            _synchronize(self.device)
            for g in self.groups:
                g.detach()
            _set_wrapper_device(self.obj, torch.device("cpu"))
            if self.device.type == "cuda":
                torch.cuda.empty_cache()


class Streamed(Placed):
    """A module whose blocks (run in order, each once per forward) stream from pinned host memory through
    ``slots`` device slots: the diffusion network's transformer blocks, the T5 encoder's layers.

    While block i computes, blocks i+1 .. i+slots-1 are being copied in on a side stream (wrapping round to the
    first blocks of the next forward). Before block i runs, the compute stream waits for its copy; after it,
    an event marks its slot free, and the copy that reuses the slot waits for that event. The rest of the
    module is on the device for the stage. ``obj`` may be a wrapper holding the module (``module``)."""

    placement = "stream"

    def __init__(self, obj, device, blocks: Sequence[nn.Module], slots: int = STREAM_SLOTS,
                 module: nn.Module | None = None):
        super().__init__(obj, device)
        if not blocks:
            raise ValueError("streaming needs the module's list of blocks")
        module = module if module is not None else (obj if isinstance(obj, nn.Module) else torch_modules(obj)[0])
        self.block_modules = list(blocks)
        groups = park(module, self.block_modules)
        self.rest, self.blocks = groups[0], groups[1:]
        self.num_slots = max(2, min(slots, len(self.blocks)))
        self._handles: list = []
        self._live = False

    # -- the schedule ------------------------------------------------------------------------------------

    def _start(self) -> None:
        dev = self.device
        sizes: dict[torch.dtype, int] = {}
        for g in self.blocks:
            for dt, n in g.numel.items():
                sizes[dt] = max(sizes.get(dt, 0), n)
        self.slots = [{dt: torch.empty(n, dtype=dt, device=dev) for dt, n in sizes.items()}
                      for _ in range(self.num_slots)]
        cuda = dev.type == "cuda"
        self.copy_stream = torch.cuda.Stream(dev) if cuda else None
        self.slot_free: list = [None] * self.num_slots  # event: the slot's last block finished computing
        self.slot_of: dict[int, int] = {}  # block index -> slot, for the blocks issued and not yet run
        self.ready: dict[int, object] = {}  # block index -> event: its copy finished
        self.rest_flats = self.rest.empty_device(dev)
        self.rest.load(self.rest_flats)
        self.rest.attach(self.rest_flats)
        _set_wrapper_device(self.obj, dev, move=False)
        self._live = True
        self.issue(0)

    def issue(self, i: int) -> None:
        """Start copying block ``i`` into a slot that holds no block waiting to run (once).

        In order (each block once per forward) this is round robin. A forward that skips blocks (step caching)
        leaves blocks issued and not run; they keep their slots until they run, so the window of issued blocks
        stays at most ``num_slots`` wide and a slot in use is never overwritten."""
        if i in self.slot_of:
            return
        taken = set(self.slot_of.values())
        slot = next(k for k in range(self.num_slots) if k not in taken)
        self.slot_of[i] = slot
        if self.copy_stream is None:
            self.blocks[i].load(self.slots[slot])
            return
        with torch.cuda.stream(self.copy_stream):
            if self.slot_free[slot] is not None:
                self.copy_stream.wait_event(self.slot_free[slot])
            self.blocks[i].load(self.slots[slot])
            event = torch.cuda.Event()
            event.record(self.copy_stream)
        self.ready[i] = event

    def before_block(self, i: int) -> None:
        self.issue(i)
        if i in self.ready:
            torch.cuda.current_stream(self.device).wait_event(self.ready.pop(i))
        self.blocks[i].attach(self.slots[self.slot_of[i]])
        for ahead in range(1, self.num_slots):
            self.issue((i + ahead) % len(self.blocks))

    def after_block(self, i: int) -> None:
        slot = self.slot_of.pop(i)
        if self.copy_stream is not None:
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(self.device))
            self.slot_free[slot] = event
        self.blocks[i].detach()

    @contextmanager
    def block(self, i: int) -> Iterator[None]:
        """Around one block's computation (for a forward that drives the blocks itself)."""
        self.before_block(i)
        try:
            yield
        finally:
            self.after_block(i)

    def _stop(self) -> None:
        _synchronize(self.device)
        for g in self.blocks:
            g.detach()
        self.rest.detach()
        _set_wrapper_device(self.obj, torch.device("cpu"), move=False)
        self.slots = []
        self.rest_flats = {}
        self.slot_of, self.ready = {}, {}
        self._live = False
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @contextmanager
    def active(self) -> Iterator:
        self._start()
        for i, b in enumerate(self.block_modules):
            self._handles.append(b.register_forward_pre_hook(lambda m, args, i=i: self.before_block(i)))
            self._handles.append(b.register_forward_hook(lambda m, args, out, i=i: self.after_block(i)))
        try:
            yield self.obj
        finally:
            for h in self._handles:
                h.remove()
            self._handles = []
            self._stop()

    def close(self) -> None:
        if self._live:
            self._stop()
