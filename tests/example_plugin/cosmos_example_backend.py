"""A third-party backend in its smallest form: one hook implementation, one model spec."""

from cosmos_cli.backend import Backend
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


class ExampleBackend(Backend):
    id = "example"
    version = "1.2.3"

    def models(self):
        return (SPEC,)

    def build_pipeline(self, spec, plan, *, checkpoint_dir, device, progress=None, options=None, parallel=None,
                       network_dir=None, fast=None, compile=False):
        raise NotImplementedError("the example backend only demonstrates registration")


@hookimpl
def register_backends(register):
    register(ExampleBackend())
