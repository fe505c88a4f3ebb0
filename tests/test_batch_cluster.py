"""`cosmos batch` beyond one machine: --shard I/N and --merge-reports, --executor ray (tiny model, CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cosmos_plugins.predict1.specs import PREDICT1_TINY
from tests.conftest import checkpoint_folder, make_image, run_cli

TINY = "predict1-tiny"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return checkpoint_folder(tmp_path_factory.mktemp("checkpoints"), PREDICT1_TINY, seed=0)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("media")
    return [make_image(d / "a.png", 40, 56), make_image(d / "b.jpg", 48, 40, value=60)]


def write_jsonl(path: Path, lines: list[dict | str]) -> Path:
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines), encoding="utf-8")
    return path


def good_lines(images, n: int) -> list[dict]:
    return [{"visual_input": str(images[i % 2]), "prompt": f"a ball rolls, take {i}",
             **({"name": f"named{i}"} if i % 3 == 1 else {})} for i in range(n)]


def batch_args(ckpt: Path, jsonl: Path, out: Path, *extra: str) -> list[str]:
    return ["batch", str(jsonl), "--model", TINY, "--checkpoint-dir", str(ckpt), "--output-dir", str(out),
            "--disable-prompt-upsampler", "--disable-guardrail", "--device", "cpu", "--num-steps", "2",
            "--seed", "5", *extra]


def mp4s(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.mp4"))}


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock"))


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------------------------------------
# --shard I/N and --merge-reports (always on: no Ray needed)
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sharded(ckpt, images, tmp_path_factory):
    """Seven good lines and one invalid one, run as three shards with --skip-invalid into one folder."""
    d = tmp_path_factory.mktemp("shards")
    lines: list[dict | str] = good_lines(images, 7)
    lines.insert(4, '{"visual_input": 5}')  # line 5: invalid
    jsonl = write_jsonl(d / "jobs.jsonl", lines)
    out = d / "out"
    results = [run_cli(*batch_args(ckpt, jsonl, out, "--skip-invalid", "--shard", f"{i}/3", "--json"))
               for i in range(3)]
    return jsonl, out, results


def test_three_shards_cover_every_line_exactly_once(sharded):
    jsonl, out, results = sharded
    assert [r.exit_code for r in results] == [1, 0, 0], [r.stderr for r in results]  # shard 0 holds the bad line
    lines_of = []
    for i in range(3):
        rep = load(out / f"batch_report.shard-{i}-of-3.json")
        assert rep["finished"] is True and rep["report"] == str(out / f"batch_report.shard-{i}-of-3.json")
        lines_of.append([item["line"] for item in rep["items"]])
    every = sorted(n for lines in lines_of for n in lines)
    assert every == list(range(1, 9))  # each line once: the valid lines I, I+3, ... and the invalid one in shard 0
    valid = [1, 2, 3, 4, 6, 7, 8]
    assert lines_of == [sorted([*valid[0::3], 5]), valid[1::3], valid[2::3]]
    assert len(mp4s(out)) == 7 and hidden(out) == []
    assert not (out / "batch_report.json").exists()


def test_merge_reports_combines_the_shards(sharded, cli):
    jsonl, out, _ = sharded
    res = cli("batch", str(jsonl), "--output-dir", str(out), "--merge-reports", "--json")
    assert res.exit_code == 1 and "1 of 8 lines have no output" in res.stderr  # the invalid line
    merged = load(out / "batch_report.json")
    assert merged["shards"] == 3 and merged["lines"] == 8
    assert [i["line"] for i in merged["items"]] == list(range(1, 9))
    assert merged["counts"]["ok"] == 7 and merged["counts"]["failed"] == 1
    assert [p["line"] for p in merged["problems"]] == [5]
    assert res.json()["counts"] == merged["counts"]


def test_rerun_of_one_shard_skips_its_finished_lines(sharded, ckpt, cli):
    jsonl, out, _ = sharded
    before = mp4s(out)
    mine = load(out / "batch_report.shard-1-of-3.json")["items"]
    gone = Path(mine[0]["video"])
    gone.unlink()
    res = cli(*batch_args(ckpt, jsonl, out, "--skip-invalid", "--shard", "1/3", "--json"))
    assert res.exit_code == 0, res.stderr
    statuses = {i["line"]: i["status"] for i in load(out / "batch_report.shard-1-of-3.json")["items"]}
    assert statuses == {mine[0]["line"]: "ok", **{i["line"]: "skipped" for i in mine[1:]}}
    assert mp4s(out) == before  # the same bytes again for the one generated


def test_a_full_run_after_the_shards_reports_every_line(sharded, ckpt, cli, tmp_path):
    jsonl, out, _ = sharded
    res = cli(*batch_args(ckpt, jsonl, out, "--skip-invalid", "--report", str(tmp_path / "full.json"), "--json"))
    assert res.exit_code == 1  # the invalid line
    assert res.json()["counts"] == {"ok": 0, "skipped": 7, "failed": 1, "blocked": 0, "not_run": 0}


def test_shard_locks_let_shards_share_a_folder_but_not_with_a_full_batch(tmp_path):
    from cosmos_cli.batch.shard import lock_shard
    from cosmos_cli.outputs import FolderBusy, lock_folder

    a = lock_shard(tmp_path, (0, 2))
    b = lock_shard(tmp_path, (1, 2))  # another shard: fine
    with pytest.raises(FolderBusy, match="already running"):
        lock_shard(tmp_path, (1, 2))
    with pytest.raises(FolderBusy, match="another batch is writing here"):
        lock_folder(tmp_path)
    for lock in (*a, *b):
        lock.release()
    full = lock_folder(tmp_path)
    with pytest.raises(FolderBusy, match="a full batch is writing here"):
        lock_shard(tmp_path, (0, 2))
    full.release()


@pytest.mark.parametrize("text", ["3/3", "1/0", "one/3", "-1/3", "1"])
def test_a_bad_shard_is_one_line(cli, ckpt, images, tmp_path, text):
    jsonl = write_jsonl(tmp_path / "jobs.jsonl", good_lines(images, 1))
    res = cli(*batch_args(ckpt, jsonl, tmp_path / "out", "--shard", text))
    assert res.exit_code == 2 and f"--shard {text}: expected I/N" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists()


def test_merge_refuses_missing_or_foreign_shards(cli, sharded, tmp_path):
    jsonl, out, _ = sharded
    part = tmp_path / "out"
    part.mkdir()
    for i in (0, 2):
        (part / f"batch_report.shard-{i}-of-3.json").write_bytes((out / f"batch_report.shard-{i}-of-3.json").read_bytes())
    res = cli("batch", str(jsonl), "--output-dir", str(part), "--merge-reports")
    assert res.exit_code == 1 and "shard 1/3 of 3 has no report yet" in res.stderr
    other = write_jsonl(tmp_path / "other.jsonl", ['{"visual_input": "x.png"}'])
    res = cli("batch", str(other), "--output-dir", str(out), "--merge-reports")
    assert res.exit_code == 1 and "not of" in res.stderr and "Traceback" not in res.stderr


def test_the_streamed_plan_decides_as_the_local_plan(ckpt, images, tmp_path, monkeypatch):
    """The Ray driver's planner (a window at a time, from a compact index) against plan_batch on the same file:
    the same lines to run with the same parameter hashes, the same decided records; a line edited after
    validation is failed, not run."""
    from dataclasses import replace

    import cosmos_cli.batch.stream as bs
    from cosmos_cli.batch import BatchItem, BatchRequest, plan_batch
    from cosmos_cli.generation import GenerateRequest
    from cosmos_cli.progress import QuietProgress
    from cosmos_cli.registry import find_model

    monkeypatch.setattr(bs, "WINDOW", 2)  # several windows in a small file
    lines: list[dict | str] = good_lines(images, 6)
    lines.insert(2, '{"prompt": "no input"}')
    jsonl = write_jsonl(tmp_path / "jobs.jsonl", lines)
    _, spec = find_model(TINY)
    d = GenerateRequest(input_path=jsonl, prompt=None, model=TINY, checkpoint_dir=ckpt, output_dir=tmp_path / "out",
                        disable_prompt_upsampler=True, disable_guardrail=True, device="cpu", seed=5)
    req = BatchRequest(jsonl, d, skip_invalid=True)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "named4.mp4").write_bytes(b"someone else's video")  # a conflict: failed, kept
    for shard in ((0, 1), (1, 2)):
        local = plan_batch(req, spec, QuietProgress(), shard=shard)
        index = bs.index_batch(replace(req, shard=shard), spec, QuietProgress())
        streamed = list(bs.stream_plan(req, spec, index, QuietProgress(), shard))
        assert [x.line for x in streamed] == sorted(x.line for x in streamed)
        items = [(x.line, x.params_hash) for x in streamed if isinstance(x, BatchItem)]
        assert items == [(i.line, i.params_hash) for i in local.items]
        decided = {x.line: (x.status, x.message) for x in streamed if not isinstance(x, BatchItem)}
        assert decided == {n: (r.status, r.message) for n, r in local.records.items()}
        assert index.lines(shard) == len(local.items) + len(local.records)
        if shard == (0, 1):  # the invalid line and the conflict, both failed
            assert set(decided) == {3, 6} and {v[0] for v in decided.values()} == {"failed"}
    index = bs.index_batch(req, spec, QuietProgress())
    text = jsonl.read_text(encoding="utf-8").splitlines()
    text[0] = text[0].replace("take 0", "take zero")
    jsonl.write_text("\n".join(text) + "\n", encoding="utf-8")
    first = next(iter(bs.stream_plan(req, spec, index, QuietProgress(), (0, 1))))
    assert first.line == 1 and first.status == "failed" and "changed since the batch validated" in first.message


# ----------------------------------------------------------------------------------------------------------
# --executor ray
# ----------------------------------------------------------------------------------------------------------


def test_without_ray_the_executor_is_one_line(cli, ckpt, images, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as when it is not installed
    jsonl = write_jsonl(tmp_path / "jobs.jsonl", good_lines(images, 1))
    res = cli(*batch_args(ckpt, jsonl, tmp_path / "out", "--executor", "ray"))
    assert res.exit_code == 1 and "Traceback" not in res.stderr
    assert "pip install 'cosmos-cli[ray]'" in res.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was touched


def test_help_imports_neither_ray_nor_torch():
    code = ("import sys\nfrom cosmos_cli.app import main\ntry:\n    main(['batch', '--help'])\nexcept SystemExit:\n"
            "    pass\nprint(sorted(m for m in ('ray', 'torch') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip().splitlines()[-1] == "[]", run.stderr[-2000:]


def ray_env() -> dict[str, str]:
    import torch

    # The actors' torch uses as many threads as the local reference run (the CPU kernels' summation order, hence
    # the bytes of the video, can depend on it); Ray would give each actor one thread otherwise.
    return {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "RAY_ADDRESS": "",
            "RAY_USAGE_STATS_ENABLED": "0"}


def test_ray_small_batch_matches_the_local_batch(ckpt, images, tmp_path):
    """Always on when Ray is installed: 2 lines on 1 actor, byte-identical to the local batch, then resumed."""
    pytest.importorskip("ray")
    jsonl = write_jsonl(tmp_path / "jobs.jsonl", good_lines(images, 2))
    local = run_cli(*batch_args(ckpt, jsonl, tmp_path / "local"))
    assert local.exit_code == 0, local.stderr
    args = [sys.executable, "-m", "cosmos_cli.app", *batch_args(ckpt, jsonl, tmp_path / "ray", "--executor", "ray",
                                                                 "--ray-actors", "1", "--json")]
    run = subprocess.run(args, capture_output=True, text=True, env=ray_env(), timeout=400)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout)["counts"]["ok"] == 2
    assert mp4s(tmp_path / "ray") == mp4s(tmp_path / "local")
    items = load(tmp_path / "ray" / "batch_report.json")["items"]
    assert [i["status"] for i in items] == ["ok", "ok"] and all(i["device"].endswith("/cpu") for i in items)
    assert hidden(tmp_path / "ray") == []
    again = subprocess.run(args, capture_output=True, text=True, env=ray_env(), timeout=400)  # resume: no Ray start
    assert again.returncode == 0 and json.loads(again.stdout)["counts"]["skipped"] == 2, again.stderr[-3000:]


def actor_pids() -> dict[int, str]:
    """The Ray actor processes of this machine and their titles (``ray::BatchActor.run`` while running a line)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            except OSError:
                continue
            if title.startswith("ray::BatchActor"):
                found[int(entry.name)] = title
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the actor processes through /proc")
def test_ray_six_lines_two_actors_one_killed_then_resumed(ckpt, images, tmp_path):
    """The issue's test: 6 lines on 2 actors, byte-identical to the local batch; one actor is killed while it runs
    a line, which is retried on the other and reported; a re-run skips every line."""
    pytest.importorskip("ray")
    jsonl = write_jsonl(tmp_path / "jobs.jsonl", good_lines(images, 6))
    steps = ("--num-steps", "12")  # long enough for the kill to land while a line runs
    local = run_cli(*batch_args(ckpt, jsonl, tmp_path / "local", *steps))
    assert local.exit_code == 0, local.stderr
    out = tmp_path / "ray"
    args = [sys.executable, "-m", "cosmos_cli.app", *batch_args(ckpt, jsonl, out, *steps, "--executor", "ray",
                                                                 "--ray-actors", "2", "--json")]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ray_env())
    killed = None
    try:
        deadline = time.monotonic() + 300
        while killed is None and time.monotonic() < deadline and proc.poll() is None:
            busy = [pid for pid, title in actor_pids().items() if title.startswith("ray::BatchActor.run")]
            if busy and len(list(out.glob("*.mp4"))) >= 1:
                killed = busy[0]
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.05)
        stdout, stderr = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed is not None, "no actor was running a line after the first output"
    assert proc.returncode == 0, stderr[-3000:]
    assert json.loads(stdout)["counts"]["ok"] == 6
    assert mp4s(out) == mp4s(tmp_path / "local")
    items = load(out / "batch_report.json")["items"]
    retried = [i for i in items if i["message"].startswith("retried after actor")]
    assert len(retried) == 1 and retried[0]["status"] == "ok" and "lost" in retried[0]["message"], items
    assert "retried on another actor" in stderr and hidden(out) == []
    assert not any(ln.startswith("(raylet)") for ln in stdout.splitlines())
    again = subprocess.run(args, capture_output=True, text=True, env=ray_env(), timeout=400)
    assert again.returncode == 0 and json.loads(again.stdout)["counts"]["skipped"] == 6, again.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the actor processes through /proc")
def test_ray_driver_sigterm_stops_cleanly_and_the_report_says_so(ckpt, images, tmp_path):
    pytest.importorskip("ray")
    jsonl = write_jsonl(tmp_path / "jobs.jsonl", good_lines(images, 6))
    out = tmp_path / "ray"
    args = [sys.executable, "-m", "cosmos_cli.app", *batch_args(ckpt, jsonl, out, "--num-steps", "24",
                                                                 "--executor", "ray", "--ray-actors", "2")]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ray_env())
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None and not list(out.glob("*.mp4")):
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr[-3000:]
    assert "error: interrupted (SIGTERM)" in stderr and "Traceback" not in stderr
    data = load(out / "batch_report.json")
    assert data["interrupted"] is True and data["finished"] is True and data["exit_code"] == 143
    statuses = [i["status"] for i in data["items"]]
    assert "not_run" in statuses and statuses.count("ok") == len(list(out.glob("*.mp4")))
    assert {i["message"] for i in data["items"] if i["status"] == "not_run"} == {"not run: interrupted (SIGTERM)"}
    assert hidden(out) == []
    time.sleep(2)  # (the actors' processes end as Ray's own shut down)
    assert not actor_pids(), "Ray actors left running"


def test_a_killed_drivers_record_spool_is_removed_by_the_next_run_on_its_host(tmp_path):
    import socket

    from cosmos_cli.batch.stream import RecordSpool

    host = socket.gethostname().replace(".", "_").replace("/", "_")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".cosmos-batch.records.{host}.{int(dead.stdout)}.jsonl"
    other = tmp_path / f".cosmos-batch.records.another-node.{int(dead.stdout)}.jsonl"  # its pid means nothing here
    stale.write_text("{}\n")
    other.write_text("{}\n")
    spool = RecordSpool(tmp_path, 3)
    assert not stale.exists() and other.exists() and spool.path.exists()
    spool.close()
    assert not spool.path.exists()
