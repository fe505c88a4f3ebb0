"""The one hookspec of the plugin system.

A backend plugin is a module (or object) with a ``register_backends`` hook implementation, exposed through
the ``cosmos`` entry-point group::

    # pyproject.toml of a third-party backend
    [project.entry-points.cosmos]
    mybackend = "my_package.cosmos_plugin"

    # my_package/cosmos_plugin.py
    from cosmos_cli.hookspecs import hookimpl

    @hookimpl
    def register_backends(register):
        register(MyBackend())
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("cosmos")
hookimpl = pluggy.HookimplMarker("cosmos")


@hookspec
def register_backends(register) -> None:
    """Call ``register(backend)`` once for each :class:`cosmos_cli.backend.Backend` this plugin provides."""
