"""`cosmos validate`: check a batch file before spending GPU hours on it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from cosmos_cli.batch import prompt_hint, validate_for, validation_notes
from cosmos_cli.errors import ValidationFailed
from cosmos_cli.generation import GenerateRequest
from cosmos_cli.options import DisableUpsamplerOpt, JsonOpt, ModelOpt, NumInputFramesOpt, PromptOpt
from cosmos_cli.registry import default_model_name, find_model


def validate(
    file: Annotated[Path, typer.Argument(help="Batch file: one JSON object per line (see schemas/batch_job.schema.json).")],
    disable_prompt_upsampler: DisableUpsamplerOpt = False,
    num_input_frames: NumInputFramesOpt = None,
    model: ModelOpt = None,
    as_json: JsonOpt = False,
    prompt: PromptOpt = None,
) -> None:
    """Check every line of a batch file and report every error as FILE:LINE: FIELD: reason.

    The same check `cosmos batch` makes with the same options (model, upsampler, frames, --prompt)."""
    _, spec = find_model(model or default_model_name())
    defaults = GenerateRequest(input_path=file, prompt=prompt, model=spec.name, num_input_frames=num_input_frames,
                               disable_prompt_upsampler=disable_prompt_upsampler)
    report = validate_for(file, spec, defaults)
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        for issue in report.issues:
            print(issue.format(str(file)), file=sys.stderr)
        for note in validation_notes(report, defaults) if report.valid else ():
            print(note, file=sys.stderr)
        bad = len(report.invalid_lines)
        summary = (f"{file}: {report.jobs} jobs, all valid" if report.valid
                   else f"{file}: {report.jobs} jobs, {bad} invalid, {len(report.issues)} errors")
        typer.echo(summary)
    if not report.valid:
        if as_json:
            raise typer.Exit(1)
        raise ValidationFailed(f"{file} is not valid", hint=prompt_hint(report, spec, defaults)
                               or "Fix the lines listed above, then validate again.")
