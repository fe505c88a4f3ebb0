"""The `cosmos` command: wires the subcommands and runs the one error path."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from cosmos_cli import __version__
from cosmos_cli.commands import backends, batch, download, generate, memory_plan, validate
from cosmos_cli.errors import CosmosError, quiet_on_this_rank, torchrun_follower_exits, torchrun_leader_exits
from cosmos_cli.options import normalize_option_name


def create_app(**kwargs) -> typer.Typer:
    """The one Typer factory: the same defaults for the root app and any sub-app."""
    return typer.Typer(
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        rich_markup_mode="rich",
        add_completion=False,
        # normalize_option_name: the original's spelling of every option (``--checkpoint_dir``) and the aliases in
        # options.OPTION_ALIASES are read as the option they name, on every command, without crowding the help
        context_settings={"help_option_names": ["-h", "--help"], "token_normalize_func": normalize_option_name},
        **kwargs,
    )


app = create_app(help="Run Cosmos-Predict1 Video2World world models: generate, batch, download, validate, plan memory.")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cosmos {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool | None, typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = None,
) -> None:
    """cosmos: Video2World generation that fits your GPU."""


app.command("generate")(generate.generate)
app.command("batch")(batch.batch)
app.command("validate")(validate.validate)
app.command("download")(download.download)
app.command("memory-plan")(memory_plan.memory_plan)
app.command("backends")(backends.backends)


def report_error(exc: CosmosError) -> None:
    print(f"error: {exc.message}", file=sys.stderr)
    if exc.hint:
        print(f"hint: {exc.hint}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one line + a hint for every CosmosError, the traceback only with COSMOS_DEBUG=1.

    Under torchrun, a rank other than 0 with an error that rank 0 prints (one every rank raises alike) exits 0
    without printing, and rank 0 waits for those ranks before it exits with the error's code: torchrun then stops no
    process (no SIGTERM lines) and its summary lists rank 0 alone, with our message (see cosmos_cli.errors)."""
    # OpenMP threads spin between parallel regions by default: on a CPU shared with any other busy process each
    # region then waits for a descheduled spinner. The demo generation on 2 cores beside busy processes: 63 and 33 s
    # spinning, 30 and 22 s passive. Set before torch loads libgomp (torch is imported lazily, after this); a value
    # the user set is kept.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        app(args=argv, prog_name="cosmos")
    except CosmosError as exc:
        if os.environ.get("COSMOS_DEBUG") == "1":
            raise
        if quiet_on_this_rank(exc):
            torchrun_follower_exits()
            sys.exit(0)
        report_error(exc)
        torchrun_leader_exits(exc)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
