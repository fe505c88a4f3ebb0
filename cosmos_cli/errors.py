"""The one error path.

Library code raises a :class:`CosmosError` subclass with a one-line ``message`` and an optional ``hint``
(what to do next). :func:`cosmos_cli.app.main` catches it once, prints both on stderr and exits with the
class's ``exit_code``: 1 for bad input or a failed run, 2 for usage errors.

In a run of several processes (torchrun, ``--num-gpus N``) every process goes through ``main()``; only rank 0
prints the errors every rank raises alike (see :func:`quiet_on_this_rank`).
"""

from __future__ import annotations

import json
import os
import time

from cosmos_cli.launch import launch_env


class CosmosError(Exception):
    """Base of every error the user should see as one line, not a traceback."""

    exit_code = 1
    default_hint: str | None = None

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def __str__(self) -> str:
        return self.message


class UsageError(CosmosError):
    """A flag or argument combination that cannot work (exit code 2)."""

    exit_code = 2
    default_hint = "Run the command with --help to see the options."


class InputError(CosmosError):
    """A bad input file: image, video, JSONL line."""


class ValidationFailed(CosmosError):
    """A batch file with errors; the errors themselves were already printed."""


class UnknownModelError(UsageError):
    """A model name or alias no registered backend provides."""


class CheckpointError(CosmosError):
    """A missing, incomplete or mismatched checkpoint file."""

    default_hint = "Run `cosmos download --model <name>` or point --checkpoint-dir at the folder that holds the checkpoints."


class PluginError(CosmosError):
    """A backend plugin that failed to load or registered something invalid."""

    default_hint = "Set COSMOS_LOAD_PLUGINS to a comma-separated list of the plugins to load, or fix the plugin."


class MemoryPlanError(CosmosError):
    """No memory strategy fits, or an explicit strategy does not fit."""


class GenerationError(CosmosError):
    """A generation that failed for a reason that is not the input's fault."""


class OutputExistsError(CosmosError):
    """Refusing to overwrite a finished output."""

    default_hint = "Choose another --video-save-name / --output-dir, or pass --overwrite."


class MissingDependencyError(CosmosError):
    """An optional dependency is not installed."""


class GuardrailBlocked(CosmosError):
    """A guardrail blocked the prompt or the video: nothing was written."""

    default_hint = "Change the prompt or the input. Blocked outputs are never written."


class RankError(GenerationError):
    """One process's own failure in a run of several processes (a lost peer, a timeout, out of memory on its
    GPU): unlike the errors every rank raises alike, it is printed by the rank that raised it."""


def quiet_on_this_rank(exc: BaseException) -> bool:
    """Whether ``main()`` should exit without printing ``exc``: in a torchrun process other than rank 0 (``RANK``),
    an error that every rank raises alike (validation, usage: rank 0 prints it) or that echoes rank 0's. A
    :class:`RankError` and non-Cosmos exceptions (bugs) are printed on every rank."""
    return (launch_env().rank != 0 and isinstance(exc, CosmosError)
            and not isinstance(exc, RankError))


# How a failing run under torchrun ends. torchrun (torch.distributed.elastic, torch 2.13) treats any non-zero exit of a
# worker as a failure: it sends SIGTERM to every worker still running (one log line each), then prints a
# ChildFailedError traceback with a summary of every failed worker (torch/distributed/elastic/multiprocessing/api.py
# ``_poll``, errors/__init__.py ``ChildFailedError``). A worker that exits 0 is finished, not failed. So for an error
# every rank raises alike: the other ranks count themselves out in the launcher's key-value store and exit 0; rank 0
# writes our line into the launcher's error file, waits (at most TORCHRUN_WAIT_S) until they have, and exits with the
# error's code. What remains is torchrun's summary of rank 0 alone, showing our line. Without the agent's store
# (another launcher), rank 0 exits at once and torchrun may still stop a slower rank with SIGTERM.
# The wait ends as soon as every other rank has counted itself out; its bound only matters when one is far behind:
# 10 s was once too short on a 2-core machine running two other test processes (a rank importing torch at a
# quarter of a core), so it is 30 s.
TORCHRUN_WAIT_S = 30.0
_EXITED_KEY = "cosmos/quiet-exits"


def _agent_store():
    """The torchrun agent's TCPStore (MASTER_ADDR:MASTER_PORT when TORCHELASTIC_USE_AGENT_STORE), else None."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or "MASTER_PORT" not in os.environ:
        return None
    from datetime import timedelta

    import torch.distributed as dist

    try:
        return dist.TCPStore(os.environ.get("MASTER_ADDR", "localhost"), int(os.environ["MASTER_PORT"]),
                             is_master=False, timeout=timedelta(seconds=5))
    except (RuntimeError, OSError, ValueError):  # no store to reach: exit without counting (see above)
        return None


def torchrun_follower_exits() -> None:
    """A rank > 0 leaving an error to rank 0: count itself out so that rank 0 knows it is gone."""
    store = _agent_store()
    if store is not None:
        store.add(_EXITED_KEY, 1)


def torchrun_leader_exits(exc: CosmosError) -> None:
    """Rank 0 under torchrun, after printing ``exc``: our line in the launcher's error file (the summary shows it
    instead of a pointer to torch's documentation), then wait for the ranks that exit quietly."""
    launch = launch_env()
    if not launch.is_parallel or launch.rank != 0:
        return
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        # the format torch's ErrorHandler.record_exception writes; the summary shows extraInfo.py_callstack
        text = f"error: {exc.message}" + (f" (hint: {exc.hint})" if exc.hint else "")
        try:
            with open(path, "w", encoding="utf-8") as fp:
                json.dump({"message": {"message": text, "extraInfo": {"py_callstack": text,
                                                                      "timestamp": str(int(time.time()))}}}, fp)
        except OSError:
            pass  # the summary then shows torchrun's own text; our line is on stderr already
    store = _agent_store()
    if store is None:
        return
    others = launch.world_size - 1
    deadline = time.monotonic() + TORCHRUN_WAIT_S
    while store.add(_EXITED_KEY, 0) < others and time.monotonic() < deadline:
        time.sleep(0.05)
