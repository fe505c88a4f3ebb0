"""`cosmos generate` / `cosmos batch` with ``--num-gpus N`` under torchrun: the CLI end to end on the CPU (gloo).

Each multi-process test launches ``python -m torch.distributed.run --standalone --nproc-per-node N`` on the tiny
model, either the console script itself (``--no-python cosmos``) or ``tests/torchrun_cosmos.py``, which runs the
same ``main()`` and saves what rank 0 decodes (the mp4 is compressed, so the numbers are compared there). The
checks that need no second process (the launch, the GPU count, NCCL, combinations that are refused) run in this
process through ``main()``. The default split over two ranks (``--num-gpus 2``, the guidance branches on two groups
of 1) against one process is the conformance battery's (tests/conformance.py,
``test_a_split_generation_is_the_one_process_video``, run on the tiny spec by tests/test_conformance_predict1.py);
the launch helpers (``torchrun``, ``cosmos_script``) are tests/conftest.py's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cosmos_cli.media import probe
from cosmos_plugins.predict1.specs import PREDICT1_TINY
from tests.conftest import LAUNCH_VARS, can_torchrun, checkpoint_folder, make_image, torchrun

pytestmark = pytest.mark.skipif(not can_torchrun(), reason="torchrun needs POSIX and torch.distributed")

TINY = "predict1-tiny"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return checkpoint_folder(tmp_path_factory.mktemp("checkpoints"), PREDICT1_TINY, seed=0)


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    return make_image(tmp_path_factory.mktemp("inputs") / "frame.png", 40, 56)


@pytest.fixture(autouse=True)
def single_process_env(monkeypatch):
    """The in-process tests start as a plain single process, whatever the environment of the test run."""
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)


def gen_args(ckpt: Path, image: Path, out: Path, *extra: str) -> list[str]:
    return ["generate", "--model", TINY, "--checkpoint-dir", str(ckpt), "-i", str(image), "--prompt", "a red ball",
            "--disable-prompt-upsampler", "--disable-guardrail", "--device", "cpu", "--num-steps", "3",
            "--seed", "3", "--video-save-folder", str(out), "--video-save-name", "v", *extra]


def decoded(folder: Path) -> list[Path]:
    return sorted(folder.glob("decoded-rank*.pt"))


def load_decoded(path: Path) -> dict:
    return torch.load(path, weights_only=False)


@pytest.fixture(scope="module")
def reference(ckpt, image, tmp_path_factory) -> dict:
    """One process, in this one through ``main()`` (the code the script runs, without a launch): the video, the
    prompt file and what was decoded."""
    from cosmos_plugins.predict1.pipeline import Predict1Pipeline
    from tests.conftest import run_cli

    d = tmp_path_factory.mktemp("reference")
    real, sink = Predict1Pipeline.decode, {}

    def decode(self, latent):
        frames = real(self, latent)
        sink.update(latent=latent.float().clone(), frames=frames.copy())
        return frames

    with pytest.MonkeyPatch.context() as m:
        for var in LAUNCH_VARS:
            m.delenv(var, raising=False)
        m.setattr(Predict1Pipeline, "decode", decode)
        res = run_cli(*gen_args(ckpt, image, d / "out"))
    assert res.exit_code == 0, res.stderr[-3000:]
    return {"video": d / "out" / "v.mp4", "prompt": d / "out" / "v.txt", **sink}


def check_split_run(proc, out: Path, spy: Path, reference: dict) -> None:
    """One video and one prompt file, written by rank 0 only, with the one-process numbers."""
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == [str(out / "v.mp4")]  # only rank 0 prints the result
    assert sorted(p.name for p in out.iterdir()) == ["v.mp4", "v.txt"]  # nothing else, no temporaries
    assert (out / "v.txt").read_text(encoding="utf-8") == reference["prompt"].read_text(encoding="utf-8")
    info = probe(out / "v.mp4")
    assert (info.kind, info.num_frames) == ("video", PREDICT1_TINY.num_frames)
    assert [p.name for p in decoded(spy)] == ["decoded-rank0-0.pt"]  # the other ranks decode nothing
    got = load_decoded(decoded(spy)[0])
    err = ((got["latent"] - reference["latent"]).abs().max() / reference["latent"].abs().max()).item()
    # fp32 math in another order, then the bf16 latent: a flipped rounding is one ulp, <= 2^-7 = 7.8e-3 of the
    # largest element; a wrong split is off by order one
    assert err < 1e-2, err
    diff = np.abs(got["frames"].astype(int) - reference["frames"].astype(int)).max()
    assert diff <= 1, diff
    if np.array_equal(got["frames"], reference["frames"]):  # the same frames give the same file
        assert (out / "v.mp4").read_bytes() == reference["video"].read_bytes()
    assert stderr_errors(proc.stderr) == []


def stderr_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# -- several processes ------------------------------------------------------------------------------------


# Out of the default run (each launch costs seconds of process start-up per rank), each with its always-on version:
# the split itself at 2 and 4 ranks, every layout (cfg, sequence, Ulysses, ring) and a dying rank are
# tests/test_parallel.py's, through the same pipeline; the CLI under torchrun is the battery's split (2 ranks) and
# test_batch_with_each_line_split_over_two_ranks below; the console script under torchrun, test_cli_surface's.


@pytest.mark.slow
def test_generate_sequence_parallel_on_two_ranks_matches_one_process(ckpt, image, reference, tmp_path):
    """The token split asked for (the default, the guidance branches on two ranks, is the battery's)."""
    out = tmp_path / "out"
    proc, _ = torchrun(2, gen_args(ckpt, image, out, "--num_gpus", "2", "--cp-scheme", "sequence"),  # original's flag
                       script=True, COSMOS_TEST_SPY=str(tmp_path))
    check_split_run(proc, out, tmp_path, reference)
    # rank 0 says how the work is split (rich wraps lines)
    assert "sequence parallel (as asked): 12 tokens in 2 contiguous ranges" in " ".join(proc.stderr.split())


@pytest.mark.slow
@pytest.mark.parametrize("scheme, layout", [
    ("auto", "the two guidance branches on two groups of 2; within a group, 12 tokens in 2"),
    ("sequence", "ring attention"),
])
def test_generate_on_four_ranks_matches_one_process(ckpt, image, reference, tmp_path, scheme, layout):
    out = tmp_path / "out"
    proc, _ = torchrun(4, gen_args(ckpt, image, out, "--num-gpus", "4", "--cp-scheme", scheme), script=True,
                       COSMOS_TEST_SPY=str(tmp_path))
    check_split_run(proc, out, tmp_path, reference)
    assert layout in " ".join(proc.stderr.split())


@pytest.mark.slow
def test_console_script_under_torchrun_prints_one_json_document(ckpt, image, tmp_path):
    """The installed `cosmos` itself, split over two ranks (an error every rank raises, printed once by rank 0:
    tests/test_cli_surface.py's test_failing_torchrun_run_prints_our_line_and_a_short_summary)."""
    out = tmp_path / "out"
    proc, _ = torchrun(2, gen_args(ckpt, image, out, "--num-gpus", "2", "--json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)  # one JSON document: rank 1 prints nothing
    assert data["video"] == str(out / "v.mp4") and sorted(p.name for p in out.iterdir()) == ["v.mp4", "v.txt"]
    assert {"encode_video", "encode_text", "denoise", "decode"} <= set(data["timings"])


@pytest.mark.slow
def test_a_dying_rank_stops_the_run_with_a_message(ckpt, image, tmp_path):
    out = tmp_path / "out"
    # torchrun stops the other processes once one has exited; checking every second gives rank 0 time to print
    proc, seconds = torchrun(2, gen_args(ckpt, image, out, "--num-gpus", "2"), script=True,
                             launch=("--monitor-interval", "1"), COSMOS_TEST_DIE_RANK="1")
    assert proc.returncode != 0 and seconds < 60
    errors = stderr_errors(proc.stderr)
    assert len(errors) == 1 and errors[0].startswith("error: rank 0: lost contact with the other ranks"), proc.stderr
    assert "exitcode  : 17" in proc.stderr  # torchrun's summary names the rank that died
    assert not (out / "v.mp4").exists()


def write_jsonl(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def undecodable_video(path: Path) -> Path:
    """An mp4 whose container (and so validation) is fine but whose frames do not decode: its SPS spoiled."""
    from tests.conftest import make_video

    data = bytearray(make_video(path, 12, 40, 56).read_bytes())
    at = data.find(b"avcC")
    for k in range(at + 13, at + 12 + int.from_bytes(data[at + 10:at + 12], "big")):
        data[k] = 0xFF
    path.write_bytes(bytes(data))
    return path


def test_batch_with_each_line_split_over_two_ranks(ckpt, image, reference, tmp_path):
    bad = undecodable_video(tmp_path / "undecodable.mp4")
    jsonl = write_jsonl(tmp_path / "jobs.jsonl", [
        {"visual_input": str(image), "prompt": "a red ball", "seed": 3, "name": "v"},
        {"visual_input": str(bad), "prompt": "x", "num_input_frames": 9, "name": "bad"},  # fails on rank 0 alone
        {"visual_input": str(image), "prompt": "a blue box", "seed": 4},
    ])
    out = tmp_path / "out"
    args = ["batch", str(jsonl), "--model", TINY, "--checkpoint-dir", str(ckpt), "--output-dir", str(out),
            "--disable-prompt-upsampler", "--disable-guardrail", "--device", "cpu", "--num-steps", "3",
            "--num-gpus", "2", "--json"]
    proc, _ = torchrun(2, args, script=True, COSMOS_TEST_SPY=str(tmp_path))
    assert proc.returncode == 1, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)  # one summary: rank 1 prints nothing
    assert summary["counts"]["ok"] == 2 and summary["counts"]["failed"] == 1 and summary["workers"] == 2
    assert stderr_errors(proc.stderr) == ["error: 1 of 3 lines have no output"], proc.stderr[-3000:]
    # rank 0's failure to decode line 2 reached rank 1 (which had nothing to do there) and the batch went on
    assert sorted(p.name for p in out.iterdir()) == ["batch_report.json", "line00003.job.json", "line00003.mp4",
                                                     "line00003.txt", "v.job.json", "v.mp4", "v.txt"]
    report = json.loads((out / "batch_report.json").read_text(encoding="utf-8"))
    assert [(i["line"], i["status"]) for i in report["items"]] == [(1, "ok"), (2, "failed"), (3, "ok")]
    assert "undecodable.mp4" in report["items"][1]["message"]
    assert [p.name for p in decoded(tmp_path)] == ["decoded-rank0-0.pt", "decoded-rank0-1.pt"]  # lines 1 and 3
    first = load_decoded(tmp_path / "decoded-rank0-0.pt")
    assert np.abs(first["frames"].astype(int) - reference["frames"].astype(int)).max() <= 1


# -- one process: what is refused before anything starts ---------------------------------------------------


def test_num_gpus_without_torchrun_gives_the_command(cli, ckpt, image, tmp_path):
    res = cli(*gen_args(ckpt, image, tmp_path, "--num-gpus", "2"))
    assert res.exit_code == 2 and "Traceback" not in res.stderr
    assert "error: --num-gpus 2 needs one process per GPU, started by torchrun" in res.stderr
    assert "torchrun --nproc_per_node=2 --no-python cosmos generate ... --num-gpus 2" in res.stderr
    jsonl = write_jsonl(tmp_path / "jobs.jsonl", [{"visual_input": str(image), "prompt": "x"}])
    res = cli("batch", str(jsonl), "--model", TINY, "--checkpoint-dir", str(ckpt), "--device", "cpu",
              "--disable-guardrail", "--num-gpus", "2")
    assert res.exit_code == 2 and "torchrun --nproc_per_node=2 --no-python cosmos batch ... --num-gpus 2" in res.stderr


def test_launch_that_does_not_match(cli, ckpt, image, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    res = cli(*gen_args(ckpt, image, tmp_path, "--num-gpus", "2"))
    assert res.exit_code == 2 and "error: --num-gpus 2 but torchrun started 4 processes" in res.stderr
    res = cli(*gen_args(ckpt, image, tmp_path))  # --num-gpus 1: four processes would write the same video
    assert res.exit_code == 2 and "--num-gpus 1 but torchrun started 4" in res.stderr
    assert not list(tmp_path.glob("*.mp4"))


@pytest.mark.parametrize("n, extra, message, hint", [
    (5, (), "5 GPUs cannot split this job: its 12 tokens are not divisible by 5", "1, 2, 3, 4, 6, 8, 12."),
    (3, ("--cp-scheme", "cfg"), "the cfg scheme needs an even GPU count", "--cp-scheme sequence"),
    (2, ("--cp-scheme", "tensor"), "--cp-scheme must be one of auto, sequence, cfg, got 'tensor'", "Use --cp-scheme auto"),
])
def test_a_split_that_cannot_work_is_refused_before_launching(cli, ckpt, image, tmp_path, n, extra, message, hint):
    res = cli(*gen_args(ckpt, image, tmp_path, "--num-gpus", str(n), *extra))
    assert res.exit_code == 2, res.stderr
    assert message in res.stderr and hint in res.stderr and "Traceback" not in res.stderr


def test_missing_nccl(cli, ckpt, image, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: False)
    res = cli(*gen_args(ckpt, image, tmp_path, "--num-gpus", "2", "--device", "cuda"))
    assert res.exit_code == 1 and "this PyTorch build has no NCCL" in res.stderr and "Traceback" not in res.stderr


def test_combinations_that_are_refused(cli, ckpt, image, tmp_path):
    args = gen_args(ckpt, image, tmp_path, "--num-gpus", "2")
    args[args.index("--device") + 1] = "cuda:1"
    res = cli(*args)
    assert res.exit_code == 2 and "--device cuda:1 names one" in res.stderr and "CUDA_VISIBLE_DEVICES" in res.stderr
    jsonl = write_jsonl(tmp_path / "jobs.jsonl", [{"visual_input": str(image), "prompt": "x"}])
    res = cli("batch", str(jsonl), "--model", TINY, "--checkpoint-dir", str(ckpt), "--device", "cpu",
              "--gpus", "2", "--num-gpus", "2")
    assert res.exit_code == 2 and "cannot be combined" in res.stderr


def test_the_chunked_network_forward_is_not_split():
    """stream-lean's chunked forward has no token shard: refused under --num-gpus with the strategy to use."""
    from types import SimpleNamespace

    from cosmos_cli.errors import MemoryPlanError
    from cosmos_cli.planner import plan_memory
    from cosmos_plugins.predict1.pipeline import _context_parallel
    from cosmos_plugins.predict1.specs import PREDICT1_7B

    plan = plan_memory(PREDICT1_7B, None, strategy="stream-lean", num_gpus=2)
    with pytest.raises(MemoryPlanError, match="stream-lean .* cannot be split") as e:
        _context_parallel(PREDICT1_7B, plan, SimpleNamespace(world_size=2), "auto")
    assert "--offload stream-sequential" in e.value.hint


def test_other_ranks_exit_quietly_and_leave_the_failure_to_rank0(cli, ckpt, image, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    res = cli(*gen_args(ckpt, image, tmp_path, "--num-gpus", "2", "--num-input-frames", "5"))
    assert res.exit_code == 0 and res.stderr == "" and res.stdout == ""  # exit 0: torchrun kills nobody
