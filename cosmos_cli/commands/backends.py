"""`cosmos backends`: the registered model backends and the models each provides."""

from __future__ import annotations

import dataclasses
import json

import typer
from rich.console import Console
from rich.table import Table

from cosmos_cli.backend import option_flag
from cosmos_cli.options import JsonOpt
from cosmos_cli.registry import backends as registered_backends
from cosmos_cli.registry import load_report


def backends(
    as_json: JsonOpt = False,
    show_all: bool = typer.Option(False, "--all", help="Also list hidden test configurations."),
) -> None:
    """List registered backends with their version, models and own options (flags of generate and batch)."""
    found = registered_backends()
    report = load_report()
    rows = [
        {"backend": b.id, "version": b.version, "environment": b.environment(),
         "options": [option_flag(f.name) for f in dataclasses.fields(b.Options) if f.init],
         "models": [{"name": s.name, "aliases": list(s.aliases), "description": s.description}
                    for s in b.models() if show_all or not s.hidden]}
        for b in found
    ]
    if as_json:
        typer.echo(json.dumps({"backends": rows, "failed_plugins": [{"plugin": n, "error": e} for n, e in report.failed]},
                              indent=2))
        return
    table = Table(title="cosmos backends")
    for col in ("backend", "version", "model", "aliases", "description"):
        table.add_column(col)
    for r in rows:
        for i, m in enumerate(r["models"] or [{"name": "-", "aliases": [], "description": ""}]):
            table.add_row(r["backend"] if i == 0 else "", r["version"] if i == 0 else "", m["name"],
                          ", ".join(m["aliases"]), m["description"])
    Console().print(table)
    for r in rows:
        if r["options"]:
            Console().print(f"{r['backend']}: options: {', '.join(r['options'])}", highlight=False, markup=False)
        for name, found in r["environment"].items():
            Console().print(f"{r['backend']}: {name}: {found}", highlight=False, markup=False)
    for name, err in report.failed:
        Console(stderr=True).print(f"[red]plugin {name} failed to load:[/red] {err}")
