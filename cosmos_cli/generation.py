"""Single generation: check everything that can be checked, plan memory, load, generate, write.

Everything about the request is validated before any model loads (input file, frame count, prompt,
output path, memory plan), so a mistake costs seconds, not a model load.

Several GPUs on one generation: ``torchrun --nproc_per_node=N --no-python cosmos generate ... --num-gpus N``
starts N processes that run this same code. After the request is validated, :func:`start_parallel` has the
backend check that N can split the work and join the run; the memory plan uses the smallest free memory of any
GPU, so every rank makes the same plan; the backend loads on each rank what that rank needs and splits the
generation; rank 0 alone writes the files and prints (the others use a :class:`~cosmos_cli.progress.QuietProgress`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cosmos_cli.errors import (
    GenerationError,
    InputError,
    MemoryPlanError,
    OutputExistsError,
    UsageError,
)
from cosmos_cli.fastmode import FastMode, check_fast
from cosmos_cli.jobs import GenerationJob, GenerationResult
from cosmos_cli.launch import launch_env
from cosmos_cli.limits import check_generation_values
from cosmos_cli.planner import (
    MemoryPlan,
    check_strategy,
    plan_memory,
    strategies_for,
    strategy_for_original_flags,
)
from cosmos_cli.progress import NullProgress, Progress
from cosmos_cli.registry import default_model_name, find_model, find_model_for_folder
from cosmos_cli.specs import GUARDRAIL, UPSAMPLER, ModelSpec

if TYPE_CHECKING:
    from cosmos_cli.backend import Backend, ParallelRun, Pipeline

NAME_RE = re.compile(r"^(?!\.{1,2}$)[A-Za-z0-9._-]{1,200}$")
RESIZE_MODES = ("stretch", "crop", "pad")


class OptionValues(Mapping[str, Any]):
    """A read-only ``name -> value`` mapping (hashable and picklable, as a frozen request's field must be)."""

    def __init__(self, values: Mapping[str, Any] | None = None):
        self._values = dict(values or {})

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __hash__(self) -> int:
        return hash(frozenset(self._values.items()))

    def __repr__(self) -> str:
        return f"OptionValues({self._values!r})"


@dataclass(frozen=True)
class GenerateRequest:
    input_path: Path
    prompt: str | None
    model: str | None = None
    checkpoint_dir: Path = Path("checkpoints")
    network_dir: str | None = None
    negative_prompt: str | None = None  # None: the model's (ModelSpec.default_negative_prompt)
    num_input_frames: int | None = None
    seed: int = 1
    num_steps: int | None = None
    guidance: float | None = None
    fps: int | None = None
    output_dir: Path = Path("outputs")
    name: str | None = None
    overwrite: bool = False
    disable_prompt_upsampler: bool = False
    disable_guardrail: bool = False
    upsampler_ignores_prompt: bool = False
    offload: str = "auto"
    original_offload_flags: frozenset[str] = field(default_factory=frozenset)
    num_gpus: int = 1
    device: str = "auto"
    resize: str = "stretch"
    fast: FastMode = field(default_factory=FastMode)  # opt-in speed options that change the video
    compile: bool = False  # torch.compile of the network's blocks (exact mode)
    # the options of the model's backend's own that the command line gave (name -> value, e.g. {"numerics":
    # "original"}); the backend types and checks them (Backend.parse_options), the core never reads them
    backend_options: Mapping[str, Any] = field(default_factory=OptionValues)

    def __post_init__(self) -> None:
        if not isinstance(self.backend_options, OptionValues):
            object.__setattr__(self, "backend_options", OptionValues(self.backend_options))


def resolve_model(model: str | None, network_dir: str | None) -> ModelSpec:
    """--model wins; else the original's --diffusion_transformer_dir names the model; else the default."""
    if model:
        return find_model(model)[1]
    if network_dir:
        return find_model_for_folder(Path(network_dir).name)[1]
    return find_model(default_model_name())[1]


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA GPU is available", hint="Use --device cpu (tiny models only).")
    if device != "cpu" and not device.startswith("cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda[:N], got {device!r}")
    return device


def check_cpu_time(spec: ModelSpec, req: GenerateRequest, progress: Progress) -> None:
    """A model too slow for a CPU (a 7B/14B) runs there only with ``--device cpu`` given: without a GPU, ``auto``
    refuses it with the estimated time; an explicit ``--device cpu`` warns with it."""
    from cosmos_cli.gpu import CPU_AUTO_LIMIT_S, CPU_FLOPS_PER_S, cpu_seconds, format_duration

    steps = spec.num_steps if req.num_steps is None else req.num_steps
    seconds = cpu_seconds(spec.step_flops, steps)
    if seconds <= CPU_AUTO_LIMIT_S or req.device not in ("auto", "cpu") or pick_device(req.device) != "cpu":
        return
    estimate = (f"{spec.name} on the CPU would take at least {format_duration(seconds)} ({steps} steps of "
                f"{spec.step_flops / 1e15:.1f} PFLOP at {CPU_FLOPS_PER_S / 1e12:g} TFLOP/s)")
    if req.device == "auto":
        raise UsageError(f"no CUDA GPU found: {estimate}",
                         hint="Run it on a machine with a GPU, pass --device cpu to run it here anyway, or try "
                              "--model demo (it runs on a CPU in seconds).")
    progress.warning(f"warning: {estimate}")


def output_paths(output_dir: Path, name: str | None, overwrite: bool) -> tuple[Path, Path]:
    """The .mp4/.txt pair to write, checked before anything loads. An explicit name never overwrites a finished
    video or prompt file unless asked; without a name the first free ``output``, ``output_1``, ... (the name is
    reserved later, atomically, by :func:`cosmos_cli.outputs.reserve_name`, so two runs never pick the same)."""
    from cosmos_cli.outputs import check_folder

    if name is not None and not NAME_RE.match(name):
        raise UsageError(f"--video-save-name {name!r}: use letters, digits, '.', '_' and '-' only (no folders)",
                         hint="Put the folder in --video-save-folder.")
    check_folder(output_dir, "--video-save-folder")
    if name is None:
        stem, i = "output", 0
        while (output_dir / f"{stem}.mp4").exists() or (output_dir / f"{stem}.txt").exists():
            i += 1
            stem = f"output_{i}"
        name = stem
    video, prompt = output_dir / f"{name}.mp4", output_dir / f"{name}.txt"
    if not overwrite:
        for path in (video, prompt):
            if path.exists():
                raise OutputExistsError(f"{path} already exists")
    return video, prompt


def make_job(req: GenerateRequest, spec: ModelSpec, name: str) -> GenerationJob:
    from cosmos_cli.media import probe

    n_frames = req.num_input_frames or spec.default_input_frames
    if n_frames not in spec.input_frames:
        raise UsageError(f"--num-input-frames {n_frames}: {spec.name} accepts "
                         f"{' or '.join(map(str, spec.input_frames))} input frames")
    info = probe(req.input_path)  # InputError names the file
    if info.num_frames < n_frames:
        have = "an image has 1 frame" if info.kind == "image" else f"the video has {info.num_frames} frames"
        raise InputError(f"{req.input_path}: --num-input-frames {n_frames} needs {n_frames} frames but {have}",
                         hint="Use --num-input-frames 1, or a longer video.")
    if req.resize not in RESIZE_MODES:
        raise UsageError(f"--resize must be one of {', '.join(RESIZE_MODES)}, got {req.resize!r}")
    prompt = req.prompt.strip() if req.prompt else None
    if not prompt and (req.disable_prompt_upsampler or spec.component(UPSAMPLER) is None):
        why = "with --disable-prompt-upsampler" if req.disable_prompt_upsampler else f"({spec.name} has no upsampler)"
        raise UsageError(f"a prompt is required {why}: pass --prompt \"...\"")
    return GenerationJob(
        visual_input=Path(req.input_path).resolve(),
        prompt=prompt,
        negative_prompt=spec.default_negative_prompt if req.negative_prompt is None else req.negative_prompt,
        seed=req.seed,
        num_input_frames=n_frames,
        guidance=spec.guidance if req.guidance is None else req.guidance,
        num_steps=spec.num_steps if req.num_steps is None else req.num_steps,
        fps=spec.fps if req.fps is None else req.fps,
        name=name,
        resize=req.resize,
        upsampler_ignores_prompt=req.upsampler_ignores_prompt,
    )


def warn_off_distribution(spec: ModelSpec, req: GenerateRequest, progress: Progress) -> None:
    """A warning line when the input is far from the size and aspect the model generates (see
    :meth:`ModelSpec.input_warning`)."""
    from cosmos_cli.media import probe

    info = probe(req.input_path)
    text = spec.input_warning(info.width, info.height, req.resize)
    if text:
        progress.warning(f"warning: {req.input_path}: {text}")


def plan_request(spec: ModelSpec, req: GenerateRequest, free_bytes: int | None,
                 ram_bytes: int | None = None) -> MemoryPlan:
    """The memory plan for ``req`` with ``free_bytes`` of GPU memory free and ``ram_bytes`` of host memory available
    (None: unknown), without raising when nothing fits: what `generate` runs with (:func:`plan_for`) and what
    `cosmos memory-plan` shows."""
    strategy, asked_by = asked_strategy(req, spec)
    upsampler, guardrail = not req.disable_prompt_upsampler, not req.disable_guardrail
    reserved = find_model(spec.name)[0].fast_mode_bytes(spec, req.fast) if not req.fast.exact else 0
    plan = plan_memory(spec, None if free_bytes is None else max(free_bytes - reserved, 0), strategy=strategy,
                       upsampler=upsampler, guardrail=guardrail, num_gpus=req.num_gpus, asked_by=asked_by,
                       ram_bytes=ram_bytes)
    if reserved:
        plan = replace(plan, reason=f"{plan.reason}; {reserved / 2**30:.1f} GiB set aside for --fast "
                                    f"{req.fast.describe()}")
    return plan


def asked_strategy(req: GenerateRequest, spec: ModelSpec) -> tuple[str, str | None]:
    """The strategy ``--offload`` and the original's five flags ask for, and which flags asked (for messages); one
    ``spec``'s backend does not implement is refused in one line naming the ones it does."""
    strategy = req.offload
    from_flags = strategy_for_original_flags(set(req.original_offload_flags), spec)
    asked_by = None
    if from_flags is not None:
        given = ", ".join("--" + f for f in sorted(req.original_offload_flags))
        if strategy not in ("auto", from_flags):
            raise UsageError(f"--offload {strategy} contradicts the original flags {given} (= {from_flags})")
        strategy, asked_by = from_flags, f"what {given} mean{'s' if len(req.original_offload_flags) == 1 else ''}"
    check_strategy(spec, strategy)
    return strategy, asked_by


def plan_for(spec: ModelSpec, req: GenerateRequest, device: str, run: ParallelRun | None = None) -> MemoryPlan:
    """The memory plan `generate` uses: :func:`plan_request` with the free memory of ``device`` (the same reading
    `cosmos memory-plan` shows, :func:`cosmos_cli.gpu.free_bytes`). With ``run`` (several processes), planned for
    the GPU with the least free memory, so that every rank makes the same plan."""
    if device == "cpu":
        strategy, asked_by = asked_strategy(req, spec)
        plan = plan_memory(spec, None, strategy=strategies_for(spec)[0].name, upsampler=not req.disable_prompt_upsampler,
                           guardrail=not req.disable_guardrail)
        why = (f"; {asked_by.removeprefix('what ')} {strategy}, a placement in GPU memory, not used on the CPU"
               if asked_by else (f"; --offload {strategy} places models in GPU memory, not used on the CPU"
                                 if strategy != "auto" else ""))
        return replace(plan, reason=f"on the CPU every model stays in host memory, about "
                                    f"{plan.predicted_peak_bytes / 2**30:.1f} GiB at the peak{why}")
    from cosmos_cli.gpu import free_bytes
    from cosmos_cli.hostmem import available_host_bytes

    free, ram = free_bytes(device), available_host_bytes()
    if run is not None:  # every rank makes the same plan
        free = run.agree_min(free)
        ram = run.agree_min(-1 if ram is None else ram)  # one collective on every rank, unknown anywhere: unknown
        ram = None if ram < 0 else ram
    plan = plan_request(spec, req, free, ram)
    if not plan.fits:
        raise MemoryPlanError(plan.reason, hint=plan.hint or "See `cosmos memory-plan`; free GPU memory or use more "
                                                             "GPUs.")
    return plan


def backend_options(backend: Backend, req: GenerateRequest) -> Backend.Options:
    """``req``'s values of ``backend``'s own options, typed by the backend (:meth:`Backend.parse_options`; an
    option it lacks or a bad value is a one-line :class:`UsageError`, raised first by :func:`checked_model`)."""
    return backend.parse_options(req.backend_options)


def checked_model(req: GenerateRequest, progress: Progress) -> tuple[Backend, ModelSpec]:
    """The backend and spec ``req`` names, after the checks and warnings every run makes before anything else
    (shared by `generate` and `batch`)."""
    check_generation_values(req)  # --seed, --num-steps, --guidance, --fps within the batch schema's bounds
    spec = resolve_model(req.model, req.network_dir)
    backend = find_model(spec.name)[0]
    backend_options(backend, req)  # the backend's own options, refused before anything else when it lacks one
    if req.disable_guardrail:
        if spec.guardrail_disabled_warning:  # the backend's licence terms (ModelSpec.guardrail_disabled_warning)
            progress.warning(f"warning: {spec.guardrail_disabled_warning}")
    elif spec.component(GUARDRAIL) is None:
        progress.warning(f"note: {spec.name} has no guardrail models; the video is not safety-checked")
    if not req.disable_prompt_upsampler and spec.component(UPSAMPLER) is None:
        progress.warning(f"note: {spec.name} has no prompt upsampler; your prompt is used as given")
    if not req.fast.exact:
        if not backend.supports_fast:
            raise UsageError(f"--fast: the {backend.id} backend of {spec.name} has no fast mode",
                             hint="Drop --fast (exact mode).")
        check_fast(req.fast, pick_device(req.device), req.num_gpus)
    check_cpu_time(spec, req, progress)
    if req.compile and not backend.supports_compile:
        raise UsageError(f"--compile: the {backend.id} backend of {spec.name} does not compile its network",
                         hint="Drop --compile.")
    return backend, spec


def start_parallel(backend: Backend, spec: ModelSpec, req: GenerateRequest, command: str) -> ParallelRun | None:
    """Join the torchrun run that splits each generation over ``req.num_gpus`` GPUs (None: one process).

    Every rank calls it alike, after validating the request and before loading anything; the backend refuses a GPU
    count that cannot split the work (naming the ones that can), a launch that does not match (giving the torchrun
    command), a missing NCCL."""
    if req.num_gpus == 1 and (command != "generate" or not launch_env().is_parallel):
        return None  # (a batch under torchrun with --num-gpus 1 shares its lines out instead, see cosmos_cli.batch)
    if req.num_gpus > 1 and req.device not in ("auto", "cuda", "cpu"):
        raise UsageError(f"--num-gpus {req.num_gpus} puts each process on its own GPU (cuda:LOCAL_RANK); "
                         f"--device {req.device} names one",
                         hint="Drop --device (or use --device cuda), and choose the GPUs with CUDA_VISIBLE_DEVICES.")
    return backend.start_parallel(spec, req.num_gpus, device=req.device, command=command,
                                  options=backend_options(backend, req))


def load_pipeline(backend: Backend, spec: ModelSpec, req: GenerateRequest, device: str, progress: Progress,
                  run: ParallelRun | None = None) -> Pipeline:
    """Plan memory on ``device`` and load ``spec``'s models as the plan says (shared by `generate` and `batch`);
    with ``run``, the pipeline splits each generation over its ranks."""
    plan = plan_for(spec, req, device, run)
    where = device if run is None else f"{run.world_size} x {device.split(':')[0]}"
    progress.message(f"{spec.name} on {where}: memory strategy {plan.strategy} ({plan.reason})")
    for note in plan.notes:
        progress.message(f"note: {note}")
    return backend.build_pipeline(spec, plan, checkpoint_dir=Path(req.checkpoint_dir), device=device,
                                  progress=progress, options=backend_options(backend, req), parallel=run,
                                  network_dir=req.network_dir, fast=req.fast, compile=req.compile)


def generate(req: GenerateRequest, progress: Progress | None = None) -> GenerationResult:
    """One video. Under torchrun with ``--num-gpus N`` every rank calls this alike; the result's paths are set
    on rank 0 only (the only one that writes). Ctrl-C and SIGTERM raise :class:`Interrupted` (exit 130 / 143)
    after the clean-up: no partial file, and no output folder this run created and left empty."""
    from cosmos_cli.signals import Interrupted, exit_code_for, signal_name, sigterm_as_interrupt

    progress = progress or NullProgress()
    try:
        with sigterm_as_interrupt():
            return _checked_generate(req, progress)
    except KeyboardInterrupt as exc:
        raise Interrupted(f"interrupted ({signal_name(exc)}); nothing was written",
                          exit_code=exit_code_for(exc)) from None


def _checked_generate(req: GenerateRequest, progress: Progress) -> GenerationResult:
    from cosmos_cli.outputs import released, reserve_name, reserved_stem

    backend, spec = checked_model(req, progress)
    video_path, prompt_path = output_paths(Path(req.output_dir), req.name, req.overwrite)
    job = make_job(req, spec, video_path.stem)
    warn_off_distribution(spec, req, progress)
    run = start_parallel(backend, spec, req, "generate")
    ok = False
    try:
        reservation = None
        if run is None or run.rank == 0:  # the name is held until the files are in place (rank 0 writes them)
            reservation = reserve_name(Path(req.output_dir), req.name, req.overwrite)
            stem = reserved_stem(reservation)
            video_path, prompt_path = Path(req.output_dir) / f"{stem}.mp4", Path(req.output_dir) / f"{stem}.txt"
            job = replace(job, name=stem)
        with released(reservation, keep_folders=False):
            device = str(run.device) if run is not None else pick_device(req.device)
            result = _generate(backend, spec, req, job, device, progress, video_path, prompt_path, run)
            ok = True
            return result
    finally:
        if run is not None:
            run.close(ok=ok)


def _generate(backend: Backend, spec: ModelSpec, req: GenerateRequest, job: GenerationJob, device: str,
              progress: Progress, video_path: Path, prompt_path: Path, run: ParallelRun | None) -> GenerationResult:
    # the job runner batch uses too: a CUDA out-of-memory under auto is retried once leaner, a block raises
    import torch

    from cosmos_cli.runner import JobRunner, out_of_memory_error

    with JobRunner(backend, spec, req, device, progress, run) as runner:
        try:
            return runner.run(job, progress, video_path=video_path, prompt_path=prompt_path).result
        except torch.cuda.OutOfMemoryError as exc:  # not retried (or the retry ran out too): name the strategy
            raise out_of_memory_error(runner, exc) from None
        except MemoryError as exc:
            raise GenerationError(f"out of host memory: {exc}") from exc
