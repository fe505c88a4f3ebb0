"""Running a batch for a command: the progress display on stderr, the summary on stdout, the exit code it earned.

Shared by `cosmos batch` and `cosmos generate --batch-input-path` (the original's way to run a batch), so the two
commands report a batch alike.
"""

from __future__ import annotations

import json

import typer

from cosmos_cli.batch.display import BatchDisplay
from cosmos_cli.batch.plan import BatchRequest
from cosmos_cli.batch.runners import run_batch
from cosmos_cli.errors import GenerationError
from cosmos_cli.launch import is_primary
from cosmos_cli.progress import stderr_is_interactive
from cosmos_cli.signals import Interrupted


def run_and_print(request: BatchRequest, as_json: bool, quiet: bool = False) -> None:
    """Run the batch with a progress display on stderr (``quiet``: warnings and errors only); the summary on
    stdout; the exit code it earned."""
    mode = "quiet" if as_json or quiet else ("rich" if stderr_is_interactive() else "lines")
    outcome = run_batch(request, BatchDisplay(mode, drop_notes=quiet))
    if is_primary():
        typer.echo(json.dumps(outcome.summary(), indent=2) if as_json else outcome.summary_line())
    if outcome.interrupted:
        raise Interrupted(f"interrupted ({'SIGTERM' if outcome.terminated else 'Ctrl-C'}): run the same command "
                          "again to resume (finished lines are skipped)", exit_code=outcome.exit_code)
    if outcome.exit_code:
        counts = outcome.counts  # (a streamed batch's outcome has the counts, not the records)
        missing = sum(v for k, v in counts.items() if k not in ("ok", "skipped"))
        raise GenerationError(f"{missing} of {sum(counts.values())} lines have no output",
                              hint=f"See {outcome.report_path}; run the same command again to retry them "
                                   "(finished lines are skipped).")
