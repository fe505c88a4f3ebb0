"""Reading TorchScript archives as data (cosmos_cli.torchscript_archive) and the pinned checksums (integrity).

The reference is ``torch.jit.load(...).state_dict()`` on files these tests write themselves; a file with a
``__setstate__`` that writes a file proves that the reader runs nothing (and that torch.jit.load would).
"""

from __future__ import annotations

import os
import pickle
import shutil
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from cosmos_cli import integrity
from cosmos_cli.errors import CheckpointError
from cosmos_cli.specs import TOKENIZER
from cosmos_cli.torchscript_archive import read_state_dict
from cosmos_plugins.predict1.specs import PREDICT1_TINY
from cosmos_plugins.predict1.tokenizer import (
    DECODER_FILE,
    ENCODER_FILE,
    MEAN_STD_FILE,
    VideoTokenizer,
    load_tokenizer,
    trace_shape,
)
from tests.conftest import checkpoint_folder, make_image

TINY = PREDICT1_TINY.tokenizer


def assert_same_state(ours: dict[str, Tensor], ref: dict[str, Tensor]) -> None:
    """Keys in order, dtypes, shapes, strides, storage offsets and bits; and the same storage sharing."""
    assert list(ours) == list(ref)
    for key, want in ref.items():
        got = ours[key]
        assert not isinstance(got, nn.Parameter), key
        assert (got.dtype, got.shape, got.stride(), got.storage_offset()) == \
               (want.dtype, want.shape, want.stride(), want.storage_offset()), key
        assert torch.equal(got, want.detach()), key

    def sharing(state):
        ptrs = [t.untyped_storage().data_ptr() for t in state.values()]
        return [[j for j, q in enumerate(ptrs) if q == p] for p in ptrs]

    assert sharing(ours) == sharing(ref)


# ----------------------------------------------------------------------------------------------------------
# Parity with torch.jit.load on benign files


class _Leaf(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)  # an absent (None) parameter
        self.halves = nn.Parameter(torch.randn(5, 3).half())
        self.bf = nn.Parameter(torch.randn(2, 7).bfloat16())
        base = torch.arange(60, dtype=torch.float32)
        self.register_buffer("window", base[7:19])  # offset into a shared storage
        self.register_buffer("strided", base.view(6, 10)[:, 2:5])  # non-contiguous, same storage
        self.register_buffer("transposed", torch.randn(4, 6).t())  # non-contiguous, own storage
        self.register_buffer("ints", torch.arange(-3, 9, dtype=torch.int64).view(3, 4))
        self.register_buffer("mask", torch.tensor([True, False, True]))
        self.register_buffer("bytes_", torch.arange(6, dtype=torch.uint8))
        self.register_buffer("scalar", torch.tensor(2.5, dtype=torch.float64))
        self.register_buffer("empty", torch.zeros(0, 3))
        self.register_buffer("scratch", torch.ones(2), persistent=False)  # jit.load makes it persistent

    def forward(self, x: Tensor) -> Tensor:
        extra = (self.halves.float().sum() + self.bf.float().sum() + self.window.sum() + self.strided.sum()
                 + self.transposed.sum() + self.ints.sum() + self.mask.sum() + self.bytes_.sum() + self.scalar
                 + self.empty.sum() + self.scratch.sum())
        return self.conv(x) + extra


class _Scripted(nn.Module):
    """Scripted, with a tensor attribute that is neither a parameter nor a buffer (not in the state dict)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)
        self.note = torch.full((3,), 7.0)

    def forward(self, x: Tensor) -> Tensor:
        return self.lin(x.mean(dim=(2, 3))) + self.note.sum()


class _Tree(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("top", torch.randn(3))
        self.leaf = _Leaf()
        self.blocks = nn.ModuleList([nn.Linear(4, 4), nn.Identity(), nn.Linear(4, 4)])
        self.blocks[2].weight = self.blocks[0].weight  # a tied parameter: one storage, two names
        self.scripted = torch.jit.script(_Scripted())

    def forward(self, x: Tensor) -> Tensor:
        h = self.leaf(x)  # (1, 4, 6, 6)
        v = h.mean(dim=(2, 3))
        for block in self.blocks:
            v = block(v)
        return v.sum() + self.scripted(h).sum() + self.top.sum()


def test_state_dict_matches_jit_load_on_tricky_storages(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "tree.jit"
    with torch.no_grad():
        torch.jit.trace(_Tree().eval(), torch.randn(1, 3, 8, 8), check_trace=False).save(str(path))
    ref = torch.jit.load(str(path), map_location="cpu").state_dict()
    assert "scripted.note" not in ref and "leaf.scratch" in ref and "leaf.conv.bias" not in ref  # what we mirror
    ours = read_state_dict(path)
    assert_same_state(ours, ref)
    assert ours["leaf.window"].untyped_storage().data_ptr() == ours["leaf.strided"].untyped_storage().data_ptr()
    assert ours["blocks.0.weight"].data_ptr() == ours["blocks.2.weight"].data_ptr()
    ours["leaf.window"].add_(1)  # the storages are copy-on-write: the file never changes
    assert_same_state(read_state_dict(path), ref)


@pytest.fixture(scope="module")
def benign(tmp_path_factory) -> Path:
    """A tiny checkpoint folder in the real formats (written once: tracing is slow on a loaded CPU)."""
    return checkpoint_folder(tmp_path_factory.mktemp("benign"), PREDICT1_TINY, seed=0)


def tokenizer_dir(root: Path) -> Path:
    return (root / PREDICT1_TINY.files_of(TOKENIZER)[0].local).parent


def test_state_dict_matches_jit_load_on_tokenizer_files(benign):
    for name in (ENCODER_FILE, DECODER_FILE):
        path = tokenizer_dir(benign) / name
        assert_same_state(read_state_dict(path), torch.jit.load(str(path), map_location="cpu").state_dict())


def test_state_dict_matches_jit_load_on_the_bundled_demo_tokenizer():
    from cosmos_plugins.predict1.specs import DEMO_TOKENIZER_DIR

    folder = Path(__file__).resolve().parents[1] / "assets" / "demo" / DEMO_TOKENIZER_DIR  # written by tools/demo
    for name in (ENCODER_FILE, DECODER_FILE):
        assert_same_state(read_state_dict(folder / name),
                          torch.jit.load(str(folder / name), map_location="cpu").state_dict())


# ----------------------------------------------------------------------------------------------------------
# Files that run code when torch.jit.load reads them


class _Payload(nn.Module):
    """A scripted module whose __setstate__ writes a file: torch.jit.load runs it."""

    def __init__(self, target: str):
        super().__init__()
        self.target = target
        self.t = torch.zeros(1)

    def forward(self, x: Tensor) -> Tensor:
        return x

    @torch.jit.export
    def __getstate__(self) -> tuple[Tensor, str, bool]:
        return self.t, self.target, self.training

    @torch.jit.export
    def __setstate__(self, state: tuple[Tensor, str, bool]) -> None:
        self.t, self.target, self.training = state[0], state[1], state[2]
        torch.save(self.t, self.target)


class _MaliciousEncoder(nn.Module):
    """encoder.jit's layout (keys encoder.*, quant_conv.*) plus a payload that has no tensors of its own."""

    def __init__(self, tok: VideoTokenizer, target: Path):
        super().__init__()
        self.encoder, self.quant_conv = tok.encoder.encoder, tok.encoder.quant_conv
        self.payload = torch.jit.script(_Payload(str(target)))

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        z = self.quant_conv(self.encoder(self.payload(x)))
        return z, (z.new_zeros(1), z.new_zeros(1))


def write_malicious_encoder(folder: Path, target: Path) -> None:
    """Replace folder's encoder.jit by a trace with the same state dict whose loading writes ``target``."""
    tok = VideoTokenizer(TINY).eval()
    tok.encoder.load_state_dict(read_state_dict(folder / ENCODER_FILE), strict=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(_MaliciousEncoder(tok, target), torch.zeros(trace_shape(TINY)), check_trace=False)
    traced.save(str(folder / ENCODER_FILE))


@pytest.fixture(scope="module")
def malicious(benign, tmp_path_factory):
    """A tiny checkpoint folder whose encoder.jit writes ``target`` when torch.jit.load reads it."""
    root = tmp_path_factory.mktemp("malicious") / "checkpoints"
    shutil.copytree(benign, root)
    tok_dir = tokenizer_dir(root)
    target = tmp_path_factory.mktemp("victim") / "PWNED"
    write_malicious_encoder(tok_dir, target)
    return root, tok_dir, target


def test_the_malicious_file_does_run_code_under_jit_load(malicious, tmp_path):
    _, tok_dir, target = malicious
    probe = tmp_path / "probe.jit"  # a copy, so that the file the other tests use is untouched
    shutil.copy(tok_dir / ENCODER_FILE, probe)
    torch.jit.load(str(probe), map_location="cpu")
    assert target.exists()  # what the file does to whoever loads it with torch.jit.load
    target.unlink()


def test_loader_refuses_the_malicious_file_and_runs_nothing(malicious):
    _, tok_dir, target = malicious
    target.unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match=r"encoder\.jit: refusing to load it: payload .*_Payload\) has its own "
                                              r"__setstate__"):
        read_state_dict(tok_dir / ENCODER_FILE)
    with pytest.raises(CheckpointError, match=r"encoder\.jit: refusing to load it"):
        load_tokenizer(tok_dir, TINY, device="cpu", dtype=torch.float32)
    assert not target.exists()


def test_generate_refuses_the_malicious_file_and_runs_nothing(cli, malicious, tmp_path):
    root, _, target = malicious
    target.unlink(missing_ok=True)
    image = make_image(tmp_path / "frame.png", 32, 32)
    res = cli("generate", "--model", "predict1-tiny", "--checkpoint-dir", str(root), "-i", str(image),
              "--prompt", "a ball", "--disable-prompt-upsampler", "--disable-guardrail", "--device", "cpu",
              "--num-steps", "1", "--video-save-folder", str(tmp_path / "out"))
    assert res.exit_code == 1, res.stderr
    assert "encoder.jit: refusing to load it" in res.stderr and "Traceback" not in res.stderr
    assert not target.exists()
    assert not list(tmp_path.rglob("*.mp4"))


def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


class _Shell:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


def test_a_pickle_payload_in_data_pkl_is_inert(tmp_path):
    target = tmp_path / "PWNED"
    path = _zip(tmp_path / "evil.jit", {"evil/data.pkl": pickle.dumps(_Shell(target), protocol=2),
                                        "evil/version": b"3"})
    with pytest.raises(CheckpointError, match=r"evil\.jit: not a TorchScript archive we can read"):
        read_state_dict(path)
    assert not target.exists()


def test_truncated_storage_and_out_of_bounds_views_are_refused(tmp_path):
    path = tmp_path / "lin.jit"
    torch.jit.trace(nn.Linear(8, 8), torch.randn(1, 8)).save(str(path))
    with zipfile.ZipFile(path) as zf:
        entries = {i.filename: zf.read(i) for i in zf.infolist()}
    weight = next(n for n in entries if n.endswith("/data/0"))
    short = dict(entries, **{weight: entries[weight][:16]})
    with pytest.raises(CheckpointError, match=r"storage 0 needs \d+ bytes, its entry holds 16"):
        read_state_dict(_zip(tmp_path / "short.jit", short))
    pkl = next(n for n in entries if n.endswith("/data.pkl"))
    # storage numel 64 -> 8 (BININT1 64 in the persistent id): the weight's 8x8 view no longer fits
    shrunk = dict(entries, **{pkl: entries[pkl].replace(b"K@t", b"K\x08t", 1)})
    assert shrunk[pkl] != entries[pkl]
    with pytest.raises(CheckpointError, match=r"a tensor reaches element 63 of a storage of 8"):
        read_state_dict(_zip(tmp_path / "oob.jit", shrunk))


# ----------------------------------------------------------------------------------------------------------
# Pinned checksums


def test_pinned_checksums_are_checked_and_cached_by_size_and_mtime(benign, tmp_path, monkeypatch):
    monkeypatch.setenv("COSMOS_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "tok"
    shutil.copytree(tokenizer_dir(benign), folder)
    pins = {name: integrity.md5_of(folder / name) for name in (ENCODER_FILE, DECODER_FILE, MEAN_STD_FILE)}
    load_tokenizer(folder, TINY, device="cpu", dtype=torch.float32, md5=pins)
    assert (tmp_path / "cache" / integrity.CACHE_FILE).is_file()

    def no_hashing(path):
        raise AssertionError(f"{path} hashed again")

    monkeypatch.setattr(integrity, "md5_of", no_hashing)
    load_tokenizer(folder, TINY, device="cpu", dtype=torch.float32, md5=pins)  # the second run pays nothing
    monkeypatch.undo()
    monkeypatch.setenv("COSMOS_CACHE_DIR", str(tmp_path / "cache"))

    with pytest.raises(CheckpointError, match=r"decoder\.jit: checksum mismatch: MD5 [0-9a-f]{32}, the released "
                                              r"file's is 0{32}") as err:
        load_tokenizer(folder, TINY, device="cpu", dtype=torch.float32, md5={**pins, DECODER_FILE: "0" * 32})
    assert "cosmos download" in err.value.hint

    good = (folder / ENCODER_FILE).read_bytes()
    data = bytearray(good)  # a damaged file of the same size, newer mtime
    data[-100] ^= 0xFF
    stat = (folder / ENCODER_FILE).stat()
    (folder / ENCODER_FILE).write_bytes(bytes(data))
    os.utime(folder / ENCODER_FILE, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    with pytest.raises(CheckpointError, match=r"encoder\.jit: checksum mismatch"):
        load_tokenizer(folder, TINY, device="cpu", dtype=torch.float32, md5=pins)
    (folder / ENCODER_FILE).write_bytes(good)
    load_tokenizer(folder, TINY, device="cpu", dtype=torch.float32, md5={ENCODER_FILE: None})  # no pin: not checked


def test_released_tokenizer_files_carry_pins():
    from cosmos_plugins.predict1.specs import SPECS

    released = [s for s in SPECS.values() if any(f.repo.startswith("nvidia/") for f in s.files_of(TOKENIZER))]
    assert released
    for spec in released:
        assert {f.filename: bool(f.md5) for f in spec.files_of(TOKENIZER)} == \
               {ENCODER_FILE: True, DECODER_FILE: True, MEAN_STD_FILE: True}, spec.name


def test_the_pipeline_checks_the_specs_pins(benign, tmp_path, monkeypatch):
    """Predict1Pipeline.load hands the spec's tokenizer MD5s to the loader: a pin that does not match stops it."""
    import dataclasses

    from cosmos_cli.planner import plan_memory
    from cosmos_plugins.predict1.pipeline import Predict1Pipeline

    monkeypatch.setenv("COSMOS_CACHE_DIR", str(tmp_path / "cache"))
    files = tuple(dataclasses.replace(f, md5="0" * 32) if f.filename == DECODER_FILE else f
                  for f in PREDICT1_TINY.files)
    spec = dataclasses.replace(PREDICT1_TINY, files=files)
    plan = plan_memory(spec, None, strategy="resident", upsampler=False, guardrail=False)
    with pytest.raises(CheckpointError, match=r"decoder\.jit: checksum mismatch"):
        Predict1Pipeline.load(spec, plan, checkpoint_dir=benign, device="cpu")
