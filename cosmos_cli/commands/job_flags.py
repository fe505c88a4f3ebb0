"""The options `generate` and `batch` share, declared once.

Both commands take the same job options (a batch's are each line's defaults). Typer reads a command's options from
its signature, so :func:`with_job_flags` adds the fields of :class:`JobFlags` to the signature of the command it
decorates and hands the command one ``JobFlags`` instead of thirty keyword arguments; :meth:`JobFlags.request`
builds the :class:`~cosmos_cli.generation.GenerateRequest` from them.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from pathlib import Path

import typer

from cosmos_cli import options as o


@dataclasses.dataclass(frozen=True)
class JobFlags:
    """One generation's options as the command line gave them (the types carry the flags' names and help)."""

    prompt: o.PromptOpt = None
    model: o.ModelOpt = None
    checkpoint_dir: o.CheckpointDirOpt = Path("checkpoints")
    network_dir: o.NetworkDirOpt = None
    negative_prompt: o.NegativePromptOpt = None
    num_input_frames: o.NumInputFramesOpt = None
    seed: o.SeedOpt = 1
    num_steps: o.NumStepsOpt = None
    guidance: o.GuidanceOpt = None
    fps: o.FpsOpt = None
    output_dir: o.OutputDirOpt = Path("outputs")
    overwrite: o.OverwriteOpt = False
    disable_prompt_upsampler: o.DisableUpsamplerOpt = False
    disable_guardrail: o.DisableGuardrailOpt = False
    upsampler_ignores_prompt: o.UpsamplerIgnoresPromptOpt = False
    offload: o.OffloadOpt = "auto"
    offload_diffusion_transformer: o.OffloadNetworkOpt = False
    offload_tokenizer: o.OffloadTokenizerOpt = False
    offload_text_encoder_model: o.OffloadTextEncoderOpt = False
    offload_prompt_upsampler: o.OffloadUpsamplerOpt = False
    offload_guardrail_models: o.OffloadGuardrailOpt = False
    num_gpus: o.NumGpusOpt = 1
    cp_scheme: o.CpSchemeOpt = "auto"
    device: o.DeviceOpt = "auto"
    numerics: o.NumericsOpt = "fp32"
    fast: o.FastOpt = None
    compile_blocks: o.CompileOpt = False
    attention: o.AttentionOpt = "auto"
    resize: o.ResizeOpt = "stretch"
    batch_input_path: o.BatchInputOpt = None
    as_json: o.JsonOpt = False
    quiet: o.QuietOpt = False

    def request(self, ctx: typer.Context, input_path: Path, name: str | None = None):
        """The request these options make for ``input_path`` (a batch: the batch file, each line's defaults)."""
        from cosmos_cli.fastmode import parse_fast
        from cosmos_cli.generation import GenerateRequest

        flags = o.original_offload_flags(self.offload_diffusion_transformer, self.offload_tokenizer,
                                         self.offload_text_encoder_model, self.offload_prompt_upsampler,
                                         self.offload_guardrail_models)
        return GenerateRequest(
            input_path=input_path, prompt=self.prompt, model=self.model, checkpoint_dir=self.checkpoint_dir,
            network_dir=self.network_dir, negative_prompt=self.negative_prompt,
            num_input_frames=self.num_input_frames, seed=self.seed, num_steps=self.num_steps,
            guidance=self.guidance, fps=self.fps, output_dir=self.output_dir, name=name, overwrite=self.overwrite,
            disable_prompt_upsampler=self.disable_prompt_upsampler, disable_guardrail=self.disable_guardrail,
            upsampler_ignores_prompt=self.upsampler_ignores_prompt, offload=self.offload,
            original_offload_flags=flags, num_gpus=self.num_gpus, device=self.device, resize=self.resize,
            fast=parse_fast(self.fast), compile=self.compile_blocks,
            backend_options=o.backend_values(ctx, numerics=self.numerics, cp_scheme=self.cp_scheme,
                                              attention=self.attention),
        )


def with_job_flags(command: Callable[..., None]) -> Callable[..., None]:
    """``command(ctx, ..., job: JobFlags, ...)`` as a Typer command whose signature holds its own parameters with
    every field of :class:`JobFlags` as an option in the place of ``job`` (the help lists them in that order)."""
    hints = typing.get_type_hints(JobFlags, include_extras=True)
    shared = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=hints[f.name])
              for f in dataclasses.fields(JobFlags)]
    own = list(inspect.signature(command, eval_str=True).parameters.values())
    at = [p.name for p in own].index("job")
    clash = {p.name for p in own} & {p.name for p in shared}
    if clash:  # a programming error, caught by any test that builds the app
        raise TypeError(f"{command.__name__} declares job options itself: {sorted(clash)}")
    names = {p.name for p in shared}

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        job = JobFlags(**{k: kwargs.pop(k) for k in list(kwargs) if k in names})
        return command(*args, job=job, **kwargs)

    keyword = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own[at + 1:]]
    wrapper.__signature__ = inspect.Signature(own[:at] + shared + keyword)
    wrapper.__annotations__ = {}  # every parameter's type is in the signature
    del wrapper.__wrapped__  # inspect.signature must read __signature__, not the command's own
    return wrapper
