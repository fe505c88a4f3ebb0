"""`cosmos generate`: one video from an image or video and a prompt."""

from __future__ import annotations

import json

import typer

from cosmos_cli import options as o
from cosmos_cli.batch import BatchRequest
from cosmos_cli.batch.command import run_and_print as run_batch_and_print
from cosmos_cli.errors import UsageError
from cosmos_cli.fastmode import parse_fast
from cosmos_cli.generation import GenerateRequest, resolve_model
from cosmos_cli.generation import generate as run_generate
from cosmos_cli.launch import is_primary
from cosmos_cli.progress import NotesDropped, NullProgress, QuietProgress, RichProgress


def generate(
    ctx: typer.Context,
    input_path: o.InputOpt = None,
    prompt: o.PromptOpt = None,
    model: o.ModelOpt = None,
    checkpoint_dir: o.CheckpointDirOpt = o.Path("checkpoints"),
    network_dir: o.NetworkDirOpt = None,
    negative_prompt: o.NegativePromptOpt = None,
    num_input_frames: o.NumInputFramesOpt = None,
    seed: o.SeedOpt = 1,
    num_steps: o.NumStepsOpt = None,
    guidance: o.GuidanceOpt = None,
    fps: o.FpsOpt = None,
    output_dir: o.OutputDirOpt = o.Path("outputs"),
    name: o.OutputNameOpt = None,
    overwrite: o.OverwriteOpt = False,
    disable_prompt_upsampler: o.DisableUpsamplerOpt = False,
    disable_guardrail: o.DisableGuardrailOpt = False,
    upsampler_ignores_prompt: o.UpsamplerIgnoresPromptOpt = False,
    offload: o.OffloadOpt = "auto",
    offload_diffusion_transformer: o.OffloadNetworkOpt = False,
    offload_tokenizer: o.OffloadTokenizerOpt = False,
    offload_text_encoder_model: o.OffloadTextEncoderOpt = False,
    offload_prompt_upsampler: o.OffloadUpsamplerOpt = False,
    offload_guardrail_models: o.OffloadGuardrailOpt = False,
    num_gpus: o.NumGpusOpt = 1,
    cp_scheme: o.CpSchemeOpt = "auto",
    device: o.DeviceOpt = "auto",
    numerics: o.NumericsOpt = "fp32",
    fast: o.FastOpt = None,
    compile_blocks: o.CompileOpt = False,
    resize: o.ResizeOpt = "stretch",
    batch_input_path: o.BatchInputOpt = None,
    as_json: o.JsonOpt = False,
    quiet: o.QuietOpt = False,
    tokenizer_dir: o.TokenizerDirOpt = None,
    prompt_upsampler_dir: o.UpsamplerDirOpt = None,
    num_video_frames: o.NumVideoFramesOpt = None,
    height: o.HeightOpt = None,
    width: o.WidthOpt = None,
) -> None:
    """Generate a video continuing an image or video, guided by a prompt. Prints the output path.

    Every flag of the original's video2world.py works, in its spelling too (--checkpoint_dir is --checkpoint-dir)."""
    originals = dict(tokenizer_dir=tokenizer_dir, prompt_upsampler_dir=prompt_upsampler_dir,
                     num_video_frames=num_video_frames, height=height, width=width)
    if any(v is not None for v in originals.values()):
        o.check_original_only(resolve_model(model, network_dir), **originals)
    if batch_input_path is not None and (input_path is not None or name is not None):
        raise UsageError("--batch-input-path names the inputs and outputs: drop --input and --video-save-name",
                         hint="Put them in the batch file's visual_input and name keys.")
    if input_path is None and batch_input_path is None:
        raise UsageError("an input is required: pass --input IMAGE_OR_VIDEO (or --input_image_or_video_path)")
    flags = o.original_offload_flags(offload_diffusion_transformer, offload_tokenizer, offload_text_encoder_model,
                                     offload_prompt_upsampler, offload_guardrail_models)
    request = GenerateRequest(
        input_path=input_path or batch_input_path, prompt=prompt, model=model, checkpoint_dir=checkpoint_dir, network_dir=network_dir,
        negative_prompt=negative_prompt,
        num_input_frames=num_input_frames, seed=seed, num_steps=num_steps, guidance=guidance, fps=fps,
        output_dir=output_dir, name=name, overwrite=overwrite, disable_prompt_upsampler=disable_prompt_upsampler,
        disable_guardrail=disable_guardrail, upsampler_ignores_prompt=upsampler_ignores_prompt, offload=offload, original_offload_flags=flags,
        num_gpus=num_gpus, device=device, resize=resize, fast=parse_fast(fast), compile=compile_blocks,
        backend_options=o.backend_values(ctx, numerics=numerics, cp_scheme=cp_scheme),
    )
    if batch_input_path is not None:
        return run_batch_and_print(BatchRequest(batch_input_path, request), as_json, quiet)
    if not is_primary():  # a torchrun rank other than 0: rank 0 shows the progress and prints the result
        run_generate(request, QuietProgress())
        return None
    result = run_generate(request, NotesDropped() if quiet else NullProgress() if as_json else RichProgress())
    if as_json:
        typer.echo(json.dumps({"video": str(result.video_path), "prompt_file": str(result.prompt_path),
                               "prompt": result.final_prompt, "timings": result.timings,
                               "peak_memory_bytes": result.peak_memory_bytes}, indent=2))
    else:
        typer.echo(str(result.video_path))
