"""The memory strategies the Predict1 backend implements, fastest first, and what their variants mean to it.

The first five offloading strategies are the original project's five ``--offload_*`` levels, in the order of its
published memory table; the leaner ones go further: the network's blocks streamed from host memory with the prompt
upsampler and guardrails on the CPU (``stream``; the planner swaps them onto the GPU for their stages where there is
room, ``Component.gpu_when_room``), one guidance branch at a time (``stream-sequential``), and the T5
encoder's layers streamed too with the network's attention and MLP over chunks of tokens (``stream-lean``). Every
strategy runs the tokenizer over chunks of frames (the ``tiled`` variant): the result is the same up to rounding,
it costs about a second, and it saves ~25 GiB.

Two variants (:attr:`cosmos_cli.specs.Strategy.variants`), read by the pipeline through :func:`tiled_tokenizer` and
:func:`lean_network`: the tokenizer's ``tiled`` (over chunks of frames: the ``<stage>_tiled`` figures of
:func:`.params.tokenizer_activation_bytes`) and the network's ``lean`` (attention and MLP over chunks of tokens,
:func:`.offload.lean_forward`: the ``denoise_lean`` figure, one guidance branch at a time).

A strategy is listed only once the backend runs it (:mod:`.offload`); every one is measured by
benchmarks/bench_memory.py (the stream-mapped ones by benchmarks/bench_hostram.py). Each stream-mapped strategy
follows its pinned twin: the network's blocks and T5's layers both stream from their mapped files, so the host
commits neither model (only staging rings and the small non-layer weights: a few GiB where the pinned twin holds
18 GiB of T5 and 13-27 GiB of network), and the page cache left holds the network's file for the denoising passes
(T5's pages, read once a job, are the ones the kernel reclaims first). The GPU peak is at most the twin's (T5
streams instead of being whole on the GPU for its stage); slower where the page cache cannot hold the network's
file, and chosen when host RAM cannot hold the pinned copies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cosmos_cli.specs import GUARDRAIL, NETWORK, TEXT_ENCODER, TOKENIZER, UPSAMPLER, Strategy

if TYPE_CHECKING:
    from cosmos_cli.planner import MemoryPlan

TILED, LEAN = "tiled", "lean"  # the tokenizer's and the network's variants

_UPS, _GRD, _TXT, _TOK, _NET = UPSAMPLER, GUARDRAIL, TEXT_ENCODER, TOKENIZER, NETWORK


def _strategy(name, description, *, swap=(), cpu=(), stream=(), mapped=(), cfg_batched=True, flags=(),
              lean=False) -> Strategy:
    placements = (tuple((c, "swap") for c in swap) + tuple((c, "cpu") for c in cpu)
                  + tuple((c, "stream") for c in stream) + tuple((c, "map") for c in mapped))
    everything = {c for c, _ in placements} >= {_UPS, _GRD, _TXT, _TOK, _NET}  # every model of ours moved
    variants = ((_TOK, TILED),) + (((_NET, LEAN),) if lean else ())
    return Strategy(name, description, placements, cfg_batched, tuple(flags), variants,
                    others="swap" if everything else "gpu")


_ORIGINAL_FLAGS = ("--offload_prompt_upsampler", "--offload_guardrail_models", "--offload_text_encoder_model",
                   "--offload_tokenizer", "--offload_diffusion_transformer")

STRATEGIES: tuple[Strategy, ...] = (
    _strategy("resident", "every model stays on the GPU"),
    _strategy("offload-upsampler", "the prompt upsampler is on the GPU only while it runs",
              swap=(_UPS,), flags=_ORIGINAL_FLAGS[:1]),
    _strategy("offload-guardrails", "+ the guardrail models are on the GPU only while they run",
              swap=(_UPS, _GRD), flags=_ORIGINAL_FLAGS[:2]),
    _strategy("offload-text-encoder", "+ the T5 text encoder is on the GPU only while it runs",
              swap=(_UPS, _GRD, _TXT), flags=_ORIGINAL_FLAGS[:3]),
    _strategy("offload-tokenizer", "+ the tokenizer is on the GPU only while it runs",
              swap=(_UPS, _GRD, _TXT, _TOK), flags=_ORIGINAL_FLAGS[:4]),
    _strategy("offload-all", "+ the diffusion network is on the GPU only while it denoises, its two guidance "
              "branches one after the other (all five original flags)", swap=(_UPS, _GRD, _TXT, _TOK, _NET),
              cfg_batched=False, flags=_ORIGINAL_FLAGS),
    _strategy("stream", "the network's blocks stream from pinned host memory, copied a block or two ahead on a "
              "side stream; prompt upsampler and guardrails on the GPU for their stages where there is room, "
              "else on the CPU; T5 and tokenizer on the GPU only for their stages", swap=(_TXT, _TOK), cpu=(_UPS, _GRD), stream=(_NET,)),
    _strategy("stream-mapped", "stream, the network's and T5's layers read from their memory-mapped checkpoint "
              "files (a side thread reads ahead into a small pinned staging ring) instead of pinned copies",
              swap=(_TOK,), cpu=(_UPS, _GRD), mapped=(_TXT, _NET)),
    _strategy("stream-sequential", "+ the two guidance branches one after the other",
              swap=(_TXT, _TOK), cpu=(_UPS, _GRD), stream=(_NET,), cfg_batched=False),
    _strategy("stream-mapped-sequential", "stream-sequential, the network's and T5's layers read from the mapped "
              "files", swap=(_TOK,), cpu=(_UPS, _GRD), mapped=(_TXT, _NET), cfg_batched=False),
    _strategy("stream-lean", "+ T5's layers stream too; the network's attention and MLP over chunks of tokens",
              swap=(_TOK,), cpu=(_UPS, _GRD), stream=(_TXT, _NET), cfg_batched=False, lean=True),
    _strategy("stream-mapped-lean", "stream-lean, the network's and T5's layers read from the mapped files",
              swap=(_TOK,), cpu=(_UPS, _GRD), mapped=(_TXT, _NET), cfg_batched=False, lean=True),
)

STRATEGY_NAMES = tuple(s.name for s in STRATEGIES)

# The JSON keys `memory-plan --json` has always shown for the two variants (ModelSpec.plan_flags).
PLAN_FLAGS = (("tiled_tokenizer", _TOK, TILED), ("lean_network", _NET, LEAN))


def tiled_tokenizer(plan: MemoryPlan) -> bool:
    """Whether ``plan`` runs the tokenizer over chunks of frames."""
    return plan.variant(TOKENIZER) == TILED


def lean_network(plan: MemoryPlan) -> bool:
    """Whether ``plan`` runs the network's lean forward (attention and MLP over chunks of tokens)."""
    return plan.variant(NETWORK) == LEAN
