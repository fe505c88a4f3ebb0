"""The interface a model backend implements.

A backend is registered by a plugin (see :mod:`cosmos_cli.hookspecs`). The core asks it for its
:class:`~cosmos_cli.specs.ModelSpec` list and, to generate, for a :class:`Pipeline` built for one spec
under one :class:`~cosmos_cli.planner.MemoryPlan`. The core never imports a backend's modules directly.

Options of a backend's own (Predict1's ``--numerics``, ``--cp-scheme``): each backend has a typed
:class:`Backend.Options` (a frozen dataclass; the base's has no field) whose fields are flags of `generate` and
`batch`, declared with :func:`option` (the help, the value's name, the help panel): the core adds the flags of every
registered backend to those commands (:func:`cosmos_cli.registry.option_flags`) and names none itself.
:meth:`Backend.parse_options` builds the object from the values the command line gave, refusing an option the
backend does not have, or a bad value, in one line before anything loads. The core never reads a backend's
options; it hands the typed object to :meth:`Backend.start_parallel` and :meth:`Backend.build_pipeline`, and puts
:meth:`Backend.Options.key_params` in a batch line's resume key.

One generation on several GPUs (``torchrun ... --num-gpus N``): the core asks the backend to join the run
(:meth:`Backend.start_parallel`, which also decides whether and how the work can be split), plans memory with the
smallest free memory of any rank, and passes the :class:`ParallelRun` to :meth:`Backend.build_pipeline` as
``parallel=``; the pipeline then splits every ``generate`` over the ranks, and only rank 0 writes.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cosmos_cli.errors import UsageError

if TYPE_CHECKING:
    from cosmos_cli.fastmode import FastMode
    from cosmos_cli.jobs import GenerationJob, GenerationResult
    from cosmos_cli.planner import MemoryPlan
    from cosmos_cli.progress import Progress
    from cosmos_cli.specs import ModelSpec
    from cosmos_cli.writes import WriteSlot


class Pipeline(Protocol):
    """Loaded models placed by a memory plan; generates one job at a time and keeps its models loaded."""

    def generate(self, job: GenerationJob, progress: Progress, *, video_path: Path,
                 prompt_path: Path | None = None, writes: WriteSlot | None = None) -> GenerationResult:
        """Generate ``job``; write the video (atomically) to ``video_path`` and the final prompt to ``prompt_path``.

        ``writes`` is given only to a pipeline whose ``background_writes`` attribute is True (a batch line in one
        process): the pipeline then hands that last stage, the files' encoding and writing, to ``writes.submit``
        instead of running it (:mod:`cosmos_cli.writes`), and the batch waits for it before it commits them."""

    def close(self) -> None:
        """Release the models."""


class ParallelRun(Protocol):
    """This process's place in a run of several processes that split each generation (one per GPU).

    Every rank builds the same pipeline and calls ``generate`` with the same jobs in the same order; the pipeline
    returns the same status on every rank and writes the files on rank 0 only (its paths are None elsewhere).
    """

    rank: int
    world_size: int
    device: Any  # this rank's device (``str()`` gives e.g. "cuda:1" or "cpu")

    def agree_min(self, value: int) -> int:
        """The smallest ``value`` over all ranks (free GPU memory, so that every rank makes the same plan)."""

    def share(self, fn: Callable[[], Any], what: str) -> Any:
        """Run ``fn`` on rank 0 only and return its (picklable) result on every rank. If it raises there, the
        other ranks raise an error that :func:`cosmos_cli.errors.quiet_on_this_rank` silences."""

    def shared_failure(self, exc: BaseException) -> bool:
        """Whether ``exc``, raised here by ``generate`` or :meth:`share`, was raised alike on every rank (rank 0
        failed in a stage it runs alone), so that the ranks can go on together with the next job."""

    def close(self, ok: bool = True) -> None:
        """Leave the run (``ok`` False after a failure: no further collective is attempted)."""


def option_flag(name: str) -> str:
    """The command-line flag of the backend option ``name`` (``cp_scheme`` is ``--cp-scheme``)."""
    return "--" + name.replace("_", "-")


# The panels of `cosmos generate --help` (and batch's), by title; a backend option goes under one of them.
PANEL_INPUT, PANEL_MODEL, PANEL_SAMPLING, PANEL_OUTPUT = "Input and prompt", "Model and safety", "Sampling", "Output"
PANEL_MEMORY, PANEL_SPEED = "Memory and GPUs", "Speed (opt-in)"
PANEL_BACKEND = "Backend options"  # the default panel of a backend option
PANELS = (PANEL_INPUT, PANEL_MODEL, PANEL_SAMPLING, PANEL_OUTPUT, PANEL_MEMORY, PANEL_SPEED, PANEL_BACKEND)
# The value types a backend option may have: each is one value after its flag (``--numerics original``).
OPTION_TYPES = (str, int, float, Path)
_FLAG = "cosmos_flag"  # the key of an option's Flag in its dataclass field's metadata


@dataclasses.dataclass(frozen=True)
class Flag:
    """How a backend option shows on the command line: its help (what it does, its values, its default), the name
    of its value in the help (``MODE``) and the help panel it goes under (one of :data:`PANELS`)."""

    help: str
    metavar: str = "VALUE"
    panel: str = PANEL_BACKEND


def option(default: Any, *, help: str, metavar: str = "VALUE", panel: str = PANEL_BACKEND) -> Any:
    """A field of a backend's :class:`Backend.Options` that is a flag of `generate` and `batch`::

        @dataclasses.dataclass(frozen=True)
        class MyOptions(Backend.Options):
            tiles: int = option(1, help="Tiles per frame (default 1).", metavar="N", panel=PANEL_SPEED)

    The field's type (one of :data:`OPTION_TYPES`) is the value's; ``default`` is used when the flag is not given."""
    return dataclasses.field(default=default, metadata={_FLAG: Flag(help, metavar, panel)})


def flag_of(field: dataclasses.Field) -> Flag:
    """The :class:`Flag` an Options field declares through :func:`option` (a plain field: no help, the default
    panel)."""
    return field.metadata.get(_FLAG) or Flag(help="")


class Backend(abc.ABC):
    """Base class of model backends."""

    id: str = ""
    version: str = ""

    @dataclasses.dataclass(frozen=True)
    class Options:
        """The options of this backend's own, typed (a backend subclasses it with its fields and defaults, and sets
        ``Options = ThatClass``). A field's name is its flag's (``cp_scheme`` is ``--cp-scheme``); a bad value is
        refused in ``__post_init__`` with a :class:`~cosmos_cli.errors.UsageError` naming the flag. The base has
        none: a backend without options of its own refuses every one."""

        def key_params(self) -> dict[str, Any]:
            """The options that determine the video, for a batch line's resume key and sidecar (default: every
            field); their names must not be those of the job's parameters or ``model``/``network_dir``."""
            return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def parse_options(cls, values: Mapping[str, Any]) -> Backend.Options:
        """``cls.Options`` from ``values``, the backend options the command line gave (name -> value, only those
        given; the others keep their defaults). An option this backend does not have is refused in one line naming
        the flag, and so is a bad value (by the ``Options`` class itself); `generate` and `batch` call this before
        anything loads."""
        known = [f.name for f in dataclasses.fields(cls.Options) if f.init]
        for name in values:
            if name not in known:
                flag = option_flag(name)
                has = (f"its options are {', '.join(map(option_flag, known))}" if known
                       else "it has no options of its own")
                raise UsageError(f"{flag}: the {cls.id} backend has no {flag} option ({has})",
                                 hint=f"Drop {flag}.")
        try:
            return cls.Options(**values)
        except (TypeError, ValueError) as exc:  # a plugin's own check that raised no UsageError
            flags = ", ".join(map(option_flag, values))
            raise UsageError(f"{flags}: {exc}", hint="See --help for the values it takes.") from None
    # Generation options a backend must honour or refuse: a backend that does not implement them says so here,
    # and `generate`/`batch` refuse the option before anything loads instead of ignoring it.
    supports_fast: bool = False  # --fast (step caching, guidance truncation, FP8)
    supports_compile: bool = False  # --compile

    def environment(self) -> dict[str, str]:
        """What this backend found installed that changes how it runs (name -> one line, e.g. an optional kernel
        package), for ``cosmos backends``. Must be fast and import nothing heavy (default: nothing to say)."""
        return {}

    def fast_mode_bytes(self, spec: ModelSpec, fast: Any) -> int:
        """GPU memory the fast options ``fast`` (a :class:`cosmos_cli.fastmode.FastMode`) need beyond the memory
        plan's figures (for example a step cache's stored tensors); `generate` plans with that much less."""
        return 0

    @abc.abstractmethod
    def models(self) -> Sequence[ModelSpec]:
        """The model specs this backend provides."""

    @abc.abstractmethod
    def build_pipeline(self, spec: ModelSpec, plan: MemoryPlan, *, checkpoint_dir: Path, device: str,
                       progress: Progress | None = None, options: Backend.Options | None = None,
                       parallel: ParallelRun | None = None, network_dir: str | None = None,
                       fast: FastMode | None = None, compile: bool = False) -> Pipeline:
        """Load ``spec``'s models from ``checkpoint_dir`` and place them as ``plan`` says.

        ``options``: this backend's :class:`Options` (None: the defaults), from :meth:`parse_options`.
        ``parallel``: the :class:`ParallelRun` from :meth:`start_parallel`, for a split generation (None: one
        process). ``network_dir``: the network's folder under ``checkpoint_dir`` the original's
        ``--diffusion_transformer_dir`` named (None: the spec's). ``fast`` (exact or None unless
        :attr:`supports_fast`) and ``compile`` (False unless :attr:`supports_compile`): the core's speed options.
        """

    def start_parallel(self, spec: ModelSpec, num_gpus: int, *, device: str, command: str = "generate",
                       options: Backend.Options | None = None) -> ParallelRun | None:
        """Join the run of ``num_gpus`` processes that torchrun started to split each generation of ``spec``.

        Called on every rank after the request is validated and before anything loads; raises a ``CosmosError``
        when the work cannot be split that way or the launch does not match (``command`` names the subcommand
        for the hint); ``options`` are this backend's, as for :meth:`build_pipeline`. The default: this backend
        generates in one process only.
        """
        raise UsageError(f"the {self.id} backend cannot split one generation over several GPUs",
                         hint="Use --num-gpus 1 in a single process (to share a batch's lines out over GPUs: "
                              "`cosmos batch --gpus N`).")

    def checkpoint_path(self, spec: ModelSpec, checkpoint_dir: Path) -> Path:
        """Where this spec's own files live (overridable: the bundled demo model lives in the package)."""
        return Path(checkpoint_dir)
