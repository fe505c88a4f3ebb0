"""The one job runner of `generate` and `batch` (cosmos_cli.runner): a CUDA out-of-memory under --offload auto is
retried once with the next leaner strategy, through both commands as a user runs them (a fake pipeline, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cosmos_cli.jobs import GenerationResult
from cosmos_cli.planner import leaner_strategy
from cosmos_plugins.predict1.specs import PREDICT1_TINY
from tests.conftest import make_image

# what the retry must choose after the planner's first choice, resident
LEANER = leaner_strategy("resident", PREDICT1_TINY)


class OomPipeline:
    """Runs out of GPU memory on its first generation when planned with a strategy in ``fail``; otherwise writes
    the video (and the prompt file) where it is asked. Every call lands in ``log`` as (strategy, what)."""

    def __init__(self, plan, fail: set[str], log: list[tuple[str, str]]):
        self.plan, self.fail, self.log, self.calls = plan, fail, log, 0

    def generate(self, job, progress, *, video_path, prompt_path=None):
        self.calls += 1
        self.log.append((self.plan.strategy, job.name))
        if self.plan.strategy in self.fail and self.calls == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore details")
        Path(video_path).write_bytes(f"video of {job.name} under {self.plan.strategy}".encode())
        if prompt_path is not None:
            Path(prompt_path).write_text(job.prompt, encoding="utf-8")
        return GenerationResult(Path(video_path), prompt_path, job.prompt)

    def close(self):
        self.log.append((self.plan.strategy, "closed"))


@pytest.fixture
def oom(fake_backend, monkeypatch, tmp_path):
    """A fake model on a (pretended) GPU with 80 GiB free: the planner's choice there is resident."""
    import cosmos_cli.batch.runners as B
    import cosmos_cli.generation as G

    log: list[tuple[str, str]] = []
    fail: set[str] = set()
    built: list[str] = []

    def build(spec, plan, **kw):
        built.append(plan.strategy)
        return OomPipeline(plan, fail, log)

    fake_backend.build_pipeline = build
    for module in (G, B):
        monkeypatch.setattr(module, "pick_device", lambda device: "cuda")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (80 << 30, 80 << 30))
    image = make_image(tmp_path / "in.png", 40, 40)
    return log, fail, built, image, tmp_path


def generate_args(image: Path, out: Path, *extra: str) -> list[str]:
    return ["generate", "--model", "fake", "--input-image-or-video-path", str(image), "--prompt", "a ball",
            "--video-save-folder", str(out), "--disable-guardrail", "--disable-prompt-upsampler", *extra]


def batch_args(jsonl: Path, out: Path, *extra: str) -> list[str]:
    return ["batch", str(jsonl), "--model", "fake", "--output-dir", str(out), "--disable-guardrail",
            "--disable-prompt-upsampler", "--json", *extra]


def write_lines(path: Path, image: Path, n: int) -> Path:
    lines = [{"visual_input": str(image), "prompt": f"scene {i}", "name": f"n{i}"} for i in range(1, n + 1)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def test_generate_retries_once_leaner_and_succeeds(cli, oom):
    log, fail, built, image, tmp = oom
    fail.add("resident")
    res = cli(*generate_args(image, tmp / "out"))
    assert res.exit_code == 0, res.stderr
    assert built == ["resident", LEANER]
    assert log == [("resident", "output"), ("resident", "closed"), (LEANER, "output"), (LEANER, "closed")]
    assert (tmp / "out" / "output.mp4").read_bytes() == f"video of output under {LEANER}".encode()
    assert f"retrying once with the next leaner one, {LEANER}" in res.stderr


def test_a_batch_line_retries_once_and_the_next_lines_keep_the_leaner_pipeline(cli, oom):
    log, fail, built, image, tmp = oom
    fail.add("resident")  # a resident pipeline runs out on its first line (so a re-plan per line would fail again)
    out = tmp / "out"
    res = cli(*batch_args(write_lines(tmp / "jobs.jsonl", image, 3), out))
    assert res.exit_code == 0, res.stderr
    assert built == ["resident", LEANER]  # planned twice in all: once at the start, once for the retry
    assert log == [("resident", "n1"), ("resident", "closed"), (LEANER, "n1"), (LEANER, "n2"), (LEANER, "n3"),
                   (LEANER, "closed")]
    items = {i["line"]: i for i in json.loads((out / "batch_report.json").read_text(encoding="utf-8"))["items"]}
    assert [items[n]["status"] for n in (1, 2, 3)] == ["ok", "ok", "ok"]
    assert items[1]["message"] == f"retried with memory strategy {LEANER} after CUDA out of memory under resident"
    assert items[2]["message"] == items[3]["message"] == ""
    assert (out / "n1.mp4").read_bytes() == f"video of n1 under {LEANER}".encode()
    assert json.loads((out / "n1.job.json").read_text(encoding="utf-8"))["line"] == 1  # committed with its sidecar
    assert not [p.name for p in out.iterdir() if p.name.endswith(".pending")]
    assert f"retrying once with the next leaner one, {LEANER}" in " ".join(res.stderr.split())


def test_a_batch_line_that_runs_out_twice_fails_alone(cli, oom):
    log, fail, built, image, tmp = oom
    fail.update({"resident", LEANER})  # the retry's pipeline runs out on its first line too
    out = tmp / "out"
    res = cli(*batch_args(write_lines(tmp / "jobs.jsonl", image, 2), out))
    assert res.exit_code == 1
    problems = res.json()["problems"]
    assert [p["line"] for p in problems] == [1]
    assert problems[0]["message"] == (f"out of GPU memory on cuda under memory strategy {LEANER}: CUDA out of "
                                      f"memory. Tried to allocate 2.00 GiB; use --offload "
                                      f"{leaner_strategy(LEANER, PREDICT1_TINY)}")
    assert built == ["resident", LEANER] and (out / "n2.mp4").exists()  # line 2 ran on the same leaner pipeline


def test_no_retry_under_an_explicit_strategy(cli, oom):
    log, fail, built, image, tmp = oom
    fail.add("offload-all")
    res = cli(*generate_args(image, tmp / "gen", "--offload", "offload-all"))
    assert res.exit_code == 1 and built == ["offload-all"]
    said = [ln for ln in res.stderr.splitlines() if "out of memory" in ln]
    assert said == ["error: CUDA out of memory under memory strategy offload-all: use --offload stream "
                    "(or --offload auto)"], res.stderr
    assert "Traceback" not in res.stderr and not list((tmp / "gen").glob("*.mp4"))

    built.clear()
    out = tmp / "out"
    res = cli(*batch_args(write_lines(tmp / "jobs.jsonl", image, 2), out, "--offload", "offload-all"))
    assert res.exit_code == 1 and built == ["offload-all"]
    (problem,) = res.json()["problems"]
    assert problem["line"] == 1 and "\n" not in problem["message"]
    assert problem["message"].startswith("out of GPU memory on cuda under memory strategy offload-all: ")
    assert problem["message"].endswith("; use --offload stream")
    assert (out / "n2.mp4").read_bytes() == b"video of n2 under offload-all"
