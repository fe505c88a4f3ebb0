"""Model specs: literal, frozen descriptions of what a backend can run.

Everything the core needs to know about a model without importing its code: names, defaults, accepted
inputs, the checkpoint files, and the components with the sizes the memory planner reasons about. The
network/tokenizer/text-encoder parameters are the backend's own frozen dataclasses, carried opaquely.
Variants are made with :func:`dataclasses.replace`, never by mutating or branching on a name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float8_e4m3fn": 1, "uint8": 1}

# Component names the planner knows; a spec lists the ones its model has.
UPSAMPLER, GUARDRAIL, TEXT_ENCODER, TOKENIZER, NETWORK = (
    "prompt_upsampler",
    "guardrail",
    "text_encoder",
    "tokenizer",
    "diffusion_transformer",
)


@dataclass(frozen=True)
class CheckpointFile:
    """One file (or one set of files) a model needs: where it comes from on the Hub and where it lives locally.

    ``local`` is relative to the checkpoint folder and follows the original project's layout, so a
    ``checkpoints/`` folder written by the original download script works unchanged. ``component`` names the
    component that reads the file (a planner component name). ``md5`` is the original script's checksum, where
    it lists one; ``cosmos download`` checks it besides the Hub's SHA-256.

    Three kinds of entry, told apart by their fields:

    * a plain file: ``filename`` is a path in ``repo`` and ``local`` the file's path, which ends with
      ``filename`` (the part before it is the folder the repository's root maps to, as with
      ``hf_hub_download(local_dir=...)``).
    * a pattern: ``filename`` holds ``*``, ``?`` or ``[`` and is matched against every path in the repository
      with :func:`fnmatch.fnmatchcase` (``*`` crosses ``/``, as in huggingface_hub's ``allow_patterns``, so
      ``guardrail/*`` is the whole folder); ``local`` is then the folder the repository's root maps to. A
      pattern must match at least one file.
    * ``hf_cache=True``: ``local`` is a huggingface_hub cache folder, the ``cache_dir=`` that transformers'
      ``from_pretrained`` reads (the original's guardrail folders); the file lands in
      ``<local>/models--<org>--<name>/snapshots/<commit>/<filename>``. Such an entry is skipped when another
      entry's files already fill that cache folder (a model repository that ships it).

    ``convert`` names a conversion (a :class:`Conversion` of a registered spec's ``conversions``): the remote file is fetched into the
    staging folder ``<repository name>/`` (the original's ``Pixtral-12B-2409/``), the conversion writes
    ``local`` from all the files of its group, and the staging folder is removed afterwards.
    ``revision`` is the branch, tag or commit to fetch.
    """

    component: str
    repo: str
    filename: str
    local: str
    md5: str | None = None
    revision: str = "main"
    hf_cache: bool = False
    convert: str | None = None


@dataclass(frozen=True)
class Conversion:
    """A conversion that checkpoint entries name (:attr:`CheckpointFile.convert`), provided by the backend's spec.

    ``run(inputs, outputs)``: remote name -> fetched file, and output local path -> its absolute path.
    ``check(outputs)`` returns (output, problem) for a converted folder that is damaged."""

    name: str
    run: Callable[[dict[str, Path], dict[str, Path]], None]
    check: Callable[[dict[str, Path]], list[tuple[str, str]]]


@dataclass(frozen=True)
class PixelNormalisation:
    """How uint8 input pixels ``x`` become the values the model reads: ``x * scale + offset`` (black is ``offset``).

    The default maps [0, 255] onto [-1, 1]."""

    scale: float = 1 / 127.5
    offset: float = -1.0


@dataclass(frozen=True)
class Component:
    """A model part the planner places: its weights and the activation peak of the stage(s) it runs in.

    ``weight_bytes`` is derived from the parameter count and the dtype the weights are held in.
    ``activation_bytes`` maps stage name -> peak transient bytes of that stage at the model's default job
    (for the network: with both guidance branches batched; ``activation_bytes_sequential`` when the two
    branches run one after the other). ``num_blocks``/``block_params`` describe a network whose
    transformer blocks can be streamed from host memory one at a time. ``measured_peak_bytes`` maps a strategy
    name -> the peak GPU memory measured for a whole generation of the default job under it (a backend puts
    its benchmark's figures on one component; ``memory-plan`` shows them next to the predictions).
    ``loaded_on_host``: the backend's loader builds the model in host memory before moving it where it is placed
    (``transformers``' ``from_pretrained``), so loading it holds its weights in host RAM for a while even when it
    is placed on the GPU (the planner's host peak counts that). ``left_out_by``: the request's switch that leaves this
    component out of a run (:data:`OPTIONAL_SWITCHES`; "": always part of it). ``gpu_when_room``: where a strategy
    computes this component on the CPU, the planner places it ``swap`` instead when the GPU has room for it at its
    stage (the plan's peak still fits): copying it over once is faster than computing it on the CPU.
    ``cpu_weight_reads``: how many times one job reads all of its weights when computed on the CPU, at the most
    (an autoregressive model: one read per generated token), for the plan's estimate of the CPU's time (0: none).
    """

    name: str
    stages: tuple[str, ...]
    num_params: int
    dtype: str = "bfloat16"
    activation_bytes: tuple[tuple[str, int], ...] = ()
    activation_bytes_sequential: int | None = None
    num_blocks: int = 0
    block_params: int = 0
    cpu_capable: bool = False
    measured_peak_bytes: tuple[tuple[str, int], ...] = ()
    loaded_on_host: bool = False
    left_out_by: str = ""
    gpu_when_room: bool = False
    cpu_weight_reads: int = 0

    @property
    def weight_bytes(self) -> int:
        return self.num_params * DTYPE_BYTES[self.dtype]

    @property
    def block_bytes(self) -> int:
        return self.block_params * DTYPE_BYTES[self.dtype]

    def activation(self, stage: str, variant: str | None = None) -> int:
        """The activation peak of ``stage``; with ``variant``, of the stage run that way (``<stage>_<variant>`` in
        :attr:`activation_bytes`), falling back to the plain figure when the component has no such figure."""
        figures = dict(self.activation_bytes)
        return (figures.get(f"{stage}_{variant}", 0) if variant else 0) or figures.get(stage, 0)


# The request's switches that leave an optional component out of a run (``Component.left_out_by`` names one), and the
# flag that sets each: `--disable-prompt-upsampler` / `--no-upsampler`, `--disable-guardrail` / `--no-guardrail`.
OPTIONAL_SWITCHES = {"upsampler": "--no-upsampler", "guardrail": "--no-guardrail"}

# Where a strategy may put a component (cosmos_cli.planner's module doc says what each means).
PLACEMENTS = ("gpu", "swap", "cpu", "stream", "map")


@dataclass(frozen=True)
class Strategy:
    """A named set of placements a backend implements, and how its components run under it.

    ``placements`` maps component name -> placement (:data:`PLACEMENTS`); a component it does not name lives in
    ``others``. ``cfg_batched``: the network runs both guidance branches in one batch (False: one after the other,
    :attr:`Component.activation_bytes_sequential`). ``variants`` maps component name -> the variant it runs in under
    this strategy: the planner reads that component's ``<stage>_<variant>`` activation figures, the plan carries the
    mapping (:attr:`cosmos_cli.planner.MemoryPlan.variants`) and the backend alone knows what a variant means.
    ``original_flags``: the original project's ``--offload_*`` flags that mean this strategy (the first strategy
    whose flags include every flag given is what those flags ask for).
    """

    name: str
    description: str
    placements: tuple[tuple[str, str], ...] = ()
    cfg_batched: bool = True
    original_flags: tuple[str, ...] = ()
    variants: tuple[tuple[str, str], ...] = ()
    others: str = "gpu"

    def placement(self, component: str) -> str:
        return dict(self.placements).get(component, self.others)

    def variant(self, component: str) -> str | None:
        return dict(self.variants).get(component)

    @property
    def mapped(self) -> bool:
        """Streams from the mapped checkpoint file: the same GPU memory as its pinned twin, less host memory."""
        return any(p == "map" for _, p in self.placements)


# An input is fitted to the model's frame size without a word when its aspect ratio is within this factor of the
# model's (1.25: 16:9 against 1280x704's 20:11 passes, 16:9 against 1:1 does not) and each side is within
# INPUT_SCALE_TOLERANCE of the model's; otherwise `generate` says what the model expects.
INPUT_ASPECT_TOLERANCE = 1.25
INPUT_SCALE_TOLERANCE = 4.0


@dataclass(frozen=True)
class ModelSpec:
    """One runnable model, as a backend declares it."""

    name: str
    backend: str
    description: str
    aliases: tuple[str, ...] = ()
    network: Any = None
    tokenizer: Any = None
    text_encoder: Any = None
    files: tuple[CheckpointFile, ...] = ()
    components: tuple[Component, ...] = ()
    num_frames: int = 121
    height: int = 704
    width: int = 1280
    fps: int = 24
    num_steps: int = 35
    guidance: float = 7.0
    input_frames: tuple[int, ...] = (1, 9)
    default_input_frames: int = 1
    # Matrix-product FLOPs of one sampler step of the default job (both guidance branches): `generate` estimates a
    # run on a machine without a GPU from it (0: unknown, no estimate).
    step_flops: float = 0.0
    # What inputs the model was trained on, in a few words ("photos and videos of real scenes"): shown with the
    # warning when an input is far from the model's size or aspect ("" : nothing to add).
    expects: str = ""
    # The stages of one generation in the order they run (None: as the components name them, in their order); the
    # planner plans these and then any other stage a component names, in the order the components name them.
    stages: tuple[str, ...] | None = None
    # The memory strategies this backend implements, fastest first (each leaner, or as lean on the GPU, than the one
    # before): the only ones `--offload auto` may pick, `memory-plan` lists and an explicit `--offload` accepts.
    strategies: tuple[Strategy, ...] = ()
    # Keys `memory-plan --json` adds to a plan, each (key, component, variant): true when the plan runs that
    # component in that variant (a backend's names for its variants, kept stable for scripts reading the JSON).
    plan_flags: tuple[tuple[str, str, str], ...] = ()
    # What `generate` and `batch` print (once, on stderr) when --disable-guardrail is given: the terms the model's
    # licence ties to its guardrails, in the backend's words ("": nothing to say).
    guardrail_disabled_warning: str = ""
    # -- model facts the core applies without knowing the model --
    # The negative prompt when neither --negative-prompt nor a batch line gives one ("": none).
    default_negative_prompt: str = ""
    # How `media.frames_to_tensor` normalises the input frames for this model.
    input_normalisation: PixelNormalisation = PixelNormalisation()
    # Suffixes of a --diffusion_transformer_dir folder name that still name this model (the original's
    # ``<model>_post-trained`` folders); dropped in this order.
    network_dir_suffixes: tuple[str, ...] = ()
    # The original download script's --model_types value this model answers to ("": none), and the other values
    # that script knows, which `cosmos download` refuses by name.
    model_type: str = ""
    other_model_types: tuple[str, ...] = ()
    # The conversions its checkpoint entries name (CheckpointFile.convert).
    conversions: tuple[Conversion, ...] = ()
    hidden: bool = False  # tiny test configurations: registered but not listed by default
    is_default: bool = False  # the model commands use when --model is not given

    def stage_order(self) -> tuple[str, ...]:
        """Every stage the planner plans for this model, in the order they run (:attr:`stages`, then the others)."""
        order = list(self.stages or ())
        for c in self.components:
            order += [s for s in c.stages if s not in order]
        return tuple(order)

    def files_of(self, component: str) -> tuple[CheckpointFile, ...]:
        return tuple(f for f in self.files if f.component == component)

    def component(self, name: str) -> Component | None:
        for c in self.components:
            if c.name == name:
                return c
        return None

    def input_warning(self, width: int, height: int, resize: str = "stretch") -> str | None:
        """What to tell the user about an input of ``width`` x ``height`` (None: close enough to the model's size)."""
        aspect = (width / height) / (self.width / self.height)
        scale = max(width / self.width, self.width / width, height / self.height, self.height / height)
        off_aspect = not 1 / INPUT_ASPECT_TOLERANCE <= aspect <= INPUT_ASPECT_TOLERANCE
        if not off_aspect and scale <= INPUT_SCALE_TOLERANCE:
            return None
        fitted = {"stretch": "stretched", "crop": "cropped", "pad": "padded"}.get(resize, resize)
        how = (f"it will be {fitted} to {self.width}x{self.height}" if resize != "stretch" or not off_aspect else
               f"it will be stretched to {self.width}x{self.height} (--resize crop or pad keeps its aspect)")
        what = f" The model expects {self.expects}." if self.expects else ""
        return (f"the input is {width}x{height}, far from the {self.width}x{self.height} {self.name} generates: "
                f"{how}.{what}")

    @property
    def all_names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)
