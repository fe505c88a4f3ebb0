"""T5's weights dtype: what bf16 weights cost on the demo encoder, which dtype the pipeline loads under each
``--numerics``, and that the memory plan counts that dtype (benchmarks/bench_t5_numerics.py has the figures)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cosmos_cli.planner import STREAM_BLOCKS_IN_FLIGHT, plan_memory
from cosmos_cli.specs import DTYPE_BYTES, TEXT_ENCODER
from cosmos_plugins.predict1 import bundled_checkpoint_dir
from cosmos_plugins.predict1.params import t5_params
from cosmos_plugins.predict1.pipeline import NUMERICS, Predict1Pipeline, text_encoder_dtype
from cosmos_plugins.predict1.specs import (
    DEFAULT_NEGATIVE_PROMPT,
    PREDICT1_7B,
    PREDICT1_14B,
    PREDICT1_DEMO,
    SPECS,
    T5_DEMO,
)
from cosmos_plugins.predict1.strategies import STRATEGIES
from cosmos_plugins.predict1.text_encoder import T5TextEncoder

ROOT = Path(__file__).resolve().parents[1]
T5_DEMO_DIR = bundled_checkpoint_dir() / "t5-demo"
BF16_UNIT_ROUNDOFF = 2.0**-8  # round to nearest with an 8-bit significand: |bf16(x) - x| <= 2^-8 |x|


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def _roundings_along_the_path(num_layers: int) -> int:
    """Sequential bf16 roundings an embedding goes through in a T5 encoder with bf16 weights: the embedding table;
    per layer the norm's output, the q/k/v weights and products, the attention output, the output projection's
    weight and product, the residual sum, then the feed-forward's norm, wi weight and product, wo weight and
    product and residual sum (12 on each path through a layer, counting the parallel q/k/v once); the final
    norm's output and its scale."""
    return 1 + 12 * num_layers + 2


def test_demo_encoder_bf16_error_is_within_what_bf16_rounding_can_give():
    """bf16 weights vs fp32 on the demo encoder, the pipeline's own prompts: between the rounding of the output
    alone and the sum of every rounding on the path.

    Lower bound, exact: the bf16 encoder's output is a bf16 tensor, and rounding the fp32 output to the nearest
    bf16 values is the closest any bf16 tensor gets to it, so the error is at least that rounding's (if it were
    smaller, the "bf16" encoder did not run in bf16). Upper bound: each of the path's roundings moves the result
    by at most the unit roundoff relative, the normalised layers do not amplify it (RMSNorm rescales, softmax in
    fp32), and the errors add with no cancellation assumed: (roundings) * 2^-8 (0.105 for the demo's 2 layers).
    It assumes the matrix products accumulate in fp32, as PyTorch's bf16 kernels do on x86-64 CPUs and on CUDA.
    Measured: 5.0e-3 (benchmarks/results/t5-numerics-demo-cpu.json)."""
    fp32 = T5TextEncoder.load(T5_DEMO_DIR, dtype=torch.float32, max_length=T5_DEMO.max_length)
    bf16 = T5TextEncoder.load(T5_DEMO_DIR, dtype=torch.bfloat16, max_length=T5_DEMO.max_length)
    assert next(fp32.model.parameters()).dtype == torch.float32
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}  # wo too (kept fp32 only for fp16)
    prompts = [e["prompt"] for e in json.loads((ROOT / "assets" / "examples" / "prompts.json").read_text())]
    bound = _roundings_along_the_path(T5_DEMO.num_layers) * BF16_UNIT_ROUNDOFF
    for prompt in [*prompts, DEFAULT_NEGATIVE_PROMPT]:
        e32, e16 = fp32.encode([prompt]), bf16.encode([prompt])
        assert e32.dtype == torch.float32 and e16.dtype == torch.bfloat16
        assert torch.isfinite(e16).all()
        assert torch.equal((e16 == 0).all(-1), (e32 == 0).all(-1))  # the same padded positions are zeroed
        floor = _rel(e32.to(torch.bfloat16), e32)
        err = _rel(e16, e32)
        assert 0 < floor <= err <= bound, (prompt, floor, err, bound)


@pytest.mark.parametrize("numerics", NUMERICS)
@pytest.mark.parametrize("spec", SPECS.values(), ids=lambda s: s.name)
def test_t5_runs_in_fp32_under_both_numerics(spec, numerics):
    """fp32 on a GPU as the original keeps it (reference spec section 7), and on a CPU where everything is fp32."""
    assert text_encoder_dtype(spec, torch.device("cuda"), numerics) == torch.float32
    assert text_encoder_dtype(spec, torch.device("cpu"), numerics) == torch.float32


@pytest.mark.parametrize("spec", SPECS.values(), ids=lambda s: s.name)
def test_plan_counts_the_dtype_the_pipeline_loads(spec):
    """The planner's text-encoder bytes are the parameters times the bytes of the dtype loaded on a GPU."""
    loaded = text_encoder_dtype(spec, torch.device("cuda"), "fp32")
    component = spec.component(TEXT_ENCODER)
    assert getattr(torch, component.dtype) == loaded
    plan = plan_memory(spec, None, strategy="resident", upsampler=False, guardrail=False)
    planned = next(c for c in plan.components if c.name == TEXT_ENCODER)
    assert planned.weight_bytes == t5_params(spec.text_encoder) * torch.empty((), dtype=loaded).element_size()


@pytest.mark.parametrize("spec", [PREDICT1_7B, PREDICT1_14B], ids=lambda s: s.name)
def test_fp32_t5_costs_its_extra_bytes_where_t5_is_on_the_gpu(spec):
    """Against the same spec with bf16 T5 weights: each strategy's encode_text stage holds T5's extra 2 bytes per
    parameter (3 layers' worth where its layers stream), and the denoising stage too where T5 stays resident."""
    from dataclasses import replace

    as_bf16 = replace(spec, components=tuple(replace(c, dtype="bfloat16") if c.name == TEXT_ENCODER else c
                                             for c in spec.components))
    t5 = spec.component(TEXT_ENCODER)
    per_param = DTYPE_BYTES["float32"] - DTYPE_BYTES["bfloat16"]
    extra = t5.num_params * per_param
    extra_streamed = (t5.num_params - (t5.num_blocks - STREAM_BLOCKS_IN_FLIGHT) * t5.block_params) * per_param
    for strategy in STRATEGIES:
        ours = dict(plan_memory(spec, None, strategy=strategy.name).stage_peaks)
        theirs = dict(plan_memory(as_bf16, None, strategy=strategy.name).stage_peaks)
        placement = strategy.placement(TEXT_ENCODER)
        assert ours["encode_text"] - theirs["encode_text"] == (extra_streamed if placement in ("stream", "map") else extra)
        assert ours["denoise"] - theirs["denoise"] == (extra if placement == "gpu" else 0), strategy.name


@pytest.mark.parametrize("numerics", NUMERICS)
def test_pipeline_loads_t5_in_the_chosen_dtype(numerics, monkeypatch):
    """``Predict1Pipeline.load`` takes T5's dtype from ``text_encoder_dtype`` (a bf16 choice is honoured, so the
    fp32 one above is what runs), whatever dtype the rest of the models get."""
    import cosmos_plugins.predict1.pipeline as P

    seen = []

    def choose(spec, device, numerics_):
        seen.append(numerics_)
        return torch.bfloat16

    monkeypatch.setattr(P, "text_encoder_dtype", choose)
    plan = plan_memory(PREDICT1_DEMO, None, strategy="resident", upsampler=False, guardrail=False)
    pipe = Predict1Pipeline.load(PREDICT1_DEMO, plan, checkpoint_dir=bundled_checkpoint_dir(), device="cpu",
                                 numerics=numerics)
    try:
        assert seen == [numerics]
        assert {p.dtype for p in pipe.text_encoder.obj.model.parameters()} == {torch.bfloat16}
        assert {p.dtype for p in pipe.network.obj.parameters()} == {torch.float32}  # the CPU's dtype
    finally:
        pipe.close()
