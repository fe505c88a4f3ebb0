"""The `cosmos` app: help, version, the error path, the registry seen from the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from cosmos_cli.errors import CosmosError
from cosmos_cli.registry import find_model
from tests.conftest import REPO


def _run(*args, env=None, timeout=120):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "cosmos_cli.app", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout)


def test_help_is_fast_and_does_not_import_torch():
    code = ("import sys, time; t=time.perf_counter(); from cosmos_cli.app import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit: pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NOTORCH', time.perf_counter()-t, file=sys.stderr)")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr
    assert "NOTORCH" in proc.stderr
    for cmd in ("validate", "memory-plan", "backends"):
        assert cmd in proc.stdout
    assert wall < 3.0  # the whole interpreter start; the import + help itself is printed above


@pytest.mark.parametrize("cmd", ["validate", "memory-plan", "backends"])
def test_subcommand_help_does_not_import_torch(cmd):
    code = (f"import sys; from cosmos_cli.app import main\ntry:\n    main(['{cmd}', '--help'])\nexcept SystemExit: pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NOTORCH', file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "NOTORCH" in proc.stderr, proc.stderr


def test_version(cli):
    from cosmos_cli import __version__

    res = cli("--version")
    assert res.exit_code == 0 and res.stdout.strip() == f"cosmos {__version__}"


def test_no_args_shows_help(cli):
    res = cli()
    assert "Usage" in res.stdout + res.stderr


def test_usage_error_exits_2(cli):
    res = cli("memory-plan", "--no-such-flag")
    assert res.exit_code == 2
    assert "Traceback" not in res.stderr


def test_unknown_model_is_one_line_with_valid_names(cli):
    res = cli("memory-plan", "--model", "99B", "--vram", "80GB")
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert lines[0] == "error: unknown model '99B'"
    assert "Cosmos-Predict1-7B-Video2World (7B" in lines[1]
    assert "Traceback" not in res.stderr


def test_bad_vram_is_usage_error(cli):
    res = cli("memory-plan", "--vram", "lots")
    assert res.exit_code == 2 and "--vram" in res.stderr and "24GB" in res.stderr


def test_debug_shows_traceback(tmp_path):
    proc = _run("memory-plan", "--model", "nope", "--vram", "1GB", env={"COSMOS_DEBUG": "1"})
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "UnknownModelError" in proc.stderr


def test_model_aliases_case_insensitive():
    assert find_model("7b")[1].name == "Cosmos-Predict1-7B-Video2World"
    assert find_model("Cosmos-Predict1-14B-Video2World")[1].aliases[0] == "14B"


def test_backends_lists_builtin(cli):
    res = cli("backends", "--json")
    assert res.exit_code == 0
    data = res.json()
    b = {x["backend"]: x for x in data["backends"]}
    assert "predict1" in b
    names = {m["name"] for m in b["predict1"]["models"]}
    assert {"Cosmos-Predict1-7B-Video2World", "Cosmos-Predict1-14B-Video2World"} <= names
    assert set(b["predict1"]["environment"]) == {"attention"}  # flash-attn-4 or PyTorch SDPA, from the metadata
    assert b["predict1"]["options"] == ["--numerics", "--cp-scheme", "--attention"]


def test_backends_table(cli):
    res = cli("backends")
    assert res.exit_code == 0 and "predict1" in res.stdout
    assert "predict1: options: --numerics, --cp-scheme, --attention" in res.stdout


def test_fake_backend_fixture_registers_and_unregisters(fake_backend, cli):
    data = cli("backends", "--json").json()
    fake = [x for x in data["backends"] if x["backend"] == "fake"]
    assert fake and fake[0]["version"] == "9.9.9"
    assert fake[0]["models"][0]["name"] == "Fake-Video2World"
    assert find_model("fake")[0] is fake_backend


def test_fake_backend_gone_after_fixture(cli):
    data = cli("backends", "--json").json()
    assert not [x for x in data["backends"] if x["backend"] == "fake"]


def test_conflicting_model_names_are_refused(fake_backend):
    from dataclasses import replace

    from cosmos_cli.errors import PluginError
    from cosmos_cli.registry import backends

    fake_backend.specs = (replace(fake_backend.specs[0], aliases=("7B",)),)
    with pytest.raises(PluginError, match="7B"):
        backends()


def test_cosmos_load_plugins_restricts():
    proc = _run("backends", "--json", env={"COSMOS_LOAD_PLUGINS": "nothing-by-that-name"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["backends"] == []
    proc = _run("backends", "--json", env={"COSMOS_LOAD_PLUGINS": "predict1"})
    assert [b["backend"] for b in json.loads(proc.stdout)["backends"]] == ["predict1"]


def test_entry_point_targets_import():
    eps = entry_points(group="cosmos")
    names = {ep.name for ep in eps}
    assert "predict1" in names
    for ep in eps:
        if ep.name == "predict1":
            assert hasattr(ep.load(), "register_backends")
    script = next(ep for ep in entry_points(group="console_scripts") if ep.name == "cosmos")
    assert callable(script.load())


def test_third_party_plugin_package_is_listed(tmp_path):
    """Install a tiny plugin package (no network: no build isolation, no index) and see it listed."""
    target = tmp_path / "site"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(REPO / "tests" / "example_plugin")],
        capture_output=True, text=True, timeout=300,
    )
    assert pip.returncode == 0, pip.stderr
    env = {"PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}
    proc = _run("backends", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    data = {b["backend"]: b for b in json.loads(proc.stdout)["backends"]}
    assert data["example"]["version"] == "1.2.3"
    assert data["example"]["models"][0]["name"] == "Example-Video2World"
    assert "predict1" in data  # built-ins still load beside it
    assert data["example"]["options"] == ["--motion"]
    proc = _run("backends", "--json", env={**env, "COSMOS_LOAD_PLUGINS": "example"})
    assert [b["backend"] for b in json.loads(proc.stdout)["backends"]] == ["example"]
    # its option is a flag of generate (the core declares it, from the installed plugin's Options)
    proc = _run("generate", "--help", env={**env, "COSMOS_LOAD_PLUGINS": "example", "COLUMNS": "80"})
    assert proc.returncode == 0 and "--motion" in proc.stdout and "--numerics" not in proc.stdout, proc.stderr
    proc = _run("generate", "-i", "x.png", "--model", "example-v2w", "--motion", "5", "--no-upsampler",
                env={**env, "COSMOS_LOAD_PLUGINS": "example"})
    assert proc.returncode == 2 and "error: --motion: must be between 0 and 2, got 5.0" in proc.stderr, proc.stderr


def test_every_error_has_exit_code_and_message():
    import cosmos_cli.errors as errors

    for name in dir(errors):
        cls = getattr(errors, name)
        if isinstance(cls, type) and issubclass(cls, CosmosError):
            e = cls("something went wrong")
            assert e.exit_code in (1, 2) and str(e) == "something went wrong"


def test_schema_file_is_the_packaged_one():
    from cosmos_cli.jobs import batch_schema

    assert batch_schema() == json.loads((REPO / "schemas" / "batch_job.schema.json").read_text())
    assert Path(REPO / "schemas" / "batch_job.schema.json").exists()


def test_openmp_threads_wait_passively_unless_the_user_says_otherwise():
    """Set by main() before torch loads: spinning OpenMP threads slow a CPU run on a shared machine severalfold."""
    import os
    import subprocess
    import sys

    code = ("import os\nfrom cosmos_cli.app import main\ntry:\n    main(['backends'])\nexcept SystemExit:\n    pass\n"
            "import torch\nprint(os.environ['OMP_WAIT_POLICY'])")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    for given, expected in ((None, "PASSIVE"), ("ACTIVE", "ACTIVE")):
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                             env=env if given is None else {**env, "OMP_WAIT_POLICY": given})
        assert run.returncode == 0 and run.stdout.strip().splitlines()[-1] == expected, run.stderr[-2000:]
