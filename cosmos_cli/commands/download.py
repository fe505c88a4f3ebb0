"""`cosmos download`: fetch the checkpoints a model reads, resumably and checked, in the original's layout."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cosmos_cli import download as dl
from cosmos_cli.errors import UsageError
from cosmos_cli.options import CheckpointDirOpt

ModelsArg = Annotated[
    list[str] | None,
    typer.Argument(help="Models to fetch: names or aliases (7B 14B). Required; the bundled demo needs no download.",
                   metavar="MODEL", show_default=False),
]
ModelListOpt = Annotated[
    list[str] | None,
    typer.Option("--model", "-m", metavar="NAME", show_default=False,
                 help="A model to fetch (repeatable; `--model 7B 14B` works too). Also: --model-sizes (the "
                      "original's)."),
]
ModelTypesOpt = Annotated[
    list[str] | None,
    typer.Option("--model-types", metavar="TYPE", show_default=False,
                 help="Accepted for the original script's commands: a type the models have selects nothing more, "
                      "another is refused."),
]
UpsamplerOpt = Annotated[bool, typer.Option("--upsampler/--no-upsampler", metavar="",
                                            help="Fetch the model's prompt upsampler (default: yes).",
                                            show_default=False)]
GuardrailOpt = Annotated[bool, typer.Option("--guardrail/--no-guardrail", metavar="",
                                            help="Fetch the model's guardrail models (default: yes).",
                                            show_default=False)]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", metavar="TOKEN", show_default=False,
                 help="Hugging Face token. Default: HF_TOKEN, else the stored login (`hf auth login`)."),
]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", metavar="",
                                         help="List every repository and file with its size, the total and the free "
                                              "disk; fetch nothing.")]
VerifyOpt = Annotated[bool, typer.Option("--verify", metavar="",
                                         help="Re-hash the files already in the folder and name any bad one.")]

def download(
    models: ModelsArg = None,
    model: ModelListOpt = None,
    model_types: ModelTypesOpt = None,
    checkpoint_dir: CheckpointDirOpt = Path("checkpoints"),
    upsampler: UpsamplerOpt = True,
    guardrail: GuardrailOpt = True,
    token: TokenOpt = None,
    dry_run: DryRunOpt = False,
    verify: VerifyOpt = False,
) -> None:
    """Download the checkpoints a model reads (and nothing else), resume interrupted transfers, verify hashes."""
    if dry_run and verify:
        raise UsageError("--dry-run and --verify do not go together")
    specs = dl.resolve_models([*(model or []), *(models or [])], model_types or [])
    for spec in specs:
        if not dl.hub_files(spec):
            typer.echo(f"note: nothing to download for {spec.name}: none of its files come from the Hub "
                       "(it ships with cosmos or is made locally)", err=True)
    specs = [s for s in specs if dl.hub_files(s)]
    if not specs:
        return
    files = dl.select_files(specs, upsampler=upsampler, guardrail=guardrail)
    plan = dl.plan_download(files, checkpoint_dir, token=token)
    if dry_run:
        typer.echo(dl.format_plan(plan))
        return
    if verify:
        report = dl.verify(plan)
        for local, problem in report.bad:
            typer.echo(f"BAD {local}: {problem}")
        typer.echo(f"{len(report.checked)} files verified, {len(report.bad)} bad, in {checkpoint_dir}")
        if report.bad:
            raise dl.VerifyFailed(f"{len(report.bad)} file(s) missing or damaged in {checkpoint_dir}: "
                                  + ", ".join(local for local, _ in report.bad[:5])
                                  + (" ..." if len(report.bad) > 5 else ""),
                                  hint="Run `cosmos download` with the same options to fetch them again.")
        return
    report = dl.download(plan, token=token)
    typer.echo(f"{len(plan.files)} files ready in {checkpoint_dir}: {len(report.fetched)} fetched "
               f"({dl.human_bytes(report.fetched_bytes)}), {len(report.checked)} checked"
               + (f", converted {', '.join(report.converted)}" if report.converted else ""))
