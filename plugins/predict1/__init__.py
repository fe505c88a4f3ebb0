"""Built-in backend: NVIDIA Cosmos-Predict1 Video2World (7B, 14B), native PyTorch.

Registered through the ``cosmos`` entry-point group like any third-party backend. Importing this module
does not import torch: the models are built only when a pipeline is.
"""

from __future__ import annotations

from pathlib import Path

from cosmos_cli.backend import Backend
from cosmos_cli.hookspecs import hookimpl

from .specs import BACKEND_ID, SPECS

__version__ = "0.1.0"


class Predict1Backend(Backend):
    id = BACKEND_ID
    version = __version__

    def models(self):
        return SPECS

    def build_pipeline(self, spec, plan, *, checkpoint_dir: Path, device: str, progress=None, options=None):
        from .pipeline import Predict1Pipeline

        options = dict(options or {})
        return Predict1Pipeline.load(spec, plan, checkpoint_dir=self.checkpoint_path(spec, checkpoint_dir),
                                     device=device, progress=progress, numerics=options.get("numerics", "fp32"),
                                     network_dir=options.get("network_dir"))


@hookimpl
def register_backends(register):
    register(Predict1Backend())
