"""The planner is a pure function: fake GPU sizes in, expected strategies out."""

from __future__ import annotations

import pytest

from cosmos_cli.errors import MemoryPlanError
from cosmos_cli.planner import (
    RUNTIME_OVERHEAD_BYTES,
    evaluate,
    margin_for,
    plan_memory,
    strategy_for_original_flags,
)
from cosmos_cli.registry import find_model
from cosmos_plugins.predict1.strategies import STRATEGIES, STRATEGY_NAMES
from tests.conftest import GiB, fake_spec

OVER = RUNTIME_OVERHEAD_BYTES


def test_fake_model_peaks_by_hand():
    # Stage peaks are the tensors (weights + activations), as torch.cuda.max_memory_allocated counts them; the
    # runtime allowance OVER is part of the margin a plan must leave free (margin_for), not of the peak.
    spec = fake_spec()
    # weights: text 4 GiB (2G params bf16), tokenizer 0.25 GiB, network 8 GiB
    peak, comps, stages = evaluate(spec, STRATEGIES[0])
    stages = dict(stages)
    assert stages["encode_text"] == 4 * GiB + GiB // 4 + 8 * GiB + GiB // 2
    assert stages["denoise"] == 4 * GiB + GiB // 4 + 8 * GiB + 4 * GiB
    assert peak == stages["denoise"]
    # offload-all: only the stage's own component is resident
    _, _, stages = evaluate(spec, next(s for s in STRATEGIES if s.name == "offload-all"))
    stages = dict(stages)
    assert stages["encode_text"] == 4 * GiB + GiB // 2
    assert stages["decode"] == GiB // 4 + 3 * GiB
    assert stages["denoise"] == 8 * GiB + 2 * GiB  # one guidance branch at a time: the sequential activation
    assert margin_for(80 * GiB) == OVER + 4 * GiB


# Fake model peaks (GiB): resident 16.25, offload-text-encoder 12.75, offload-tokenizer 12.5, offload-all 10.0
# (its guidance branches run one after the other since the memory engine, as the original's all-offload run),
# stream 7.0 (3 of the network's 8 one-GiB blocks on the GPU), stream-sequential 5.0 (one guidance branch at a
# time halves the network's activation; the fake model has no lean-forward figure, so stream-lean is the same);
# the margin is 0.5 GiB + max(0.5 GiB, 5% of the memory). Sizes under 13.2 GiB were "nothing fits" before the
# memory engine (batched offload-all was the leanest); they now get offload-all or a streaming strategy.
@pytest.mark.parametrize(
    "vram_gib, expected",
    [
        (80, "resident"),
        (17.75, "resident"),
        (17.5, "offload-text-encoder"),
        (14.0, "offload-text-encoder"),
        (13.8, "offload-tokenizer"),
        (13.2, "offload-all"),
        (11.2, "offload-all"),
        (11.0, "stream"),
        (8.5, "stream"),
        (7.0, "stream-sequential"),
        (5.9, None),
        (4, None),
    ],
)
def test_auto_picks_fastest_that_fits(vram_gib, expected):
    plan = plan_memory(fake_spec(), int(vram_gib * GiB))
    if expected is None:
        assert not plan.fits and plan.strategy == STRATEGY_NAMES[-1] and "nothing fits" in plan.reason
    else:
        assert plan.fits and plan.strategy == expected


def test_exact_boundaries():
    spec = fake_spec()
    peaks = {s.name: evaluate(spec, s)[0] for s in STRATEGIES}
    for name in STRATEGY_NAMES:
        need = peaks[name]
        # the smallest VRAM at which this strategy fits: peak + margin(vram) <= vram
        vram = need + 1
        while vram < need + margin_for(vram):
            vram = need + margin_for(vram)
        assert plan_memory(spec, vram, strategy=name).fits
        with pytest.raises(MemoryPlanError):
            plan_memory(spec, vram - 2 * GiB if vram - 2 * GiB > need else need, strategy=name)


def test_explicit_strategy_that_does_not_fit_names_one_that_does():
    spec = fake_spec()
    with pytest.raises(MemoryPlanError) as err:
        plan_memory(spec, 14 * GiB, strategy="resident")
    assert "resident" in err.value.message
    assert "--offload offload-text-encoder" in err.value.hint


def test_unknown_strategy_lists_valid():
    with pytest.raises(MemoryPlanError) as err:
        plan_memory(fake_spec(), 80 * GiB, strategy="turbo")
    assert "offload-all" in err.value.hint


def test_no_gpu_reports_fastest_unknown():
    plan = plan_memory(fake_spec(), None)
    assert plan.strategy == "resident" and not plan.fits and "no GPU" in plan.reason


def test_num_gpus_splits_network_activation():
    spec = fake_spec()
    one = dict(evaluate(spec, STRATEGIES[0], num_gpus=1)[2])["denoise"]
    two = dict(evaluate(spec, STRATEGIES[0], num_gpus=2)[2])["denoise"]
    assert one - two == 2 * GiB


def test_optional_components_excluded():
    spec = find_model("7B")[1]
    with_all = plan_memory(spec, 80 * 10**9)
    without = plan_memory(spec, 80 * 10**9, upsampler=False, guardrail=False)
    names = {c.name for c in without.components}
    assert "prompt_upsampler" not in names and "guardrail" not in names
    assert {c.name for c in with_all.components} >= {"prompt_upsampler", "guardrail"}
    assert without.predicted_peak_bytes < with_all.predicted_peak_bytes


def test_strategies_get_leaner():
    """Of each kind (pinned, mapped) the later strategy needs no more GPU memory; a mapped strategy no more than its
    pinned twin (the one before it), less where the twin has T5 whole on the GPU for its stage."""
    for model in ("7B", "14B"):
        spec = find_model(model)[1]
        for mapped in (False, True):
            peaks = [evaluate(spec, s)[0] for s in STRATEGIES if s.mapped == mapped]
            assert peaks == sorted(peaks, reverse=True), (model, mapped)
        for twin, s in zip(STRATEGIES, STRATEGIES[1:], strict=False):
            if s.mapped:
                assert not twin.mapped and s.name == twin.name.replace("stream", "stream-mapped", 1)
                assert evaluate(spec, s)[0] <= evaluate(spec, twin)[0], (model, s.name)


@pytest.mark.parametrize(
    "flags, expected",
    [
        (set(), None),
        ({"offload_prompt_upsampler"}, "offload-upsampler"),
        ({"offload_guardrail_models"}, "offload-guardrails"),
        ({"offload_text_encoder_model"}, "offload-text-encoder"),
        ({"offload_tokenizer", "offload_prompt_upsampler"}, "offload-tokenizer"),
        ({"offload_diffusion_transformer"}, "offload-all"),
        ({"offload_prompt_upsampler", "offload_guardrail_models", "offload_text_encoder_model",
          "offload_tokenizer", "offload_diffusion_transformer"}, "offload-all"),
    ],
)
def test_original_flags_map_to_strategies(flags, expected):
    assert strategy_for_original_flags(flags, find_model("7B")[1]) == expected


def test_original_flags_no_strategy_covers_are_refused():
    """A backend whose strategies no original flag set names (fake: Predict1's, without their flags) refuses them
    in one line naming what it implements."""
    from dataclasses import replace

    spec = fake_spec(strategies=tuple(replace(s, original_flags=()) for s in STRATEGIES[:2]))
    with pytest.raises(MemoryPlanError, match="no memory strategy for the original flags --offload_tokenizer; it "
                                              "implements resident, offload-upsampler"):
        strategy_for_original_flags({"offload_tokenizer"}, spec)


def test_real_specs_sizes_match_published_parameter_counts():
    net7 = find_model("7B")[1].component("diffusion_transformer")
    net14 = find_model("14B")[1].component("diffusion_transformer")
    assert net7.num_params == 7_236_208_640  # spec section 3.1
    assert net14.num_params == 14_267_169_792
    t5 = find_model("7B")[1].component("text_encoder")
    assert abs(t5.num_params - 4.86e9) < 0.01e9  # T5-11B encoder, anchors/README.md


# The real models with the upsampler and guardrails, by GPU size (GB = 10^9 bytes, as cards are sold; the margin is
# 0.5 GiB + max(0.5 GiB, 5%)). Predicted peaks in GiB, with T5 in fp32, 7B: resident 80.8, offload-upsampler 69.8,
# offload-guardrails 56.4, offload-text-encoder 38.3, offload-tokenizer 38.1, offload-all 24.6, stream 18.8,
# stream-sequential 18.8 (both at T5's stage), stream-lean 5.2; 14B: 96.9, 82.9, 69.5, 51.4, 51.2, 34.3, 18.8, 18.8, 5.5.
@pytest.mark.parametrize(
    "model, vram_gb, expected",
    [
        ("7B", 94, "resident"),
        ("7B", 80 * 1.074, "offload-upsampler"),  # 80 GiB
        ("7B", 80, "offload-upsampler"),
        ("7B", 48, "offload-text-encoder"),
        ("7B", 40, "offload-all"),
        ("7B", 24, "stream"),
        ("7B", 16, "stream-lean"),
        ("7B", 12, "stream-lean"),
        ("7B", 8, "stream-lean"),
        ("7B", 6, None),
        ("14B", 80, "offload-guardrails"),
        ("14B", 40, "offload-all"),
        ("14B", 24, "stream"),
        ("14B", 16, "stream-lean"),
        ("14B", 12, "stream-lean"),
        ("14B", 8, "stream-lean"),
    ],
)
def test_real_models_pick_by_gpu_size(model, vram_gb, expected):
    plan = plan_memory(find_model(model)[1], int(vram_gb * 10**9))
    if expected is None:
        assert not plan.fits
    else:
        assert plan.fits and plan.strategy == expected, plan.reason


# ----------------------------------------------------------------------------------------------------------
# Host memory: a table of fake machines (GPU GB x RAM GB, as sold: 10^9 bytes) -> the strategy auto picks.
# Host peaks (GiB) without the upsampler and guardrails, from the planner's accounting (runtime 0.5 + the job's
# frames 1.8 + what each placement holds, module doc): T5 in fp32 is 18.1 pinned under swap or stream; the network
# pinned is 13.5 (7B) / 26.6 (14B). Under the stream-mapped strategies T5's layers and the network's blocks both
# stream from their mapped files: committed only their 2-block staging rings (T5 1.5, 7B 0.5, 14B 1.1) and
# non-block weights (0.1 each). So 7B needs 34.1 pinned (offload-all, stream*) and 5.2 mapped; 14B 47.2 and 5.8;
# resident 2.3 (every weight read through its file's mapping onto the GPU). The margin is max(1 GiB, 5%). Auto
# tries the pinned strategies first, the mapped ones only when none fits. None: nothing fits the host.
@pytest.mark.parametrize(
    "model, vram_gb, ram_gb, expected",
    [
        ("14B", 24, 32, "stream-mapped"),  # the desktop of the issue: pinned streaming needs 47.2 GiB
        ("14B", 24, 64, "stream"),
        ("14B", 16, 32, "stream-mapped-sequential"),  # 10.2 GiB: T5 streams instead of being whole on the GPU
        ("14B", 12, 32, "stream-mapped-lean"),
        ("14B", 12, 64, "stream-lean"),
        ("14B", 80, 32, "resident"),  # weights straight from the file's mapping onto the GPU
        ("14B", 80, 16, "resident"),  # 2.3 + 1 margin <= 14.9 GiB
        ("14B", 24, 24, "stream-mapped"),  # 5.8 + 1.1 margin <= 22.4 GiB (16.5 GiB of page cache left)
        ("14B", 24, 6, None),  # 5.8 + 1 > 5.6 GiB
        ("7B", 12, 32, "stream-mapped-sequential"),  # the other desktop: 7.8 GiB on the GPU
        ("7B", 12, 48, "stream-lean"),
        ("7B", 24, 32, "stream-mapped"),
        ("7B", 24, 64, "offload-all"),
        ("7B", 48, 32, "offload-text-encoder"),
        ("7B", 8, 16, "stream-mapped-lean"),
        ("7B", 8, 6, None),
    ],
)
def test_fake_machines_pick_by_gpu_and_host_memory(model, vram_gb, ram_gb, expected):
    plan = plan_memory(find_model(model)[1], int(vram_gb * 10**9), ram_bytes=int(ram_gb * 10**9), upsampler=False,
                       guardrail=False)
    if expected is None:
        assert not plan.fits and plan.host_fits is False and "host memory" in plan.reason and plan.hint, plan.reason
    else:
        assert plan.fits and plan.host_fits and plan.strategy == expected, plan.reason
        assert plan.host_peak_bytes + plan.host_margin_bytes <= plan.ram_bytes


def test_host_accounting_by_hand():
    """The fake model (no loaded_on_host component, 8 one-GiB blocks): what each placement holds on the host."""
    from cosmos_cli.planner import (
        HOST_IO_BYTES_PER_PIXEL,
        HOST_RUNTIME_BYTES,
        MAP_STAGING_BLOCKS,
        evaluate_host,
    )

    spec = fake_spec()
    base = HOST_RUNTIME_BYTES + spec.num_frames * spec.height * spec.width * HOST_IO_BYTES_PER_PIXEL
    by_name = {s.name: s for s in STRATEGIES}
    assert evaluate_host(spec, by_name["resident"]).peak_bytes == base
    # stream: T5 (4 GiB) and the tokenizer (0.25) swapped, the network (8) pinned
    stream = evaluate_host(spec, by_name["stream"])
    assert stream.peak_bytes == base + 4 * GiB + GiB // 4 + 8 * GiB and stream.mapped_bytes == 0
    # stream-mapped: T5 (4 one-GiB layers) and the network both mapped: only their staging rings are committed
    mapped = evaluate_host(spec, by_name["stream-mapped"])
    assert mapped.peak_bytes == base + GiB // 4 + 2 * MAP_STAGING_BLOCKS * GiB
    assert mapped.mapped_bytes == 12 * GiB and mapped.pass_mapped_bytes == 8 * GiB  # each pass reads the network's
    # two GPUs: the other rank holds its own runtime and the network's staging; the mapped files are one page cache
    two = evaluate_host(spec, by_name["stream-mapped"], num_gpus=2)
    assert two.peak_bytes - mapped.peak_bytes == HOST_RUNTIME_BYTES + MAP_STAGING_BLOCKS * GiB
    assert two.mapped_bytes == mapped.mapped_bytes


def test_host_refusal_says_what_to_do():
    """The default job (upsampler and guardrails kept on the CPU by the streaming strategies) on a 24 GB GPU with
    32 GB of RAM: refused, naming the models held and the flags that leave them out, and the RAM it would need."""
    plan = plan_memory(find_model("14B")[1], 24 * 10**9, ram_bytes=32 * 10**9)
    assert not plan.fits and plan.strategy == "stream-mapped" and "host memory" in plan.reason
    assert "--no-upsampler" in plan.hint and "--no-guardrail" in plan.hint and "prompt upsampler 23.6 GiB" in plan.hint
    from cosmos_cli.planner import ram_needed

    need = ram_needed(plan.host_peak_bytes)
    assert f"{need / GiB:.1f} GiB of RAM" in plan.hint
    assert plan_memory(find_model("14B")[1], 24 * 10**9, ram_bytes=need, strategy="stream-mapped").fits
    with pytest.raises(MemoryPlanError):
        plan_memory(find_model("14B")[1], 24 * 10**9, ram_bytes=need - 2**20, strategy="stream-mapped")


def test_explicit_strategy_that_does_not_fit_the_host_names_one_that_does():
    with pytest.raises(MemoryPlanError) as err:
        plan_memory(find_model("14B")[1], 24 * 10**9, ram_bytes=32 * 10**9, strategy="stream", upsampler=False,
                    guardrail=False)
    assert "host memory" in err.value.message and "--offload stream-mapped " in err.value.hint


def test_page_cache_note_for_a_mapped_network():
    spec = find_model("7B")[1]
    small = plan_memory(spec, 24 * 10**9, ram_bytes=16 * 10**9, upsampler=False, guardrail=False)
    assert small.strategy == "stream-mapped" and "may read up to all of it from disk" in small.reason
    assert f"each of the {spec.num_steps} passes" in small.reason  # both guidance branches in one forward a step
    # 32 GB: the page cache holds the network's file (13.5 GiB), not T5's too (read once a job, not each pass)
    big = plan_memory(spec, 24 * 10**9, ram_bytes=32 * 10**9, upsampler=False, guardrail=False)
    assert big.strategy == "stream-mapped" and "can hold the whole mapped network file (13.5 GiB)" in big.reason
    assert big.host_mapped_bytes > big.page_cache_bytes > spec.component("diffusion_transformer").weight_bytes


def test_unknown_host_memory_is_not_checked():
    plan = plan_memory(find_model("14B")[1], 24 * 10**9)
    assert plan.fits and plan.strategy == "stream" and plan.host_fits is None and plan.ram_bytes is None


def test_leaner_strategy_keeps_the_kind():
    from cosmos_cli.planner import leaner_strategy

    spec = find_model("7B")[1]
    assert leaner_strategy("offload-all", spec) == "stream"
    assert leaner_strategy("stream", spec) == "stream-sequential"
    assert leaner_strategy("stream-mapped", spec) == "stream-mapped-sequential"
    assert leaner_strategy("stream-mapped-lean", spec) is None and leaner_strategy("stream-lean", spec) is None


# -- models a strategy computes on the CPU: moved onto the GPU for their stage where there is room -------------


def _with_upsampler(params: int = GiB):
    from cosmos_cli.specs import UPSAMPLER, Component

    ups = Component(UPSAMPLER, ("upsample",), num_params=params, activation_bytes=(("upsample", GiB),),
                    cpu_capable=True, left_out_by="upsampler", gpu_when_room=True, cpu_weight_reads=400)
    base = fake_spec()
    return fake_spec(components=(ups, *base.components), stages=("upsample", *base.stages))


def test_a_cpu_model_moves_to_the_gpu_where_there_is_room_by_hand():
    """stream keeps the upsampler on the CPU; its stage on the GPU would hold its 2 GiB (1 G params in bf16) + 1 GiB
    of activations and nothing else (T5 and the tokenizer are swapped, the network streams): 3 GiB, under the
    network's denoising peak, so with room for the plan it is swapped instead."""
    spec = _with_upsampler()
    roomy = plan_memory(spec, 40 * GiB, strategy="stream")
    assert roomy.placement("prompt_upsampler") == "swap" and dict(roomy.stage_peaks)["upsample"] == 3 * GiB
    assert roomy.notes == ("the prompt upsampler runs on the GPU for its stage (there is room for it there), not on "
                           "the CPU",)
    # stream's own peak: the network's 8 blocks of 1 GiB (4 G params in bf16), 3 in flight, + 4 GiB of activations
    peak = evaluate(spec, next(s for s in STRATEGIES if s.name == "stream"))[0]
    assert peak == 7 * GiB
    big = _with_upsampler(params=4 * GiB)  # 8 GiB of weights + 1 GiB: its stage needs 9 GiB
    tight = plan_memory(big, 9 * GiB, strategy="stream")  # margin 1 GiB: 8 GiB for the tensors
    assert tight.fits and tight.placement("prompt_upsampler") == "cpu"
    # 400 tokens x 8 GiB read at 20 GB/s = 171.8 s: "3 min"
    assert tight.notes == ("the prompt upsampler (upsample) runs on the CPU: up to about 3 min per job (400 tokens, "
                           "each reading its 8.0 GiB of weights at an assumed 20 GB/s) for want of room on the GPU at "
                           "that stage",)
    assert plan_memory(big, 11 * GiB, strategy="stream").placement("prompt_upsampler") == "swap"


def test_nothing_moves_when_the_gpu_is_unknown_or_the_plan_does_not_fit():
    from cosmos_cli.planner import with_room_on_the_gpu

    spec = _with_upsampler()
    stream = next(s for s in STRATEGIES if s.name == "stream")
    assert with_room_on_the_gpu(spec, stream, None) is stream
    assert with_room_on_the_gpu(spec, stream, 4 * GiB) is stream  # stream itself needs 7 GiB
    assert plan_memory(spec, None, strategy="stream").placement("prompt_upsampler") == "cpu"


@pytest.mark.parametrize("model, vram_gb, upsampler, guardrail", [
    ("14B", 24, "cpu", "swap"),  # Pixtral (23.6 GiB) has no room on a 24 GB GPU; LlamaGuard (12.6 GiB) has
    ("7B", 24, "cpu", "swap"),
    ("7B", 32, "swap", "swap"),
    ("7B", 12, "cpu", "cpu"),
    ("7B", 80, "swap", "gpu"),  # offload-upsampler: as the strategy says
])
def test_real_models_place_the_upsampler_and_guardrails_by_room(model, vram_gb, upsampler, guardrail):
    plan = plan_memory(find_model(model)[1], int(vram_gb * 10**9), ram_bytes=512 * GiB)
    assert (plan.placement("prompt_upsampler"), plan.placement("guardrail")) == (upsampler, guardrail), plan.strategy
    on_cpu = [n for n in plan.notes if "runs on the CPU" in n]
    assert len(on_cpu) == [upsampler, guardrail].count("cpu")


def test_the_cpu_estimates_read_the_models_own_token_limits():
    from cosmos_plugins.predict1 import guardrails, specs, upsampler

    assert specs.UPSAMPLER_MAX_NEW_TOKENS == upsampler.MAX_NEW_TOKENS
    assert specs.TEXT_GUARDRAIL_MAX_NEW_TOKENS == guardrails.AEGIS_MAX_NEW_TOKENS
