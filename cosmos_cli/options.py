"""Shared command-line options, with their help written once.

The original project's flag spellings (``--checkpoint_dir``, ``--num_input_frames``, ...) are extra names
on the same options, so its documented commands work with ``cosmos generate`` / ``cosmos batch``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

ModelOpt = Annotated[
    Optional[str],
    typer.Option("--model", "-m", help="Model name or alias (see `cosmos backends`). Default: the backend's default model."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
NumInputFramesOpt = Annotated[
    Optional[int],
    typer.Option("--num-input-frames", "--num_input_frames", min=1,
                 help="Conditioning frames taken from the end of the input (the model accepts 1 or 9). Default: the model's."),
]
DisableUpsamplerOpt = Annotated[
    bool,
    typer.Option("--disable-prompt-upsampler", "--disable_prompt_upsampler",
                 help="Do not run the prompt upsampler: every job then needs a prompt."),
]
VramOpt = Annotated[
    Optional[str],
    typer.Option("--vram", help="GPU memory to plan for, e.g. 24GB (10^9 bytes), 24GiB or 24000MiB. Default: detected free memory."),
]
NumGpusOpt = Annotated[
    int, typer.Option("--num-gpus", "--num_gpus", min=1, help="GPUs working on one generation (context parallelism).")
]
UpsamplerOpt = Annotated[bool, typer.Option("--upsampler/--no-upsampler", help="Count the prompt upsampler.")]
GuardrailOpt = Annotated[bool, typer.Option("--guardrail/--no-guardrail", help="Count the guardrail models.")]
CheckpointDirOpt = Annotated[
    Path,
    typer.Option("--checkpoint-dir", "--checkpoint_dir",
                 help="Folder holding the checkpoints, in the original project's layout."),
]
