"""Conversions a spec entry names (``CheckpointFile.convert``): fetched files made into those loaders read.

A conversion is the backend's: its spec lists it (``ModelSpec.conversions``, a :class:`~cosmos_cli.specs.Conversion`)
and the download finds it by name among the registered specs, so the core holds no model's conversion.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from cosmos_cli.specs import Conversion

if TYPE_CHECKING:
    from cosmos_cli.download.plan import ConversionPlan


def registered_conversions() -> dict[str, Conversion]:
    """Every conversion a registered spec provides, by name (the first spec to name one wins)."""
    from cosmos_cli.registry import all_models

    found: dict[str, Conversion] = {}
    for _, spec in all_models(include_hidden=True):
        for conv in spec.conversions:
            found.setdefault(conv.name, conv)
    return found


class _Registered(Mapping[str, Conversion]):
    """:func:`registered_conversions` as a read-only mapping, asked anew at each use (no registry at import)."""

    def __getitem__(self, name: str) -> Conversion:
        return registered_conversions()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(registered_conversions())

    def __len__(self) -> int:
        return len(registered_conversions())


CONVERSIONS: Mapping[str, Conversion] = _Registered()


def _run_conversion(conv: ConversionPlan, inputs: dict[str, Path], ckdir: Path) -> None:
    CONVERSIONS[conv.name].run(inputs, {o: ckdir / o for o in conv.outputs})
    if conv.staging:
        shutil.rmtree(ckdir / conv.staging, ignore_errors=True)
