"""``cosmos`` as a user runs it, for ``bench_e2e.py``: ``python benchmarks/e2e_cli.py generate ...`` is
``cosmos generate ...`` (``cosmos_cli.app.main``) with one change: the full-size specs' pinned MD5 checksums of
released files are cleared, because a folder of random weights cannot match them (the tokenizer's ``.jit`` files
are checked against their pins when loaded). Everything else, the command line, the registry lookup, planning,
loading and writing, is the product's own code. ``COSMOS_BENCH_FLASH4_TILE=MxN`` in the environment sets
``flash4.SM90_TILE`` (an experiment: the forward tile of flash-attn-4 on Hopper)."""

from __future__ import annotations

import dataclasses
import os
import sys


def unpin_full_size_specs() -> list[str]:
    """Clear ``CheckpointFile.md5`` in every Predict1 spec that pins one; returns the names changed."""
    from cosmos_plugins.predict1 import specs

    changed = []
    for name, spec in specs.SPECS.items():
        if any(f.md5 for f in spec.files):
            specs.SPECS[name] = dataclasses.replace(
                spec, files=tuple(dataclasses.replace(f, md5=None) for f in spec.files))
            changed.append(name)
    return changed


def set_flash4_tile() -> None:
    tile = os.environ.get("COSMOS_BENCH_FLASH4_TILE")
    if tile:
        from cosmos_plugins.predict1 import flash4

        flash4.SM90_TILE = tuple(int(n) for n in tile.lower().split("x"))


if __name__ == "__main__":
    unpin_full_size_specs()
    set_flash4_tile()
    from cosmos_cli.app import main

    sys.argv[0] = "cosmos"
    sys.exit(main())
