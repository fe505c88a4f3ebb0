"""The Video2World generation pipeline of the predict1 backend.

Loads the network, tokenizer and text encoder once from a checkpoint folder in the original layout, places
them as the memory plan says (:mod:`.offload`: resident, parked in pinned host memory between their stages,
computed on the CPU, or the network's blocks streamed), and generates one job at a time:

    input frames -> tokenizer encode -> T5 encode -> sampler (network, both guidance branches) -> decode -> mp4

Loaded with ``parallel`` (a :class:`~.parallel.DistContext`: torchrun, ``--num-gpus N``), every rank holds the
network and rank 0 the other models too; each ``generate`` is then split over the ranks (rank 0 prepares and
finishes, every rank denoises with the same code, each forward sharded as the layout says), and only rank 0
writes.
"""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cosmos_cli.errors import CheckpointError, GenerationError, UsageError
from cosmos_cli.fastmode import FastMode
from cosmos_cli.jobs import GenerationJob, GenerationResult
from cosmos_cli.planner import MemoryPlan
from cosmos_cli.progress import NullProgress, Progress
from cosmos_cli.specs import GUARDRAIL, NETWORK, TEXT_ENCODER, TOKENIZER, UPSAMPLER, ModelSpec
from cosmos_cli.writes import WriteSlot

from . import sampler as S
from .fast import StepCache, compile_blocks, to_fp8
from .flash4 import FLASH4_DIST, self_attention_kernel, unusable_reason
from .offload import network_forward, place
from .params import TOKENIZER_CHUNK_FRAMES, condition_pixel_frames, latent_condition_frames
from .strategies import LEAN, lean_network, tiled_tokenizer

SIGMA_DATA = S.SIGMA_DATA
NUMERICS = S.NUMERICS  # "fp32" (default) or "original"


@dataclass(frozen=True)
class CheckpointPaths:
    network: Path
    tokenizer: Path
    text_encoder: Path
    upsampler: Path | None = None
    guardrail_root: Path | None = None


def checkpoint_paths(spec: ModelSpec, checkpoint_dir: Path, network_dir: str | None = None) -> CheckpointPaths:
    """Where each component's files are, in the original layout; a clear error lists every missing file."""
    root = Path(checkpoint_dir)
    missing = []
    for f in spec.files:
        if f.component in (NETWORK, TOKENIZER, TEXT_ENCODER) and not (root / f.local).exists():
            if f.component == NETWORK and network_dir is not None:
                continue
            missing.append(f.local)
    net_file = root / spec.files_of(NETWORK)[0].local
    if network_dir is not None:
        net_file = root / network_dir / net_file.name
        if not net_file.exists():
            missing.insert(0, str(Path(network_dir) / net_file.name))
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise CheckpointError(f"{root}: missing checkpoint files for {spec.name}: {shown}",
                              hint=f"Run `cosmos download --model {spec.aliases[0] if spec.aliases else spec.name} "
                                   f"--checkpoint-dir {root}` or point --checkpoint-dir at your checkpoints folder.")
    ups = spec.files_of(UPSAMPLER)
    return CheckpointPaths(
        network=net_file,
        tokenizer=(root / spec.files_of(TOKENIZER)[0].local).parent,
        text_encoder=(root / spec.files_of(TEXT_ENCODER)[0].local).parent,
        upsampler=(root / ups[0].local).parent if ups else None,
        guardrail_root=root,
    )


def check_optional_files(spec: ModelSpec, paths: CheckpointPaths, *, upsampler: bool, guardrail: bool) -> None:
    """Before anything loads: every file the prompt upsampler and the guardrails need (those the plan includes), so
    that a missing one costs seconds, not the minutes of loading T5, the tokenizer and a 7B network first. One
    CheckpointError lists them all."""
    missing: list[str] = []
    root = paths.guardrail_root or paths.network.parent.parent
    if upsampler:
        from .upsampler import ORIGINAL_WEIGHTS, find_processor_folder

        folder = paths.upsampler
        if folder is None:
            raise CheckpointError(f"{spec.name} has no prompt upsampler", hint="Pass --disable-prompt-upsampler.")
        if not (folder / ORIGINAL_WEIGHTS).is_file() and not (folder / "config.json").is_file():
            missing.append(f"the prompt upsampler's weights ({folder / ORIGINAL_WEIGHTS})")
        elif not (folder / "config.json").is_file():
            missing.append(f"the prompt upsampler's {folder / 'config.json'}")
        try:
            find_processor_folder(folder)  # (it also looks in <checkpoints>/mistral-community/pixtral-12b)
        except CheckpointError as exc:
            missing.append(exc.message)
    if guardrail:
        from .guardrails import find_guardrail_dir, guardrail_problems

        try:
            missing += guardrail_problems(find_guardrail_dir(root, paths.network.parent.name))
        except CheckpointError as exc:
            missing.append(exc.message)
    if missing:
        raise CheckpointError(f"{root}: files missing for {spec.name}: " + "; ".join(missing),
                              hint=f"Run `cosmos download --model {spec.aliases[0] if spec.aliases else spec.name} "
                                   f"--checkpoint-dir {root}`, or pass --disable-prompt-upsampler / "
                                   f"--disable-guardrail to run without those models.")


def _t5_blocks(text_encoder) -> dict:
    """The T5 encoder's layers, for streaming (a ``T5TextEncoder`` wrapping a :class:`.t5.T5Encoder`)."""
    model = getattr(text_encoder, "model", None)
    layers = getattr(getattr(model, "encoder", None), "block", None)
    return {"blocks": list(layers), "module": model} if layers is not None else {}


def text_encoder_dtype(spec: ModelSpec, device: torch.device, numerics: str) -> torch.dtype:
    """The T5 encoder's weights dtype, the one the memory plan counts (the spec's text-encoder component).

    fp32 under both numerics, as the original keeps it (reference spec section 7: ``T5EncoderModel.from_pretrained``
    with no ``torch_dtype``): bf16 weights move the embedding by 1.1e-2 relative on a T5-11B-shaped encoder, 6.6x
    the bf16 rounding the network's copy of it gets anyway, for 9.1 GiB less while T5 is on the GPU and 0.09 s
    less per prompt (``benchmarks/results/t5-numerics-h200.json``). ``original`` is fp32 whatever the spec says; on
    a CPU everything runs in fp32."""
    component = spec.component(TEXT_ENCODER)
    if device.type != "cuda" or numerics == "original" or component is None:
        return torch.float32
    return getattr(torch, component.dtype)


def to_uint8(video: torch.Tensor, numerics: str):
    """[1,3,T,H,W] in [-1,1] -> [T,H,W,3] uint8. ``original`` reproduces the bf16 math and truncation."""
    if numerics == "original":
        v = ((1.0 + video.to(torch.bfloat16)).clamp(0, 2) / 2)[0].permute(1, 2, 3, 0) * 255
        return v.to(torch.uint8).cpu().numpy()
    v = ((video.float() + 1.0) / 2).clamp(0, 1)[0].permute(1, 2, 3, 0) * 255
    return v.round().to(torch.uint8).cpu().numpy()


def _context_parallel(spec: ModelSpec, plan: MemoryPlan, ctx, scheme: str):
    """The split of every generation over ``ctx``'s ranks, for this plan (created alike on every rank)."""
    from cosmos_cli.errors import MemoryPlanError

    from .parallel import ContextParallel, latent_shape_of

    if lean_network(plan):  # offload.lean_forward has no token shard: its chunked attention sees all the tokens
        mapped = next(s.mapped for s in spec.strategies if s.name == plan.strategy)  # same kind: pinned or mapped
        splittable = [s.name for s in spec.strategies if s.variant(NETWORK) != LEAN and s.mapped == mapped]
        raise MemoryPlanError(f"memory strategy {plan.strategy} (the network's chunked forward) cannot be split over "
                              f"GPUs", hint=f"Use --offload {splittable[-1]} or a faster strategy (each GPU then "
                                            f"holds 1/{ctx.world_size} of the activations), or --num-gpus 1.")
    return ContextParallel.create(ctx, spec.network, latent_shape_of(spec), cfg_batched=plan.cfg_batched,
                                  scheme=None if scheme == "auto" else scheme)


def check_attention(choice: str, spec: ModelSpec, device: torch.device, dtype: torch.dtype) -> None:
    """Refuse ``--attention flash-attn-4`` where it cannot run (before anything loads; with ``--num-gpus`` the
    backend's ``start_parallel`` refused it already). Under a memory-lean plan the network's chunked forward keeps
    its own attention and a note says so (not refused: ``--offload auto`` may retry a batch line under such a plan
    after running out of memory)."""
    if choice != FLASH4_DIST:
        return
    reason = unusable_reason(device, dtype, spec.network.head_dim)
    if reason is not None:
        raise UsageError(f"--attention {FLASH4_DIST}: it cannot run here: {reason}",
                         hint="Use --attention auto (the default: flash-attn-4 where it can run, else SDPA); "
                              "flash-attn-4 needs `pip install flash-attn-4` and a GPU of compute capability 9.x "
                              "or 10.x.")


class Predict1Pipeline:
    """Loaded once; ``generate`` runs one job and keeps the models where the plan put them.

    The prompt upsampler and the guardrails are loaded when the plan includes them (they are left out of the
    plan by ``--disable-prompt-upsampler`` / ``--disable-guardrail``).
    """

    def __init__(self, spec: ModelSpec, plan: MemoryPlan, device: torch.device, network, tokenizer, text_encoder,
                 numerics: str = "fp32", upsampler=None, text_guardrail=None, video_guardrail=None, cp=None, *,
                 fast: FastMode | None = None, compile: bool = False, attention: str = "auto"):
        self.spec, self.plan, self.device, self.numerics = spec, plan, device, numerics
        self.fast, self.compiled = fast or FastMode(), compile  # speed options (cosmos_cli.fastmode, .fast)
        self.denoise_stats: dict[str, int] = {}  # the last generation's network forwards (see denoise)
        self.attention_choice, self.attention = attention, "sdpa"  # the self-attention kernel (see attention_kernel)
        if network is not None and self.fast.fp8 is not None:
            to_fp8(network, self.fast.fp8)  # before placing: the host copies hold the e4m3 weights
        if network is not None and compile:
            compile_blocks(network)
        self.cp = cp  # a parallel.ContextParallel: each generation split over its ranks (None: this process alone)
        self.stage_reserved_bytes: dict[str, int] = {}  # the last generation's torch.cuda.max_memory_reserved per stage

        def placed(obj, component: str, **kw):
            return None if obj is None else place(obj, plan.placement(component), device, **kw)

        self.network = placed(network, NETWORK, blocks=list(network.blocks.values()) if network is not None else ())
        self.tokenizer = placed(tokenizer, TOKENIZER)
        self.text_encoder = placed(text_encoder, TEXT_ENCODER, **_t5_blocks(text_encoder))
        self.upsampler = placed(upsampler, UPSAMPLER)
        self.text_guardrail = placed(text_guardrail, GUARDRAIL)
        self.video_guardrail = placed(video_guardrail, GUARDRAIL)
        self.tokenizer_chunk = TOKENIZER_CHUNK_FRAMES if tiled_tokenizer(plan) else None
        self.notes: list[str] = []  # the current job's notes for the user (a prompt cut short), see encode_text
        self._frames: tuple | None = None  # the current job's input frames, decoded once (see input_frames)

    @classmethod
    def load(cls, spec: ModelSpec, plan: MemoryPlan, *, checkpoint_dir: Path, device: str | torch.device,
             numerics: str = "fp32", network_dir: str | None = None, progress: Progress | None = None,
             parallel=None, cp_scheme: str = "auto", fast: FastMode | None = None, compile: bool = False,
             attention: str = "auto"):
        """Load the models ``plan`` includes. ``parallel`` (a DistContext, on every rank alike): choose the split
        (``cp_scheme``: auto, sequence or cfg) first; the ranks other than 0 load the network only. ``fast`` and
        ``compile``: the speed options (:mod:`cosmos_cli.fastmode`, :mod:`.fast`); ``attention``: the blocks'
        self-attention kernel (``--attention``: auto, sdpa or flash-attn-4, checked here before anything loads)."""
        from .checkpoint import load_network
        from .text_encoder import T5TextEncoder
        from .tokenizer.loading import load_tokenizer

        if numerics not in NUMERICS:
            raise GenerationError(f"--numerics must be one of {', '.join(NUMERICS)}, got {numerics!r}")
        progress = progress or NullProgress()
        device = torch.device(device)
        paths = checkpoint_paths(spec, checkpoint_dir, network_dir)
        check_optional_files(spec, paths, upsampler=plan.placement(UPSAMPLER) != "absent",
                             guardrail=plan.placement(GUARDRAIL) != "absent")
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        check_attention(attention, spec, device, dtype)
        cp = None
        if parallel is not None:
            cp = _context_parallel(spec, plan, parallel, cp_scheme)
            progress.message(f"context parallel: {cp.layout.reason}")

        def where(component: str) -> torch.device:
            return device if plan.placement(component) == "gpu" or device.type != "cuda" else torch.device("cpu")

        if cp is not None and not cp.is_main:  # the other ranks only denoise: rank 0 encodes, decodes and checks
            with progress.stage("loading the diffusion network"):
                network = load_network(paths.network, spec.network, device=where(NETWORK), dtype=dtype,
                                       rope_mode="compat" if numerics == "original" else "fp32",
                                       map_blocks=plan.placement(NETWORK) == "map")
            return cls(spec, plan, device, network, None, None, numerics, cp=cp, fast=fast, compile=compile,
                       attention=attention)

        with progress.stage("loading the text encoder"):
            text_encoder = T5TextEncoder.load(paths.text_encoder, device=where(TEXT_ENCODER),
                                              dtype=text_encoder_dtype(spec, device, numerics),
                                              max_length=spec.text_encoder.max_length,
                                              map_blocks=plan.placement(TEXT_ENCODER) == "map")
        with progress.stage("loading the tokenizer"):
            tokenizer = load_tokenizer(paths.tokenizer, spec.tokenizer, device=where(TOKENIZER), dtype=dtype,
                                       md5={f.filename: f.md5 for f in spec.files_of(TOKENIZER)})
        with progress.stage("loading the diffusion network"):
            network = load_network(paths.network, spec.network, device=where(NETWORK), dtype=dtype,
                                   rope_mode="compat" if numerics == "original" else "fp32",
                                   map_blocks=plan.placement(NETWORK) == "map")
        upsampler = text_guardrail = video_guardrail = None
        if plan.placement(UPSAMPLER) != "absent":
            from .upsampler import PromptUpsampler

            if paths.upsampler is None:
                raise CheckpointError(f"{spec.name} has no prompt upsampler", hint="Pass --disable-prompt-upsampler.")
            with progress.stage("loading the prompt upsampler"):
                upsampler = PromptUpsampler.load(paths.upsampler, device=str(where(UPSAMPLER)), dtype=dtype,
                                                 processor_folder=paths.guardrail_root / "mistral-community/pixtral-12b")
        if plan.placement(GUARDRAIL) != "absent":
            from .guardrails import TextGuardrail, VideoGuardrail, find_guardrail_dir

            folder = find_guardrail_dir(paths.guardrail_root, paths.network.parent.name)
            with progress.stage("loading the guardrails"):
                text_guardrail = TextGuardrail.load(folder, device=str(where(GUARDRAIL)), dtype=dtype)
                video_guardrail = VideoGuardrail.load(folder, device=str(where(GUARDRAIL)))
        return cls(spec, plan, device, network, tokenizer, text_encoder, numerics, upsampler, text_guardrail,
                   video_guardrail, cp=cp, fast=fast, compile=compile, attention=attention)

    def close(self) -> None:
        for part in (self.network, self.tokenizer, self.text_encoder, self.upsampler, self.text_guardrail,
                     self.video_guardrail):
            if part is not None:
                part.close()
        self.network = self.tokenizer = self.text_encoder = None
        self.upsampler = self.text_guardrail = self.video_guardrail = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- stages --------------------------------------------------------------------------------------------

    def input_frames(self, job: GenerationJob) -> np.ndarray:
        """The job's input frames, decoded once for the upsampler and the tokenizer (dropped by encode_video)."""
        from cosmos_cli.media import read_frames

        key = (job.visual_input, job.num_input_frames)
        if self._frames is None or self._frames[0] != key:
            self._frames = (key, read_frames(job.visual_input, job.num_input_frames))
        return self._frames[1]

    def encode_video(self, job: GenerationJob) -> tuple[torch.Tensor, int]:
        from cosmos_cli.media import frames_to_tensor

        spec = self.spec
        frames = self.input_frames(job)
        self._frames = None
        pixels = frames_to_tensor(frames, spec.height, spec.width, resize=job.resize,
                                  dtype=torch.bfloat16 if self.numerics == "original" else torch.float32,
                                  normalisation=spec.input_normalisation)
        if pixels.shape[2] > spec.num_frames:
            raise GenerationError(f"{job.visual_input}: {pixels.shape[2]} input frames, the model takes at most "
                                  f"{spec.num_frames}")
        # The original encodes the input frames zero-padded (mid-grey) to all 121 frames, but the sampler reads
        # only the condition frames' latents (the others enter multiplied by 0), and the tokenizer is causal: latent
        # frame j depends on pixel frames up to 8j alone. So only the frames those latents see are encoded (the
        # input, zero-padded to 1 + 8k frames) and the later latent frames are zeros: the same sampling, with ~1 s
        # less tokenizer work per 704x1280 video (tests/test_condition_encode.py).
        tc = spec.tokenizer.temporal_compression
        n_cond = latent_condition_frames(job.num_input_frames, tc)
        seen = condition_pixel_frames(job.num_input_frames, tc)  # the pixel frames latents 0 .. n_cond - 1 see
        pixels = torch.nn.functional.pad(pixels[:, :, :seen], (0, 0, 0, 0, 0, seen - min(seen, pixels.shape[2])))
        with self.tokenizer.active() as tok:
            dtype = next(tok.parameters()).dtype
            cond = tok.encode(pixels.to(self.device, dtype), chunk_frames=self.tokenizer_chunk) * SIGMA_DATA
        B, C, _, h, w = cond.shape
        latent = cond.new_zeros(B, C, latent_condition_frames(spec.num_frames, tc), h, w, dtype=torch.bfloat16)
        latent[:, :, :n_cond] = cond
        return latent, n_cond

    def encode_text(self, prompt: str, negative_prompt: str | None) -> torch.Tensor:
        if negative_prompt is None:
            negative_prompt = self.spec.default_negative_prompt
        with self.text_encoder.active() as te:
            limit = getattr(te, "max_length", None)
            checked = [("prompt", prompt)] + ([] if negative_prompt == self.spec.default_negative_prompt else
                                              [("negative prompt", negative_prompt)])  # (the default: by design)
            for what, text in checked:
                n = te.token_count(text) if hasattr(te, "token_count") else 0
                if limit is not None and n > limit:  # T5 reads the first `limit` tokens, as the original
                    self.notes.append(f"the {what} is {n} tokens long; the text encoder reads its first {limit} "
                                      f"tokens, the rest is ignored")
            emb = te.encode([prompt, negative_prompt])
        return emb.to(self.device, torch.bfloat16)

    def attention_kernel(self, dtype: torch.dtype, progress: Progress | None = None):
        """The blocks' self-attention kernel (:mod:`.flash4`): flash-attn-4 where it is installed and runs on this
        GPU, for the plain forward in one process (the memory-lean forward and a token shard keep their own);
        None: PyTorch's SDPA. ``self.attention`` names the one the last generation used."""
        if self.cp is not None or lean_network(self.plan):
            kernel = None
            if self.attention_choice == FLASH4_DIST and self.cp is None:
                note = (f"--attention {FLASH4_DIST}: memory strategy {self.plan.strategy} runs the network's chunked "
                        f"forward, which has its own attention (SDPA)")
                self.notes.append(note)
                if progress is not None:
                    progress.warning(f"note: {note}")
        else:
            kernel = self_attention_kernel(self.device, dtype, self.spec.network.head_dim, self.attention_choice)
        self.attention = "sdpa" if kernel is None else FLASH4_DIST
        return kernel

    def denoise(self, job: GenerationJob, condition_latent: torch.Tensor, num_condition_frames: int,
                text_emb: torch.Tensor, progress: Progress) -> torch.Tensor:
        """The sampler over the network: in this process, or on every rank of ``self.cp`` alike (same code: the
        context-parallel run only shards each forward, see :mod:`.branches`); the clean latent, the same on
        every rank."""
        from .branches import branch_model_fn

        B, _, T, H, W = condition_latent.shape
        fast = self.fast
        if self.cp is not None and fast.step_cache is not None:  # (the CLI refuses --fast with --num-gpus first)
            raise GenerationError("--fast step-cache is not available under context parallelism: each rank would "
                                  "decide on its own tokens whether to skip", hint="Run the step cache on one GPU.")
        with self.network.active() as net:
            dtype = net.x_embedder.proj[1].weight.dtype
            forward = network_forward(self.network, lean_network(self.plan), attention=self.attention_kernel(dtype, progress))
            tables = net.prepare(T, H, W, float(job.fps), device=self.device, dtype=dtype)
            mask = torch.zeros(1, 1, T, H, W, dtype=dtype, device=self.device)
            mask[:, :, :num_condition_frames] = 1
            cache = None if fast.step_cache is None else StepCache(fast.step_cache, job.num_steps, len(net.blocks))
            counts = [0]
            model_fn = branch_model_fn(forward, text_emb.to(self.device, dtype), job.fps, mask, tables,
                                       cfg_batched=self.plan.cfg_batched, cp=self.cp, cache=cache, counts=counts)
            advance = progress.steps(job.num_steps, "denoising")
            try:
                latent = S.sample(
                    model_fn,
                    noise=S.initial_noise(condition_latent.shape, seed=job.seed, device=self.device),
                    condition_latent=condition_latent.to(self.device),
                    num_condition_frames=num_condition_frames,
                    augment=S.augment_noise(condition_latent.shape, seed=job.seed, device=self.device),
                    num_steps=job.num_steps,
                    guidance=job.guidance,
                    numerics=self.numerics,
                    on_step=lambda info: advance(),
                    guided_steps=S.guided_step_count(job.num_steps, fast.guidance_trunc),
                )
            finally:
                progress.done_steps()
            n = counts[0]
            self.denoise_stats = {"branch_forwards": n, **(cache.stats() if cache is not None else {
                "full_forwards": n, "cached_forwards": 0, "blocks_run": n * len(net.blocks)})}
        return latent

    def decode(self, latent: torch.Tensor):
        with self.tokenizer.active() as tok:
            dtype = next(tok.parameters()).dtype
            video = tok.decode((latent / SIGMA_DATA).to(dtype), chunk_frames=self.tokenizer_chunk)
        if self.tokenizer_chunk is None:
            return to_uint8(video, self.numerics)
        step = 8 * self.tokenizer_chunk  # convert a few frames at a time: to_uint8 works in fp32
        return np.concatenate([to_uint8(video[:, :, a:a + step], self.numerics)
                               for a in range(0, video.shape[2], step)])

    # -- one job -------------------------------------------------------------------------------------------

    def final_prompt(self, job: GenerationJob) -> str:
        """The prompt the network sees: the upsampler's (refining the user's prompt unless told to ignore it)."""
        if self.upsampler is None:
            if not job.prompt:
                raise GenerationError("no prompt: pass --prompt, or enable the prompt upsampler")
            return job.prompt
        image = self.input_frames(job)[-1]  # the input image or the video's last frame
        with self.upsampler.active() as ups:
            return ups.upsample(image, job.prompt, seed=job.seed, ignore_prompt=job.upsampler_ignores_prompt)

    @property
    def background_writes(self) -> bool:
        """Whether ``generate`` takes ``writes=`` (:mod:`cosmos_cli.writes`): in one process; a generation split
        over ranks writes on rank 0 in line."""
        return self.cp is None

    def generate(self, job: GenerationJob, progress: Progress, *, video_path: Path, prompt_path: Path | None = None,
                 writes: WriteSlot | None = None) -> GenerationResult:
        """One job: prepare (upsample, check, encode), denoise, finish (decode, check, write; with ``writes`` the
        write is handed to it, to run in the background).

        Under context parallelism (``self.cp``) every rank calls this alike: rank 0 runs ``prepare`` and
        ``finish`` alone and shares their results (``DistContext.share``: the condition latent, the text
        embeddings, the prompt, the outcome), every rank denoises, only rank 0 writes and shows progress (ranks
        > 0 need only their network). Timings and per-stage peaks cover the stages this rank ran; under context
        parallelism ``stage_peak_bytes["denoise_gpu<r>"]`` holds every GPU's denoising peak, and
        ``peak_memory_bytes`` is the largest peak of any stage on any GPU."""
        cp = self.cp
        main = cp is None or cp.is_main
        shown = progress if main else NullProgress()
        timings: dict[str, float] = {}
        peaks: dict[str, int] = {}
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        self.stage_reserved_bytes = {}
        details: dict[str, str] = {}  # how it ran: the attention kernel the denoising used

        def share(fn, what: str):
            return fn() if cp is None else cp.ctx.share(fn, what)

        @contextmanager
        def timed(name: str, label: str | None):
            """Time a stage and, on a GPU, record its own peak of allocated memory (label None: no spinner)."""
            overall = torch.cuda.max_memory_allocated(self.device) if cuda else 0
            if cuda:
                torch.cuda.reset_peak_memory_stats(self.device)
            with shown.stage(label) if label else nullcontext():
                t0 = time.perf_counter()
                yield
                if cuda:
                    torch.cuda.synchronize(self.device)
                timings[name] = time.perf_counter() - t0
            if cuda:
                peaks[name] = torch.cuda.max_memory_allocated(self.device)
                peaks["overall"] = max(overall, peaks[name], peaks.get("overall", 0))
                self.stage_reserved_bytes[name] = torch.cuda.max_memory_reserved(self.device)

        with torch.inference_mode():
            status, message, prompt, inputs = share(lambda: self.prepare(job, timed), "encoding the inputs")
            self._frames = None
            for note in self.notes:
                shown.warning(f"note: {note}")
            if status == "ok":
                condition_latent, n_cond, text_emb = inputs
                with timed("denoise", None):  # the sampler shows its own step bar
                    latent = self.denoise(job, condition_latent, n_cond, text_emb, shown)
                if cp is not None:
                    for r, b in enumerate(cp.ctx.gather_ints(peaks.get("denoise", 0))):
                        peaks[f"denoise_gpu{r}"] = b
                status, message = share(lambda: self.finish(job, latent, prompt, timed, video_path=video_path,
                                                            prompt_path=prompt_path, writes=writes),
                                        "decoding and writing")
                details["attention"] = self.attention
        written = main and status == "ok"
        overall = max(peaks.values()) if cuda and peaks else None
        return GenerationResult(video_path if written else None, prompt_path if written else None, prompt, status,
                                message, timings, overall, peaks, notes=tuple(self.notes),
                                details=details)

    # The stages before and after denoising (under context parallelism rank 0 runs them alone, see generate).
    # ``timed(name, label)`` is the caller's context manager that times a stage.

    def prepare(self, job: GenerationJob, timed) -> tuple[str, str, str, tuple | None]:
        """Upsample and check the prompt, encode the input frames and the prompts: ``(status, message, prompt,
        (condition_latent, num_condition_frames, text_emb))``; status "blocked" (inputs None) when the text
        guardrail refuses the prompt."""
        self.notes = []
        if self.upsampler is not None:
            with timed("upsample", "upsampling the prompt"):
                prompt = self.final_prompt(job)
        else:
            prompt = self.final_prompt(job)
        if self.text_guardrail is not None:
            with timed("text_guardrail", "checking the prompt"), self.text_guardrail.active() as guard:
                verdict = guard.check(prompt)
            if not verdict.safe:
                return "blocked", f"{verdict.component}: {verdict.reason}", prompt, None
        with timed("encode_video", "encoding the input frames"):
            condition_latent, n_cond = self.encode_video(job)
        with timed("encode_text", "encoding the prompt"):
            text_emb = self.encode_text(prompt, job.negative_prompt)
        return "ok", "", prompt, (condition_latent, n_cond, text_emb)

    def finish(self, job: GenerationJob, latent: torch.Tensor, prompt: str, timed, *, video_path: Path,
               prompt_path: Path | None, writes: WriteSlot | None = None) -> tuple[str, str]:
        """Decode, check the video and write the files: ``(status, message)``; a blocked video writes nothing.
        ``writes``: the files are written in the background (``generate``)."""
        from cosmos_cli.media import write_text, write_video

        if not bool(torch.isfinite(latent).all()):  # it would decode to a black (or garbage) video
            raise GenerationError("the diffusion network produced NaN or infinite values for this job; nothing was "
                                  "written", hint="The network's checkpoint may be damaged (download it again); "
                                                  "with --fast, try without it.")
        with timed("decode", "decoding the video"):
            frames = self.decode(latent)
        if self.video_guardrail is not None:
            with timed("video_guardrail", "checking the video"), self.video_guardrail.active() as guard:
                verdict, frames = guard.check(frames)
            if not verdict.safe:
                return "blocked", f"{verdict.component}: {verdict.reason}"
        def write() -> None:
            write_video(video_path, frames, fps=job.fps)
            if prompt_path is not None:
                write_text(prompt_path, prompt)

        if writes is not None:
            writes.submit(write)  # the H.264 encoding runs while the batch's next line starts
        else:
            with timed("write", f"writing {video_path}"):
                write()
        return "ok", ""
