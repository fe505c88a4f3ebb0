"""Backend registry: plugins discovered through the ``cosmos`` entry-point group.

Built-in backends (``plugins/``) are registered exactly like third-party ones, through the entry points
declared in their distribution's metadata. ``COSMOS_LOAD_PLUGINS=a,b`` restricts loading to the named
entry points (an empty value loads none). Nothing is loaded at import time: the first call to
:func:`plugin_manager` loads the plugins, and :func:`backends` asks them to register each time it is called,
so tests can register and unregister fake plugins on the same manager.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from dataclasses import dataclass, field
from functools import lru_cache

import pluggy

from cosmos_cli import hookspecs
from cosmos_cli.backend import Backend
from cosmos_cli.errors import PluginError, UnknownModelError
from cosmos_cli.specs import OPTIONAL_SWITCHES, PLACEMENTS, ModelSpec, Strategy

ENTRY_POINT_GROUP = "cosmos"


@dataclass
class LoadReport:
    """What happened while loading plugins: loaded names and one-line failures."""

    loaded: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


_report = LoadReport()


@lru_cache(maxsize=1)
def plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("cosmos")
    pm.add_hookspecs(hookspecs)
    wanted = os.environ.get("COSMOS_LOAD_PLUGINS")
    allow = None if wanted is None else {n.strip() for n in wanted.split(",") if n.strip()}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if allow is not None and ep.name not in allow:
            continue
        if pm.has_plugin(ep.name):
            continue
        try:
            module = ep.load()
            pm.register(module, name=ep.name)
        except Exception as exc:  # a broken third-party plugin must not take the CLI down
            _report.failed.append((ep.name, f"{type(exc).__name__}: {exc}"))
            print(f"warning: plugin {ep.name!r} failed to load: {exc}", file=sys.stderr)
            continue
        _report.loaded.append(ep.name)
    return pm


def load_report() -> LoadReport:
    plugin_manager()
    return _report


def backends() -> list[Backend]:
    """Every registered backend, validated; raises PluginError on a malformed or conflicting one."""
    found: list[Backend] = []

    def register(backend: Backend) -> None:
        found.append(backend)

    plugin_manager().hook.register_backends(register=register)
    ids: set[str] = set()
    names: dict[str, str] = {}
    for b in found:
        if not isinstance(b, Backend) or not b.id or not b.version:
            raise PluginError(f"a plugin registered {b!r}, which is not a cosmos Backend with an id and a version")
        if b.id in ids:
            raise PluginError(f"two plugins registered a backend with the id {b.id!r}")
        ids.add(b.id)
        for spec in b.models():
            if not isinstance(spec, ModelSpec):
                raise PluginError(f"backend {b.id!r} listed {spec!r}, which is not a ModelSpec")
            _check_strategies(b.id, spec)
            for n in spec.all_names:
                key = n.lower()
                if key in names and names[key] != spec.name:
                    raise PluginError(f"model name {n!r} is claimed by both {names[key]!r} and {spec.name!r}")
                names[key] = spec.name
    return found


def _check_strategies(backend: str, spec: ModelSpec) -> None:
    """A spec's strategies (``ModelSpec.strategies``): at least one, each a :class:`Strategy` of its own name with
    known placements; and its components' ``left_out_by`` switches known. Anything else is a malformed plugin, said
    in one line when the backends load."""
    where = f"backend {backend!r}: {spec.name}"
    if not spec.strategies:
        raise PluginError(f"{where} declares no memory strategy",
                          hint="ModelSpec.strategies lists the strategies the backend implements, fastest first.")
    names = [getattr(s, "name", None) for s in spec.strategies]
    for s in spec.strategies:
        if not isinstance(s, Strategy):
            raise PluginError(f"{where} lists {s!r} as a memory strategy, which is not a cosmos Strategy")
        odd = sorted({p for _, p in s.placements} - set(PLACEMENTS) | ({s.others} - set(PLACEMENTS)))
        if odd:
            raise PluginError(f"{where}: strategy {s.name!r} uses unknown placements {odd}",
                              hint=f"A placement is one of: {', '.join(PLACEMENTS)}.")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise PluginError(f"{where} lists memory strategies of one name twice: {twice}")
    switches = sorted({c.left_out_by for c in spec.components if c.left_out_by} - set(OPTIONAL_SWITCHES))
    if switches:
        raise PluginError(f"{where}: a component is left out by unknown switches {switches}",
                          hint=f"Component.left_out_by is one of: {', '.join(OPTIONAL_SWITCHES)} (or empty).")


def all_models(include_hidden: bool = False) -> list[tuple[Backend, ModelSpec]]:
    return [(b, s) for b in backends() for s in b.models() if include_hidden or not s.hidden]


def find_model(name: str) -> tuple[Backend, ModelSpec]:
    """The backend and spec for a model name or alias (case-insensitive); a clear error lists the valid ones."""
    key = name.strip().lower()
    pairs = all_models(include_hidden=True)
    for b, s in pairs:
        if key in (n.lower() for n in s.all_names):
            return b, s
    valid = ", ".join(f"{s.name} ({', '.join(s.aliases)})" if s.aliases else s.name for _, s in pairs if not s.hidden)
    raise UnknownModelError(
        f"unknown model {name!r}",
        hint=f"Valid models: {valid}." if valid else "No backend is registered: run `cosmos backends`.",
    )


def find_model_for_folder(folder_name: str) -> tuple[Backend, ModelSpec]:
    """The model a --diffusion_transformer_dir folder names: the folder's name without the suffixes the specs
    declare (``ModelSpec.network_dir_suffixes``, Predict1's ``_post-trained`` folders), dropped in that order."""
    name = folder_name
    for suffix in dict.fromkeys(x for _, s in all_models(include_hidden=True) for x in s.network_dir_suffixes):
        name = name.removesuffix(suffix)
    return find_model(name)


def default_model_name() -> str:
    """The model commands use without --model: the spec a backend marks default, else the first listed."""
    pairs = all_models()
    for _, s in pairs:
        if s.is_default:
            return s.name
    if not pairs:
        raise PluginError("no model backend is registered", hint="Reinstall cosmos-cli or check COSMOS_LOAD_PLUGINS.")
    return pairs[0][1].name
