"""The options `generate` and `batch` share, declared once.

Both commands take the same job options (a batch's are each line's defaults). Typer reads a command's options from
its signature, so :func:`with_job_flags` adds the fields of :class:`JobFlags` to the signature of the command it
decorates, and after them the flags of the registered backends' own options (:func:`cosmos_cli.registry.
option_flags`: Predict1's ``--numerics``, ``--cp-scheme``, ``--attention``; the core names none), and hands the
command one ``JobFlags`` instead of thirty keyword arguments; :meth:`JobFlags.request` builds the
:class:`~cosmos_cli.generation.GenerateRequest` from them.

The backends' flags are read when Typer builds the command (when ``app()`` runs), not when this module is imported:
importing it loads no plugin.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated

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
    device: o.DeviceOpt = "auto"
    fast: o.FastOpt = None
    compile_blocks: o.CompileOpt = False
    resize: o.ResizeOpt = "stretch"
    batch_input_path: o.BatchInputOpt = None
    as_json: o.JsonOpt = False
    quiet: o.QuietOpt = False
    # the backends' own options the user gave (name -> value; not a flag itself: see with_job_flags)
    backend_options: Mapping[str, object] = dataclasses.field(default_factory=dict, metadata={"flag": False})

    def request(self, input_path: Path, name: str | None = None):
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
            backend_options=self.backend_options,
        )


def with_job_flags(command: Callable[..., None]) -> Callable[..., None]:
    """``command(..., job: JobFlags, ...)`` as a Typer command whose signature holds its own parameters with,
    in the place of ``job``, every field of :class:`JobFlags` as an option and then the backends' option flags (the
    help lists them in that order, each under its panel)."""
    own = list(inspect.signature(command, eval_str=True).parameters.values())
    clash = {p.name for p in own} & set(_job_parameters())
    if clash:  # a programming error, caught by any test that builds the app
        raise TypeError(f"{command.__name__} declares job options itself: {sorted(clash)}")
    return _JobCommand(command, own)


def _job_parameters() -> dict[str, inspect.Parameter]:
    hints = typing.get_type_hints(JobFlags, include_extras=True)
    return {f.name: inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                      annotation=hints[f.name])
            for f in dataclasses.fields(JobFlags) if f.metadata.get("flag", True)}


def _taken(parameters: list[inspect.Parameter]) -> frozenset[str]:
    """The names ``parameters`` use: theirs and their flags' (without the dashes)."""
    names = set()
    for p in parameters:
        names.add(p.name)
        for info in typing.get_args(p.annotation)[1:]:  # typer.Option(...): in Annotated its first name is `default`
            decls = (getattr(info, "default", None), *(getattr(info, "param_decls", None) or ()))
            names.update(d.removeprefix("--") for d in decls if isinstance(d, str) and d.startswith("--"))
    return frozenset(names)


def _backend_parameters(taken: frozenset[str]) -> dict[str, inspect.Parameter]:
    """A keyword parameter for each backend option flag: its value type or None (not given: the option is not
    passed, the backend's default applies), its help under its panel."""
    from cosmos_cli.registry import option_flags

    params = {}
    for bf in option_flags(taken):
        info = typer.Option(f"--{bf.name.replace('_', '-')}", help=bf.flag.help, metavar=bf.flag.metavar,
                            rich_help_panel=bf.flag.panel, show_default=False)
        params[bf.name] = inspect.Parameter(bf.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                            annotation=Annotated[bf.type | None, info])
    return params


class _JobCommand:
    """The command :func:`with_job_flags` makes: Typer reads ``__signature__`` when it builds the command, so the
    backends' flags are those registered then; a call splits the keyword arguments into the command's own, one
    :class:`JobFlags` and, in it, the backend options given."""

    def __init__(self, command: Callable[..., None], own: list[inspect.Parameter]) -> None:
        functools.update_wrapper(self, command)
        del self.__wrapped__  # inspect.signature must read __signature__, not the command's own
        self.__annotations__ = {}  # every parameter's type is in the signature (typing.get_type_hints reads this)
        self._command, self._own = command, own

    @property
    def __signature__(self) -> inspect.Signature:
        at = [p.name for p in self._own].index("job")
        before = self._own[:at]
        after = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in self._own[at + 1:]]
        shared = list(_job_parameters().values())
        backend = _backend_parameters(_taken(before + shared + after))
        return inspect.Signature(before + shared + list(backend.values()) + after)

    def __call__(self, *args, **kwargs):
        names = set(_job_parameters())
        job = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
        own = {p.name for p in self._own}
        given = {k: kwargs.pop(k) for k in list(kwargs) if k not in own}  # the backend flags
        job["backend_options"] = {k: v for k, v in given.items() if v is not None}
        return self._command(*args, job=JobFlags(**job), **kwargs)
