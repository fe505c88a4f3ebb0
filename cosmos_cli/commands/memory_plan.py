"""`cosmos memory-plan`: what this GPU can run, and how."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from cosmos_cli.errors import MemoryPlanError
from cosmos_cli.generation import GenerateRequest, plan_request
from cosmos_cli.gpu import detect_gpus, format_bytes, parse_size
from cosmos_cli.options import GuardrailOpt, JsonOpt, ModelOpt, NumGpusOpt, OffloadOpt, UpsamplerOpt, VramOpt
from cosmos_cli.registry import default_model_name, find_model

# Exit code when the memory is known (--vram, or a detected GPU) and the plan does not fit it.
EXIT_DOES_NOT_FIT = 1


def memory_plan(
    model: ModelOpt = None,
    vram: VramOpt = None,
    num_gpus: NumGpusOpt = 1,
    upsampler: UpsamplerOpt = True,
    guardrail: GuardrailOpt = True,
    offload: OffloadOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Show each component's size, every strategy's predicted peak, and the strategy `generate` would use (the same
    function, with the same free-memory reading).

    Exit code: 0 when the plan fits (or no GPU and no --vram: predictions only), 1 when it does not fit, 2 for a
    usage error."""
    _, spec = find_model(model or default_model_name())
    gpus = [] if vram else detect_gpus()
    vram_bytes = parse_size(vram) if vram else (min(g.free_bytes for g in gpus[:num_gpus]) if gpus else None)
    request = GenerateRequest(input_path=Path("-"), prompt=None, model=spec.name, disable_prompt_upsampler=not upsampler,
                              disable_guardrail=not guardrail, num_gpus=num_gpus, offload=offload)
    plan = plan_request(spec, request, vram_bytes)
    # measured figures are for the default job on one GPU with the upsampler and guardrails
    measured = ({name: b for c in spec.components for name, b in c.measured_peak_bytes}
                if upsampler and guardrail and num_gpus == 1 else {})
    if as_json:
        data = plan.to_json()
        for entry in data["strategies"]:
            entry["measured_peak_bytes"] = measured.get(entry["name"])
        data["gpus"] = [{"index": g.index, "name": g.name, "total_bytes": g.total_bytes, "free_bytes": g.free_bytes}
                        for g in gpus]
        typer.echo(json.dumps(data, indent=2))
        if vram_bytes is not None and not plan.fits:
            raise typer.Exit(EXIT_DOES_NOT_FIT)
        return
    out = Console()
    if vram:
        out.print(f"[bold]{spec.name}[/bold] planned for {format_bytes(vram_bytes)} of GPU memory (--vram {vram})")
    elif gpus:
        for g in gpus:
            out.print(f"GPU {g.index}: {g.name}, {format_bytes(g.total_bytes)} total, {format_bytes(g.free_bytes)} free")
    else:
        out.print("[yellow]No CUDA GPU detected[/yellow] and no --vram given: showing predicted peaks only "
                  "(pass --vram 24GB to plan for a GPU).")
    comps = Table(title=f"{spec.name}: components")
    for col in ("component", "weights", "placement", "stages"):
        comps.add_column(col)
    for c in plan.components:
        comps.add_row(c.name, format_bytes(c.weight_bytes), c.placement, ", ".join(c.stages))
    out.print(comps)
    stages = Table(title=f"stage peaks under {plan.strategy}")
    stages.add_column("stage")
    stages.add_column("predicted peak", justify="right")
    for s, b in plan.stage_peaks:
        stages.add_row(s, format_bytes(b))
    out.print(stages)
    strategies = Table(title="strategies, fastest first",
                       caption="measured: benchmarks/bench_memory.py (torch.cuda.max_memory_allocated, default job)"
                       if measured else None)
    for col in ("strategy", "predicted peak", "measured peak", "fits"):
        strategies.add_column(col)
    for name, peak, fits in plan.alternatives:
        mark = "yes" if fits else ("?" if vram_bytes is None else "no")
        strategies.add_row(f"[bold]{name}[/bold]" if name == plan.strategy else name, format_bytes(peak),
                           format_bytes(measured.get(name)), mark)
    out.print(strategies)
    if vram_bytes is not None and not plan.fits:
        raise MemoryPlanError(f"{spec.name} does not fit: {plan.reason}",
                              hint="See the table above: more GPUs (--num-gpus N) split the network's activations; or "
                                   "use a GPU with more free memory.")
    known = "fits" if plan.fits else "GPU memory unknown"
    out.print(f"strategy: [bold]{plan.strategy}[/bold] ({known}) - {plan.reason}")
