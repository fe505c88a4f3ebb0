"""The one error path.

Library code raises a :class:`CosmosError` subclass with a one-line ``message`` and an optional ``hint``
(what to do next). :func:`cosmos_cli.app.main` catches it once, prints both on stderr and exits with the
class's ``exit_code``: 1 for bad input or a failed run, 2 for usage errors.

In a run of several processes (torchrun, ``--num-gpus N``) every process goes through ``main()``; only rank 0
prints the errors every rank raises alike (see :func:`quiet_on_this_rank`).
"""

from __future__ import annotations

import os


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
    return (int(os.environ.get("RANK", "0") or 0) != 0 and isinstance(exc, CosmosError)
            and not isinstance(exc, RankError))
