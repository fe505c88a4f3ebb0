"""The offload planner: a pure function from (GPU memory, model spec, request) to a memory plan.

A *strategy* (:class:`cosmos_cli.specs.Strategy`) says where each component lives at each stage of a generation.
The strategies are data a backend provides, ``ModelSpec.strategies``, ordered from the fastest (everything resident
on the GPU) to the leanest; the planner knows none of its own (Predict1's: plugins/predict1/strategies.py).
A strategy may also run a component in a *variant* (``Strategy.variants``, component -> variant name): the planner
then reads that component's ``<stage>_<variant>`` activation figures, the plan carries the mapping
(``MemoryPlan.variants``) and the backend alone knows what the variant means. ``ModelSpec.plan_flags`` names the
boolean JSON keys a backend shows for its variants.

Placements:

* ``gpu``: resident on the GPU for the whole run;
* ``swap``: on the GPU only for its own stages, parked in pinned host memory in between (the original
  deletes and reloads from disk instead: the same GPU peak, a slower batch);
* ``cpu``: kept and computed on the CPU. A component marked ``Component.gpu_when_room`` that a strategy keeps on
  the CPU is placed ``swap`` instead where the GPU has room for it at its stage (the plan's peak still fits the
  GPU; the host holds its weights either way): an autoregressive model on the GPU reads its weights from GPU
  memory at each token, on the CPU from host memory, tens of times slower, so one copy over PCIe per stage pays
  for itself at the first token. Where it stays on the CPU, the plan's ``notes`` estimate its time from
  ``Component.cpu_weight_reads`` at :data:`CPU_WEIGHT_READ_BYTES_PER_S`;
* ``stream``: transformer blocks (of the network, or of another component with blocks) live in pinned host
  memory and are copied to the GPU a block or two ahead of the computation; the rest of the model is resident during its stage;
* ``map``: a component's blocks (the network's, T5's layers) stream as under ``stream``, but from the
  memory-mapped checkpoint file: a side thread reads each block ahead into a small pinned staging ring, which is
  copied to the GPU. No host copy of the blocks is made; the file's pages live in the page cache, which the kernel
  may drop (they are then read from disk again on the next pass). The ``stream-mapped*`` strategies, for when host
  RAM cannot hold pinned copies.

The predicted peak of a stage is the bytes of every weight on the GPU during that stage plus the
activation peak of the stage: what ``torch.cuda.max_memory_allocated`` reports, which is what the backend's
formulas are calibrated against (benchmarks/bench_memory.py). The plan's peak is the largest over the stages. A
strategy *fits* when the peak plus a margin (a fixed runtime allowance for allocator fragmentation and
workspaces, plus 5% of the memory) is at most the available memory. ``memory-plan`` and ``generate`` call the same
function, so the plan shown is the plan used.

Host memory is planned too (``ram_bytes``, :mod:`cosmos_cli.hostmem` reads it: ``MemAvailable`` and the cgroup
limit). The predicted host peak of a strategy is what it commits, memory the kernel cannot take back: the process
itself (Python, torch, the CUDA runtime), every pinned copy (``swap``, ``stream``, the ``map`` staging ring and the
network's small non-block weights), every model kept on the CPU (``cpu``), and on top the larger of what running
adds (the job's frames on the host, the activations of a model computed on the CPU) and what loading adds (a model
its loader builds on the host before moving it to the GPU, ``Component.loaded_on_host``: an upper bound, as if it
were loaded last; a ``map``-placed one is left in its file's mapping, not built); with several GPUs, each other
rank's own copy of the network. A ``map``-placed file is counted apart, as page cache: what is left of the RAM
after the peak holds that much of it, and the plan says whether that holds the network's file, which every pass
over the network reads. A strategy fits when
its GPU peak fits the GPU (as above) and its host peak plus a margin (max(1 GiB, 5%)) fits the RAM; with the RAM
unknown only the GPU is checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from cosmos_cli.errors import MemoryPlanError
from cosmos_cli.specs import (
    NETWORK,
    OPTIONAL_SWITCHES,
    Component,
    ModelSpec,
    Strategy,
)

GiB = 1 << 30

# Fixed allowance on top of the tensors torch reports: allocator fragmentation and workspaces outside its
# counters. The CUDA context itself is already missing from "free" memory.
RUNTIME_OVERHEAD_BYTES = int(0.5 * GiB)
# A plan fits when peak + margin <= available memory, margin = the runtime allowance + max(0.5 GiB, 5%).
MARGIN_FRACTION = 0.05
MIN_MARGIN_BYTES = int(0.5 * GiB)
# Blocks resident at once when streaming: the one computing and the ones being copied ahead.
STREAM_BLOCKS_IN_FLIGHT = 3
# Pinned staging buffers of the ``map`` placement, one block each (cosmos_plugins.predict1.mapped.STAGING_SLOTS).
MAP_STAGING_BLOCKS = 2

# Host memory the process holds whatever the strategy: the interpreter, torch, the CUDA runtime's host side (its
# context, the kernels of the libraries it loads) and what a run allocates besides the models and the frames. Set
# from the GPU machine: RssAnon at the peak of whole CLI runs of 7B at full size, less what this module counts
# for their placements, was 0.25-0.41 GiB over four strategies (benchmarks/bench_e2e.py); 0.5 GiB covers the
# largest. Later runs of every strategy came within 3% of the predicted peak (benchmarks/results/host-memory-h200.md).
HOST_RUNTIME_BYTES = GiB // 2
# A plan fits the host when host peak + max(1 GiB, 5% of the RAM) <= the RAM available.
HOST_MARGIN_FRACTION = 0.05
MIN_HOST_MARGIN_BYTES = 1 * GiB
# The job's video on the host, per pixel: the input frames as read (uint8 RGB), the fp32 tensor made of them
# before it goes to the GPU, and the decoded video back (uint8): 3 channels x (1 + 4 + 1) bytes.
HOST_IO_BYTES_PER_PIXEL = 3 * (1 + 4 + 1)
# Weight bytes a CPU reads per second when it computes one token at a time (the rate that bounds autoregressive
# decoding on a CPU): an assumption, for the plan's estimate of a model computed on the CPU, taken as a desktop's
# sustained memory bandwidth (dual-channel DDR5); a server reads faster, a laptop slower.
CPU_WEIGHT_READ_BYTES_PER_S = 20 * 10**9


def strategies_for(spec: ModelSpec) -> tuple[Strategy, ...]:
    """The strategies ``spec``'s backend implements (:attr:`ModelSpec.strategies`), fastest first."""
    if not spec.strategies:
        raise MemoryPlanError(f"{spec.name} declares no memory strategy",
                              hint="A spec lists the strategies its backend implements in ModelSpec.strategies.")
    return spec.strategies


def strategy_named(spec: ModelSpec, name: str) -> Strategy | None:
    """``spec``'s strategy called ``name`` (None: its backend implements none of that name)."""
    return next((s for s in strategies_for(spec) if s.name == name), None)


def check_strategy(spec: ModelSpec, strategy: str) -> None:
    """Refuse, in one line naming the ones there are, a strategy that is not ``auto`` and not one ``spec``'s
    backend implements."""
    if strategy == "auto" or strategy_named(spec, strategy) is not None:
        return
    names = ", ".join(s.name for s in strategies_for(spec))
    raise MemoryPlanError(f"unknown memory strategy {strategy!r}: the {spec.backend} backend of {spec.name} "
                          f"implements {names}", hint=f"Use --offload auto or one of: {names}.")


def leaner_strategy(name: str, spec: ModelSpec) -> str | None:
    """The next strategy after ``name`` among those ``spec``'s backend implements (:func:`strategies_for`) that needs
    less GPU memory, of the same kind (pinned or mapped: a pinned strategy's mapped twin needs the same GPU memory;
    None after the leanest)."""
    offered = strategies_for(spec)
    names = [s.name for s in offered]
    if name not in names:
        return None
    i = names.index(name)
    kind = offered[i].mapped
    later = [s.name for s in offered[i + 1:] if s.mapped == kind]
    return later[0] if later else None


def strategy_for_original_flags(flags: set[str], spec: ModelSpec) -> str | None:
    """The first of ``spec``'s strategies whose original flags (:attr:`Strategy.original_flags`) include every flag
    given (None when no flag is set).

    The original's flags are independent booleans; each of a backend's offloading strategies includes the ones
    before it, so a set of flags maps to the first strategy that offloads every component the flags name. A set
    no strategy of the backend covers is refused in one line naming the ones it implements.
    """
    if not flags:
        return None
    for s in strategies_for(spec):
        if s.original_flags and flags <= {f.lstrip("-") for f in s.original_flags}:
            return s.name
    given = ", ".join("--" + f for f in sorted(flags))
    raise MemoryPlanError(f"the {spec.backend} backend of {spec.name} has no memory strategy for the original flags "
                          f"{given}; it implements {', '.join(s.name for s in strategies_for(spec))}",
                          hint="Use --offload auto or one of those.")


@dataclass(frozen=True)
class ComponentPlan:
    name: str
    placement: str
    weight_bytes: int
    stages: tuple[str, ...]


@dataclass(frozen=True)
class HostUse:
    """What a strategy holds in host memory: the committed peak, the mapped file bytes, and what holds it."""

    peak_bytes: int  # committed (anonymous and pinned): the kernel cannot take it back
    mapped_bytes: int  # checkpoint files read through a mapping: page cache, reclaimable
    held: tuple[tuple[str, str, int], ...]  # (component, placement, bytes) of the models held on the host
    # of mapped_bytes, the network's file: read again at every pass over the network unless the page cache holds
    # it (the others, T5's, are read once a job)
    pass_mapped_bytes: int = 0


@dataclass(frozen=True)
class MemoryPlan:
    """Where each component lives, the predicted peak, and why this strategy was chosen."""

    model: str
    strategy: str
    vram_bytes: int | None
    fits: bool
    predicted_peak_bytes: int
    margin_bytes: int
    components: tuple[ComponentPlan, ...]
    stage_peaks: tuple[tuple[str, int], ...]
    cfg_batched: bool
    # component -> the variant it runs in under this strategy (Strategy.variants): the backend interprets them
    variants: tuple[tuple[str, str], ...] = ()
    num_gpus: int = 1
    reason: str = ""
    alternatives: tuple[tuple[str, int, bool], ...] = field(default=(), compare=False)
    # the spec's plan_flags, evaluated: (key, whether the plan runs that component in that variant), for to_json
    flags: tuple[tuple[str, bool], ...] = ()
    # host memory (ram_bytes None: unknown, not checked; host_fits is then None)
    ram_bytes: int | None = None
    host_peak_bytes: int = 0
    host_mapped_bytes: int = 0
    host_margin_bytes: int = 0
    host_fits: bool | None = None
    # per strategy: (name, host peak, mapped bytes, fits the host or None when the RAM is unknown)
    host_alternatives: tuple[tuple[str, int, int, bool | None], ...] = field(default=(), compare=False)
    hint: str = ""  # what to do when the plan does not fit
    notes: tuple[str, ...] = ()  # where a model is computed, when it matters for the time (module doc)

    def variant(self, component: str) -> str | None:
        """The variant ``component`` runs in under this plan (None: its plain one)."""
        return dict(self.variants).get(component)

    def placement(self, component: str) -> str:
        for c in self.components:
            if c.name == component:
                return c.placement
        return "absent"

    @property
    def page_cache_bytes(self) -> int | None:
        """Host memory left for the page cache (a mapped file's pages) above the host peak (None: RAM unknown)."""
        return None if self.ram_bytes is None else max(0, self.ram_bytes - self.host_peak_bytes)

    def to_json(self) -> dict:
        host = {n: (p, m, f) for n, p, m, f in self.host_alternatives}
        return {
            "model": self.model,
            "vram_bytes": self.vram_bytes,
            "ram_bytes": self.ram_bytes,
            "num_gpus": self.num_gpus,
            "strategy": self.strategy,
            "fits": self.fits,
            "predicted_peak_bytes": self.predicted_peak_bytes,
            "margin_bytes": self.margin_bytes,
            "host_peak_bytes": self.host_peak_bytes,
            "host_mapped_bytes": self.host_mapped_bytes,
            "host_margin_bytes": self.host_margin_bytes,
            "host_fits": self.host_fits,
            "page_cache_bytes": self.page_cache_bytes,
            "cfg_batched": self.cfg_batched,
            **dict(self.flags),
            "variants": dict(self.variants),
            "components": [
                {"name": c.name, "placement": c.placement, "weight_bytes": c.weight_bytes, "stages": list(c.stages)}
                for c in self.components
            ],
            "stage_peaks": [{"stage": s, "bytes": b} for s, b in self.stage_peaks],
            "strategies": [{"name": n, "predicted_peak_bytes": p, "fits": f,
                            "host_peak_bytes": host.get(n, (None,) * 3)[0],
                            "host_mapped_bytes": host.get(n, (None,) * 3)[1],
                            "host_fits": host.get(n, (None,) * 3)[2]} for n, p, f in self.alternatives],
            "reason": self.reason,
            "hint": self.hint,
            "notes": list(self.notes),
        }


def _resident_bytes(c: Component, placement: str, stage: str) -> int:
    if placement == "gpu":
        return c.weight_bytes
    if placement == "swap":
        return c.weight_bytes if stage in c.stages else 0
    if placement in ("stream", "map"):
        if stage not in c.stages:
            return 0
        blocks = c.num_blocks * c.block_bytes
        return c.weight_bytes - blocks + min(STREAM_BLOCKS_IN_FLIGHT, c.num_blocks) * c.block_bytes
    return 0  # cpu


def _activation_bytes(c: Component, placement: str, stage: str, strategy: Strategy, num_gpus: int) -> int:
    if placement == "cpu" or stage not in c.stages:
        return 0
    variant = strategy.variant(c.name)
    act = c.activation(stage, variant)
    if c.name == NETWORK:  # the network: its guidance branches, and its activations split over the GPUs
        own = variant is not None and dict(c.activation_bytes).get(f"{stage}_{variant}", 0) > 0
        if not own and not strategy.cfg_batched and c.activation_bytes_sequential is not None:
            act = c.activation_bytes_sequential  # a variant's own figure is already that of the strategy's batching
        return act // num_gpus
    return act


def _run_components(spec: ModelSpec, *, upsampler: bool, guardrail: bool) -> list[Component]:
    """``spec``'s components less those the request leaves out (``Component.left_out_by``)."""
    off = {switch for switch, on in (("upsampler", upsampler), ("guardrail", guardrail)) if not on}
    return [c for c in spec.components if c.left_out_by not in off]


def margin_for(vram_bytes: int) -> int:
    """What must stay free above the predicted peak on a GPU with ``vram_bytes`` available."""
    return RUNTIME_OVERHEAD_BYTES + max(MIN_MARGIN_BYTES, int(vram_bytes * MARGIN_FRACTION))


def evaluate(spec: ModelSpec, strategy: Strategy, *, upsampler: bool = True, guardrail: bool = True,
             num_gpus: int = 1) -> tuple[int, tuple[ComponentPlan, ...], tuple[tuple[str, int], ...]]:
    """Predicted peak bytes per stage for one strategy (no fitting decision)."""
    comps = _run_components(spec, upsampler=upsampler, guardrail=guardrail)
    plans = tuple(ComponentPlan(c.name, strategy.placement(c.name), c.weight_bytes, c.stages) for c in comps)
    stage_peaks = []
    for stage in spec.stage_order():
        users = [c for c in comps if stage in c.stages]
        if not users:
            continue
        weights = sum(_resident_bytes(c, strategy.placement(c.name), stage) for c in comps)
        act = max((_activation_bytes(c, strategy.placement(c.name), stage, strategy, num_gpus) for c in users), default=0)
        stage_peaks.append((stage, weights + act))
    peak = max((b for _, b in stage_peaks), default=0)
    return peak, plans, tuple(stage_peaks)


def host_margin_for(ram_bytes: int) -> int:
    """What must stay free above the predicted host peak with ``ram_bytes`` of host memory available."""
    return max(MIN_HOST_MARGIN_BYTES, int(ram_bytes * HOST_MARGIN_FRACTION))


def _host_held(c: Component, placement: str) -> tuple[int, int]:
    """(committed, mapped) host bytes of one component under ``placement``, once loaded."""
    if placement in ("swap", "stream", "cpu"):
        return c.weight_bytes, 0  # the pinned master copy, or the model computed on the CPU
    if placement == "map":
        blocks = c.num_blocks * c.block_bytes
        staging = min(MAP_STAGING_BLOCKS, c.num_blocks) * c.block_bytes
        return c.weight_bytes - blocks + staging, c.weight_bytes
    return 0, 0  # gpu: loaded through the file's mapping straight onto the GPU


def evaluate_host(spec: ModelSpec, strategy: Strategy, *, upsampler: bool = True, guardrail: bool = True,
                  num_gpus: int = 1) -> HostUse:
    """The host memory one strategy commits and maps (module doc), for ``num_gpus`` processes on one machine."""
    comps = _run_components(spec, upsampler=upsampler, guardrail=guardrail)
    held = []
    committed = mapped = 0
    for c in comps:
        placement = strategy.placement(c.name)
        pinned, file_bytes = _host_held(c, placement)
        committed += pinned
        mapped += file_bytes
        if pinned:
            held.append((c.name, placement, pinned))
    # a model computed on the CPU has its stage's activations on the host
    act = max((c.activation(s) for c in comps if strategy.placement(c.name) == "cpu" for s in c.stages), default=0)
    io = spec.num_frames * spec.height * spec.width * HOST_IO_BYTES_PER_PIXEL
    # loading: a model its loader builds on the host holds its weights there until moved; counted as if loaded
    # last (an upper bound: the other models already hold what they keep). A ``map``-placed one is not built: its
    # loader leaves the file mapped
    loading = max((c.weight_bytes - _host_held(c, strategy.placement(c.name))[0] for c in comps
                   if c.loaded_on_host and strategy.placement(c.name) != "map"), default=0)
    peak = HOST_RUNTIME_BYTES + committed + max(io + act, loading)
    if num_gpus > 1:  # the other ranks load the network only (cosmos_plugins.predict1.pipeline), each its own copy
        net = spec.component(NETWORK)
        other = HOST_RUNTIME_BYTES + (_host_held(net, strategy.placement(NETWORK))[0] if net else 0)
        peak += (num_gpus - 1) * other
    merged: dict[tuple[str, str], int] = {}
    for name, placement, b in held:
        merged[(name, placement)] = merged.get((name, placement), 0) + b
    per_pass = sum(_host_held(c, "map")[1] for c in comps if c.name == NETWORK and strategy.placement(c.name) == "map")
    return HostUse(peak, mapped, tuple((n, p, b) for (n, p), b in merged.items()), per_pass)


def ram_needed(host_peak_bytes: int) -> int:
    """The least host RAM at which a host peak of ``host_peak_bytes`` fits with its margin."""
    return max(host_peak_bytes + MIN_HOST_MARGIN_BYTES, -(-host_peak_bytes * 100 // int(100 * (1 - HOST_MARGIN_FRACTION))))


def host_advice(use: HostUse, spec: ModelSpec) -> str:
    """What to do when ``use`` does not fit the host: the models that can be left out, then more RAM."""
    gib = lambda b: f"{b / GiB:.1f} GiB"  # noqa: E731
    held = sorted(use.held, key=lambda h: -h[2])
    leaving_out = {c.name: OPTIONAL_SWITCHES[c.left_out_by] for c in spec.components if c.left_out_by}
    drop = [f"{leaving_out[n]} leaves out the {n.replace('_', ' ')} ({gib(b)} {'on the CPU' if p == 'cpu' else 'pinned'})"
            for n, p, b in held if n in leaving_out]
    biggest = ", ".join(f"{n.replace('_', ' ')} {gib(b)}" for n, _, b in held[:3])
    more = (f"or give this process at least {gib(ram_needed(use.peak_bytes))} of RAM (close other programs; raise the "
            f"container's or job's memory limit)")
    return (f"Host memory held: {biggest}. " + ("; ".join(drop) + "; " if drop else "") + more + ".")


def with_room_on_the_gpu(spec: ModelSpec, strategy: Strategy, vram_bytes: int | None, *, upsampler: bool = True,
                         guardrail: bool = True, num_gpus: int = 1) -> Strategy:
    """``strategy`` with each ``gpu_when_room`` component it keeps on the CPU placed ``swap`` where the GPU has room
    for it (the plan's peak, with it swapped, plus the margin fits ``vram_bytes``); unchanged with the GPU memory
    unknown, or when the strategy does not fit as it is."""
    if vram_bytes is None:
        return strategy
    limit = vram_bytes - margin_for(vram_bytes)
    comps = _run_components(spec, upsampler=upsampler, guardrail=guardrail)
    names = dict.fromkeys(c.name for c in comps if strategy.placement(c.name) == "cpu")
    movable = [n for n in names if all(c.gpu_when_room for c in comps if c.name == n)]
    if not movable or evaluate(spec, strategy, upsampler=upsampler, guardrail=guardrail, num_gpus=num_gpus)[0] > limit:
        return strategy
    for name in movable:
        trial = replace(strategy, placements=tuple((c, "swap" if c == name else p) for c, p in strategy.placements)
                        + (() if name in dict(strategy.placements) else ((name, "swap"),)))
        if evaluate(spec, trial, upsampler=upsampler, guardrail=guardrail, num_gpus=num_gpus)[0] <= limit:
            strategy = trial
    return strategy


def placement_notes(spec: ModelSpec, strategy: Strategy, moved: Strategy, *, upsampler: bool = True,
                    guardrail: bool = True) -> tuple[str, ...]:
    """What the plan says of the models ``strategy`` computes on the CPU: moved to the GPU for their stage
    (``moved``), or left there with an estimate of their time."""
    gib = lambda b: f"{b / GiB:.1f} GiB"  # noqa: E731
    notes = []
    comps = _run_components(spec, upsampler=upsampler, guardrail=guardrail)
    for name in dict.fromkeys(c.name for c in comps if strategy.placement(c.name) == "cpu"):
        label = name.replace("_", " ")
        if moved.placement(name) == "swap":
            notes.append(f"the {label} runs on the GPU for its stage (there is room for it there), not on the CPU")
            continue
        for c in comps:
            if c.name == name and c.cpu_weight_reads:
                seconds = c.cpu_weight_reads * c.weight_bytes / CPU_WEIGHT_READ_BYTES_PER_S
                when = f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"
                notes.append(f"the {label} ({', '.join(c.stages)}) runs on the CPU: up to about {when} per job "
                             f"({c.cpu_weight_reads} tokens, each reading its {gib(c.weight_bytes)} of weights at an "
                             f"assumed {CPU_WEIGHT_READ_BYTES_PER_S / 1e9:.0f} GB/s)"
                             + (" for want of room on the GPU at that stage" if c.gpu_when_room else ""))
    return tuple(notes)


def plan_memory(
    spec: ModelSpec,
    vram_bytes: int | None,
    *,
    strategy: str = "auto",
    upsampler: bool = True,
    guardrail: bool = True,
    num_gpus: int = 1,
    asked_by: str | None = None,
    ram_bytes: int | None = None,
) -> MemoryPlan:
    """Pick the fastest strategy that fits ``vram_bytes`` of GPU memory and ``ram_bytes`` of host memory
    (``auto``), or check an explicit one.

    ``asked_by`` says where an explicit strategy came from (the original's flags that mean it), for the messages.

    ``vram_bytes=None`` means the GPU memory is unknown (no GPU detected, none given): ``auto`` then returns the
    fastest strategy with ``fits=False`` and says so. ``ram_bytes=None``: the host memory is unknown and not
    checked. An explicit strategy that does not fit raises :class:`MemoryPlanError` naming the strategy that would.
    When nothing fits, ``auto`` returns the leanest candidate with ``fits=False``, the reason, and in ``hint`` what
    to do. ``auto`` tries the pinned strategies (fastest first) before the mapped ones (``Strategy.mapped``), whose
    speed depends on the disk and the page cache: a mapped one is chosen only when no pinned one fits.
    """
    if num_gpus < 1:
        raise MemoryPlanError(f"--num-gpus must be >= 1, got {num_gpus}")
    check_strategy(spec, strategy)
    as_declared = strategies_for(spec)
    offered = tuple(with_room_on_the_gpu(spec, s, vram_bytes, upsampler=upsampler, guardrail=guardrail,
                                         num_gpus=num_gpus) for s in as_declared)
    notes = {s.name: placement_notes(spec, d, s, upsampler=upsampler, guardrail=guardrail)
             for d, s in zip(as_declared, offered, strict=True)}
    evaluated = [(s, *evaluate(spec, s, upsampler=upsampler, guardrail=guardrail, num_gpus=num_gpus)) for s in offered]
    hosts = {s.name: evaluate_host(spec, s, upsampler=upsampler, guardrail=guardrail, num_gpus=num_gpus)
             for s in offered}
    margin = margin_for(vram_bytes) if vram_bytes is not None else 0
    host_margin = host_margin_for(ram_bytes) if ram_bytes is not None else 0

    def gpu_fits(peak: int) -> bool:
        return vram_bytes is not None and peak + margin <= vram_bytes

    def host_fits(name: str) -> bool | None:
        return None if ram_bytes is None else hosts[name].peak_bytes + host_margin <= ram_bytes

    def fits(s: Strategy, peak: int) -> bool:
        return gpu_fits(peak) and host_fits(s.name) is not False

    alternatives = tuple((s.name, peak, gpu_fits(peak)) for s, peak, _, _ in evaluated)
    host_alternatives = tuple((s.name, hosts[s.name].peak_bytes, hosts[s.name].mapped_bytes, host_fits(s.name))
                              for s in offered)
    gib = lambda b: f"{b / GiB:.1f} GiB"  # noqa: E731

    def cache_note(s: Strategy) -> str:
        use = hosts[s.name]
        net = use.pass_mapped_bytes
        if not net or ram_bytes is None:
            return ""
        cache = max(0, ram_bytes - use.peak_bytes)
        if cache >= net:
            return f"; the page cache can hold the whole mapped network file ({gib(net)})"
        passes = spec.num_steps * (1 if s.cfg_batched else 2)  # one pass over the blocks per network forward
        return (f"; the page cache can hold about {gib(cache)} of the mapped network file's {gib(net)}, so "
                f"each of the {passes} passes over the network may read up to all of it from disk again (up to "
                f"{passes * net / GiB:.0f} GiB a generation)")

    def host_note(s: Strategy) -> str:
        if ram_bytes is None:
            return ""
        return (f"; host: {gib(hosts[s.name].peak_bytes)} predicted + {gib(host_margin)} margin <= {gib(ram_bytes)}"
                + cache_note(s))

    def build(s: Strategy, peak: int, comps, stages, reason: str, hint: str = "") -> MemoryPlan:
        use = hosts[s.name]
        variants = tuple((c, v) for c, v in s.variants if spec.component(c) is not None)
        flags = tuple((key, (c, v) in variants) for key, c, v in spec.plan_flags)
        return MemoryPlan(spec.name, s.name, vram_bytes, fits(s, peak), peak, margin, comps, stages, s.cfg_batched,
                          variants, num_gpus, reason, alternatives, flags=flags,
                          ram_bytes=ram_bytes, host_peak_bytes=use.peak_bytes, host_mapped_bytes=use.mapped_bytes,
                          host_margin_bytes=host_margin, host_fits=host_fits(s.name),
                          host_alternatives=host_alternatives, hint=hint, notes=notes[s.name])

    if strategy != "auto":
        s, peak, comps, stages = next(e for e in evaluated if e[0].name == strategy)
        asked = f"{s.name} ({asked_by})" if asked_by else s.name
        if vram_bytes is None:
            return build(s, peak, comps, stages, f"{asked} needs about {gib(peak)}; GPU memory unknown")
        fitting = [e for e in evaluated if fits(e[0], e[1])]
        use_instead = (f"Use --offload {fitting[0][0].name} (predicted {gib(fitting[0][1])}) or --offload auto."
                       if fitting else "No strategy fits this machine; see `cosmos memory-plan`.")
        if not gpu_fits(peak):
            raise MemoryPlanError(f"strategy {asked} needs about {gib(peak)} (+{gib(margin)} margin) but only "
                                  f"{gib(vram_bytes)} is available", hint=use_instead)
        if host_fits(s.name) is False:
            raise MemoryPlanError(f"strategy {asked} needs about {gib(hosts[s.name].peak_bytes)} of host memory "
                                  f"(+{gib(host_margin)} margin) but only {gib(ram_bytes)} is available",
                                  hint=use_instead if fitting else host_advice(hosts[s.name], spec))
        return build(s, peak, comps, stages, f"{asked} was asked for and fits: {gib(peak)} predicted peak + "
                                             f"{gib(margin)} margin <= {gib(vram_bytes)}{host_note(s)}")

    if vram_bytes is None:
        s, peak, comps, stages = evaluated[0]
        return build(s, peak, comps, stages, "no GPU detected and no --vram given: showing the fastest strategy")
    # pinned strategies first: a mapped one's speed depends on the disk and the page cache, so it is the choice only
    # when no pinned one fits (module doc)
    candidates = [e for e in evaluated if not e[0].mapped] + [e for e in evaluated if e[0].mapped]
    for i, (s, peak, comps, stages) in enumerate(candidates):
        if fits(s, peak):
            before = candidates[:i]
            gpu_skipped = [f"{e[0].name} {gib(e[1])}" for e in before if not gpu_fits(e[1])]
            host_skipped = [f"{e[0].name} {gib(hosts[e[0].name].peak_bytes)}" for e in before
                            if gpu_fits(e[1]) and host_fits(e[0].name) is False]
            why = (f"; faster ones need more GPU memory ({', '.join(gpu_skipped)})" if gpu_skipped else "")
            why += (f"; faster ones need more host memory ({', '.join(host_skipped)}) than the {gib(ram_bytes)} "
                    f"available" if host_skipped else "")
            return build(s, peak, comps, stages, f"{s.name} is the fastest strategy that fits: {gib(peak)} predicted "
                                                 f"peak + {gib(margin)} margin <= {gib(vram_bytes)}{host_note(s)}{why}")
    gpu_fitting = [e for e in evaluated if gpu_fits(e[1])]
    if not gpu_fitting:
        s, peak, comps, stages = evaluated[-1]
        return build(s, peak, comps, stages, f"nothing fits in {gib(vram_bytes)}: even the leanest strategy, {s.name}, "
                                             f"needs about {gib(peak)} + {gib(margin)} margin",
                     hint="More GPUs (--num-gpus N) split the network's activations; or use a GPU with more free memory.")
    s, peak, comps, stages = min(gpu_fitting, key=lambda e: hosts[e[0].name].peak_bytes)
    use = hosts[s.name]
    return build(s, peak, comps, stages,
                 f"nothing fits in {gib(ram_bytes)} of host memory: of the strategies that fit the GPU, the leanest in "
                 f"host memory, {s.name}, holds about {gib(use.peak_bytes)} + {gib(host_margin)} margin",
                 hint=host_advice(use, spec))
