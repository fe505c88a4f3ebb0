"""The interface a model backend implements.

A backend is registered by a plugin (see :mod:`cosmos_cli.hookspecs`). The core asks it for its
:class:`~cosmos_cli.specs.ModelSpec` list and, to generate, for a :class:`Pipeline` built for one spec
under one :class:`~cosmos_cli.planner.MemoryPlan`. The core never imports a backend's modules directly.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from cosmos_cli.jobs import GenerationJob, GenerationResult
    from cosmos_cli.planner import MemoryPlan
    from cosmos_cli.progress import Progress
    from cosmos_cli.specs import ModelSpec


class Pipeline(Protocol):
    """Loaded models placed by a memory plan; generates one job at a time and keeps its models loaded."""

    def generate(self, job: GenerationJob, progress: Progress, *, video_path: Path,
                 prompt_path: Path | None = None) -> GenerationResult:
        """Generate ``job``; write the video (atomically) to ``video_path`` and the final prompt to ``prompt_path``."""

    def close(self) -> None:
        """Release the models."""


class Backend(abc.ABC):
    """Base class of model backends."""

    id: str = ""
    version: str = ""

    @abc.abstractmethod
    def models(self) -> Sequence[ModelSpec]:
        """The model specs this backend provides."""

    @abc.abstractmethod
    def build_pipeline(self, spec: ModelSpec, plan: MemoryPlan, *, checkpoint_dir: Path, device: str,
                       progress: Progress | None = None, options: Mapping[str, Any] | None = None) -> Pipeline:
        """Load ``spec``'s models from ``checkpoint_dir`` and place them as ``plan`` says.

        ``options`` carries backend-specific settings chosen on the command line (for example numerics).
        """

    def checkpoint_path(self, spec: ModelSpec, checkpoint_dir: Path) -> Path:
        """Where this spec's own files live (overridable: the bundled demo model lives in the package)."""
        return Path(checkpoint_dir)
