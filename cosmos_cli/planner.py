"""The offload planner: a pure function from (GPU memory, model spec, request) to a memory plan.

A *strategy* says where each component lives at each stage of a generation. Strategies are ordered from
the fastest (everything resident on the GPU) to the leanest. The first five offloading strategies are the
original project's five ``--offload_*`` levels, in the order of its published memory table; the leaner
ones go further: the network's blocks streamed from host memory with the prompt upsampler and guardrails on
the CPU (``stream``), one guidance branch at a time (``stream-sequential``), and the T5 encoder's layers streamed
too with the network's attention and MLP over chunks of tokens (``stream-lean``). Every strategy runs the tokenizer over
chunks of frames: the result is the same up to rounding, it costs about a second, and it saves ~25 GiB.

Placements:

* ``gpu``: resident on the GPU for the whole run;
* ``swap``: on the GPU only for its own stages, parked in pinned host memory in between (the original
  deletes and reloads from disk instead: the same GPU peak, a slower batch);
* ``cpu``: kept and computed on the CPU;
* ``stream``: transformer blocks (of the network, or T5's layers) live in pinned host memory and are copied to
  the GPU a block or two ahead of the computation; the rest of the model is resident during its stage.

The predicted peak of a stage is the bytes of every weight on the GPU during that stage plus the
activation peak of the stage: what ``torch.cuda.max_memory_allocated`` reports, which is what the backend's
formulas are calibrated against (benchmarks/bench_memory.py). The plan's peak is the largest over the stages. A
strategy *fits* when the peak plus a margin (a fixed runtime allowance for allocator fragmentation and
workspaces, plus 5% of the memory) is at most the available memory. ``memory-plan`` and ``generate`` call the same
function, so the plan shown is the plan used.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cosmos_cli.errors import MemoryPlanError
from cosmos_cli.specs import (
    GUARDRAIL,
    NETWORK,
    STAGES,
    TEXT_ENCODER,
    TOKENIZER,
    UPSAMPLER,
    Component,
    ModelSpec,
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


@dataclass(frozen=True)
class Strategy:
    """A named set of placements, plus how the network and tokenizer run under it."""

    name: str
    description: str
    placements: tuple[tuple[str, str], ...]
    cfg_batched: bool = True
    tiled_tokenizer: bool = False
    original_flags: tuple[str, ...] = ()
    lean_network: bool = False

    def placement(self, component: str) -> str:
        return dict(self.placements).get(component, "gpu")


def _strategy(name, description, *, swap=(), cpu=(), stream=(), cfg_batched=True, tiled=True, flags=(),
              lean=False):
    placements = tuple((c, "swap") for c in swap) + tuple((c, "cpu") for c in cpu) + tuple((c, "stream") for c in stream)
    return Strategy(name, description, placements, cfg_batched, tiled, tuple(flags), lean)


_UPS, _GRD, _TXT, _TOK, _NET = UPSAMPLER, GUARDRAIL, TEXT_ENCODER, TOKENIZER, NETWORK

# A strategy is listed only once the backend runs it (cosmos_plugins.predict1.offload); every one is measured by
# benchmarks/bench_memory.py.
STRATEGIES: tuple[Strategy, ...] = (
    _strategy("resident", "every model stays on the GPU"),
    _strategy("offload-upsampler", "the prompt upsampler is on the GPU only while it runs",
              swap=(_UPS,), flags=("--offload_prompt_upsampler",)),
    _strategy("offload-guardrails", "+ the guardrail models are on the GPU only while they run",
              swap=(_UPS, _GRD), flags=("--offload_prompt_upsampler", "--offload_guardrail_models")),
    _strategy("offload-text-encoder", "+ the T5 text encoder is on the GPU only while it runs",
              swap=(_UPS, _GRD, _TXT),
              flags=("--offload_prompt_upsampler", "--offload_guardrail_models", "--offload_text_encoder_model")),
    _strategy("offload-tokenizer", "+ the tokenizer is on the GPU only while it runs",
              swap=(_UPS, _GRD, _TXT, _TOK),
              flags=("--offload_prompt_upsampler", "--offload_guardrail_models", "--offload_text_encoder_model",
                     "--offload_tokenizer")),
    _strategy("offload-all", "+ the diffusion network is on the GPU only while it denoises, its two guidance "
              "branches one after the other (all five original flags)", swap=(_UPS, _GRD, _TXT, _TOK, _NET),
              cfg_batched=False,
              flags=("--offload_prompt_upsampler", "--offload_guardrail_models", "--offload_text_encoder_model",
                     "--offload_tokenizer", "--offload_diffusion_transformer")),
    _strategy("stream", "the network's blocks stream from pinned host memory, copied a block or two ahead on a "
              "side stream; prompt upsampler and guardrails on the CPU; T5 and tokenizer on the GPU only for "
              "their stages", swap=(_TXT, _TOK), cpu=(_UPS, _GRD), stream=(_NET,)),
    _strategy("stream-sequential", "+ the two guidance branches one after the other",
              swap=(_TXT, _TOK), cpu=(_UPS, _GRD), stream=(_NET,), cfg_batched=False),
    _strategy("stream-lean", "+ T5's layers stream too; the network's attention and MLP over chunks of tokens",
              swap=(_TOK,), cpu=(_UPS, _GRD), stream=(_TXT, _NET), cfg_batched=False, lean=True),
)

STRATEGY_NAMES = tuple(s.name for s in STRATEGIES)

def leaner_strategy(name: str) -> str | None:
    """The strategy after ``name`` in :data:`STRATEGIES` (None after the leanest)."""
    i = STRATEGY_NAMES.index(name)
    return STRATEGY_NAMES[i + 1] if i + 1 < len(STRATEGY_NAMES) else None


def strategy_for_original_flags(flags: set[str]) -> str | None:
    """The leanest-needed strategy covering every flag given (None when no flag is set).

    The original's flags are independent booleans; each of our strategies includes the ones before it, so a
    set of flags maps to the first strategy that offloads every component the flags name.
    """
    if not flags:
        return None
    for s in STRATEGIES[1:6]:
        covered = {f.lstrip("-") for f in s.original_flags}
        if flags <= covered:
            return s.name
    return "offload-all"


@dataclass(frozen=True)
class ComponentPlan:
    name: str
    placement: str
    weight_bytes: int
    stages: tuple[str, ...]


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
    tiled_tokenizer: bool
    num_gpus: int = 1
    reason: str = ""
    alternatives: tuple[tuple[str, int, bool], ...] = field(default=(), compare=False)
    lean_network: bool = False

    def placement(self, component: str) -> str:
        for c in self.components:
            if c.name == component:
                return c.placement
        return "absent"

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "vram_bytes": self.vram_bytes,
            "num_gpus": self.num_gpus,
            "strategy": self.strategy,
            "fits": self.fits,
            "predicted_peak_bytes": self.predicted_peak_bytes,
            "margin_bytes": self.margin_bytes,
            "cfg_batched": self.cfg_batched,
            "tiled_tokenizer": self.tiled_tokenizer,
            "lean_network": self.lean_network,
            "components": [
                {"name": c.name, "placement": c.placement, "weight_bytes": c.weight_bytes, "stages": list(c.stages)}
                for c in self.components
            ],
            "stage_peaks": [{"stage": s, "bytes": b} for s, b in self.stage_peaks],
            "strategies": [{"name": n, "predicted_peak_bytes": p, "fits": f} for n, p, f in self.alternatives],
            "reason": self.reason,
        }


def _resident_bytes(c: Component, placement: str, stage: str) -> int:
    if placement == "gpu":
        return c.weight_bytes
    if placement == "swap":
        return c.weight_bytes if stage in c.stages else 0
    if placement == "stream":
        if stage not in c.stages:
            return 0
        blocks = c.num_blocks * c.block_bytes
        return c.weight_bytes - blocks + min(STREAM_BLOCKS_IN_FLIGHT, c.num_blocks) * c.block_bytes
    return 0  # cpu


def _activation_bytes(c: Component, placement: str, stage: str, strategy: Strategy, num_gpus: int) -> int:
    if placement == "cpu" or stage not in c.stages:
        return 0
    if c.name == NETWORK and stage == "denoise":
        act = c.activation(stage)
        if not strategy.cfg_batched and c.activation_bytes_sequential is not None:
            act = c.activation_bytes_sequential
        if strategy.lean_network and c.activation("denoise_lean"):
            act = c.activation("denoise_lean") * (1 if not strategy.cfg_batched else 2)
        return act // num_gpus
    if c.name == TOKENIZER and strategy.tiled_tokenizer:
        return c.activation(f"{stage}_tiled") or c.activation(stage)
    return c.activation(stage)


def margin_for(vram_bytes: int) -> int:
    """What must stay free above the predicted peak on a GPU with ``vram_bytes`` available."""
    return RUNTIME_OVERHEAD_BYTES + max(MIN_MARGIN_BYTES, int(vram_bytes * MARGIN_FRACTION))


def evaluate(spec: ModelSpec, strategy: Strategy, *, upsampler: bool = True, guardrail: bool = True,
             num_gpus: int = 1) -> tuple[int, tuple[ComponentPlan, ...], tuple[tuple[str, int], ...]]:
    """Predicted peak bytes per stage for one strategy (no fitting decision)."""
    comps = [c for c in spec.components
             if not (c.name == UPSAMPLER and not upsampler) and not (c.name == GUARDRAIL and not guardrail)]
    plans = tuple(ComponentPlan(c.name, strategy.placement(c.name), c.weight_bytes, c.stages) for c in comps)
    stage_peaks = []
    for stage in STAGES:
        users = [c for c in comps if stage in c.stages]
        if not users:
            continue
        weights = sum(_resident_bytes(c, strategy.placement(c.name), stage) for c in comps)
        act = max((_activation_bytes(c, strategy.placement(c.name), stage, strategy, num_gpus) for c in users), default=0)
        stage_peaks.append((stage, weights + act))
    peak = max((b for _, b in stage_peaks), default=0)
    return peak, plans, tuple(stage_peaks)


def plan_memory(
    spec: ModelSpec,
    vram_bytes: int | None,
    *,
    strategy: str = "auto",
    upsampler: bool = True,
    guardrail: bool = True,
    num_gpus: int = 1,
    asked_by: str | None = None,
) -> MemoryPlan:
    """Pick the fastest strategy that fits ``vram_bytes`` (``auto``), or check an explicit one.

    ``asked_by`` says where an explicit strategy came from (the original's flags that mean it), for the messages.

    ``vram_bytes=None`` means the memory is unknown (no GPU detected, none given): ``auto`` then returns the
    fastest strategy with ``fits=False`` and says so. An explicit strategy that does not fit raises
    :class:`MemoryPlanError` naming the strategy that would.
    """
    if num_gpus < 1:
        raise MemoryPlanError(f"--num-gpus must be >= 1, got {num_gpus}")
    if strategy != "auto" and strategy not in STRATEGY_NAMES:
        raise MemoryPlanError(f"unknown memory strategy {strategy!r}",
                              hint=f"Use auto or one of: {', '.join(STRATEGY_NAMES)}.")
    evaluated = [(s, *evaluate(spec, s, upsampler=upsampler, guardrail=guardrail, num_gpus=num_gpus)) for s in STRATEGIES]
    margin = margin_for(vram_bytes) if vram_bytes is not None else 0

    def fits(peak: int) -> bool:
        return vram_bytes is not None and peak + margin <= vram_bytes

    alternatives = tuple((s.name, peak, fits(peak)) for s, peak, _, _ in evaluated)

    def build(s: Strategy, peak: int, comps, stages, reason: str) -> MemoryPlan:
        return MemoryPlan(spec.name, s.name, vram_bytes, fits(peak), peak, margin, comps, stages, s.cfg_batched,
                          s.tiled_tokenizer, num_gpus, reason, alternatives, lean_network=s.lean_network)

    gib = lambda b: f"{b / GiB:.1f} GiB"  # noqa: E731
    if strategy != "auto":
        s, peak, comps, stages = next(e for e in evaluated if e[0].name == strategy)
        asked = f"{s.name} ({asked_by})" if asked_by else s.name
        if vram_bytes is None:
            return build(s, peak, comps, stages, f"{asked} needs about {gib(peak)}; GPU memory unknown")
        if fits(peak):
            return build(s, peak, comps, stages, f"{asked} was asked for and fits: {gib(peak)} predicted peak + "
                                                 f"{gib(margin)} margin <= {gib(vram_bytes)}")
        fitting = [e for e in evaluated if fits(e[1])]
        hint = (f"Use --offload {fitting[0][0].name} (predicted {gib(fitting[0][1])}) or --offload auto."
                if fitting else "No strategy fits this GPU; see `cosmos memory-plan`.")
        raise MemoryPlanError(f"strategy {asked} needs about {gib(peak)} (+{gib(margin)} margin) but only "
                              f"{gib(vram_bytes)} is available", hint=hint)

    if vram_bytes is None:
        s, peak, comps, stages = evaluated[0]
        return build(s, peak, comps, stages, "no GPU detected and no --vram given: showing the fastest strategy")
    for s, peak, comps, stages in evaluated:
        if fits(peak):
            skipped = [e for e in evaluated if e[0] is not s and STRATEGIES.index(e[0]) < STRATEGIES.index(s)]
            why = (f"; faster ones need more ({', '.join(f'{e[0].name} {gib(e[1])}' for e in skipped)})"
                   if skipped else "")
            return build(s, peak, comps, stages, f"{s.name} is the fastest strategy that fits: {gib(peak)} predicted "
                                                 f"peak + {gib(margin)} margin <= {gib(vram_bytes)}{why}")
    s, peak, comps, stages = evaluated[-1]
    return build(s, peak, comps, stages, f"nothing fits in {gib(vram_bytes)}: even the leanest strategy, {s.name}, "
                                         f"needs about {gib(peak)} + {gib(margin)} margin")
