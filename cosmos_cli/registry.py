"""Backend registry: plugins discovered through the ``cosmos`` entry-point group.

Built-in backends (``plugins/``) are registered exactly like third-party ones, through the entry points
declared in their distribution's metadata. ``COSMOS_LOAD_PLUGINS=a,b`` restricts loading to the named
entry points (an empty value loads none). Nothing is loaded at import time: the first call to
:func:`plugin_manager` loads the plugins, and :func:`backends` asks them to register each time it is called,
so tests can register and unregister fake plugins on the same manager.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import sys
import typing
from dataclasses import dataclass, field
from functools import lru_cache

import pluggy

from cosmos_cli import hookspecs
from cosmos_cli.backend import OPTION_TYPES, PANEL_BACKEND, PANELS, Backend, Flag, flag_of, option_flag
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


@dataclass(frozen=True)
class BackendFlag:
    """One flag that backends' options make (:func:`option_flags`): the option's name (``cp_scheme``), its value's
    type, how it shows (the first declaring backend's :class:`~cosmos_cli.backend.Flag`) and the backends that
    declare it."""

    name: str
    type: type
    flag: Flag
    backends: tuple[str, ...]


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        print(f"warning: {message}", file=sys.stderr)


def option_flags(taken: frozenset[str] = frozenset()) -> list[BackendFlag]:
    """The flags of every registered backend's options (:class:`Backend.Options` fields), in registration and field
    order, for `generate` and `batch`. ``taken``: the names the command has already (parameter names and flags
    without dashes, ``compile_blocks`` and ``compile``); an option that would reuse one, or be read as another
    option's alias, has no flag. Two backends may share an option of one type (one flag, the first one's help).
    What cannot be a flag (another type, a clash) is said in one warning and left out, so a faulty third-party
    plugin cannot take the commands down; nor can a backend that fails validation: its error comes when it is used.
    """
    from cosmos_cli.options import normalize_option_name

    try:
        found = backends()
    except PluginError as exc:
        _warn_once(f"no backend options on the command line: {exc.message}")
        return []
    flags: dict[str, BackendFlag] = {}
    for b in found:
        try:
            hints = typing.get_type_hints(b.Options)
        except Exception as exc:  # noqa: BLE001 - a plugin's annotations that do not resolve
            _warn_once(f"backend {b.id!r}: its options have no readable types ({exc}); they have no flags")
            continue
        for f in dataclasses.fields(b.Options):
            if not f.init:
                continue
            kind, shown, flag = hints.get(f.name), option_flag(f.name), flag_of(f)
            dashless = shown.removeprefix("--")
            if kind not in OPTION_TYPES:
                _warn_once(f"backend {b.id!r}: option {shown} is of type {kind!r}, not one of "
                           f"{', '.join(t.__name__ for t in OPTION_TYPES)}; it has no flag")
            elif {f.name, dashless} & taken or normalize_option_name(dashless) != dashless:
                _warn_once(f"backend {b.id!r}: option {shown} is a cosmos option's name; it has no flag")
            elif f.name in flags and flags[f.name].type is not kind:
                _warn_once(f"backend {b.id!r}: option {shown} is of type {kind.__name__}, backend "
                           f"{flags[f.name].backends[0]!r} declares it {flags[f.name].type.__name__}; {b.id!r}'s "
                           "has no flag")
            elif f.name in flags:
                flags[f.name] = dataclasses.replace(flags[f.name], backends=(*flags[f.name].backends, b.id))
            else:
                if flag.panel not in PANELS:
                    _warn_once(f"backend {b.id!r}: option {shown} asks for help panel {flag.panel!r}; it is under "
                               f"{PANEL_BACKEND!r}")
                    flag = dataclasses.replace(flag, panel=PANEL_BACKEND)
                flags[f.name] = BackendFlag(f.name, kind, flag, (b.id,))
    return list(flags.values())


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
