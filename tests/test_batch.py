"""`cosmos batch` end to end on the tiny model: validation first, faults, resume, SIGKILL, Ctrl-C, two workers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from cosmos_cli.backend import Backend
from cosmos_cli.jobs import GenerationResult
from cosmos_cli.media import probe
from cosmos_plugins.predict1 import Predict1Backend
from cosmos_plugins.predict1.specs import PREDICT1_TINY
from tests.conftest import checkpoint_folder, make_image, make_video

TINY = "predict1-tiny"
FRAMES = PREDICT1_TINY.num_frames  # 17
PROMPTS = ("a red ball rolls left", "a blue box slides right", "a green cube falls", "a small robot arm moves",
           "a yellow ball bounces", "a dark box moves slowly", "a white cup on the table", "a grey cube rolls")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return checkpoint_folder(tmp_path_factory.mktemp("checkpoints"), PREDICT1_TINY, seed=0)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    bad = make_video(d / "undecodable.mp4", 12, 40, 56)
    data = bytearray(bad.read_bytes())
    at = data.find(b"avcC")  # spoil the SPS: the container (and validation) is fine, decoding is not
    for k in range(at + 13, at + 12 + int.from_bytes(data[at + 10:at + 12], "big")):
        data[k] = 0xFF
    bad.write_bytes(bytes(data))
    return {"image": make_image(d / "frame.png", 40, 56), "image2": make_image(d / "other.jpg", 48, 40, value=60),
            "video": make_video(d / "clip.mp4", 12, 40, 56), "undecodable": bad}


def write_jsonl(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def batch_args(ckpt: Path, jsonl: Path, out: Path, *extra: str) -> list[str]:
    return ["batch", str(jsonl), "--model", TINY, "--checkpoint-dir", str(ckpt), "--output-dir", str(out),
            "--disable-prompt-upsampler", "--disable-guardrail", "--device", "cpu", "--num-steps", "2",
            "--seed", "5", *extra]


def standard_lines(media) -> list[dict]:
    """Eight good lines: named and numbered outputs, an image and a 9-frame video, some overrides."""
    lines = []
    for i, prompt in enumerate(PROMPTS):
        line = {"visual_input": str(media["image"] if i % 3 else media["image2"]), "prompt": prompt}
        if i == 2:
            line.update(visual_input=str(media["video"]), num_input_frames=9, name="clip")
        if i == 3:
            line.update(seed=11, num_steps=3, fps=12)
        if i == 5:
            line["name"] = "five"
        lines.append(line)
    return lines


def mp4s(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.mp4"))}


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def reference(ckpt, media, tmp_path_factory):
    """The standard batch, run once without interruption: (jsonl, output folder, CLI result)."""
    from tests.conftest import run_cli

    d = tmp_path_factory.mktemp("reference")
    jsonl = write_jsonl(d / "jobs.jsonl", standard_lines(media))
    res = run_cli(*batch_args(ckpt, jsonl, d / "out", "--json"))
    return jsonl, d / "out", res


def report(out: Path) -> dict:
    return json.loads((out / "batch_report.json").read_text(encoding="utf-8"))


def test_every_line_generated_with_a_report(reference):
    jsonl, out, res = reference
    assert res.exit_code == 0, res.stderr
    summary = res.json()
    assert summary["counts"] == {"ok": 8, "skipped": 0, "failed": 0, "blocked": 0, "not_run": 0}
    assert summary["report"] == str(out / "batch_report.json") and summary["problems"] == []
    names = ["line00001", "line00002", "clip", "line00004", "line00005", "five", "line00007", "line00008"]
    assert sorted(mp4s(out)) == sorted(f"{n}.mp4" for n in names)
    for n in names:
        info = probe(out / f"{n}.mp4")
        assert info.num_frames == FRAMES
        assert (out / f"{n}.job.json").exists() and (out / f"{n}.txt").exists()
    assert probe(out / "line00004.mp4").fps == pytest.approx(12)
    assert hidden(out) == []
    items = {i["name"]: i for i in report(out)["items"]}
    assert [i["line"] for i in report(out)["items"]] == list(range(1, 9))
    first = items["line00001"]
    assert first["status"] == "ok" and first["prompt"] == PROMPTS[0] and first["seed"] == 5  # --seed is the default
    assert first["input"] == standard_lines_input(jsonl, 1) and first["video"] == str(out / "line00001.mp4")
    assert {"encode_video", "denoise", "decode", "total"} <= set(first["timings"])
    assert first["details"] == {"attention": "sdpa"}  # how the backend ran it (flash-attn-4 needs a GPU)
    assert items["line00004"]["seed"] == 11  # a line's seed overrides it


def standard_lines_input(jsonl: Path, line: int) -> dict:
    return json.loads(jsonl.read_text(encoding="utf-8").splitlines()[line - 1])


def test_rerun_skips_complete_lines_without_loading(cli, ckpt, reference):
    jsonl, out, _ = reference
    before = {p: p.stat().st_mtime_ns for p in out.glob("*.mp4")}
    # the original's spelling: generate --batch_input_path with --video_save_folder
    res = cli("generate", "--batch_input_path", str(jsonl), "--model", TINY, "--checkpoint_dir", str(ckpt),
              "--video_save_folder", str(out), "--disable_prompt_upsampler", "--disable_guardrail",
              "--device", "cpu", "--num_steps", "2", "--seed", "5")
    assert res.exit_code == 0, res.stderr
    assert "8 skipped" in res.stdout and "loading" not in res.stderr
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.mp4")} == before
    assert {i["status"] for i in report(out)["items"]} == {"skipped"}


def test_invalid_file_stops_before_any_model_loads(cli, ckpt, media, tmp_path):
    jsonl = write_jsonl(tmp_path / "jobs.jsonl", [
        {"visual_input": str(media["image"]), "prompt": "a ball"},
        {"visual_input": str(tmp_path / "missing.png"), "prompt": "a ball"},
        {"visual_input": str(media["image"]), "prompt": "a ball", "sed": 3},
        {"visual_input": str(media["image"]), "prompt": "a ball", "num_steps": 0},
    ])
    res = cli(*batch_args(ckpt, jsonl, tmp_path / "out"))
    assert res.exit_code == 1
    for needle in (f"{jsonl}:2: visual_input: file not found", f"{jsonl}:3: sed: unknown key",
                   f"{jsonl}:4: num_steps: must be >= 1", "3 of 4 lines are invalid", "--skip-invalid"):
        assert needle in res.stderr
    assert "loading" not in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists()


def test_good_and_bad_lines_with_skip_invalid(cli, ckpt, media, tmp_path):
    good = [{"visual_input": str(media["image"]), "prompt": "a red ball", "name": "good1"},
            {"visual_input": str(media["video"]), "prompt": "a box", "num_input_frames": 9, "name": "good2"}]
    jsonl = write_jsonl(tmp_path / "jobs.jsonl", [
        good[0],
        {"visual_input": str(media["image"]), "prompt": "", "name": "empty_prompt"},
        {"visual_input": str(media["undecodable"]), "prompt": "a ball", "name": "undecodable"},
        {"visual_input": str(media["image"]), "prompt": "a ball", "num_input_frames": 9},
        good[1],
    ])
    out = tmp_path / "out"
    res = cli(*batch_args(ckpt, jsonl, out, "--skip-invalid"))
    assert res.exit_code == 1 and "3 of 5 lines have no output" in res.stderr
    assert sorted(mp4s(out)) == ["good1.mp4", "good2.mp4"]
    assert all(probe(out / n).num_frames == FRAMES for n in ("good1.mp4", "good2.mp4"))
    items = {i["line"]: i for i in report(out)["items"]}
    assert [items[n]["status"] for n in range(1, 6)] == ["ok", "failed", "failed", "failed", "ok"]
    assert items[2]["message"].startswith("invalid line: prompt")
    assert "undecodable.mp4 is not a readable image or video" in items[3]["message"]
    assert items[3]["video"] is None and not (out / "undecodable.job.json").exists()
    assert "accepts" in items[4]["message"] or "1 frame" in items[4]["message"]
    assert hidden(out) == []
    # each bad line is named on stderr too
    assert f"{jsonl}:2: prompt" in res.stderr and "line 3 (undecodable): failed" in res.stderr


# -- guardrail blocks and out-of-memory, through a backend that wraps the real tiny pipeline -----------------

FAULTY = replace(PREDICT1_TINY, name="Faulty-Tiny-Video2World", aliases=("faulty-tiny",), backend="faulty")


class FaultyPipeline:
    def __init__(self, inner):
        self.inner = inner

    def generate(self, job, progress, *, video_path, prompt_path=None):
        if "blocked" in job.prompt:
            return GenerationResult(None, None, job.prompt, "blocked", "text guardrail: unsafe prompt")
        if "memory" in job.prompt:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB\nmore details")
        return self.inner.generate(job, progress, video_path=video_path, prompt_path=prompt_path)

    def close(self):
        self.inner.close()


class FaultyBackend(Backend):
    id = "faulty"
    version = "0.0.1"
    Options = Predict1Backend.Options

    def models(self):
        return (FAULTY,)

    def build_pipeline(self, spec, plan, **kw):
        return FaultyPipeline(Predict1Backend().build_pipeline(spec, plan, **kw))


@pytest.fixture
def faulty(register_backend):
    register_backend(FaultyBackend())
    return "faulty-tiny"


def test_blocked_and_out_of_memory_items_are_recorded_and_the_batch_goes_on(cli, ckpt, media, tmp_path, faulty):
    lines = [{"visual_input": str(media["image"]), "prompt": p} for p in
             ("a red ball", "a blocked scene", "out of memory scene", "a blue box")]
    jsonl = write_jsonl(tmp_path / "jobs.jsonl", lines)
    args = batch_args(ckpt, jsonl, tmp_path / "out")
    args[args.index(TINY)] = faulty
    res = cli(*args, "--json")
    assert res.exit_code == 1
    summary = res.json()
    assert summary["counts"]["ok"] == 2 and summary["counts"]["blocked"] == 1 and summary["counts"]["failed"] == 1
    problems = {p["line"]: p for p in summary["problems"]}
    assert problems[2]["status"] == "blocked" and problems[2]["message"] == "text guardrail: unsafe prompt"
    assert problems[3]["message"] == "out of GPU memory on cpu: CUDA out of memory. Tried to allocate 20.00 GiB"
    assert sorted(mp4s(tmp_path / "out")) == ["line00001.mp4", "line00004.mp4"]
    assert not (tmp_path / "out" / "line00002.txt").exists() and hidden(tmp_path / "out") == []

    res = cli(*args, "--fail-fast", "--output-dir", str(tmp_path / "ff"))
    assert res.exit_code == 1
    statuses = [i["status"] for i in report(tmp_path / "ff")["items"]]
    assert statuses == ["ok", "blocked", "not_run", "not_run"]
    assert report(tmp_path / "ff")["items"][2]["message"] == "not run: --fail-fast stopped the batch"


# -- resume and overwrite rules --------------------------------------------------------------------------------


def test_changed_lines_are_kept_until_overwrite_and_foreign_outputs_too(cli, ckpt, media, tmp_path):
    lines = [{"visual_input": str(media["image"]), "prompt": "a red ball", "name": "a"},
             {"visual_input": str(media["image"]), "prompt": "a blue box", "name": "b"}]
    jsonl = write_jsonl(tmp_path / "jobs.jsonl", lines)
    out = tmp_path / "out"
    assert cli(*batch_args(ckpt, jsonl, out)).exit_code == 0
    first = mp4s(out)

    # a changed line never replaces its finished video without --overwrite (issue 16.5) ...
    write_jsonl(jsonl, [lines[0], {**lines[1], "seed": 9}])
    res = cli(*batch_args(ckpt, jsonl, out))
    assert res.exit_code == 1, res.stderr
    items = {i["name"]: i for i in report(out)["items"]}
    assert items["a"]["status"] == "skipped" and items["b"]["status"] == "failed"
    assert items["b"]["message"].startswith(f"kept {out / 'b.mp4'}: made by this batch with other parameters "
                                            "(seed changed since the last run); pass --overwrite")
    assert mp4s(out) == first
    # ... and --overwrite re-generates every line, the complete ones included
    res = cli(*batch_args(ckpt, jsonl, out, "--overwrite"))
    assert res.exit_code == 0, res.stderr
    items = {i["name"]: i for i in report(out)["items"]}
    assert items["a"]["status"] == "ok" and items["a"]["message"] == "re-generated (--overwrite)"
    assert items["b"]["status"] == "ok" and "seed changed" in items["b"]["message"]
    now = mp4s(out)
    assert now["a.mp4"] == first["a.mp4"] and now["b.mp4"] != first["b.mp4"]

    # another batch file aiming at the same names never replaces them without --overwrite
    other = write_jsonl(tmp_path / "other.jsonl", [{**lines[0], "prompt": "a green cube"}, lines[1] | {"seed": 9}])
    res = cli(*batch_args(ckpt, other, out))
    assert res.exit_code == 1
    items = {i["name"]: i for i in report(out)["items"]}
    assert items["a"]["status"] == "failed" and "written by" in items["a"]["message"]
    assert "--overwrite" in items["a"]["message"]
    assert items["b"]["status"] == "skipped"  # same parameters: the same video, whoever asked for it
    assert mp4s(out)["a.mp4"] == now["a.mp4"]

    # a file the batch did not write is kept too, and replaced with --overwrite
    shutil.copy(out / "b.mp4", out / "c.mp4")
    third = write_jsonl(tmp_path / "third.jsonl", [{**lines[0], "name": "c"}])
    res = cli(*batch_args(ckpt, third, out))
    assert res.exit_code == 1 and "not an output this batch recorded" in res.stderr
    assert (out / "c.mp4").read_bytes() == now["b.mp4"]
    res = cli(*batch_args(ckpt, third, out, "--overwrite"))
    assert res.exit_code == 0 and (out / "c.mp4").read_bytes() == now["a.mp4"]


# -- killed, interrupted, sharded: always the same outputs -----------------------------------------------------


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_batch(ckpt: Path, jsonl: Path, out: Path, *extra: str) -> subprocess.Popen:
    """The batch as a user starts it from a terminal. A shell starts a background job with SIGINT ignored and the
    child inherits that (pytest run as ``cmd &`` would make the Ctrl-C test fail), so the child gets the
    terminal's default disposition whatever this process has."""
    return subprocess.Popen([sys.executable, "-m", "cosmos_cli.app", *batch_args(ckpt, jsonl, out, *extra)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint if os.name == "posix" else None)


def wait_for_first_output(proc: subprocess.Popen, out: Path, seen: dict[Path, int], timeout: float = 60) -> None:
    """Poll until an mp4 appears; every mp4 ever seen must already be a complete video."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for p in out.glob("*.mp4") if out.exists() else ():
            if p not in seen:
                seen[p] = probe(p).num_frames
        if seen:
            return
        time.sleep(0.01)
    raise AssertionError(f"no output appeared; stderr: {proc.stderr.read() if proc.poll() is not None else ''}")


# The interruption tests run each item with more steps, so the batch is still running when the signal arrives
# (an item then takes most of a second even on an idle machine); their reference uses the same steps.
SLOW = ("--num-steps", "24")


@pytest.fixture(scope="module")
def slow_reference(ckpt, reference, tmp_path_factory):
    from tests.conftest import run_cli

    jsonl = reference[0]
    out = tmp_path_factory.mktemp("slow-reference") / "out"
    res = run_cli(*batch_args(ckpt, jsonl, out, *SLOW))
    assert res.exit_code == 0, res.stderr
    return jsonl, out, res


def test_sigkill_then_rerun_gives_the_uninterrupted_outputs(cli, ckpt, slow_reference, tmp_path):
    jsonl, ref_out, ref = slow_reference
    assert ref.exit_code == 0
    out = tmp_path / "out"
    proc = start_batch(ckpt, jsonl, out, *SLOW)
    seen: dict[Path, int] = {}
    try:
        wait_for_first_output(proc, out, seen)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    left = sorted(out.glob("*.mp4"))
    assert 1 <= len(left) < 8, "the batch finished before it could be killed"
    killed = report(out)  # the running report: it never claims the batch ended (issue 15.9)
    assert killed["finished"] is False and killed["interrupted"] is False
    pending = [i["message"] for i in killed["items"] if i["status"] == "not_run"]
    assert pending and all(m.startswith("not run: pending") and "fail-fast" not in m for m in pending)
    assert all(n == FRAMES for n in seen.values())
    assert all(probe(p).num_frames == FRAMES for p in left)  # nothing truncated, only hidden temporaries

    res = cli(*batch_args(ckpt, jsonl, out, *SLOW))
    assert res.exit_code == 0, res.stderr
    statuses = [i["status"] for i in report(out)["items"]]
    assert statuses.count("skipped") == len(left) and statuses.count("ok") == 8 - len(left)
    assert mp4s(out) == mp4s(ref_out)
    assert hidden(out) == []


@pytest.mark.parametrize("sig, code, word", [
    (signal.SIGINT, 130, "Ctrl-C"),
    # a process of its own, out of the default run: SIGTERM's always-on version is the one below, in this process
    pytest.param(signal.SIGTERM, 143, "SIGTERM", marks=pytest.mark.slow),
])
def test_ctrl_c_or_sigterm_writes_the_report_and_exits_130_or_143(ckpt, slow_reference, tmp_path, sig, code, word):
    jsonl, ref_out, _ = slow_reference
    out = tmp_path / "out"
    proc = start_batch(ckpt, jsonl, out, *SLOW)
    try:
        wait_for_first_output(proc, out, {})
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, stderr
    assert f"error: interrupted ({word})" in stderr and "Traceback" not in stderr
    data = report(out)
    assert data["interrupted"] is True and data["exit_code"] == code and data["finished"] is True
    assert {i["message"] for i in data["items"] if i["status"] == "not_run"} == {f"not run: interrupted ({word})"}
    statuses = [i["status"] for i in data["items"]]
    done = sorted(out.glob("*.mp4"))
    assert statuses.count("ok") == len(done) and "not_run" in statuses, (statuses, done, stderr)
    assert hidden(out) == []
    assert all((out / p.name).read_bytes() == (ref_out / p.name).read_bytes() for p in done)


def test_sigterm_between_lines_writes_the_report_and_exits_143(cli, ckpt, reference, tmp_path, monkeypatch):
    """``kill PID`` (a scheduler's stop) while line 2 runs, in this process: the finished line stays, the report
    says interrupted, the rest are not run, the exit code is 143 and the handler is gone afterwards."""
    from cosmos_cli.batch import item as batch_item

    jsonl, ref_out, _ = reference
    real, calls = batch_item.start_item, []

    def start_item(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # line 1's video may still be being written in the background: it must be kept
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises inside the sleep
        return real(*args, **kwargs)

    monkeypatch.setattr(batch_item, "start_item", start_item)
    out = tmp_path / "out"
    res = cli(*batch_args(ckpt, jsonl, out))
    assert res.exit_code == 143, res.stderr
    assert "error: interrupted (SIGTERM)" in res.stderr and "Traceback" not in res.stderr
    data = report(out)
    assert data["interrupted"] is True and data["exit_code"] == 143 and data["finished"] is True
    assert [i["status"] for i in data["items"]] == ["ok"] + ["not_run"] * 7
    assert {i["message"] for i in data["items"][1:]} == {"not run: interrupted (SIGTERM)"}
    assert [p.name for p in out.glob("*.mp4")] == ["line00001.mp4"]
    assert (out / "line00001.mp4").read_bytes() == (ref_out / "line00001.mp4").read_bytes()
    assert hidden(out) == [] and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_two_worker_processes_give_the_same_outputs(cli, ckpt, reference, tmp_path):
    jsonl, ref_out, _ = reference
    out = tmp_path / "out"
    res = cli(*batch_args(ckpt, jsonl, out, "--gpus", "2", "--json"))
    assert res.exit_code == 0, res.stderr
    summary = res.json()
    assert summary["workers"] == 2 and summary["counts"]["ok"] == 8
    assert mp4s(out) == mp4s(ref_out)
    items = report(out)["items"]
    assert [i["line"] for i in items] == list(range(1, 9)) and {i["status"] for i in items} == {"ok"}
    assert hidden(out) == []


def test_gpus_needs_that_many_gpus(cli, ckpt, reference, tmp_path):
    jsonl, _, _ = reference
    args = batch_args(ckpt, jsonl, tmp_path / "out", "--gpus", "2")
    args[args.index("--device") + 1] = "cuda:1"
    res = cli(*args)
    assert res.exit_code == 2 and "CUDA_VISIBLE_DEVICES" in res.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="torchrun needs POSIX")
def test_under_torchrun_ranks_share_the_lines(ckpt, reference, tmp_path):
    jsonl, ref_out, _ = reference
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "cosmos_cli.app", *batch_args(ckpt, jsonl, out)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert mp4s(out) == mp4s(ref_out)
    data = report(out)
    assert data["workers"] == 2 and [i["status"] for i in data["items"]] == ["ok"] * 8
    assert {i["line"] for i in data["items"]} == set(range(1, 9))


def test_job_hash_covers_what_changes_the_video(media):
    from cosmos_cli.batch import job_params, line_request
    from cosmos_cli.generation import GenerateRequest, make_job

    defaults = GenerateRequest(input_path=Path("unused"), prompt=None, disable_prompt_upsampler=True, seed=5)

    def digest(line: dict, **changes) -> str:
        req = line_request(replace(defaults, **changes), line, media["image"], "x")
        return job_params(make_job(req, PREDICT1_TINY, "x"), PREDICT1_TINY, req)[1]

    base = {"prompt": "a ball", "guidance": 7}
    assert digest(base) == digest({**base, "guidance": 7.0}) == digest({**base, "seed": 5})
    assert digest(base) == digest({**base, "name": "other"}, output_dir=Path("elsewhere"), device="cuda")
    for other in ({**base, "seed": 6}, {**base, "prompt": "a box"}, {**base, "num_steps": 3}, {**base, "fps": 12}):
        assert digest(other) != digest(base)
    assert digest(base, backend_options={"numerics": "original"}) != digest(base)
    assert digest(base, backend_options={"numerics": "fp32", "cp_scheme": "cfg"}) == digest(base)  # same video
    assert digest(base, seed=6) != digest(base)  # the --seed default is part of the job
