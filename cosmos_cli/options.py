"""Shared command-line options, with their help written once.

The original project's flag spellings (``--checkpoint_dir``, ``--num_input_frames``, ...) are extra names
on the same options, so its documented commands work with ``cosmos generate`` / ``cosmos batch``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cosmos_cli import fastmode as fm

ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Model name or alias (see `cosmos backends`). Default: the backend's default model."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
NumInputFramesOpt = Annotated[
    int | None,
    typer.Option("--num-input-frames", "--num_input_frames", min=1,
                 help="Conditioning frames taken from the end of the input (the model accepts 1 or 9). Default: the model's."),
]
DisableUpsamplerOpt = Annotated[
    bool,
    typer.Option("--disable-prompt-upsampler", "--disable_prompt_upsampler",
                 help="Do not run the prompt upsampler: every job then needs a prompt."),
]
VramOpt = Annotated[
    str | None,
    typer.Option("--vram", help="GPU memory to plan for, e.g. 24GB (10^9 bytes), 24GiB or 24000MiB. Default: detected free memory."),
]
NumGpusOpt = Annotated[
    int,
    typer.Option("--num-gpus", "--num_gpus", min=1,
                 help="GPUs working on each generation (context parallelism), one process per GPU started by "
                      "torchrun: torchrun --nproc_per_node=N --no-python cosmos generate (or batch) ... --num-gpus N."),
]
CpSchemeOpt = Annotated[
    str,
    typer.Option("--cp-scheme",
                 help="How --num-gpus N splits a generation: auto (cfg when N is even and the memory plan runs the "
                      "two guidance branches together, else sequence), sequence (each GPU takes 1/N of the video's "
                      "tokens) or cfg (the two guidance branches on two halves of the GPUs)."),
]
UpsamplerOpt = Annotated[bool, typer.Option("--upsampler/--no-upsampler", help="Count the prompt upsampler.")]
GuardrailOpt = Annotated[bool, typer.Option("--guardrail/--no-guardrail", help="Count the guardrail models.")]
CheckpointDirOpt = Annotated[
    Path,
    typer.Option("--checkpoint-dir", "--checkpoint_dir",
                 help="Folder holding the checkpoints, in the original project's layout."),
]
NetworkDirOpt = Annotated[
    str | None,
    typer.Option("--diffusion-transformer-dir", "--diffusion_transformer_dir",
                 help="The network's folder under --checkpoint-dir (the original's way to pick the model)."),
]
InputOpt = Annotated[
    Path | None,
    typer.Option("--input", "-i", "--input-image-or-video-path", "--input_image_or_video_path",
                 help="Conditioning image (jpg/png/webp/bmp) or video (mp4/mov/avi/webm/mkv)."),
]
PromptOpt = Annotated[str | None, typer.Option("--prompt", "-p", help="Text prompt.")]
NegativePromptOpt = Annotated[
    str | None,
    typer.Option("--negative-prompt", "--negative_prompt", help="Negative prompt (default: the original's)."),
]
SeedOpt = Annotated[int, typer.Option("--seed", min=0, help="Random seed: the same seed gives the same video.")]
NumStepsOpt = Annotated[
    int | None, typer.Option("--num-steps", "--num_steps", min=1, help="Sampler steps. Default: the model's (35).")
]
GuidanceOpt = Annotated[
    float | None, typer.Option("--guidance", min=0.0, help="Classifier-free guidance scale. Default: the model's (7).")
]
FpsOpt = Annotated[
    int | None, typer.Option("--fps", min=1, help="Frames per second of the output (also conditions the model). Default: 24.")
]
OutputDirOpt = Annotated[
    Path,
    typer.Option("--video-save-folder", "--video_save_folder", "--output-dir", "-o", help="Folder for the outputs."),
]
OutputNameOpt = Annotated[
    str | None,
    typer.Option("--video-save-name", "--video_save_name",
                 help="Output file stem. Default: output (output_1, ... if taken)."),
]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output of the same name.")]
DisableGuardrailOpt = Annotated[
    bool, typer.Option("--disable-guardrail", "--disable_guardrail", help="Do not run the safety guardrails.")
]
OffloadOpt = Annotated[
    str,
    typer.Option("--offload", help="Memory strategy: auto (fastest that fits the detected memory) or a name from "
                                   "`cosmos memory-plan`."),
]
OffloadNetworkOpt = Annotated[
    bool, typer.Option("--offload-diffusion-transformer", "--offload_diffusion_transformer",
                       help="Original flag: the network is on the GPU only while it denoises.")
]
OffloadTokenizerOpt = Annotated[
    bool, typer.Option("--offload-tokenizer", "--offload_tokenizer", help="Original flag: offload the tokenizer.")
]
OffloadTextEncoderOpt = Annotated[
    bool, typer.Option("--offload-text-encoder-model", "--offload_text_encoder_model",
                       help="Original flag: offload the T5 text encoder.")
]
OffloadUpsamplerOpt = Annotated[
    bool, typer.Option("--offload-prompt-upsampler", "--offload_prompt_upsampler",
                       help="Original flag: offload the prompt upsampler.")
]
OffloadGuardrailOpt = Annotated[
    bool, typer.Option("--offload-guardrail-models", "--offload_guardrail_models",
                       help="Original flag: offload the guardrail models.")
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (a GPU when there is one), cuda, cuda:N or cpu.")]
NumericsOpt = Annotated[
    str,
    typer.Option("--numerics", help="fp32: fp32 position tables and sampler scalars, as the model was trained "
                                    "(default). original: the original script's bf16 details, for identical videos."),
]
FastOpt = Annotated[
    str | None,
    typer.Option("--fast", metavar="OPTIONS",
                 help="Opt-in speed options that change the video (quality cost measured: README, Fast mode), "
                      "comma-separated: step-cache[=THRESHOLD] (skip most of the network while its input changes "
                      f"little; default {fm.DEFAULT_STEP_CACHE_THRESHOLD:g}), guidance-trunc[=FRACTION] (no negative-"
                      f"prompt pass in the last FRACTION of the steps; default {fm.DEFAULT_GUIDANCE_TRUNC_FRACTION:g}), "
                      "fp8 (FP8 matrix products; GPUs of compute capability 8.9+ only), fp8-sim (FP8 rounding "
                      "simulated on any device: slower, for checking quality). Default: exact."),
]
CompileOpt = Annotated[
    bool,
    typer.Option("--compile", help="Compile the network's blocks with torch.compile (same video within float "
                                   "rounding; the first step waits for the compilation)."),
]
ResizeOpt = Annotated[
    str,
    typer.Option("--resize", help="How the input is fitted to the model's size: stretch (the original's), crop or pad."),
]
UpsamplerIgnoresPromptOpt = Annotated[
    bool,
    typer.Option("--upsampler-ignores-prompt",
                 help="Let the prompt upsampler caption the input alone, discarding --prompt (the original's behaviour). "
                      "By default it refines your prompt."),
]
BatchInputOpt = Annotated[
    Path | None,
    typer.Option("--batch-input-path", "--batch_input_path",
                 help="Run every line of this JSONL file as `cosmos batch FILE` does (the original's flag); the "
                      "other options are each line's defaults."),
]
SkipInvalidOpt = Annotated[
    bool,
    typer.Option("--skip-invalid", help="Run the valid lines of a batch file with errors; report the others as failed."),
]
FailFastOpt = Annotated[bool, typer.Option("--fail-fast", help="Stop the batch at the first line that fails.")]
GpusOpt = Annotated[
    int,
    typer.Option("--gpus", min=1, help="Worker processes, one model copy each on cuda:0..N-1 (on the CPU with "
                                       "--device cpu); lines are shared out round-robin. Under torchrun: one per rank."),
]
ReportOpt = Annotated[
    Path | None,
    typer.Option("--report", help="Where to write the batch report (JSON). Default: OUTPUT_DIR/batch_report.json."),
]


def original_offload_flags(offload_diffusion_transformer: bool, offload_tokenizer: bool,
                           offload_text_encoder_model: bool, offload_prompt_upsampler: bool,
                           offload_guardrail_models: bool) -> frozenset[str]:
    """The names of the original's five --offload_* flags that are on (for ``GenerateRequest``)."""
    given = locals()
    return frozenset(name for name, on in given.items() if on)
