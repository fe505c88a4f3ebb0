"""Shared fixtures: a fake backend registered for one test, and a CLI runner that goes through main()."""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

# OpenMP's default wait policy spins its threads between parallel regions: with torch's 2 threads on 2 cores and
# any other process running, each region then waits for a descheduled spinner (a 15-step demo generation measured
# 40-110 s instead of 5-10 s beside one busy process). Passive waiting must be set before torch loads libgomp.
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from cosmos_cli.backend import Backend
from cosmos_cli.hookspecs import hookimpl
from cosmos_cli.registry import plugin_manager
from cosmos_cli.specs import NETWORK, TEXT_ENCODER, TOKENIZER, Component, ModelSpec
from cosmos_plugins.predict1.strategies import STRATEGIES

REPO = Path(__file__).resolve().parents[1]
# the original project's two example inputs, shipped in the repository as the original lays them out
EXAMPLE_MEDIA = REPO / "assets" / "diffusion"

GiB = 1 << 30


@pytest.fixture(autouse=True)
def _host_memory_unknown(monkeypatch):
    """The planner reads this machine's host memory (cosmos_cli.hostmem); tests plan as if it were unknown (not
    checked) unless they give --ram, call the planner with ram_bytes, or patch this themselves."""
    import cosmos_cli.hostmem

    monkeypatch.setattr(cosmos_cli.hostmem, "available_host_bytes", lambda: None)


def fake_spec(name: str = "Fake-Video2World", **overrides) -> ModelSpec:
    """A model whose components have round sizes, so planner tests can reason in GiB."""
    base = dict(
        name=name,
        backend="fake",
        description="a fake model for tests",
        aliases=("fake",),
        components=(
            Component(TEXT_ENCODER, ("encode_text",), num_params=2 * GiB, activation_bytes=(("encode_text", GiB // 2),),
                      num_blocks=4, block_params=GiB // 2),
            Component(TOKENIZER, ("encode_video", "decode"), num_params=GiB // 8,
                      activation_bytes=(("encode_video", 2 * GiB), ("decode", 3 * GiB))),
            Component(NETWORK, ("denoise",), num_params=4 * GiB, activation_bytes=(("denoise", 4 * GiB),),
                      activation_bytes_sequential=2 * GiB, num_blocks=8, block_params=GiB // 2),
        ),
        input_frames=(1, 9),
        stages=("encode_text", "encode_video", "denoise", "decode"),
        strategies=STRATEGIES,  # the planner's tests reason with Predict1's strategies
    )
    base.update(overrides)
    return ModelSpec(**base)


class FakeBackend(Backend):
    id = "fake"
    version = "9.9.9"

    def __init__(self, specs=None):
        self.specs = specs or (fake_spec(),)
        self.built = []

    def models(self):
        return self.specs

    def build_pipeline(self, spec, plan, *, checkpoint_dir, device, progress=None, options=None, parallel=None,
                       network_dir=None, fast=None, compile=False):
        self.built.append((spec.name, plan.strategy, checkpoint_dir, device))
        raise NotImplementedError("the fake backend generates nothing")


class BackendPlugin:
    """A plugin registering one backend (what a third party's entry-point module does)."""

    def __init__(self, backend):
        self.backend = backend

    @hookimpl
    def register_backends(self, register):
        register(self.backend)


@pytest.fixture
def register_backend() -> Iterator:
    """``register_backend(backend)``: a plugin of ``backend`` registered for this test only (returns the backend)."""
    pm, names = plugin_manager(), []

    def register(backend):
        names.append(f"test-plugin-{len(names)}-{backend.id}")
        pm.register(BackendPlugin(backend), name=names[-1])
        return backend

    try:
        yield register
    finally:
        for name in names:
            pm.unregister(name=name)


@pytest.fixture
def fake_backend(register_backend) -> FakeBackend:
    return register_backend(FakeBackend())


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    def json(self):
        return json.loads(self.stdout)


def run_cli(*args: str, monkeypatch=None) -> CliResult:
    """Run `cosmos ARGS` in-process through main(), the way the console script does."""
    from cosmos_cli.app import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return CliResult(code, out.getvalue(), err.getvalue())


@pytest.fixture
def cli():
    return run_cli


def python() -> str:
    return sys.executable


def make_image(path: Path, height: int = 48, width: int = 64, channels: int = 3, value: int = 128) -> Path:
    """Write a small image with OpenCV (format from the extension)."""
    import cv2
    import numpy as np

    shape = (height, width) if channels == 1 else (height, width, channels)
    img = np.full(shape, value, np.uint8)
    img[: height // 2] = 255 - value
    ext = path.suffix
    ok, buf = cv2.imencode(ext.lower() if ext else ".png", img)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def make_video(path: Path, num_frames: int = 12, height: int = 48, width: int = 64, fps: int = 24) -> Path:
    """Write a small H.264 mp4 whose frame i is a solid grey level 20*i (distinct, decodable)."""
    import imageio_ffmpeg
    import numpy as np

    writer = imageio_ffmpeg.write_frames(str(path), (width, height), fps=fps, codec="libx264",
                                         pix_fmt_out="yuv420p", macro_block_size=1, quality=None,
                                         output_params=["-crf", "10"])
    writer.send(None)
    for i in range(num_frames):
        writer.send(np.full((height, width, 3), (20 * i) % 256, np.uint8).tobytes())
    writer.close()
    return path


# -- torchrun on the CPU (gloo): `cosmos` in several processes, as a user launches it -------------------------------

TORCHRUN_TIMEOUT_S = 150
# what torchrun sets in each process, and the test hooks' variables: a launch starts from none of them
LAUNCH_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
               "COSMOS_CP_SCHEME", "COSMOS_CP_ATTENTION")


def can_torchrun() -> bool:
    """Whether this machine can launch torchrun's gloo processes (POSIX and a torch with torch.distributed)."""
    import torch

    return hasattr(os, "fork") and torch.distributed.is_available()


def cosmos_script() -> list[str]:
    """The installed console script (``--no-python``), else the module."""
    import shutil

    found = Path(sys.executable).with_name("cosmos")
    path = str(found) if found.exists() else shutil.which("cosmos")
    return ["--no-python", path] if path else ["-m", "cosmos_cli.app"]


def torchrun(n: int, args: list[str], *, script: bool = False, launch: tuple[str, ...] = (), **env: str):
    """``cosmos ARGS`` in n processes started by ``python -m torch.distributed.run --standalone`` (``script``:
    through tests/torchrun_cosmos.py, the same ``main()`` with its test hooks, set by ``env``). Returns (process,
    seconds)."""
    import subprocess
    import time

    entry = [str(REPO / "tests" / "torchrun_cosmos.py")] if script else cosmos_script()
    full_env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    full_env.update(OMP_NUM_THREADS="1", COSMOS_DIST_TIMEOUT="60", COSMOS_DIST_STEP_TIMEOUT="30", **env)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
                           *launch, *entry, *args], capture_output=True, text=True, env=full_env,
                          timeout=TORCHRUN_TIMEOUT_S, cwd=REPO)
    return proc, time.monotonic() - t0


_WRITTEN: dict[tuple, Path] = {}


def checkpoint_folder(root: Path, spec: ModelSpec, *, seed: int = 0) -> Path:
    """``write_checkpoint_folder(root, spec, seed=seed)``'s files under ``root``: written once per test session for
    each (spec, seed), copied after that (the same bytes, in milliseconds instead of a second or two). ``root``
    is the caller's to change."""
    import atexit
    import shutil
    import tempfile

    from cosmos_plugins.predict1.fixtures import write_checkpoint_folder

    key = (spec, seed)
    if key not in _WRITTEN:
        cache = Path(tempfile.mkdtemp(prefix="cosmos-test-checkpoint-"))
        atexit.register(shutil.rmtree, cache, ignore_errors=True)
        _WRITTEN[key] = write_checkpoint_folder(cache, spec, seed=seed)
    shutil.copytree(_WRITTEN[key], root, dirs_exist_ok=True)
    return Path(root)


@pytest.fixture(scope="session")
def demo_pipeline():
    """The bundled demo model's pipeline on the CPU, loaded once per session (as `cosmos generate` builds it)."""
    from tools.demo import evaluate

    pipeline = evaluate.load_pipeline(device="cpu")
    yield pipeline
    pipeline.close()


def pytest_configure(config) -> None:
    """Under CI (``CI=true``, as ``.ci/run`` sets it) the proofs that need the test extra must run: refuse to
    start without it rather than let the diffusers parity tests vanish into skips."""
    import importlib.util
    import os

    if os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
        return
    def absent(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is None
        except (ImportError, ValueError):
            return True

    missing = [name for name in ("diffusers", "accelerate") if absent(name)]
    if missing:
        raise pytest.UsageError(f"CI=true but {', '.join(missing)} is not installed: the parity tests against "
                                f"diffusers would not run; install the test extra: pip install -e '.[test]'")
