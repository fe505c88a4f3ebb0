"""A third-party backend in its smallest form: one hook implementation, one model spec, one option of its own."""

from dataclasses import dataclass

from cosmos_cli.backend import PANEL_SAMPLING, Backend, option
from cosmos_cli.hookspecs import hookimpl
from cosmos_cli.specs import NETWORK, Component, ModelSpec, Strategy

SPEC = ModelSpec(
    name="Example-Video2World",
    backend="example",
    description="an example third-party model",
    aliases=("example-v2w",),
    components=(Component(NETWORK, ("denoise",), num_params=1000),),
    strategies=(Strategy("resident", "the network stays on the GPU"),),  # the memory strategies it implements
)


@dataclass(frozen=True)
class ExampleOptions(Backend.Options):
    # `cosmos generate --motion 0.5` (and batch): the core adds the flag, this class checks the value
    motion: float = option(1.0, metavar="SCALE", panel=PANEL_SAMPLING,
                           help="How much the example model moves the scene (default 1.0; example backend).")

    def __post_init__(self):
        if not 0 <= self.motion <= 2:
            raise ValueError(f"must be between 0 and 2, got {self.motion}")


class ExampleBackend(Backend):
    id = "example"
    version = "1.2.3"
    Options = ExampleOptions

    def models(self):
        return (SPEC,)

    def build_pipeline(self, spec, plan, *, checkpoint_dir, device, progress=None, options=None, parallel=None,
                       network_dir=None, fast=None, compile=False):
        raise NotImplementedError("the example backend only demonstrates registration")


@hookimpl
def register_backends(register):
    register(ExampleBackend())
