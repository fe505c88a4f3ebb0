"""Hostile values, files and checkpoints (issue 15, input side): each refused with one line, before any model loads
where it can be known then; non-finite values never reach a video or a report."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import pytest

import cosmos_cli.jobs as jobs_mod
from cosmos_cli.jobs import validate_batch
from tests.conftest import make_image

TINY = "predict1-tiny"


@pytest.fixture
def image(tmp_path) -> Path:
    return make_image(tmp_path / "scene.png")


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def errors_by_line(stderr: str, f: Path) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for ln in stderr.splitlines():
        if ln.startswith(f"{f}:"):
            out.setdefault(int(ln[len(str(f)) + 1:].split(":")[0]), []).append(ln)
    return out


# --- item 3 and 4: values ----------------------------------------------------------------------------------------

BAD_VALUE_LINES = {
    # line text -> what the error says
    '{"visual_input": "scene.png", "guidance": NaN}': "NaN is not a JSON number",
    '{"visual_input": "scene.png", "guidance": Infinity}': "Infinity is not a JSON number",
    '{"visual_input": "scene.png", "guidance": -Infinity}': "-Infinity is not a JSON number",
    '{"visual_input": "scene.png", "guidance": 1e400}': "too large",
    '{"visual_input": "scene.png", "guidance": 101}': "guidance: must be <= 100",
    '{"visual_input": "scene.png", "seed": 1.0}': "seed: must be of type integer, got 1.0",
    '{"visual_input": "scene.png", "seed": 4294967296}': "seed: must be <= 4294967295",
    '{"visual_input": "scene.png", "seed": 1180591620717411303424}': "seed: must be <= 4294967295",  # 2**70
    '{"visual_input": "scene.png", "seed": 1' + "0" * 5000 + '}': "5001 digits",
    '{"visual_input": "scene.png", "num_steps": 100000}': "num_steps: must be <= 1000",
    '{"visual_input": "scene.png", "num_steps": 2.0}': "num_steps: must be of type integer",
    '{"visual_input": "scene.png", "fps": 100000}': "fps: must be <= 240",
    '{"visual_input": "scene.png", "seed": 1, "seed": 2}': "seed: the key appears twice",
    '{"visual_input": "scene.png", "visual_input": "/etc/passwd"}': "visual_input: the key appears twice",
}


def test_non_finite_out_of_range_and_duplicate_values_are_invalid_lines(cli, tmp_path, image):
    lines = ['{"visual_input": "scene.png"}', *BAD_VALUE_LINES]
    f = write_lines(tmp_path / "bad.jsonl", lines)
    res = cli("validate", str(f), "--model", "7B")
    assert res.exit_code == 1 and "Traceback" not in res.stderr
    by_line = errors_by_line(res.stderr, f)
    assert sorted(by_line) == list(range(2, len(lines) + 1))
    for lineno, needle in enumerate(BAD_VALUE_LINES.values(), start=2):
        assert len(by_line[lineno]) == 1 and needle in by_line[lineno][0], (lineno, by_line[lineno])
    good = write_lines(tmp_path / "good.jsonl", ['{"visual_input": "scene.png", "seed": 4294967295, "guidance": 100, '
                                                 '"num_steps": 1000, "fps": 240}'])
    assert cli("validate", str(good), "--model", "7B").exit_code == 0


@pytest.mark.parametrize(("flags", "needle"), [
    (("--guidance", "inf"), "--guidance inf: must be a finite number"),
    (("--guidance", "nan"), "Invalid value for '--guidance'"),  # (Typer's own range check refuses NaN)
    (("--guidance", "1e9"), "--guidance 1000000000: must be between 0 and 100"),
    (("--seed", "4294967296"), "--seed 4294967296: must be between 0 and 4294967295"),
    (("--seed", str(2**70)), f"--seed {2**70}: must be between"),
    (("--num-steps", "100000"), "--num-steps 100000: must be between 1 and 1000"),
    (("--fps", "100000"), "--fps 100000: must be between 1 and 240"),
])
@pytest.mark.parametrize("command", ["generate", "batch"])
def test_flags_are_bounded_before_any_model_loads(cli, tmp_path, image, monkeypatch, flags, needle, command):
    import cosmos_cli.generation as gen

    monkeypatch.setattr(gen, "load_pipeline", lambda *a, **k: pytest.fail("a model was loaded"))
    f = write_lines(tmp_path / "jobs.jsonl", ['{"visual_input": "scene.png", "prompt": "a ball"}'])
    where = ["--input", str(image)] if command == "generate" else [str(f)]
    res = cli(command, *where, "--prompt", "a ball", "--model", "demo", "--device", "cpu", "-o", str(tmp_path / "o"),
              *flags)
    assert res.exit_code == 2, res.stderr
    assert needle in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "o").exists()


def test_skipped_nan_line_leaves_no_nan_in_the_report(cli, tmp_path, image):
    from cosmos_plugins.predict1.fixtures import write_checkpoint_folder
    from cosmos_plugins.predict1.specs import PREDICT1_TINY

    ckpt = write_checkpoint_folder(tmp_path / "ckpt", PREDICT1_TINY, seed=0)
    f = write_lines(tmp_path / "jobs.jsonl", ['{"visual_input": "scene.png", "prompt": "a red ball", "name": "ok"}',
                                              '{"visual_input": "scene.png", "prompt": "a ball", "guidance": NaN}'])
    out = tmp_path / "out"
    res = cli("batch", str(f), "--model", TINY, "--checkpoint-dir", str(ckpt), "--output-dir", str(out),
              "--disable-prompt-upsampler", "--disable-guardrail", "--device", "cpu", "--num-steps", "1",
              "--skip-invalid")
    assert res.exit_code == 1, res.stderr  # one line failed (invalid)
    text = (out / "batch_report.json").read_text(encoding="utf-8")
    report = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in the report"))  # no NaN value
    items = {i["line"]: i for i in report["items"]}
    assert items[1]["status"] == "ok" and items[2]["status"] == "failed"
    assert items[2]["input"] == {"text": '{"visual_input": "scene.png", "prompt": "a ball", "guidance": NaN}'}
    assert "NaN is not a JSON number" in items[2]["message"]


# --- item 10: batch files that are not plain, bounded files -------------------------------------------------------


@pytest.mark.parametrize("command", ["validate", "batch"])
def test_fifo_and_devices_are_refused_at_once(cli, tmp_path, command):
    fifo = tmp_path / "jobs.jsonl"
    os.mkfifo(fifo)  # nobody writes to it: reading it would wait forever
    for path in (fifo, Path("/dev/zero")):
        res = cli(command, str(path), "--model", "demo")
        assert res.exit_code == 1, res.stderr
        assert f"{path}: not a regular file" in res.stderr and "Traceback" not in res.stderr


def test_oversized_file_and_overlong_lines(cli, tmp_path, image, monkeypatch):
    big = tmp_path / "big.jsonl"
    with open(big, "wb") as fh:  # sparse: takes no disk space
        fh.truncate(jobs_mod.MAX_BATCH_FILE_BYTES + 1)
    res = cli("validate", str(big), "--model", "7B")
    assert res.exit_code == 1 and "larger than the 64 MiB a batch file may have" in res.stderr

    monkeypatch.setattr(jobs_mod, "MAX_LINE_BYTES", 100)
    f = write_lines(tmp_path / "long.jsonl", ['{"visual_input": "scene.png"}',
                                              '{"visual_input": "scene.png", "prompt": "' + "x" * 500 + '"}',
                                              '{"visual_input": "missing.png"}'])
    res = cli("validate", str(f), "--model", "7B")
    by_line = errors_by_line(res.stderr, f)
    assert sorted(by_line) == [2, 3]  # the long line is one error, and the line after it is still read
    assert "longer than 100 bytes" in by_line[2][0] and "file not found" in by_line[3][0]


def test_lines_split_on_newlines_only(tmp_path, image):
    """U+2028 and U+2029 may sit inside a JSON string: they do not end a line (str.splitlines did)."""
    f = tmp_path / "b.jsonl"
    f.write_text('{"visual_input": "scene.png", "prompt": "one\u2028two\u2029three"}\r\n{"visual_input": "x.png"}\n',
                 encoding="utf-8")
    report = validate_batch(f, require_prompt=False, default_input_frames=1, allowed_input_frames=(1,))
    assert [bl.line for bl in report.lines] == [1]
    assert [i.line for i in report.issues] == [2]


# --- items 3 and 5: hostile checkpoints, non-finite outputs ---------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    from cosmos_plugins.predict1.fixtures import write_checkpoint_folder
    from cosmos_plugins.predict1.specs import PREDICT1_TINY

    return write_checkpoint_folder(tmp_path_factory.mktemp("tiny"), PREDICT1_TINY, seed=0)


def spoiled_copy(tiny_ckpt: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """A copy of the tiny checkpoint folder: (root, model.pt, tokenizer folder)."""
    import shutil

    from cosmos_cli.specs import NETWORK, TOKENIZER
    from cosmos_plugins.predict1.specs import PREDICT1_TINY

    root = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, root)
    return (root, root / PREDICT1_TINY.files_of(NETWORK)[0].local,
            (root / PREDICT1_TINY.files_of(TOKENIZER)[0].local).parent)


def tiny_generate(cli, ckpt: Path, image: Path, out: Path, *extra: str):
    return cli("generate", "--model", TINY, "--checkpoint-dir", str(ckpt), "-o", str(out), "-i", str(image),
               "--prompt", "a red ball", "--disable-prompt-upsampler", "--disable-guardrail", "--device", "cpu",
               "--num-steps", "1", *extra)


KEY = "net.blocks.block0.blocks.0.block.attn.to_q.0.weight"


@pytest.mark.parametrize(("spoil", "needle"), [
    ("nan", f"{KEY} holds 1 NaN or infinite value"),
    ("inf", f"{KEY} holds 1 NaN or infinite value"),
    ("int64", f"{KEY} holds int64 values where the network has float32 ones"),
])
def test_network_weights_must_be_finite_floats(cli, tiny_ckpt, tmp_path, image, spoil, needle):
    import torch

    root, model_pt, _ = spoiled_copy(tiny_ckpt, tmp_path)
    state = torch.load(model_pt, weights_only=True)
    assert KEY in state
    if spoil == "int64":
        state[KEY] = state[KEY].round().to(torch.int64)
    else:
        state[KEY][0, 0] = float(spoil)
    torch.save(state, model_pt)
    res = tiny_generate(cli, root, image, tmp_path / "out")
    assert res.exit_code == 1 and "Traceback" not in res.stderr
    assert f"error: {model_pt}: {needle}" in res.stderr
    assert not list((tmp_path / "out").glob("*.mp4"))


@pytest.mark.parametrize("spoil", ["nan mean", "inf std"])
def test_latent_statistics_must_be_finite(cli, tiny_ckpt, tmp_path, image, spoil):
    import torch

    root, _, tok_dir = spoiled_copy(tiny_ckpt, tmp_path)
    mean, std = torch.load(tok_dir / "mean_std.pt", weights_only=True)
    (mean if spoil == "nan mean" else std)[3] = float("nan" if spoil == "nan mean" else "inf")
    torch.save((mean, std), tok_dir / "mean_std.pt")
    res = tiny_generate(cli, root, image, tmp_path / "out")
    assert res.exit_code == 1 and "Traceback" not in res.stderr
    assert f"error: {tok_dir / 'mean_std.pt'}: the latent mean or std holds NaN or infinite values" in res.stderr


class _Payload:
    """Unpickling this would create a file: the loader must refuse it before running anything."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_t5_weights_with_a_pickle_payload_are_refused(cli, tiny_ckpt, tmp_path, image):
    import torch

    from cosmos_cli.specs import TEXT_ENCODER
    from cosmos_plugins.predict1.specs import PREDICT1_TINY

    root, _, _ = spoiled_copy(tiny_ckpt, tmp_path)
    weights = root / PREDICT1_TINY.files_of(TEXT_ENCODER)[0].local.replace("config.json", "pytorch_model.bin")
    assert weights.is_file()
    torch.save({"shared.weight": _Payload(tmp_path / "pwned")}, weights)
    res = tiny_generate(cli, root, image, tmp_path / "out")
    assert res.exit_code == 1 and "Traceback" not in res.stderr
    assert f"error: {weights}: refusing to load: it is not a plain weights file" in res.stderr
    assert not (tmp_path / "pwned").exists()


def test_a_network_that_overflows_stops_with_one_line_and_writes_nothing(cli, tiny_ckpt, tmp_path, image):
    """Finite weights (they pass the load checks) of 1e30: the activations overflow float32 to inf, then NaN."""
    import torch

    root, model_pt, _ = spoiled_copy(tiny_ckpt, tmp_path)
    state = torch.load(model_pt, weights_only=True)
    torch.save({k: v * 1e30 if v.is_floating_point() and k.endswith("weight") else v for k, v in state.items()},
               model_pt)
    out = tmp_path / "out"
    res = tiny_generate(cli, root, image, out)
    assert res.exit_code == 1 and "Traceback" not in res.stderr, res.stderr
    assert "error: the diffusion network produced NaN or infinite values for this job; nothing was written" \
        in res.stderr
    assert not out.exists() or not list(out.iterdir())
