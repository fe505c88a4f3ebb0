"""torchrun's launch variables, read in one place (cosmos_cli.launch)."""

from __future__ import annotations

import pytest

from cosmos_cli.launch import LaunchEnv, is_primary, launch_env


def test_a_plain_process_is_rank_0_of_1():
    env = launch_env({})
    assert env == LaunchEnv(rank=0, world_size=1, local_rank=0, launched=False)
    assert env.is_primary and not env.is_parallel


def test_torchrun_variables():
    env = launch_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_PORT": "29500"})
    assert (env.rank, env.world_size, env.local_rank, env.launched) == (3, 4, 1, True)
    assert env.is_parallel and not env.is_primary
    assert launch_env({"RANK": "0", "WORLD_SIZE": "4", "LOCAL_RANK": "0"}).is_primary


def test_local_rank_defaults_to_the_rank_and_empty_means_unset():
    assert launch_env({"RANK": "2", "WORLD_SIZE": "4"}).local_rank == 2
    env = launch_env({"RANK": "", "WORLD_SIZE": ""})
    assert (env.rank, env.world_size, env.launched) == (0, 1, True)  # set (to nothing): a launch of one process


def test_a_single_process_launch_is_primary_whatever_its_rank():
    assert launch_env({"RANK": "1", "WORLD_SIZE": "1"}).is_primary


def test_reads_the_process_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert is_primary()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert not is_primary() and launch_env().local_rank == 1


def test_a_malformed_value_is_not_taken_for_a_default():
    with pytest.raises(ValueError):
        launch_env({"WORLD_SIZE": "two"})
