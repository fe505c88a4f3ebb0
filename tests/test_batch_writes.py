"""A batch line's video is encoded and written while the next line generates (``cosmos_cli.writes``): the writer,
the overlap through ``cosmos batch``, and what a failed write or a Ctrl-C in the middle leaves."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from cosmos_cli import media
from cosmos_cli.batch.sidecar import SIDECAR_SUFFIX
from cosmos_cli.errors import GenerationError
from cosmos_cli.writes import BackgroundWriter
from cosmos_plugins.predict1.pipeline import Predict1Pipeline
from tests.test_batch import batch_args, hidden, mp4s, report, write_jsonl

WAIT = 60  # seconds any one event may take on a slow, shared CI machine before the test gives up


# -- the writer ----------------------------------------------------------------------------------------------------


def test_one_write_at_a_time_each_with_its_own_outcome():
    writer = BackgroundWriter()
    release, started = threading.Event(), []
    first, second, third = writer.slot(), writer.slot(), writer.slot()
    first.submit(lambda: (started.append("first"), release.wait(WAIT)))
    submitted = threading.Event()

    def submit_second():
        second.submit(lambda: started.append("second"))
        submitted.set()

    t = threading.Thread(target=submit_second)
    t.start()
    assert not submitted.wait(0.3)  # the second line's submit waits for the first line's write
    release.set()
    assert submitted.wait(WAIT)
    t.join()

    def fail():
        raise GenerationError("writing x.mp4 failed: disk full")

    third.submit(fail)
    assert first.wait() >= 0 and second.wait() >= 0 and started == ["first", "second"]
    with pytest.raises(GenerationError, match="disk full"):
        third.wait()  # the failure is the third line's alone
    with pytest.raises(RuntimeError, match="one call"):
        third.submit(lambda: None)
    assert writer.slot().wait() is None  # nothing submitted


# -- through cosmos batch --------------------------------------------------------------------------------------------


@pytest.fixture
def lines(tmp_path) -> Path:
    from tests.conftest import make_image

    image = make_image(tmp_path / "frame.png", 40, 56)
    return write_jsonl(tmp_path / "jobs.jsonl", [{"visual_input": str(image), "prompt": p}
                                                 for p in ("a red ball rolls left", "a blue box", "a green cube")])


def _instrument(monkeypatch, *, hold_first_write: bool = False, fail_write: int | None = None,
                interrupt_denoise: int | None = None) -> dict:
    """Wrap the pipeline's denoising and ``media.write_video``: what ran where, and faults to inject. With
    ``hold_first_write`` the first video's write does not finish before the second line's denoising has started
    (it gives up after WAIT seconds: then ``overlapped`` stays False)."""
    seen: dict = {"denoise": 0, "writes": [], "overlapped": False}
    second_denoise = threading.Event()
    real_denoise, real_write = Predict1Pipeline.denoise, media.write_video

    def denoise(self, *args, **kwargs):
        seen["denoise"] += 1
        if seen["denoise"] == 2:
            second_denoise.set()
        if seen["denoise"] == interrupt_denoise:
            raise KeyboardInterrupt
        return real_denoise(self, *args, **kwargs)

    def write_video(path, frames, fps, **kwargs):
        n = len(seen["writes"]) + 1
        seen["writes"].append(threading.current_thread().name)
        if n == 1 and hold_first_write:
            seen["overlapped"] = second_denoise.wait(WAIT)
        if n == fail_write:
            raise GenerationError(f"writing {path} failed: ffmpeg exited before all frames were written")
        return real_write(path, frames, fps, **kwargs)

    monkeypatch.setattr(Predict1Pipeline, "denoise", denoise)
    monkeypatch.setattr(media, "write_video", write_video)
    return seen


def test_a_lines_video_is_written_while_the_next_line_generates(cli, ckpt_tiny, lines, tmp_path, monkeypatch):
    sync = cli(*batch_args(ckpt_tiny, lines, tmp_path / "first", "--json"))  # the reference: same lines, same files
    seen = _instrument(monkeypatch, hold_first_write=True)
    res = cli(*batch_args(ckpt_tiny, lines, tmp_path / "out", "--json"))
    assert res.exit_code == 0 and sync.exit_code == 0, res.stderr
    assert seen["overlapped"]  # line 1's write was still running when line 2's denoising began
    assert seen["writes"] == ["cosmos-write"] * 3  # every line's write ran on the writer's thread
    assert mp4s(tmp_path / "out") == mp4s(tmp_path / "first") and len(mp4s(tmp_path / "out")) == 3
    items = report(tmp_path / "out")["items"]
    assert [i["status"] for i in items] == ["ok"] * 3 and hidden(tmp_path / "out") == []
    assert all(i["timings"]["write"] > 0 for i in items)
    for i in items:  # each line committed with its sidecar, as without the overlap
        side = json.loads((tmp_path / "out" / f"{i['name']}{SIDECAR_SUFFIX}").read_text())
        assert side["params_hash"] == i["params_hash"]


def test_a_failed_background_write_fails_its_line_alone(cli, ckpt_tiny, lines, tmp_path, monkeypatch):
    _instrument(monkeypatch, fail_write=2)
    res = cli(*batch_args(ckpt_tiny, lines, tmp_path / "out", "--json"))
    assert res.exit_code == 1 and "Traceback" not in res.stderr
    items = report(tmp_path / "out")["items"]
    assert [i["status"] for i in items] == ["ok", "failed", "ok"]
    assert "ffmpeg exited before all frames were written" in items[1]["message"]
    assert sorted(mp4s(tmp_path / "out")) == ["line00001.mp4", "line00003.mp4"] and hidden(tmp_path / "out") == []


def test_ctrl_c_while_a_video_is_being_written_keeps_it(cli, ckpt_tiny, lines, tmp_path, monkeypatch):
    """Ctrl-C during line 2's denoising, line 1's write still running: line 1 is finished, committed and reported
    ok; line 2 is not run; nothing half-written is left."""
    seen = _instrument(monkeypatch, hold_first_write=True, interrupt_denoise=2)
    res = cli(*batch_args(ckpt_tiny, lines, tmp_path / "out"))
    assert res.exit_code == 130 and "interrupted" in res.stderr and "Traceback" not in res.stderr
    assert seen["overlapped"]
    data = report(tmp_path / "out")
    assert [i["status"] for i in data["items"]] == ["ok", "not_run", "not_run"] and data["interrupted"] is True
    assert sorted(mp4s(tmp_path / "out")) == ["line00001.mp4"] and hidden(tmp_path / "out") == []
    assert media.probe(tmp_path / "out" / "line00001.mp4").num_frames > 0


def test_fail_fast_stops_after_a_failed_background_write(cli, ckpt_tiny, lines, tmp_path, monkeypatch):
    """The first line's write fails after the second line has generated: the second line's video is kept (its
    generation was done), the third is not run."""
    _instrument(monkeypatch, fail_write=1)
    res = cli(*batch_args(ckpt_tiny, lines, tmp_path / "out", "--fail-fast"))
    assert res.exit_code == 1
    assert [i["status"] for i in report(tmp_path / "out")["items"]] == ["failed", "ok", "not_run"]
    assert sorted(mp4s(tmp_path / "out")) == ["line00002.mp4"] and hidden(tmp_path / "out") == []


@pytest.fixture(scope="module")
def ckpt_tiny(tmp_path_factory) -> Path:
    from cosmos_plugins.predict1.specs import PREDICT1_TINY
    from tests.conftest import checkpoint_folder

    return checkpoint_folder(tmp_path_factory.mktemp("checkpoints"), PREDICT1_TINY, seed=0)
