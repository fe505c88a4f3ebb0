"""Loading the released tokenizer files, read as data.

Checkpoint layout. The released files are TorchScript traces of the original modules. We read their tensors
with :func:`cosmos_cli.torchscript_archive.read_state_dict`, never with TorchScript's ``jit.load``: loading a
TorchScript archive runs its code (a class's ``__setstate__`` can write files), while our reader unpickles the
module tree as inert data, resolves no global and refuses modules with custom ``__setstate__`` code:

- ``encoder.jit`` traces ``Sequential(encoder, quant_conv, distribution)``; its keys are ``encoder.*`` and
  ``quant_conv.conv3d.*`` (the identity ``distribution`` has none) and it returns ``(latent, (zero, zero))``.
- ``decoder.jit`` traces ``Sequential(post_quant_conv, decoder)``; keys ``post_quant_conv.conv3d.*``, ``decoder.*``.
- ``mean_std.pt`` is a pickled pair ``(mean, std)`` of tensors holding ``latent_channels x N`` values in
  channel-major order (N >= 16 latent frames); latent frame j of channel c is normalized with entry [c, j].

:class:`VideoEncoder` and :class:`VideoDecoder` have exactly those keys (module attribute names mirror the
original's, including the Haar constant buffers ``wavelets``, ``_arange`` and ``patch_size_buffer``), so
``VideoEncoder(p).load_state_dict(read_state_dict("encoder.jit"), strict=True)`` works as is.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from cosmos_cli.errors import CheckpointError
from cosmos_cli.integrity import verify_pinned
from cosmos_cli.torchscript_archive import read_state_dict

from ..params import TokenizerParams
from .model import VideoTokenizer, _frame_stats
from .modules import HAAR_TAP

ENCODER_FILE = "encoder.jit"
DECODER_FILE = "decoder.jit"
MEAN_STD_FILE = "mean_std.pt"
_SHOWN = 3  # offending keys named in an error message


def _constant_buffers(p: TokenizerParams) -> dict[str, Tensor]:
    """The Haar buffers of both files: constants that carry no learned values."""
    haar = {"wavelets": torch.tensor([HAAR_TAP, HAAR_TAP]), "_arange": torch.arange(2)}
    consts = {f"encoder.patcher3d.{k}": v for k, v in haar.items()}
    consts["encoder.patcher3d.patch_size_buffer"] = torch.tensor([p.patch_size], dtype=torch.int32)
    consts.update({f"decoder.unpatcher3d.{k}": v for k, v in haar.items()})
    return consts


def _summary(kind: str, items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN]) + (", ..." if len(items) > _SHOWN else "")
    return f"{len(items)} {kind} ({shown})"


def _read_jit_state(path: Path) -> dict[str, Tensor]:
    """The state dict of a ``.jit`` file, read as data: no TorchScript code runs (see the module docstring)."""
    if not path.is_file():
        raise CheckpointError(f"tokenizer file not found: {path}")
    return read_state_dict(path)


def _load_part(module: nn.Module, path: Path, consts: Mapping[str, Tensor], *, device: torch.device | str,
               dtype: torch.dtype) -> None:
    """Load one .jit file's state dict strictly into ``module`` (built on the meta device), one tensor at a time
    cast to ``dtype`` (floating point only) on ``device``.

    The Haar constant buffers may be absent from the file (they are filled in); if present they must hold the
    Haar constants. Any other missing, unexpected or mis-shaped key raises CheckpointError."""
    state = _read_jit_state(path)
    expected = module.state_dict()
    missing = [k for k in expected if k not in state and k not in consts]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} {list(state[k].shape)} != {list(ref.shape)}" for k, ref in expected.items()
                  if k in state and tuple(state[k].shape) != tuple(ref.shape)]
    wrong = [k for k in consts if k in state and k in expected and not mismatched
             and not torch.allclose(state[k].double(), consts[k].double(), rtol=1e-3, atol=0)]
    problems = [_summary(kind, items) for kind, items in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched),
                 ("constants that are not the Haar transform's of this patch size", wrong)) if items]
    if problems:
        raise CheckpointError(f"{path}: does not match the tokenizer: " + "; ".join(problems))
    loaded = {}
    for key in expected:
        tensor = state.pop(key) if key in state else consts[key]
        loaded[key] = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
    module.load_state_dict(loaded, strict=True, assign=True)


def read_mean_std(path: Path, p: TokenizerParams) -> tuple[Tensor, Tensor]:
    """``mean_std.pt`` -> (mean, std), each [1, C, L, 1, 1] in fp32."""
    if not path.is_file():
        raise CheckpointError(f"tokenizer file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refusing to load: it is not a plain tensor file "
                              f"(torch.load(weights_only=True) failed: {str(e).splitlines()[0]})") from e
    except (RuntimeError, EOFError) as e:
        raise CheckpointError(f"{path}: not a readable PyTorch file ({str(e).strip().splitlines()[0]})") from e
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2 and all(isinstance(t, Tensor) for t in obj)):
        raise CheckpointError(f"{path}: expected a pair (mean, std) of tensors, found {type(obj).__name__}")
    try:
        mean, std = (_frame_stats(t, p).float() for t in obj)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from e
    if not (bool(torch.isfinite(mean).all()) and bool(torch.isfinite(std).all())):  # NaN/inf: a black video
        raise CheckpointError(f"{path}: the latent mean or std holds NaN or infinite values")
    if not bool((std > 0).all()):
        raise CheckpointError(f"{path}: the latent std has entries <= 0")
    return mean, std


def load_tokenizer(folder: Path, params: TokenizerParams, *, device: torch.device | str,
                   dtype: torch.dtype = torch.bfloat16, md5: Mapping[str, str | None] | None = None) -> VideoTokenizer:
    """Build the tokenizer for ``params`` on the meta device and load ``folder``'s ``encoder.jit`` and
    ``decoder.jit`` (their tensors only, read as data by :func:`cosmos_cli.torchscript_archive.read_state_dict`:
    TorchScript's ``jit.load`` is never called, no code from the files runs) and ``mean_std.pt`` (``weights_only``).

    ``md5``: file name -> pinned MD5 (the model spec's ``CheckpointFile.md5`` of the released files); each file
    with one is checked before it is read (:func:`cosmos_cli.integrity.verify_pinned`, cached by size and mtime).
    Files without a pinned checksum (fixtures, the demo model) are not checked.

    Raises :class:`~cosmos_cli.errors.CheckpointError` for a missing file, a checksum mismatch, a file that is not
    a plain TorchScript archive of tensors, or a key mismatch. Returns the tokenizer in eval mode without
    gradients, on ``device`` in ``dtype``."""
    folder = Path(folder)
    p = params
    absent = [name for name in (ENCODER_FILE, DECODER_FILE, MEAN_STD_FILE) if not (folder / name).is_file()]
    if absent:
        raise CheckpointError(f"tokenizer file(s) not found in {folder}: {', '.join(absent)}")
    for name in (ENCODER_FILE, DECODER_FILE, MEAN_STD_FILE):
        verify_pinned(folder / name, (md5 or {}).get(name))
    mean, std = read_mean_std(folder / MEAN_STD_FILE, p)
    with torch.device("meta"):
        tok = VideoTokenizer(p)
    consts = _constant_buffers(p)
    _load_part(tok.encoder, folder / ENCODER_FILE, consts, device=device, dtype=dtype)
    _load_part(tok.decoder, folder / DECODER_FILE, consts, device=device, dtype=dtype)
    tok.latent_mean = mean.to(device=device, dtype=dtype)
    tok.latent_std = std.to(device=device, dtype=dtype)
    return tok.eval().requires_grad_(False)

