"""`cosmos memory-plan`: what this GPU and this host's memory can run, and how."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from cosmos_cli import hostmem
from cosmos_cli.errors import MemoryPlanError
from cosmos_cli.generation import GenerateRequest, plan_request
from cosmos_cli.gpu import detect_gpus, format_bytes, parse_size
from cosmos_cli.options import (
    GuardrailOpt,
    JsonOpt,
    ModelOpt,
    NumGpusOpt,
    OffloadOpt,
    RamOpt,
    UpsamplerOpt,
    VramOpt,
)
from cosmos_cli.planner import MemoryPlan, strategies_for, with_room_on_the_gpu
from cosmos_cli.registry import default_model_name, find_model

# Exit code when the memory is known (--vram, or a detected GPU) and the plan does not fit it.
EXIT_DOES_NOT_FIT = 1


def memory_plan(
    model: ModelOpt = None,
    vram: VramOpt = None,
    ram: RamOpt = None,
    num_gpus: NumGpusOpt = 1,
    upsampler: UpsamplerOpt = True,
    guardrail: GuardrailOpt = True,
    offload: OffloadOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Show each component's size, every strategy's predicted GPU and host memory, and the strategy `generate` would
    use (the same function, with the same free-memory readings).

    Exit code: 0 when the plan fits (or no GPU and no --vram: predictions only), 1 when it does not fit, 2 for a
    usage error."""
    _, spec = find_model(model or default_model_name())
    gpus = [] if vram else detect_gpus()
    vram_bytes = parse_size(vram) if vram else (min(g.free_bytes for g in gpus[:num_gpus]) if gpus else None)
    ram_bytes = parse_size(ram, "--ram") if ram else hostmem.available_host_bytes()
    request = GenerateRequest(input_path=Path("-"), prompt=None, model=spec.name, disable_prompt_upsampler=not upsampler,
                              disable_guardrail=not guardrail, num_gpus=num_gpus, offload=offload)
    plan = plan_request(spec, request, vram_bytes, ram_bytes)
    # measured figures are for the default job on one GPU with the upsampler and guardrails, placed as each strategy
    # declares them (not where the planner moved them onto the GPU, finding room there)
    declared = {s.name for s in strategies_for(spec) if with_room_on_the_gpu(spec, s, vram_bytes) == s}
    measured = ({name: b for c in spec.components for name, b in c.measured_peak_bytes if name in declared}
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
    _print_machine(out, spec.name, vram, vram_bytes, gpus, ram, ram_bytes)
    _print_tables(out, spec.name, plan, measured, vram_bytes)
    if vram_bytes is not None and not plan.fits:
        raise MemoryPlanError(f"{spec.name} does not fit: {plan.reason}",
                              hint=plan.hint or "See the table above: more GPUs (--num-gpus N) split the network's "
                                                "activations; or use a GPU with more free memory.")
    known = "fits" if plan.fits else "GPU memory unknown"
    out.print(f"strategy: [bold]{plan.strategy}[/bold] ({known}) - {plan.reason}")
    for note in plan.notes:
        out.print(f"note: {note}", markup=False, highlight=False)


def _print_machine(out: Console, name: str, vram: str | None, vram_bytes: int | None, gpus, ram: str | None,
                   ram_bytes: int | None) -> None:
    if vram:
        out.print(f"[bold]{name}[/bold] planned for {format_bytes(vram_bytes)} of GPU memory (--vram {vram})")
    elif gpus:
        for g in gpus:
            out.print(f"GPU {g.index}: {g.name}, {format_bytes(g.total_bytes)} total, {format_bytes(g.free_bytes)} free")
    else:
        out.print("[yellow]No CUDA GPU detected[/yellow] and no --vram given: showing predicted peaks only "
                  "(pass --vram 24GB to plan for a GPU).")
    if ram:
        out.print(f"host memory: {format_bytes(ram_bytes)} (--ram {ram})")
    else:
        mem = hostmem.detect_host_memory() if ram_bytes is not None else None
        out.print(f"host memory: {format_bytes(ram_bytes)} available ({mem.source}), {format_bytes(mem.total_bytes)} "
                  f"total" if mem else "host memory: unknown, not checked (pass --ram 32GB to plan for it)")


def _print_tables(out: Console, name: str, plan: MemoryPlan, measured: dict, vram_bytes: int | None) -> None:
    comps = Table(title=f"{name}: components")
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
    strategies = Table(title="strategies, fastest first", box=box.SIMPLE_HEAD, pad_edge=False,
                       collapse_padding=True,
                       caption="GPU: torch.cuda.max_memory_allocated; host: committed (pinned and anonymous) memory; "
                               "mapped: checkpoint bytes read through the page cache"
                               + ("; measured peak: benchmarks/bench_memory.py, default job" if measured else ""))
    columns = ("strategy", "GPU peak", *(("measured",) if measured else ()), "host peak", "mapped", "fits")
    for col in columns:
        strategies.add_column(col, justify="left" if col in ("strategy", "fits") else "right", no_wrap=True)
    host = {n: (p, m, f) for n, p, m, f in plan.host_alternatives}
    for s, peak, fits in plan.alternatives:
        h_peak, h_mapped, h_fits = host[s]
        gpu_ok = None if vram_bytes is None else fits
        short = [what for what, ok in (("GPU", gpu_ok), ("host", h_fits)) if ok is False]
        mark = (f"no: {short[0] if len(short) == 1 else 'both'}" if short
                else ("?" if None in (gpu_ok, h_fits) else "yes"))
        row = [f"[bold]{s}[/bold]" if s == plan.strategy else s, format_bytes(peak),
               *((format_bytes(measured.get(s)),) if measured else ()), format_bytes(h_peak),
               format_bytes(h_mapped) if h_mapped else "-", mark]
        strategies.add_row(*row)
    out.print(strategies)
