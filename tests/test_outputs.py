"""Output folders and names under hostile conditions: a path through a file, a read-only folder, a second run
racing for the same name, stale partial files of a killed run, Ctrl-C and SIGTERM (issue 15, items 5, 7, 9)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cosmos_cli import generation, outputs
from cosmos_plugins.predict1.specs import PREDICT1_TINY
from tests.conftest import checkpoint_folder, make_image

TINY = "predict1-tiny"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return checkpoint_folder(tmp_path_factory.mktemp("checkpoints"), PREDICT1_TINY, seed=0)


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    return make_image(tmp_path_factory.mktemp("inputs") / "frame.png", 40, 56)


def gen(cli, ckpt, out, image, *extra):
    return cli("generate", "--model", TINY, "--checkpoint-dir", str(ckpt), "-o", str(out), "-i", str(image),
               "--prompt", "a ball", "--disable-prompt-upsampler", "--disable-guardrail", "--device", "cpu",
               "--num-steps", "2", *extra)


def one_line_error(res, code: int, needle: str) -> None:
    assert res.exit_code == code, res.stderr
    assert "Traceback" not in res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], res.stderr
    assert "memory strategy" not in res.stderr  # stopped before any model loaded


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped): certainly not alive now."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.fixture
def readonly_dir(tmp_path, monkeypatch):
    """A folder nothing can be created in. As a normal user: mode 0o555. As root (here and in CI) the mode bits do
    not stop writes and a read-only mount needs privileges we do not have, so every create below the folder
    fails with EROFS, as on a read-only filesystem (os.open and os.mkdir are what the checks use)."""
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
        return
    real_open, real_mkdir = os.open, os.mkdir

    def inside(path) -> bool:
        return Path(os.path.abspath(path)).is_relative_to(d)

    def ro_open(path, flags, *args, **kwargs):
        if inside(path) and flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    def ro_mkdir(path, *args, **kwargs):
        if inside(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", ro_open)
    monkeypatch.setattr(os, "mkdir", ro_mkdir)
    yield d


def test_output_folder_under_a_file_is_one_line(cli, ckpt, image, tmp_path):
    (tmp_path / "FILE").write_text("not a folder")
    res = gen(cli, ckpt, tmp_path / "FILE" / "sub", image)
    one_line_error(res, 2, "is a file")


@pytest.mark.parametrize("sub", ["", "new/deeper"])
def test_read_only_output_folder_is_refused_before_loading(cli, ckpt, image, readonly_dir, sub):
    out = readonly_dir / sub if sub else readonly_dir
    res = gen(cli, ckpt, out, image)
    one_line_error(res, 1, str(readonly_dir))
    assert not list(readonly_dir.iterdir())


def test_a_running_generate_holds_its_name(cli, ckpt, image, tmp_path):
    held = outputs.reserve_name(tmp_path, None, False)  # another run, still generating `output`
    try:
        assert outputs.reserved_stem(held) == "output"
        res = gen(cli, ckpt, tmp_path, image)
        assert res.exit_code == 0, res.stderr
        assert Path(res.stdout.strip()).name == "output_1.mp4"
        res = gen(cli, ckpt, tmp_path, image, "--video-save-name", "output")
        one_line_error(res, 1, f"another cosmos run (pid {os.getpid()}) is writing it")
    finally:
        held.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["output_1.mp4", "output_1.txt"]  # no reservation left


def test_two_processes_reserve_different_names(tmp_path):
    code = ("import sys, time; from pathlib import Path; from cosmos_cli.outputs import reserve_name, reserved_stem;"
            "lock = reserve_name(Path(sys.argv[1]), None, False); print(reserved_stem(lock), flush=True);"
            "time.sleep(3)")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    names = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert names == ["output", "output_1", "output_2"]


def test_existing_prompt_file_is_protected_like_the_video(cli, ckpt, image, tmp_path):
    (tmp_path / "output.txt").write_text("my notes")
    res = gen(cli, ckpt, tmp_path, image, "--video-save-name", "output")
    one_line_error(res, 1, "output.txt already exists")
    res = gen(cli, ckpt, tmp_path, image)  # no name: output is taken by the .txt
    assert res.exit_code == 0 and Path(res.stdout.strip()).name == "output_1.mp4"
    assert (tmp_path / "output.txt").read_text() == "my notes"
    res = gen(cli, ckpt, tmp_path, image, "--video-save-name", "output", "--overwrite")
    assert res.exit_code == 0 and (tmp_path / "output.txt").read_text() == "a ball"


def test_stale_partials_of_a_dead_run_are_removed(cli, ckpt, image, tmp_path):
    stale = tmp_path / f".output.mp4.{dead_pid()}-0123456789ab.partial"
    live = tmp_path / f".other.mp4.{os.getpid()}-0123456789ab.partial"  # a running process's: left alone
    foreign = tmp_path / ".notes.partial"  # not this tool's pattern
    for p in (stale, live, foreign):
        p.write_bytes(b"x")
    res = gen(cli, ckpt, tmp_path, image)
    assert res.exit_code == 0, res.stderr
    assert not stale.exists() and live.exists() and foreign.exists()


@pytest.mark.parametrize("how, code, word", [("sigint", 130, "Ctrl-C"), ("sigterm", 143, "SIGTERM")])
def test_interrupted_generate_says_so_and_removes_the_folder_it_made(cli, ckpt, image, tmp_path, monkeypatch,
                                                                       how, code, word):
    def stop(*args, **kwargs):
        if how == "sigint":
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises inside the sleep

    monkeypatch.setattr(generation, "_generate", stop)
    res = gen(cli, ckpt, tmp_path / "made" / "here", image)
    assert res.exit_code == code, res.stderr
    assert res.stderr.strip().splitlines()[-1] == f"error: interrupted ({word}); nothing was written"
    assert not (tmp_path / "made").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone after the run


def test_interrupt_keeps_a_folder_that_was_there(cli, ckpt, image, tmp_path, monkeypatch):
    monkeypatch.setattr(generation, "_generate", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    res = gen(cli, ckpt, tmp_path, image)
    assert res.exit_code == 130 and tmp_path.is_dir() and not list(tmp_path.iterdir())
