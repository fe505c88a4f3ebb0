"""`cosmos validate`: check a batch file before spending GPU hours on it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from cosmos_cli.errors import ValidationFailed
from cosmos_cli.jobs import validate_batch
from cosmos_cli.options import DisableUpsamplerOpt, JsonOpt, ModelOpt, NumInputFramesOpt
from cosmos_cli.registry import default_model_name, find_model


def validate(
    file: Annotated[Path, typer.Argument(help="Batch file: one JSON object per line (see schemas/batch_job.schema.json).")],
    disable_prompt_upsampler: DisableUpsamplerOpt = False,
    num_input_frames: NumInputFramesOpt = None,
    model: ModelOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check every line of a batch file and report every error as FILE:LINE: FIELD: reason."""
    _, spec = find_model(model or default_model_name())
    report = validate_batch(
        file,
        require_prompt=disable_prompt_upsampler,
        default_input_frames=num_input_frames or spec.default_input_frames,
        allowed_input_frames=spec.input_frames,
        model_name=spec.name,
    )
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        for issue in report.issues:
            print(issue.format(str(file)), file=sys.stderr)
        bad = len(report.invalid_lines)
        summary = (f"{file}: {report.jobs} jobs, all valid" if report.valid
                   else f"{file}: {report.jobs} jobs, {bad} invalid, {len(report.issues)} errors")
        typer.echo(summary)
    if not report.valid:
        if as_json:
            raise typer.Exit(1)
        raise ValidationFailed(f"{file} is not valid", hint="Fix the lines listed above, then validate again.")
