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


def forbid_model_loads(monkeypatch) -> None:
    """Fail the test if `generate` or `batch` gets as far as loading a model."""
    import cosmos_cli.generation as gen

    # every load goes through this one name (cosmos_cli.runner.JobRunner looks it up at call time)
    monkeypatch.setattr(gen, "load_pipeline", lambda *a, **k: pytest.fail("a model was loaded"))


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
    forbid_model_loads(monkeypatch)
    f = write_lines(tmp_path / "jobs.jsonl", ['{"visual_input": "scene.png", "prompt": "a ball"}'])
    where = ["--input", str(image)] if command == "generate" else [str(f)]
    res = cli(command, *where, "--prompt", "a ball", "--model", "demo", "--device", "cpu", "-o", str(tmp_path / "o"),
              *flags)
    assert res.exit_code == 2, res.stderr
    assert needle in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "o").exists()


def test_skipped_nan_line_leaves_no_nan_in_the_report(cli, tmp_path, image):
    from cosmos_plugins.predict1.specs import PREDICT1_TINY
    from tests.conftest import checkpoint_folder

    ckpt = checkpoint_folder(tmp_path / "ckpt", PREDICT1_TINY, seed=0)
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
    from cosmos_plugins.predict1.specs import PREDICT1_TINY
    from tests.conftest import checkpoint_folder

    return checkpoint_folder(tmp_path_factory.mktemp("tiny"), PREDICT1_TINY, seed=0)


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


# --- item 11: pixel bombs ----------------------------------------------------------------------------------------


def black_png(path: Path, width: int, height: int) -> Path:
    """A real, decodable all-black RGB PNG, compressed row by row (a 10000x10000 one is about 300 KB)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    comp = zlib.compressobj(9)
    row = b"\0" * (1 + 3 * width)  # filter byte + pixels
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def png_bomb(tmp_path_factory) -> Path:
    return black_png(tmp_path_factory.mktemp("bomb") / "black.png", 10_000, 10_000)


def test_pixel_bomb_is_refused_from_its_header_without_decoding(png_bomb):
    """Measured in a fresh process: its peak memory stays far below the 300 MB one decode of the image takes
    (before: 4.26 GB, decoded twice)."""
    import subprocess
    import sys

    assert png_bomb.stat().st_size < 1_000_000
    code = ("import sys\nfrom cosmos_cli.errors import InputError\nfrom cosmos_cli import media\n"
            "try:\n    media.probe(sys.argv[1])\nexcept InputError as e:\n    print(e.message)\n"
            "try:\n    media.read_frames(sys.argv[1], 1)\nexcept InputError as e:\n    print(e.message)\n"
            # VmHWM is this process's own peak: ru_maxrss would not do, Linux carries the parent's peak over
            # exec (exec_mmap's setmax_mm_hiwater_rss), so under a big pytest process it reads the parent's size.
            "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')))")  # KiB
    run = subprocess.run([sys.executable, "-c", code, str(png_bomb)], capture_output=True, text=True, timeout=120)
    *messages, peak_kib = run.stdout.split("\n")[:-1]
    assert messages == [f"{png_bomb} is 10000x10000 (100 megapixels): more than the 40 megapixels an input image "
                        f"may have"] * 2, run.stderr
    assert int(peak_kib) < 250 * 1024, peak_kib


@pytest.mark.parametrize("command", ["generate", "validate"])
def test_pixel_bomb_is_one_line_before_any_model_loads(cli, png_bomb, tmp_path, monkeypatch, command):
    forbid_model_loads(monkeypatch)
    if command == "generate":
        res = cli("generate", "-i", str(png_bomb), "--prompt", "a ball", "--model", "demo", "--device", "cpu",
                  "-o", str(tmp_path / "o"))
    else:
        f = write_lines(tmp_path / "b.jsonl", [json.dumps({"visual_input": str(png_bomb)})])
        res = cli("validate", str(f), "--model", "7B")
    assert res.exit_code == 1 and "Traceback" not in res.stderr
    assert "10000x10000 (100 megapixels): more than the 40 megapixels" in res.stderr


def test_large_jpeg_is_decoded_reduced_and_once(tmp_path, monkeypatch):
    import cv2
    import numpy as np

    from cosmos_cli import media

    jpg = make_image(tmp_path / "big.jpg", height=48, width=64)
    monkeypatch.setattr(media.read, "MAX_INPUT_PIXELS", 1000)  # 64x48 = 3072 pixels; / 2 -> 32x24 = 768
    decodes = []
    real = cv2.imdecode
    monkeypatch.setattr(cv2, "imdecode", lambda buf, flags: decodes.append(flags) or real(buf, flags))
    info = media.probe(jpg)
    assert (info.width, info.height) == (32, 24) and decodes == []  # the probe decodes nothing
    frames = media.read_frames(jpg, 1)
    assert frames.shape == (1, 24, 32, 3) and decodes == [cv2.IMREAD_REDUCED_COLOR_2]
    full = real(np.fromfile(jpg, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    # libjpeg's 1/2 scaling averages 2x2 blocks in the DCT domain: within a few levels of the full decode's means
    means = full.reshape(24, 2, 32, 2, 3).mean(axis=(1, 3))
    assert np.abs(frames[0].astype(float) - means).mean() < 8
    png = make_image(tmp_path / "big.png", height=48, width=64)  # no reduced decode for PNG: refused
    with pytest.raises(Exception, match="more than the 0 megapixels"):
        media.probe(png)


def test_video_frames_are_bounded_before_decoding(tmp_path, monkeypatch):
    from cosmos_cli import media
    from cosmos_cli.errors import InputError
    from tests.conftest import make_video

    clip = make_video(tmp_path / "clip.mp4", num_frames=3, height=48, width=64)
    monkeypatch.setattr(media.read, "MAX_INPUT_PIXELS", 1000)
    for call in (media.probe, lambda p: media.read_frames(p, 1)):
        with pytest.raises(InputError, match=r"has 64x48 frames \(0 megapixels\): more than"):
            call(clip)


# --- item 6: every file before anything loads; Aegis fails closed -----------------------------------------------------


def test_missing_guardrail_and_upsampler_files_are_found_before_t5_loads(cli, tmp_path, image, monkeypatch):
    """A 7B folder whose network, tokenizer and T5 files exist (empty: loading any of them would fail otherwise)
    but without the upsampler and the guardrail: one error lists what is missing, and nothing was loaded."""
    from cosmos_cli.specs import NETWORK, TEXT_ENCODER, TOKENIZER
    from cosmos_plugins.predict1 import text_encoder
    from cosmos_plugins.predict1.specs import PREDICT1_7B
    from cosmos_plugins.predict1.tokenizer import loading

    monkeypatch.setattr(text_encoder.T5TextEncoder, "load", lambda *a, **k: pytest.fail("T5 was loaded"))
    monkeypatch.setattr(loading, "load_tokenizer", lambda *a, **k: pytest.fail("the tokenizer was loaded"))
    root = tmp_path / "ckpt"
    for f in PREDICT1_7B.files:
        if f.component in (NETWORK, TOKENIZER, TEXT_ENCODER):
            (root / f.local).parent.mkdir(parents=True, exist_ok=True)
            (root / f.local).write_bytes(b"")
    base = ["generate", "--model", "7B", "--checkpoint-dir", str(root), "-i", str(image), "--prompt", "a ball",
            "--device", "cpu", "-o", str(tmp_path / "o")]
    res = cli(*base)
    assert res.exit_code == 1 and "Traceback" not in res.stderr
    assert f"error: {root}: files missing for {PREDICT1_7B.name}: the prompt upsampler's weights" in res.stderr
    assert "guardrail folder not found" in res.stderr and "--disable-guardrail" in res.stderr

    g = root / "Cosmos-Predict1-7B-Video2World" / "guardrail"
    (g / "blocklist" / "custom").mkdir(parents=True)
    res = cli(*base, "--disable-prompt-upsampler")
    assert res.exit_code == 1 and "upsampler" not in res.stderr.split("hint:")[0]
    for missing in ("blocklist/whitelist/", "video_content_safety_filter/safety_filter.pt",
                    "face_blur_filter/Resnet50_Final.pth", "aegis/meta-llama/LlamaGuard-7b/config.json",
                    "aegis/nvidia/Aegis-AI-Content-Safety-LlamaGuard-Defensive-1.0/adapter_config.json",
                    "video_content_safety_filter/google/siglip-so400m-patch14-384/config.json"):
        assert str(g / missing) in res.stderr, missing
    assert "blocklist/custom/" not in res.stderr


@pytest.mark.parametrize(("answer", "safe"), [
    ("safe", True), (" Safe.\n", True), ("safe\n", True),
    ("", False), ("   \n ", False), ("I cannot answer that", False), ("unsafe\nO3", False),
    ("safe\nunsafe", False), ("<unk> <unk>", False),
])
def test_aegis_answer_fails_closed(answer, safe):
    from cosmos_plugins.predict1 import guardrails as G

    verdict = G.aegis_verdict(answer)
    assert verdict.safe is safe and verdict.component == G.AEGIS
    if not safe and "unsafe" not in answer:
        assert "no safe/unsafe verdict" in verdict.reason


def test_empty_aegis_answer_blocks_the_prompt(tmp_path):
    from cosmos_plugins.predict1 import guardrails as G

    aegis = G.Aegis(model=None, tokenizer=None, device="cpu")
    aegis.answer = lambda prompt: ""  # what a broken adapter or an early end-of-sequence gives

    class Passing:
        def check(self, prompt):
            return True, "no blocklisted word"

    verdict = G.TextGuardrail(Passing(), aegis).check("a cat on a beach")
    assert not verdict.safe and verdict.component == G.AEGIS


# --- item 12: a prompt cut short, an ignored --checkpoint-dir ------------------------------------------------------


def test_prompt_longer_than_the_encoder_reads_is_reported(cli, tiny_ckpt, tmp_path, image):
    from cosmos_plugins.predict1.specs import PREDICT1_TINY

    limit = PREDICT1_TINY.text_encoder.max_length
    long_prompt = " ".join(["a red ball rolls left"] * limit)  # 5 tokens a phrase: far over the limit
    res = tiny_generate(cli, tiny_ckpt, image, tmp_path / "out", "--prompt", long_prompt)
    assert res.exit_code == 0, res.stderr
    warning = " ".join(res.stderr.split())  # rich wraps long lines
    assert f"note: the prompt is {5 * limit + 1} tokens long; the text encoder reads its first {limit} tokens" \
        in warning
    res = tiny_generate(cli, tiny_ckpt, image, tmp_path / "out2")  # a short prompt and the default negative one
    assert res.exit_code == 0 and "note: the prompt" not in res.stderr and "negative prompt is" not in res.stderr

    f = write_lines(tmp_path / "jobs.jsonl", [json.dumps({"visual_input": str(image), "prompt": long_prompt})])
    res = cli("batch", str(f), "--model", TINY, "--checkpoint-dir", str(tiny_ckpt), "--output-dir",
              str(tmp_path / "b"), "--disable-prompt-upsampler", "--disable-guardrail", "--device", "cpu",
              "--num-steps", "1")
    assert res.exit_code == 0, res.stderr
    item = json.loads((tmp_path / "b" / "batch_report.json").read_text())["items"][0]
    assert item["status"] == "ok" and f"reads its first {limit} tokens" in item["message"]


def test_demo_model_says_checkpoint_dir_is_not_used(cli, tmp_path, image, monkeypatch):
    import cosmos_plugins.predict1.pipeline as P

    def stop(*a, **k):
        raise KeyboardInterrupt  # enough: the note comes before anything loads

    monkeypatch.setattr(P.Predict1Pipeline, "load", stop)
    res = cli("generate", "--model", "demo", "--checkpoint-dir", str(tmp_path / "mine"), "-i", str(image),
              "--prompt", "a ball", "--device", "cpu", "-o", str(tmp_path / "o"))
    assert res.exit_code == 130
    assert f"--checkpoint-dir {tmp_path / 'mine'} is not used" in " ".join(res.stderr.split())
    res = cli("generate", "--model", "demo", "-i", str(image), "--prompt", "a ball", "--device", "cpu",
              "-o", str(tmp_path / "o"))
    assert "is not used" not in res.stderr
