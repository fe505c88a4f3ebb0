"""`cosmos generate`: one video from an image or video and a prompt."""

from __future__ import annotations

import json

import typer

from cosmos_cli import options as o
from cosmos_cli.batch import BatchRequest
from cosmos_cli.batch.command import run_and_print as run_batch_and_print
from cosmos_cli.commands.job_flags import JobFlags, with_job_flags
from cosmos_cli.errors import UsageError
from cosmos_cli.generation import generate as run_generate
from cosmos_cli.generation import resolve_model
from cosmos_cli.launch import is_primary
from cosmos_cli.progress import NotesDropped, NullProgress, QuietProgress, RichProgress


@with_job_flags
def generate(
    input_path: o.InputOpt = None,
    job: JobFlags = None,
    name: o.OutputNameOpt = None,
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
        o.check_original_only(resolve_model(job.model, job.network_dir), **originals)
    if job.batch_input_path is not None and (input_path is not None or name is not None):
        raise UsageError("--batch-input-path names the inputs and outputs: drop --input and --video-save-name",
                         hint="Put them in the batch file's visual_input and name keys.")
    if input_path is None and job.batch_input_path is None:
        raise UsageError("an input is required: pass --input IMAGE_OR_VIDEO (or --input_image_or_video_path)")
    request = job.request(input_path or job.batch_input_path, name=name)
    if job.batch_input_path is not None:
        return run_batch_and_print(BatchRequest(job.batch_input_path, request), job.as_json, job.quiet)
    if not is_primary():  # a torchrun rank other than 0: rank 0 shows the progress and prints the result
        run_generate(request, QuietProgress())
        return None
    result = run_generate(request, NotesDropped() if job.quiet else NullProgress() if job.as_json else RichProgress())
    if job.as_json:
        typer.echo(json.dumps({"video": str(result.video_path), "prompt_file": str(result.prompt_path),
                               "prompt": result.final_prompt, "timings": result.timings,
                               "peak_memory_bytes": result.peak_memory_bytes, "details": result.details},
                              indent=2))
    else:
        typer.echo(str(result.video_path))
