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

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from cosmos_cli.errors import (
    GenerationError,
    GuardrailBlocked,
    InputError,
    MemoryPlanError,
    OutputExistsError,
    RankError,
    UsageError,
)
from cosmos_cli.fastmode import FastMode, check_fast
from cosmos_cli.jobs import DEFAULT_NEGATIVE_PROMPT, GenerationJob, GenerationResult
from cosmos_cli.limits import check_generation_values
from cosmos_cli.planner import STRATEGY_NAMES, MemoryPlan, plan_memory, strategy_for_original_flags
from cosmos_cli.progress import NullProgress, Progress
from cosmos_cli.registry import default_model_name, find_model
from cosmos_cli.specs import GUARDRAIL, UPSAMPLER, ModelSpec

if TYPE_CHECKING:
    from cosmos_cli.backend import Backend, ParallelRun, Pipeline

GUARDRAIL_LICENSE_WARNING = (
    "warning: the safety guardrails are disabled. The NVIDIA Open Model License ties your rights to use the model "
    "to keeping its guardrails; you are responsible for what you generate."
)
NAME_RE = re.compile(r"^(?!\.{1,2}$)[A-Za-z0-9._-]{1,200}$")
RESIZE_MODES = ("stretch", "crop", "pad")


@dataclass(frozen=True)
class GenerateRequest:
    input_path: Path
    prompt: str | None
    model: str | None = None
    checkpoint_dir: Path = Path("checkpoints")
    network_dir: str | None = None
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
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
    numerics: str = "fp32"
    resize: str = "stretch"
    cp_scheme: str = "auto"
    fast: FastMode = field(default_factory=FastMode)  # opt-in speed options that change the video
    compile: bool = False  # torch.compile of the network's blocks (exact mode)


def resolve_model(model: str | None, network_dir: str | None) -> ModelSpec:
    """--model wins; else the original's --diffusion_transformer_dir names the model; else the default."""
    if model:
        return find_model(model)[1]
    if network_dir:
        name = Path(network_dir).name
        for suffix in ("_post-trained", "-post-trained"):
            name = name.removesuffix(suffix)
        return find_model(name)[1]
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


def output_paths(output_dir: Path, name: str | None, overwrite: bool) -> tuple[Path, Path]:
    """The .mp4/.txt pair to write. An explicit name never overwrites a finished video unless asked; without a
    name the first free ``output``, ``output_1``, ... is used, so a second run never loses the first."""
    if name is not None and not NAME_RE.match(name):
        raise UsageError(f"--video-save-name {name!r}: use letters, digits, '.', '_' and '-' only (no folders)",
                         hint="Put the folder in --video-save-folder.")
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"--video-save-folder {output_dir} is a file, not a folder")
    if name is None:
        stem, i = "output", 0
        while (output_dir / f"{stem}.mp4").exists():
            i += 1
            stem = f"output_{i}"
        name = stem
    video = output_dir / f"{name}.mp4"
    if video.exists() and not overwrite:
        raise OutputExistsError(f"{video} already exists")
    return video, output_dir / f"{name}.txt"


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
        negative_prompt=req.negative_prompt,
        seed=req.seed,
        num_input_frames=n_frames,
        guidance=spec.guidance if req.guidance is None else req.guidance,
        num_steps=spec.num_steps if req.num_steps is None else req.num_steps,
        fps=spec.fps if req.fps is None else req.fps,
        name=name,
        resize=req.resize,
        upsampler_ignores_prompt=req.upsampler_ignores_prompt,
    )


def plan_for(spec: ModelSpec, req: GenerateRequest, device: str, run: ParallelRun | None = None) -> MemoryPlan:
    """The memory plan `generate` uses: the same function `cosmos memory-plan` shows. With ``run`` (several
    processes), planned for the GPU with the least free memory, so that every rank makes the same plan."""
    strategy = req.offload
    from_flags = strategy_for_original_flags(set(req.original_offload_flags))
    if from_flags is not None:
        if strategy not in ("auto", from_flags):
            raise UsageError(f"--offload {strategy} contradicts the original flags "
                             f"{', '.join('--' + f for f in sorted(req.original_offload_flags))} (= {from_flags})")
        strategy = from_flags
    upsampler, guardrail = not req.disable_prompt_upsampler, not req.disable_guardrail
    if strategy != "auto" and strategy not in STRATEGY_NAMES:
        raise MemoryPlanError(f"unknown memory strategy {strategy!r}",
                              hint=f"Use auto or one of: {', '.join(STRATEGY_NAMES)}.")
    if device == "cpu":
        return plan_memory(spec, None, strategy="resident", upsampler=upsampler, guardrail=guardrail)
    import torch

    free, _ = torch.cuda.mem_get_info(torch.device(device))
    if run is not None:
        free = run.agree_min(free)
    reserved = find_model(spec.name)[0].fast_mode_bytes(spec, req.fast) if not req.fast.exact else 0
    plan = plan_memory(spec, max(free - reserved, 0), strategy=strategy, upsampler=upsampler, guardrail=guardrail,
                       num_gpus=req.num_gpus)
    if reserved:
        plan = replace(plan, reason=f"{plan.reason}; {reserved / 2**30:.1f} GiB set aside for --fast "
                                    f"{req.fast.describe()}")
    if not plan.fits:
        raise MemoryPlanError(plan.reason, hint="See `cosmos memory-plan`; free GPU memory or use more GPUs.")
    return plan


def checked_model(req: GenerateRequest, progress: Progress) -> tuple[Backend, ModelSpec]:
    """The backend and spec ``req`` names, after the checks and warnings every run makes before anything else
    (shared by `generate` and `batch`)."""
    check_generation_values(req)  # --seed, --num-steps, --guidance, --fps within the batch schema's bounds
    spec = resolve_model(req.model, req.network_dir)
    backend = find_model(spec.name)[0]
    if req.disable_guardrail:
        progress.warning(GUARDRAIL_LICENSE_WARNING)
    elif spec.component(GUARDRAIL) is None:
        progress.warning(f"note: {spec.name} has no guardrail models; the video is not safety-checked")
    if not req.disable_prompt_upsampler and spec.component(UPSAMPLER) is None:
        progress.warning(f"note: {spec.name} has no prompt upsampler; your prompt is used as given")
    if not req.fast.exact:
        if not backend.supports_fast:
            raise UsageError(f"--fast: the {backend.id} backend of {spec.name} has no fast mode",
                             hint="Drop --fast (exact mode).")
        check_fast(req.fast, pick_device(req.device), req.num_gpus)
    if req.compile and not backend.supports_compile:
        raise UsageError(f"--compile: the {backend.id} backend of {spec.name} does not compile its network",
                         hint="Drop --compile.")
    return backend, spec


def launched_world_size() -> int:
    """The number of processes torchrun started (``WORLD_SIZE``), 1 without torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_primary() -> bool:
    """False in the torchrun processes other than rank 0, which leave printing and writing to rank 0."""
    return launched_world_size() <= 1 or int(os.environ.get("RANK", "0") or 0) == 0


def start_parallel(backend: Backend, spec: ModelSpec, req: GenerateRequest, command: str) -> ParallelRun | None:
    """Join the torchrun run that splits each generation over ``req.num_gpus`` GPUs (None: one process).

    Every rank calls it alike, after validating the request and before loading anything; the backend refuses a GPU
    count that cannot split the work (naming the ones that can), a launch that does not match (giving the torchrun
    command), a missing NCCL."""
    if req.num_gpus == 1 and (command != "generate" or launched_world_size() == 1):
        return None  # (a batch under torchrun with --num-gpus 1 shares its lines out instead, see cosmos_cli.batch)
    if req.num_gpus > 1 and req.device not in ("auto", "cuda", "cpu"):
        raise UsageError(f"--num-gpus {req.num_gpus} puts each process on its own GPU (cuda:LOCAL_RANK); "
                         f"--device {req.device} names one",
                         hint="Drop --device (or use --device cuda), and choose the GPUs with CUDA_VISIBLE_DEVICES.")
    return backend.start_parallel(spec, req.num_gpus, device=req.device, command=command,
                                  options={"cp_scheme": req.cp_scheme})


def load_pipeline(backend: Backend, spec: ModelSpec, req: GenerateRequest, device: str, progress: Progress,
                  run: ParallelRun | None = None) -> Pipeline:
    """Plan memory on ``device`` and load ``spec``'s models as the plan says (shared by `generate` and `batch`);
    with ``run``, the pipeline splits each generation over its ranks."""
    plan = plan_for(spec, req, device, run)
    where = device if run is None else f"{run.world_size} x {device.split(':')[0]}"
    progress.message(f"{spec.name} on {where}: memory strategy {plan.strategy} ({plan.reason})")
    options = {"numerics": req.numerics, "network_dir": req.network_dir, "fast": req.fast, "compile": req.compile}
    if run is not None:
        options.update(parallel=run, cp_scheme=req.cp_scheme)
    return backend.build_pipeline(spec, plan, checkpoint_dir=Path(req.checkpoint_dir), device=device,
                                  progress=progress, options=options)


def generate(req: GenerateRequest, progress: Progress | None = None) -> GenerationResult:
    """One video. Under torchrun with ``--num-gpus N`` every rank calls this alike; the result's paths are set
    on rank 0 only (the only one that writes)."""
    progress = progress or NullProgress()
    backend, spec = checked_model(req, progress)
    video_path, prompt_path = output_paths(Path(req.output_dir), req.name, req.overwrite)
    job = make_job(req, spec, video_path.stem)
    run = start_parallel(backend, spec, req, "generate")
    ok = False
    try:
        device = str(run.device) if run is not None else pick_device(req.device)
        result = _generate(backend, spec, req, job, device, progress, video_path, prompt_path, run)
        ok = True
        return result
    finally:
        if run is not None:
            run.close(ok=ok)


def _generate(backend: Backend, spec: ModelSpec, req: GenerateRequest, job: GenerationJob, device: str,
              progress: Progress, video_path: Path, prompt_path: Path, run: ParallelRun | None) -> GenerationResult:
    pipeline = load_pipeline(backend, spec, req, device, progress, run)
    try:
        if run is None or run.rank == 0:
            video_path.parent.mkdir(parents=True, exist_ok=True)
        # CUDA out of memory (the files are written only at the end, atomically, so none is half-written): under
        # auto, retry once with the next leaner strategy; otherwise name the strategy to use.
        import torch

        from cosmos_cli.planner import leaner_strategy

        for attempt in (1, 2):
            oom = None
            try:
                result = pipeline.generate(job, progress, video_path=video_path, prompt_path=prompt_path)
            except torch.cuda.OutOfMemoryError as exc:
                oom = str(exc).strip().splitlines()[0] if str(exc).strip() else "CUDA out of memory"
            if oom is None:
                break  # leaving the except clause above dropped the failed attempt's tensors
            strategy = getattr(getattr(pipeline, "plan", None), "strategy", req.offload)
            leaner = leaner_strategy(strategy) if strategy in STRATEGY_NAMES else None
            if run is not None:  # the other ranks cannot retry with this one: stop, naming the next strategy
                raise RankError(f"rank {run.rank}: CUDA out of memory under memory strategy {strategy} ({oom})",
                                hint=f"Use --offload {leaner}." if leaner else
                                "Free GPU memory (other processes?) and see `cosmos memory-plan`.")
            if leaner is None:
                raise GenerationError(f"CUDA out of memory even under the leanest strategy, {strategy} ({oom})",
                                      hint="Free GPU memory (other processes?) and see `cosmos memory-plan`.")
            if req.offload != "auto" or req.original_offload_flags or attempt == 2:
                raise GenerationError(f"CUDA out of memory under memory strategy {strategy}: "
                                      f"use --offload {leaner} (or --offload auto)")
            progress.warning(f"CUDA out of memory under memory strategy {strategy}; retrying once with the next "
                             f"leaner one, {leaner}")
            pipeline.close()
            pipeline = load_pipeline(backend, spec, replace(req, offload=leaner), device, progress)
        if result.status == "blocked":
            raise GuardrailBlocked(f"blocked by the guardrail ({result.message}); nothing was written")
        return result
    except MemoryError as exc:
        raise GenerationError(f"out of host memory: {exc}") from exc
    finally:
        pipeline.close()
