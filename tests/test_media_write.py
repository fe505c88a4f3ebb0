"""cosmos_cli.media.write: the H.264 MP4 and text outputs, written atomically and checked after encoding."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest

from cosmos_cli import media
from cosmos_cli.errors import GenerationError
from tests.media_helpers import H, W, palette_index, random_frames, solid_frames, stream_info


def top_level_boxes(path: Path) -> list[str]:
    data, boxes, i = path.read_bytes(), [], 0
    while i + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[i : i + 8])
        if size == 1:
            size = struct.unpack(">Q", data[i + 8 : i + 16])[0]
        boxes.append(kind.decode("latin-1"))
        if size == 0:
            break
        i += size
    return boxes


@pytest.mark.parametrize(("fps", "crf"), [(24, media.DEFAULT_CRF), (30, 18)])
def test_write_video_round_trip(tmp_path, fps, crf):
    path = tmp_path / "out.mp4"
    assert media.write_video(path, solid_frames(10), fps=fps, crf=crf) == path
    info = media.probe(path)
    assert (info.kind, info.num_frames, info.width, info.height) == ("video", 10, W, H)
    assert info.fps == pytest.approx(fps)
    stream = stream_info(path)
    assert "Video: h264" in stream and "yuv420p" in stream
    assert palette_index(media.read_video(path)[0]) == list(range(10))
    boxes = top_level_boxes(path)
    assert boxes.index("moov") < boxes.index("mdat")  # +faststart: playable while downloading
    assert f"crf={crf}.0".encode() in path.read_bytes()  # x264 records its settings in the stream
    assert os.listdir(tmp_path) == ["out.mp4"]


def test_write_video_pads_odd_sizes_by_one_pixel(tmp_path):
    blocks = random_frames(3, 6, 8)  # 8x8 blocks of one colour survive 4:2:0 chroma subsampling
    frames = np.ascontiguousarray(blocks.repeat(8, axis=1).repeat(8, axis=2)[:, :47, :63])
    path = media.write_video(tmp_path / "odd.mp4", frames, fps=24, crf=0)
    info = media.probe(path)
    assert (info.width, info.height, info.num_frames) == (64, 48, 3)
    back = media.read_video(path)[0]
    assert np.abs(back[:, :47, :63].astype(int) - frames).mean() < 4
    assert np.abs(back[:, 47, :63].astype(int) - frames[:, 46]).mean() < 6  # repeated last row


def test_write_video_accepts_a_generator_and_creates_the_folder(tmp_path):
    path = tmp_path / "new" / "deeper" / "gen.mp4"
    media.write_video(path, (frame for frame in solid_frames(4)), fps=24)
    assert media.probe(path).num_frames == 4


def test_failed_write_leaves_no_partial_file(tmp_path):
    frames = list(solid_frames(8))
    frames[5] = np.zeros((H, W + 2, 3), dtype=np.uint8)  # ffmpeg is already writing when this comes

    target = tmp_path / "fresh.mp4"
    with pytest.raises(ValueError, match="frame 5"):
        media.write_video(target, frames, fps=24)
    assert os.listdir(tmp_path) == []

    existing = tmp_path / "existing.mp4"
    existing.write_bytes(b"previous result")
    with pytest.raises(ValueError):
        media.write_video(existing, frames, fps=24)
    assert existing.read_bytes() == b"previous result"
    assert os.listdir(tmp_path) == ["existing.mp4"]


def test_write_is_checked_after_encoding(tmp_path, monkeypatch):
    """If what ffmpeg wrote does not read back as the frames sent, nothing replaces the target."""
    existing = tmp_path / "existing.mp4"
    existing.write_bytes(b"previous result")
    real_probe = media.read._probe_video

    def short_probe(p):
        info = real_probe(p)
        return media.MediaInfo(info.path, info.kind, info.num_frames - 1, info.width, info.height, info.fps)

    monkeypatch.setattr(media.write, "_probe_video", short_probe)
    with pytest.raises(GenerationError, match="expected 4"):
        media.write_video(existing, solid_frames(4), fps=24)
    assert existing.read_bytes() == b"previous result"
    assert os.listdir(tmp_path) == ["existing.mp4"]


FAKE_FFMPEG = {
    # writes a partial file, reads a little, then dies: the next frame hits a closed pipe
    "dies mid-write": 'for a; do out="$a"; done; printf partial > "$out"; head -c 20000 > /dev/null; exit 1',
    # reads everything and exits 0, but what it wrote is not a video
    "writes garbage": 'for a; do out="$a"; done; cat > /dev/null; printf garbage > "$out"; exit 0',
}


@pytest.mark.parametrize("behaviour", list(FAKE_FFMPEG))
def test_ffmpeg_failure_leaves_no_partial_file(tmp_path, monkeypatch, behaviour):
    script = tmp_path / "fake-ffmpeg.sh"
    script.write_text("#!/bin/sh\n" + FAKE_FFMPEG[behaviour] + "\n")
    script.chmod(0o755)
    monkeypatch.setattr(imageio_ffmpeg._io, "get_ffmpeg_exe", lambda: str(script))  # the encoder only
    out = tmp_path / "out"
    out.mkdir()
    (out / "existing.mp4").write_bytes(b"previous result")
    with pytest.raises(GenerationError) as err:
        media.write_video(out / "existing.mp4", solid_frames(12), fps=24)
    assert "existing.mp4" in err.value.message and "\n" not in err.value.message
    assert (out / "existing.mp4").read_bytes() == b"previous result"
    assert os.listdir(out) == ["existing.mp4"]


def test_write_video_replaces_an_existing_file(tmp_path):
    path = tmp_path / "v.mp4"
    path.write_bytes(b"old")
    media.write_video(path, solid_frames(2), fps=24)
    assert media.probe(path).num_frames == 2


def test_write_video_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        media.write_video(tmp_path / "a.mp4", np.zeros((2, H, W, 3), dtype=np.float32), fps=24)
    with pytest.raises(ValueError):
        media.write_video(tmp_path / "a.mp4", solid_frames(2), fps=0)
    with pytest.raises(ValueError):
        media.write_video(tmp_path / "a.mp4", solid_frames(0), fps=24)
    with pytest.raises(ValueError, match="^preset must be one of ultrafast, "):
        media.write_video(tmp_path / "a.mp4", solid_frames(2), fps=24, preset="nosuch")
    assert os.listdir(tmp_path) == []
    media.write_video(tmp_path / "b.mp4", solid_frames(2), fps=24, preset="ultrafast")  # another preset: a video
    assert media.probe(tmp_path / "b.mp4").num_frames == 2


def test_write_text_utf8_atomic(tmp_path):
    path = tmp_path / "prompt.txt"
    path.write_text("old prompt")
    text = "A robot arm picks up a café cup — 机器人\nsecond line\r\n"
    assert media.write_text(path, text) == path
    assert path.read_bytes() == text.encode("utf-8")
    assert os.listdir(tmp_path) == ["prompt.txt"]


def test_write_text_failure_leaves_target(tmp_path, monkeypatch):
    path = tmp_path / "prompt.txt"
    path.write_text("old prompt")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(media.write.os, "replace", broken_replace)
    with pytest.raises(GenerationError, match="No space left"):
        media.write_text(path, "new prompt")
    assert path.read_text() == "old prompt"
    assert os.listdir(tmp_path) == ["prompt.txt"]
