"""`cosmos validate`: every bad line reported by number, the JSON shape, speed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cosmos_cli.jobs import validate_batch
from tests.conftest import REPO, make_image, make_video


@pytest.fixture
def media(tmp_path):
    d = tmp_path / "media"
    d.mkdir()
    return {
        "img": make_image(d / "scene.png"),
        "upper": make_image(d / "SCENE2.JPG"),
        "gray": make_image(d / "gray.png", channels=1),
        "rgba": make_image(d / "rgba.png", channels=4),
        "vid": make_video(d / "clip.mp4", num_frames=12),
        "short": make_video(d / "short.mp4", num_frames=5),
    }


def write_jsonl(path: Path, lines: list) -> Path:
    out = []
    for ln in lines:
        out.append(ln if isinstance(ln, str) else json.dumps(ln))
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return path


def run_validate(cli, path, *extra):
    return cli("validate", str(path), "--model", "7B", *extra)


def test_good_file_both_original_formats(cli, tmp_path, media):
    f = write_jsonl(tmp_path / "good.jsonl", [
        {"visual_input": "media/scene.png"},
        {"prompt": "a robot arm picks up a cup", "visual_input": "media/clip.mp4"},
        "",
        {"prompt": "p", "visual_input": "media/SCENE2.JPG", "seed": 0, "guidance": 0, "num_steps": 1, "fps": 30,
         "negative_prompt": "", "name": "my-out_1.v2"},
        {"prompt": "gray", "visual_input": "media/gray.png"},
        {"prompt": "rgba", "visual_input": str(media["rgba"])},
        {"prompt": "nine", "visual_input": "media/clip.mp4", "num_input_frames": 9},
    ])
    res = run_validate(cli, f)
    assert res.exit_code == 0, res.stderr
    assert "6 jobs, all valid" in res.stdout


def test_every_bad_line_reported(cli, tmp_path, media):
    (tmp_path / "folder").mkdir()
    (tmp_path / "notes.mp4").write_text("this is not a video")
    f = write_jsonl(tmp_path / "bad.jsonl", [
        {"prompt": "ok", "visual_input": "media/scene.png"},                       # 1 ok
        '{"prompt": "broken", ',                                                    # 2 bad JSON
        "[1, 2]",                                                                   # 3 not an object
        {"prompt": "x", "visual_input": "media/scene.png", "seeed": 3},             # 4 unknown key
        {"prompt": "no input"},                                                     # 5 missing visual_input
        {"prompt": "", "visual_input": "media/scene.png"},                          # 6 empty prompt
        {"prompt": "x", "visual_input": "media/scene.png", "seed": -1},             # 7 negative seed
        {"prompt": "x", "visual_input": "media/scene.png", "seed": 1.5},            # 8 float seed
        {"prompt": "x", "visual_input": "media/scene.png", "num_input_frames": 0},  # 9
        {"prompt": "x", "visual_input": "media/clip.mp4", "num_input_frames": 5},   # 10 model accepts 1 or 9
        {"prompt": "x", "visual_input": "media/scene.png", "num_input_frames": 9},  # 11 image has 1 frame
        {"prompt": "x", "visual_input": "media/short.mp4", "num_input_frames": 9},  # 12 video too short
        {"prompt": "x", "visual_input": "media/missing.png"},                       # 13 not found
        {"prompt": "x", "visual_input": "folder"},                                  # 14 a folder
        {"prompt": "x", "visual_input": "notes.mp4"},                               # 15 not a video
        {"prompt": "x", "visual_input": "media/scene.png", "name": "a/b"},          # 16 bad name
        {"prompt": "x", "visual_input": "media/scene.png", "name": ".."},           # 17 bad name
        {"prompt": "x", "visual_input": "media/scene.png", "name": "dup"},          # 18 ok
        {"prompt": "x", "visual_input": "media/scene.png", "name": "dup"},          # 19 duplicate
        {"prompt": "x", "visual_input": "media/scene.png", "guidance": "high"},     # 20 type
        {"prompt": "x", "visual_input": "media/scene.png", "seed": True},           # 21 bool is not an int
        {"prompt": "x", "visual_input": 42},                                        # 22 type
        {"prompt": "   ", "visual_input": "media/scene.png"},                       # 23 blank prompt
        {"prompt": "x", "visual_input": "media/scene.png", "num_steps": 0, "fps": 0},  # 24 two errors
    ])
    res = run_validate(cli, f)
    assert res.exit_code == 1
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith(str(f))]
    by_line: dict[int, list[str]] = {}
    for ln in lines:
        num = int(ln[len(str(f)) + 1:].split(":")[0])
        by_line.setdefault(num, []).append(ln)
    assert sorted(by_line) == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 19, 20, 21, 22, 23, 24]
    assert len(by_line[24]) == 2
    assert any(": seeed: unknown key" in x for x in by_line[4])
    assert any(": visual_input: required key is missing" in x for x in by_line[5])
    assert any(": seed: must be >= 0" in x for x in by_line[7])
    assert any("accepts 1 or 9 input frames, got 5" in x for x in by_line[10])
    assert any("an image has 1 frame" in x for x in by_line[11])
    assert any("the video has 5 frames" in x for x in by_line[12])
    assert any("file not found" in x for x in by_line[13])
    assert any("already used by line 18" in x for x in by_line[19])
    assert "22 invalid" in res.stdout
    assert "Traceback" not in res.stderr


def test_prompt_required_without_upsampler(cli, tmp_path, media):
    f = write_jsonl(tmp_path / "b.jsonl", [{"visual_input": "media/scene.png"}])
    assert run_validate(cli, f).exit_code == 0
    res = run_validate(cli, f, "--disable-prompt-upsampler")
    assert res.exit_code == 1 and f"{f}:1: prompt: required key is missing" in res.stderr


def test_cli_num_input_frames_default(cli, tmp_path, media):
    f = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "x", "visual_input": "media/scene.png"}])
    # the command line's 9 is a default: an image line uses its one frame, with a note (issue 16.3)
    res = run_validate(cli, f, "--num-input-frames", "9")
    assert res.exit_code == 0 and "note: line 1: an image is one input frame" in res.stderr
    own = write_jsonl(tmp_path / "own.jsonl", [{"prompt": "x", "visual_input": "media/scene.png", "num_input_frames": 9}])
    res = run_validate(cli, own)  # the line's own 9 is taken at its word
    assert res.exit_code == 1 and "an image has 1 frame" in res.stderr
    res = run_validate(cli, f, "--num_input_frames", "4")
    assert res.exit_code == 1 and "got 4" in res.stderr


def test_json_output(cli, tmp_path, media):
    f = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "x", "visual_input": "media/scene.png"}, "{nope"])
    res = run_validate(cli, f, "--json")
    assert res.exit_code == 1
    data = json.loads(res.stdout)
    assert data["valid"] is False and data["jobs"] == 2
    assert data["errors"] == [{"line": 2, "field": None, "message": data["errors"][0]["message"]}]
    ok = write_jsonl(tmp_path / "ok.jsonl", [{"prompt": "x", "visual_input": "media/scene.png"}])
    res = run_validate(cli, ok, "--json")
    assert res.exit_code == 0 and json.loads(res.stdout) == {"valid": True, "jobs": 1, "errors": []}


def test_empty_and_blank_files(cli, tmp_path):
    for content in ("", "\n\n  \n"):
        f = tmp_path / "empty.jsonl"
        f.write_text(content)
        res = run_validate(cli, f, "--json")
        assert res.exit_code == 1
        assert json.loads(res.stdout)["errors"][0]["line"] is None


def test_line_numbers_are_the_files_own(cli, tmp_path, media):
    f = write_jsonl(tmp_path / "b.jsonl", ["", "", {"prompt": "x", "visual_input": "media/nope.png"}])
    res = run_validate(cli, f)
    assert f"{f}:3: visual_input:" in res.stderr


def test_not_utf8_and_bom(cli, tmp_path, media):
    f = tmp_path / "latin.jsonl"
    f.write_bytes(b'{"prompt": "ok", "visual_input": "media/scene.png"}\n{"prompt": "caf\xe9", "visual_input": "x"}\n')
    res = run_validate(cli, f)
    assert res.exit_code == 1 and f"{f}:2:" in res.stderr and "UTF-8" in res.stderr
    g = tmp_path / "bom.jsonl"
    g.write_bytes(b'\xef\xbb\xbf{"prompt": "ok", "visual_input": "media/scene.png"}\n')
    assert run_validate(cli, g).exit_code == 0


def test_missing_file_and_folder(cli, tmp_path):
    res = run_validate(cli, tmp_path / "nope.jsonl")
    assert res.exit_code == 1 and "no such file" in res.stderr and "Traceback" not in res.stderr
    res = run_validate(cli, tmp_path)
    assert res.exit_code == 1 and "folder" in res.stderr


def test_relative_to_cwd_when_not_beside_file(cli, tmp_path, media, monkeypatch):
    sub = tmp_path / "jobs"
    sub.mkdir()
    f = write_jsonl(sub / "b.jsonl", [{"prompt": "x", "visual_input": "media/scene.png"}])
    monkeypatch.chdir(tmp_path)
    assert run_validate(cli, f).exit_code == 0
    monkeypatch.chdir(sub)
    res = run_validate(cli, f)
    assert res.exit_code == 1 and "file not found" in res.stderr


def test_each_distinct_file_opened_once_and_fast(tmp_path, media, monkeypatch):
    import cosmos_cli.media as media_mod

    calls = []
    real = media_mod.probe
    monkeypatch.setattr(media_mod, "probe", lambda p: calls.append(p) or real(p))
    files = ["media/scene.png", "media/clip.mp4", "media/SCENE2.JPG", "media/gray.png"]
    lines = [{"prompt": f"prompt {i}", "visual_input": files[i % 4], "seed": i} for i in range(10_000)]
    f = write_jsonl(tmp_path / "big.jsonl", lines)
    t0 = time.perf_counter()
    report = validate_batch(f, require_prompt=True, default_input_frames=1, allowed_input_frames=(1, 9))
    elapsed = time.perf_counter() - t0
    assert report.valid and report.jobs == 10_000
    assert len(calls) == 4
    assert elapsed < 10, elapsed


def test_bundled_example_batches_are_valid(cli, monkeypatch):
    monkeypatch.chdir(REPO)
    for name in ("video2world_ps.jsonl", "video2world_wo_ps.jsonl"):
        res = run_validate(cli, REPO / "assets" / name)
        assert res.exit_code == 0, res.stderr
