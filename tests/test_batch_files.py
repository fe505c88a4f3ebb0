"""`cosmos batch` and its files: the output folder lock, --report, the original's --batch_input_path, image lines
under --num_input_frames 9, validate and batch agreeing, --overwrite, and the report after a setup error
(issue 15 items 5, 7, 8; issue 16 items 3, 4, 5)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from cosmos_cli import outputs
from cosmos_plugins.predict1.specs import PREDICT1_TINY
from tests.conftest import checkpoint_folder, make_image, make_video
from tests.test_outputs import dead_pid, one_line_error, readonly_dir  # noqa: F401  (a fixture)

TINY = "predict1-tiny"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return checkpoint_folder(tmp_path_factory.mktemp("checkpoints"), PREDICT1_TINY, seed=0)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    return {"image": make_image(d / "frame.png", 40, 56), "video": make_video(d / "clip.mp4", 12, 40, 56)}


def write_jsonl(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def run(cli, ckpt, jsonl, out, *extra):
    return cli("batch", str(jsonl), "--model", TINY, "--checkpoint-dir", str(ckpt), "-o", str(out),
               "--disable-guardrail", "--device", "cpu", "--num-steps", "2", *extra)


def items(path: Path) -> dict[str, dict]:
    return {i["name"]: i for i in json.loads(path.read_text(encoding="utf-8"))["items"]}


@pytest.fixture
def job(media, tmp_path) -> Path:
    return write_jsonl(tmp_path / "jobs.jsonl", [{"visual_input": str(media["image"]), "prompt": "a ball", "name": "a"}])


def test_a_second_batch_on_the_same_folder_is_refused(cli, ckpt, job, tmp_path):
    out = tmp_path / "out"
    held = outputs.lock_folder(out)  # the first batch, still running
    try:
        left = out / ".a.mp4.pending"  # its staging file: the second batch must not touch it
        left.write_bytes(b"in progress")
        res = run(cli, ckpt, job, out)
        one_line_error(res, 1, f"another batch is writing here (pid {os.getpid()})")
        assert left.exists() and not (out / "batch_report.json").exists()
    finally:
        held.release()
    res = run(cli, ckpt, job, out)
    assert res.exit_code == 0, res.stderr
    assert not left.exists() and not (out / outputs.BATCH_LOCK_NAME).exists()


def test_a_batch_removes_stale_partials_of_dead_runs(cli, ckpt, job, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    stale = out / f".output.mp4.{dead_pid()}-0123456789ab.partial"  # a killed `cosmos generate` into this folder
    live = out / f".output_1.mp4.{os.getpid()}-0123456789ab.partial"  # a running one's: left alone
    stale.write_bytes(b"x")
    live.write_bytes(b"x")
    assert run(cli, ckpt, job, out).exit_code == 0
    assert not stale.exists() and live.exists()


def test_report_never_replaces_a_file_that_is_not_a_report(cli, ckpt, job, tmp_path):
    out = tmp_path / "out"
    before = job.read_bytes()
    one_line_error(run(cli, ckpt, job, out, "--report", str(job)), 2, "is the batch file itself")
    assert job.read_bytes() == before
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": true}')
    one_line_error(run(cli, ckpt, job, out, "--report", str(notes)), 1, "is not a batch report of cosmos")
    assert notes.read_text() == '{"mine": true}'
    report = tmp_path / "r.json"
    assert run(cli, ckpt, job, out, "--report", str(report)).exit_code == 0
    video = out / "a.mp4"
    one_line_error(run(cli, ckpt, job, out, "--report", str(video)), 1, "is not a batch report of cosmos")
    assert json.loads(report.read_text())["cosmos_batch_report"] == 1
    res = run(cli, ckpt, job, out, "--report", str(report))  # its own report: replaced
    assert res.exit_code == 0 and items(report)["a"]["status"] == "skipped"


def test_unwritable_output_or_report_is_one_line_before_loading(cli, ckpt, job, tmp_path, readonly_dir):  # noqa: F811
    one_line_error(run(cli, ckpt, job, readonly_dir / "out"), 1, "cannot create the folder")
    one_line_error(run(cli, ckpt, job, readonly_dir), 1, "cannot write in the folder")
    one_line_error(run(cli, ckpt, job, tmp_path / "out", "--report", str(readonly_dir / "r.json")), 1,
                   "cannot write in")
    (tmp_path / "FILE").write_text("x")
    one_line_error(run(cli, ckpt, job, tmp_path / "FILE" / "sub"), 2, "is a file")
    one_line_error(run(cli, ckpt, job, tmp_path / "out", "--report", str(tmp_path / "FILE" / "r.json")), 2, "is a file")
    assert not list(readonly_dir.iterdir())


def test_existing_prompt_file_is_not_replaced_without_overwrite(cli, ckpt, job, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.txt").write_text("my notes")
    res = run(cli, ckpt, job, out)
    assert res.exit_code == 1 and "a.txt already exists" in res.stderr and "--overwrite" in res.stderr
    assert (out / "a.txt").read_text() == "my notes" and not (out / "a.mp4").exists()
    assert run(cli, ckpt, job, out, "--overwrite").exit_code == 0
    assert (out / "a.txt").read_text() == "a ball" and (out / "a.mp4").exists()


def test_changed_option_keeps_finished_videos_and_overwrite_regenerates(cli, ckpt, job, tmp_path):
    out = tmp_path / "out"
    assert run(cli, ckpt, job, out).exit_code == 0
    first = (out / "a.mp4").read_bytes()
    res = run(cli, ckpt, job, out, "--num-steps", "3")
    assert res.exit_code == 1
    rec = items(out / "batch_report.json")["a"]
    assert rec["status"] == "failed" and "num_steps changed" in rec["message"] and "--overwrite" in rec["message"]
    assert (out / "a.mp4").read_bytes() == first
    res = run(cli, ckpt, job, out, "--overwrite")  # same options, --overwrite: generated again
    assert res.exit_code == 0, res.stderr
    assert "1 to generate" in res.stderr and "already complete" not in res.stderr
    assert items(out / "batch_report.json")["a"]["message"] == "re-generated (--overwrite)"


def test_setup_error_report_names_the_cause_not_fail_fast(cli, ckpt, job, tmp_path):
    broken = tmp_path / "ckpt"
    shutil.copytree(ckpt, broken)
    victim = next(broken.rglob("model.pt"))
    victim.unlink()
    res = run(cli, broken, job, tmp_path / "out")
    assert res.exit_code == 1 and "model.pt" in res.stderr and "Traceback" not in res.stderr
    rec = items(tmp_path / "out" / "batch_report.json")["a"]
    assert rec["status"] == "not_run" and "fail-fast" not in rec["message"]
    assert rec["message"].startswith("not run: the batch stopped: ") and "model.pt" in rec["message"]


def test_original_batch_input_path_and_nine_frames_with_image_lines(cli, ckpt, media, tmp_path):
    jsonl = write_jsonl(tmp_path / "jobs.jsonl", [{"visual_input": str(media["image"]), "prompt": "a ball"},
                                                  {"visual_input": str(media["video"]), "prompt": "a box"}])
    out = tmp_path / "out"
    args = ("batch", "--batch_input_path", str(jsonl), "--num_input_frames", "9", "--model", TINY,
            "--checkpoint_dir", str(ckpt), "--video_save_folder", str(out), "--disable_prompt_upsampler",
            "--disable_guardrail", "--device", "cpu", "--num_steps", "2")
    res = cli(*args)
    assert res.exit_code == 0, res.stderr
    assert "note: line 1: an image is one input frame, so --num-input-frames 9 applies to the videos only" in res.stderr
    recs = items(out / "batch_report.json")
    assert {r["status"] for r in recs.values()} == {"ok"}
    side = {n: json.loads((out / f"{n}.job.json").read_text())["params"] for n in recs}
    assert side["line00001"]["num_input_frames"] == 1 and side["line00002"]["num_input_frames"] == 9
    quiet = cli(*args, "--quiet")  # the same batch again (all finished): --quiet drops the note, keeps the summary
    assert quiet.exit_code == 0 and "note:" not in quiet.stderr, quiet.stderr
    assert "2 lines" in quiet.stdout, quiet.stdout
    own = write_jsonl(tmp_path / "own.jsonl", [{"visual_input": str(media["image"]), "prompt": "a ball",
                                                "num_input_frames": 9}])
    res = run(cli, ckpt, own, tmp_path / "out2")  # a line's own 9 is an error
    assert res.exit_code == 1 and "needs 9 input frames but an image has 1 frame" in res.stderr


@pytest.mark.parametrize("extra", [(), ("--prompt", "a default prompt")])
def test_validate_and_batch_give_the_same_answer(cli, ckpt, media, tmp_path, extra):
    jsonl = write_jsonl(tmp_path / "jobs.jsonl", [{"visual_input": str(media["image"])},
                                                  {"visual_input": str(media["video"]), "prompt": "x"}])
    val = cli("validate", str(jsonl), "--model", TINY, *extra)
    bat = run(cli, ckpt, jsonl, tmp_path / "out", *extra)
    if extra:
        assert val.exit_code == 0 and "2 jobs, all valid" in val.stdout
        assert bat.exit_code == 0, bat.stderr
    else:
        assert val.exit_code == 1 and bat.exit_code == 1
        missing = f"{jsonl}:1: prompt: required key is missing"
        assert missing in val.stderr and missing in bat.stderr
        for res in (val, bat):
            assert "has no prompt upsampler" in res.stderr and "--prompt" in res.stderr
