"""Built-in backend: NVIDIA Cosmos-Predict1 Video2World (7B, 14B, and the bundled demo model), native PyTorch.

Registered through the ``cosmos`` entry-point group like any third-party backend. Importing this module
does not import torch: the models are built only when a pipeline is.
"""

from __future__ import annotations

import os
from pathlib import Path

from cosmos_cli.backend import Backend
from cosmos_cli.errors import UsageError
from cosmos_cli.hookspecs import hookimpl

from .options import FLASH4, Predict1Options
from .specs import BACKEND_ID, PREDICT1_DEMO, SPECS

__version__ = "0.1.0"

# The bundled demo checkpoint: assets/demo, installed as the package `cosmos_demo_assets` (pyproject package-dir).
BUNDLED_PACKAGE = "cosmos_demo_assets"


def bundled_checkpoint_dir() -> Path:
    """The folder holding the demo model's files: the installed ``cosmos_demo_assets`` package, or
    ``assets/demo`` of a source checkout when that package is not installed."""
    from importlib.resources import files

    try:
        return Path(str(files(BUNDLED_PACKAGE)))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "assets" / "demo"


class Predict1Backend(Backend):
    id = BACKEND_ID
    version = __version__
    supports_fast = True
    supports_compile = True
    Options = Predict1Options  # --numerics, --cp-scheme, --attention

    def environment(self) -> dict[str, str]:
        """The optional package it would use (flash-attn-4, :mod:`.flash4`), from the installed distributions'
        metadata: nothing is imported, so ``cosmos backends`` stays fast (whether its CUDA libraries load and the
        GPU has its kernels is known at the first generation, whose ``--json`` details name the kernel used)."""
        from importlib import metadata

        dist = FLASH4
        try:
            found = f"{dist} {metadata.version(dist)} installed (used on GPUs of compute capability 9.x and 10.x)"
        except metadata.PackageNotFoundError:
            found = f"PyTorch SDPA ({dist} is not installed; `pip install {dist}` for a faster step on Hopper)"
        return {"attention": found}

    def fast_mode_bytes(self, spec, fast) -> int:
        """The step cache's memory: per guidance branch it keeps two (tokens x width) tensors from step to step
        (the first blocks' residual, the other blocks' residual) and a forward holds three more while it
        decides (the input, the first blocks' output, their residual), both branches at once when batched: at
        most 4 + 6 = 10 such tensors in the network's dtype (bf16). 7B default job: 4.3 GiB."""
        if getattr(fast, "step_cache", None) is None:
            return 0
        from .parallel import latent_shape_of
        from .params import dit_tokens

        return 10 * dit_tokens(spec.network, *latent_shape_of(spec)) * spec.network.model_channels * 2

    def models(self):
        return tuple(SPECS.values())

    def checkpoint_path(self, spec, checkpoint_dir: Path) -> Path:
        """The demo model ships with the package and is found wherever --checkpoint-dir points; every other
        model lives under --checkpoint-dir."""
        return bundled_checkpoint_dir() if spec == PREDICT1_DEMO else Path(checkpoint_dir)

    def build_pipeline(self, spec, plan, *, checkpoint_dir: Path, device: str, progress=None,
                       options: Predict1Options | None = None, parallel=None, network_dir: str | None = None,
                       fast=None, compile: bool = False):
        from .pipeline import Predict1Pipeline

        options = options or Predict1Options()
        if spec == PREDICT1_DEMO and Path(checkpoint_dir) != Path("checkpoints") and progress is not None:
            progress.warning(f"note: the demo model's files ship with the package ({bundled_checkpoint_dir()}); "
                             f"--checkpoint-dir {checkpoint_dir} is not used")
        return Predict1Pipeline.load(spec, plan, checkpoint_dir=self.checkpoint_path(spec, checkpoint_dir),
                                     device=device, progress=progress, numerics=options.numerics,
                                     network_dir=network_dir, parallel=parallel, cp_scheme=options.cp_scheme,
                                     fast=fast, compile=compile, attention=options.attention)

    def start_parallel(self, spec, num_gpus: int, *, device: str, command: str = "generate",
                       options: Predict1Options | None = None):
        """Context parallelism (:mod:`.parallel`): refuse a GPU count or scheme that cannot split ``spec``'s job
        (before joining, so no process waits for the others to fail alike), then join torchrun's run."""
        from . import parallel as P

        options = options or Predict1Options()
        scheme = options.cp_scheme
        if num_gpus > 1 and options.attention == FLASH4:  # before the rendezvous (the load checks the device)
            raise UsageError(f"--attention {FLASH4}: a generation split over GPUs (--num-gpus {num_gpus}) runs "
                             f"its own distributed attention", hint="Drop --attention, or use --num-gpus 1.")
        if num_gpus > 1:  # the same checks as the layout choice after the memory plan (they do not depend on it)
            P.choose_layout(num_gpus, spec.network, P.latent_shape_of(spec),
                            scheme=os.environ.get(P.SCHEME_ENV, "auto") if scheme == "auto" else scheme,
                            attention=os.environ.get(P.ATTENTION_ENV, "auto"))
        return P.init_distributed(num_gpus, device=device, command=command)


@hookimpl
def register_backends(register):
    register(Predict1Backend())
