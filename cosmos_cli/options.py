"""Shared command-line options, with their help written once.

The original project's flag spellings (``--checkpoint_dir``, ``--num_input_frames``, ...) are extra names
on the same options, so its documented commands work with ``cosmos generate`` / ``cosmos batch``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cosmos_cli import fastmode as fm
from cosmos_cli.backend import PANEL_INPUT as P_INPUT
from cosmos_cli.backend import PANEL_MEMORY as P_MEMORY
from cosmos_cli.backend import PANEL_MODEL as P_MODEL
from cosmos_cli.backend import PANEL_OUTPUT as P_OUTPUT
from cosmos_cli.backend import PANEL_SAMPLING as P_SAMPLING
from cosmos_cli.backend import PANEL_SPEED as P_SPEED

# Help panels: `cosmos generate --help` groups its options under these titles (the backends' options too, see
# cosmos_cli.backend.PANELS).
P_BATCH = "Batch"
P_OFFLOAD = "The original's five offload flags (they choose an --offload strategy)"
P_ORIGINAL = "Accepted for the original's commands"

# The original's spellings, and earlier spellings of ours, that are not an option's shown name. Every command reads
# an option name through :func:`normalize_option_name`: `_` becomes `-` (so ``--checkpoint_dir`` is
# ``--checkpoint-dir``, the original's spelling of every flag works on every command) and then this table maps an
# alias to the option it names. The help lists the aliases in each option's text instead of its first column, so
# the option names fit at 80 columns.
OPTION_ALIASES = {
    "input-image-or-video-path": "input",
    "output-dir": "video-save-folder",
    "disable-prompt-upsampler": "no-upsampler",
    "disable-guardrail": "no-guardrail",
    "gpus": "workers",
    "model-sizes": "model",  # the original's download script
}


def normalize_option_name(name: str) -> str:
    """Click's ``token_normalize_func`` (see :func:`cosmos_cli.app.create_app`): ``name`` is an option name without
    its leading dashes (or a command name); values are never passed through it (no option uses a Choice type)."""
    name = name.replace("_", "-")
    return OPTION_ALIASES.get(name, name)


def _flag(*names: str, help: str, **kw):
    """A boolean flag: no ``<bool>`` type column in the help."""
    return typer.Option(*names, help=help, metavar="", **kw)


ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", rich_help_panel=P_MODEL, metavar="NAME",
                 help="Model name or alias (see `cosmos backends`). Default: the backend's default model."),
]
JsonOpt = Annotated[bool, _flag("--json", help="Print machine-readable JSON on stdout.", rich_help_panel=P_OUTPUT)]
QuietOpt = Annotated[bool, _flag("--quiet", "-q", rich_help_panel=P_OUTPUT,
                                 help="Drop the notes and stage lines on stderr; warnings and errors still print.")]
NumInputFramesOpt = Annotated[
    int | None,
    typer.Option("--num-input-frames", min=1, rich_help_panel=P_INPUT, metavar="N",
                 help="Conditioning frames taken from the end of the input (the model accepts 1 or 9). "
                      "Default: the model's."),
]
DisableUpsamplerOpt = Annotated[
    bool,
    _flag("--no-upsampler", rich_help_panel=P_MODEL,
          help="Do not run the prompt upsampler: every job then needs a prompt. Also: --disable-prompt-upsampler "
               "(the original's)."),
]
VramOpt = Annotated[
    str | None,
    typer.Option("--vram", metavar="SIZE",
                 help="GPU memory to plan for, with a unit: 24GB (10^9 bytes), 24GiB or 24000MiB. Default: the "
                      "detected free memory, as `generate` reads it."),
]
RamOpt = Annotated[
    str | None,
    typer.Option("--ram", metavar="SIZE",
                 help="Host memory to plan for, with a unit: 32GB (10^9 bytes), 32GiB. Default: what this process may "
                      "use (MemAvailable, or the cgroup's memory limit if lower), as `generate` reads it."),
]
NumGpusOpt = Annotated[
    int,
    typer.Option("--num-gpus", min=1, rich_help_panel=P_MEMORY, metavar="N",
                 help="GPUs working on each generation (context parallelism), one process per GPU started by "
                      "torchrun: torchrun --nproc_per_node=N --no-python cosmos generate (or batch) ... --num-gpus N."),
]
UpsamplerOpt = Annotated[bool, _flag("--upsampler/--no-upsampler",
                                     help="Count the prompt upsampler. Also: --disable-prompt-upsampler.")]
GuardrailOpt = Annotated[bool, _flag("--guardrail/--no-guardrail",
                                     help="Count the guardrail models. Also: --disable-guardrail.")]
CheckpointDirOpt = Annotated[
    Path,
    typer.Option("--checkpoint-dir", rich_help_panel=P_MODEL, metavar="DIR",
                 help="Folder holding the checkpoints, in the original project's layout."),
]
NetworkDirOpt = Annotated[
    str | None,
    typer.Option("--diffusion-transformer-dir", rich_help_panel=P_MODEL, metavar="NAME",
                 help="The network's folder under --checkpoint-dir (the original's way to pick the model)."),
]
InputOpt = Annotated[
    Path | None,
    typer.Option("--input", "-i", rich_help_panel=P_INPUT, metavar="FILE",
                 help="Conditioning image (jpg/png/webp/bmp) or video (mp4/mov/avi/webm/mkv). Also: "
                      "--input_image_or_video_path (the original's)."),
]
PromptOpt = Annotated[str | None, typer.Option("--prompt", "-p", rich_help_panel=P_INPUT, metavar="TEXT",
                                               help="Text prompt.")]
NegativePromptOpt = Annotated[
    str | None,
    typer.Option("--negative-prompt", rich_help_panel=P_INPUT, metavar="TEXT",
                 help="Negative prompt. Default: the model's own (its original project's)."),
]
SeedOpt = Annotated[int, typer.Option("--seed", min=0, rich_help_panel=P_SAMPLING, metavar="N",
                                      help="Random seed: the same seed gives the same video.")]
NumStepsOpt = Annotated[
    int | None, typer.Option("--num-steps", min=1, rich_help_panel=P_SAMPLING, metavar="N",
                             help="Sampler steps. Default: the model's (35).")
]
GuidanceOpt = Annotated[
    float | None, typer.Option("--guidance", min=0.0, rich_help_panel=P_SAMPLING, metavar="SCALE",
                               help="Classifier-free guidance scale. Default: the model's (7).")
]
FpsOpt = Annotated[
    int | None, typer.Option("--fps", min=1, rich_help_panel=P_SAMPLING, metavar="N",
                             help="Frames per second of the output (also conditions the model). Default: 24.")
]
OutputDirOpt = Annotated[
    Path,
    typer.Option("--video-save-folder", "-o", rich_help_panel=P_OUTPUT, metavar="DIR",
                 help="Folder for the outputs. Also: --output-dir."),
]
OutputNameOpt = Annotated[
    str | None,
    typer.Option("--video-save-name", rich_help_panel=P_OUTPUT, metavar="NAME",
                 help="Output file stem. Default: output (output_1, ... if taken)."),
]
OverwriteOpt = Annotated[bool, _flag("--overwrite", rich_help_panel=P_OUTPUT,
                                     help="Replace an existing output of the same name.")]
DisableGuardrailOpt = Annotated[
    bool, _flag("--no-guardrail", rich_help_panel=P_MODEL,
                help="Do not run the safety guardrails. Also: --disable-guardrail (the original's).")
]
OffloadOpt = Annotated[
    str,
    typer.Option("--offload", rich_help_panel=P_MEMORY, metavar="STRATEGY",
                 help="Memory strategy: auto (fastest that fits the detected memory) or a name from "
                      "`cosmos memory-plan`."),
]
OffloadNetworkOpt = Annotated[
    bool, _flag("--offload-diffusion-transformer", rich_help_panel=P_OFFLOAD,
                help="The network is on the GPU only while it denoises (with the four below: offload-all).")
]
OffloadTokenizerOpt = Annotated[
    bool, _flag("--offload-tokenizer", rich_help_panel=P_OFFLOAD,
                help="The tokenizer too (with the three below: offload-tokenizer).")
]
OffloadTextEncoderOpt = Annotated[
    bool, _flag("--offload-text-encoder-model", rich_help_panel=P_OFFLOAD,
                help="The T5 text encoder too (with the two below: offload-text-encoder).")
]
OffloadUpsamplerOpt = Annotated[
    bool, _flag("--offload-prompt-upsampler", rich_help_panel=P_OFFLOAD,
                help="The prompt upsampler is on the GPU only while it runs (alone: offload-upsampler).")
]
OffloadGuardrailOpt = Annotated[
    bool, _flag("--offload-guardrail-models", rich_help_panel=P_OFFLOAD,
                help="The guardrails too (with the one above: offload-guardrails).")
]
DeviceOpt = Annotated[str, typer.Option("--device", rich_help_panel=P_MEMORY, metavar="DEVICE",
                                        help="auto (a GPU when there is one), cuda, cuda:N or cpu. A 7B/14B model "
                                             "on a machine without a GPU needs --device cpu, given explicitly.")]
FastOpt = Annotated[
    str | None,
    typer.Option("--fast", metavar="OPTIONS", rich_help_panel=P_SPEED,
                 help="Opt-in speed options that change the video (quality cost measured: README, Fast mode), "
                      "comma-separated: step-cache[=THRESHOLD] (skip most of the network while its input changes "
                      f"little; default {fm.DEFAULT_STEP_CACHE_THRESHOLD:g}), guidance-trunc[=FRACTION] (no negative-"
                      f"prompt pass in the last FRACTION of the steps; default {fm.DEFAULT_GUIDANCE_TRUNC_FRACTION:g}), "
                      "fp8 (FP8 matrix products; GPUs of compute capability 8.9+ only), fp8-sim (FP8 rounding "
                      "simulated on any device: slower, for checking quality). Default: exact."),
]
CompileOpt = Annotated[
    bool,
    _flag("--compile", rich_help_panel=P_SPEED,
          help="Compile the network's blocks with torch.compile (same video within float "
               "rounding; the first step waits for the compilation)."),
]
ResizeOpt = Annotated[
    str,
    typer.Option("--resize", rich_help_panel=P_INPUT, metavar="MODE",
                 help="How the input is fitted to the model's size: stretch (the original's), crop or pad."),
]
UpsamplerIgnoresPromptOpt = Annotated[
    bool,
    _flag("--upsampler-ignores-prompt", rich_help_panel=P_MODEL,
          help="Let the prompt upsampler caption the input alone, discarding --prompt (the original's behaviour). "
               "By default it refines your prompt."),
]
BatchInputOpt = Annotated[
    Path | None,
    typer.Option("--batch-input-path", rich_help_panel=P_INPUT, metavar="FILE",
                 help="Run every line of this JSONL file as `cosmos batch FILE` does (the original's flag); the "
                      "other options are each line's defaults."),
]
SkipInvalidOpt = Annotated[
    bool,
    _flag("--skip-invalid", rich_help_panel=P_BATCH,
          help="Run the valid lines of a batch file with errors; report the others as failed."),
]
FailFastOpt = Annotated[bool, _flag("--fail-fast", rich_help_panel=P_BATCH,
                                    help="Stop the batch at the first line that fails.")]
GpusOpt = Annotated[
    int,
    typer.Option("--workers", min=1, rich_help_panel=P_BATCH, metavar="N",
                 help="Worker processes, one model copy each on cuda:0..N-1 (on the CPU with --device cpu); "
                      "lines are shared out round-robin. Under torchrun: one per rank. Not --num-gpus, which "
                      "splits each generation. Also: --gpus."),
]
ReportOpt = Annotated[
    Path | None,
    typer.Option("--report", rich_help_panel=P_BATCH, metavar="FILE",
                 help="Where to write the batch report (JSON). Default: OUTPUT_DIR/batch_report.json."),
]
# The original's options that change nothing here; they are checked (see check_original_only) so a value that
# would mean something else is refused instead of being ignored as the original ignores them.
TokenizerDirOpt = Annotated[
    str | None, typer.Option("--tokenizer-dir", rich_help_panel=P_ORIGINAL, metavar="NAME",
                             help="Must name the model's tokenizer folder (the original never read it).")
]
UpsamplerDirOpt = Annotated[
    str | None, typer.Option("--prompt-upsampler-dir", rich_help_panel=P_ORIGINAL, metavar="NAME",
                             help="Must name the model's prompt-upsampler folder.")
]
NumVideoFramesOpt = Annotated[
    int | None, typer.Option("--num-video-frames", rich_help_panel=P_ORIGINAL, metavar="N",
                             help="Must be the model's frame count (121 for 7B/14B).")
]
HeightOpt = Annotated[int | None, typer.Option("--height", rich_help_panel=P_ORIGINAL, metavar="PX",
                                               help="Must be the model's height (the original ignored it).")]
WidthOpt = Annotated[int | None, typer.Option("--width", rich_help_panel=P_ORIGINAL, metavar="PX",
                                              help="Must be the model's width (the original ignored it).")]


def check_original_only(spec, *, tokenizer_dir: str | None = None, prompt_upsampler_dir: str | None = None,
                        num_video_frames: int | None = None, height: int | None = None,
                        width: int | None = None) -> None:
    """Refuse a value of the original's no-op options that asks for something ``spec`` does not do.

    The original script accepts ``--height/--width`` and ``--tokenizer_dir`` and ignores them, and allows only 121
    for ``--num_video_frames`` (/work/shared/reference/cosmos-predict1-spec.md, section 1.1 and pitfall 13.4)."""
    from cosmos_cli.errors import UsageError
    from cosmos_cli.specs import TOKENIZER, UPSAMPLER

    for flag, value, want in (("--num-video-frames", num_video_frames, spec.num_frames),
                              ("--height", height, spec.height), ("--width", width, spec.width)):
        if value is not None and value != want:
            raise UsageError(f"{flag} {value}: {spec.name} generates {spec.num_frames} frames of "
                             f"{spec.width}x{spec.height} only", hint=f"Drop {flag} (the original ignores a "
                             "different --height/--width too); see `cosmos generate --resize` for the input.")
    for flag, value, component in (("--tokenizer-dir", tokenizer_dir, TOKENIZER),
                                   ("--prompt-upsampler-dir", prompt_upsampler_dir, UPSAMPLER)):
        if value is None:
            continue
        files = spec.files_of(component)
        folder = files[0].local.split("/")[0] if files else None
        if Path(value).name != folder:
            where = f"--checkpoint-dir/{folder}" if folder else f"nowhere ({spec.name} has no {component})"
            raise UsageError(f"{flag} {value}: {spec.name} reads its {component} from {where}",
                             hint=f"Drop {flag}.")


def original_offload_flags(offload_diffusion_transformer: bool, offload_tokenizer: bool,
                           offload_text_encoder_model: bool, offload_prompt_upsampler: bool,
                           offload_guardrail_models: bool) -> frozenset[str]:
    """The names of the original's five --offload_* flags that are on (for ``GenerateRequest``)."""
    given = locals()
    return frozenset(name for name, on in given.items() if on)
