"""What the launcher told this process: its rank, the number of processes, its local rank (torch-free).

torchrun (``torch.distributed.run``) starts every worker with ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set
(and ``MASTER_ADDR``/``MASTER_PORT`` for the rendezvous); a plain ``cosmos`` process has none of them and is
rank 0 of 1. The core and the backends read these variables only through :func:`launch_env`, so they agree on
what an unset or empty variable means.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class LaunchEnv:
    """This process's place in a launch: rank ``rank`` of ``world_size``, on the machine's ``local_rank``-th GPU.

    ``launched`` is True when ``WORLD_SIZE`` is set at all (torchrun or a launcher like it started the process),
    even to 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False

    @property
    def is_parallel(self) -> bool:
        """More than one process was started."""
        return self.world_size > 1

    @property
    def is_primary(self) -> bool:
        """Rank 0 of several processes, or the only one: the process that prints and writes."""
        return self.world_size <= 1 or self.rank == 0


def _int_var(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "")
    return int(raw) if raw.strip() else default  # unset or empty: the default (a malformed value raises ValueError)


def launch_env(environ: Mapping[str, str] | None = None) -> LaunchEnv:
    """The launch variables of ``environ`` (default: this process's environment).

    ``LOCAL_RANK`` defaults to ``RANK`` (one machine) when a launcher sets only the global rank."""
    env = os.environ if environ is None else environ
    rank = _int_var(env, "RANK", 0)
    return LaunchEnv(rank=rank, world_size=_int_var(env, "WORLD_SIZE", 1), local_rank=_int_var(env, "LOCAL_RANK", rank),
                     launched="WORLD_SIZE" in env)


def is_primary() -> bool:
    """False in the torchrun processes other than rank 0, which leave printing and writing to rank 0."""
    return launch_env().is_primary
