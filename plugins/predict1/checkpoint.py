"""Load the released diffusion-network checkpoint (``model.pt``) strictly and safely; write test fixtures.

The file holds the state dict of the original ``ModuleDict(net=..., logvar=...)``: every network key carries a
``net.`` prefix, plus the training-only ``logvar.*`` head and the ``net.pos_embedder.seq`` buffer. Those two
(and TransformerEngine ``_extra_state`` entries, if any) are the only keys ignored; any other missing,
unexpected or mis-shaped key is an error. The network is built on the meta device and each tensor is cast to
the compute dtype and placed on the target device one at a time, so no full fp32 copy is ever made.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor

from cosmos_cli.errors import CheckpointError

from .network import VideoExtendGeneralDIT
from .params import DiTParams

PREFIX = "net."
_SHOWN = 3  # offending keys named in an error message


def is_ignored_key(key: str) -> bool:
    """Keys of the released file that the network does not use."""
    return key.startswith("logvar.") or key in ("net.pos_embedder.seq", "pos_embedder.seq") or "_extra_state" in key


def _unwrap(obj: object, path: Path) -> Mapping[str, object]:
    if isinstance(obj, Mapping):
        for wrapper in ("model", "state_dict"):
            if isinstance(obj.get(wrapper), Mapping):
                return obj[wrapper]
        return obj
    raise CheckpointError(f"{path}: expected a state dict, found a {type(obj).__name__}")


def _open(path: Path) -> tuple[dict[str, tuple[int, ...] | None], Callable[[str], Tensor]]:
    """The file's keys with their shapes (None for a non-tensor value) and a reader of one tensor.

    Nothing is read in full here: ``torch.load(mmap=True)`` maps the file (a legacy-format one, which cannot be
    mapped, is read whole) and safetensors reads on demand.
    """
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        handle = safe_open(str(path), framework="pt", device="cpu")
        return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}, handle.get_tensor
    try:  # a file of the legacy (pre-zip, torch < 1.6) format cannot be mapped: read whole, as transformers does
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refusing to load: it is not a plain weights file "
            f"(torch.load(weights_only=True) failed: {str(e).splitlines()[0]})"
        ) from e
    except RuntimeError as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({str(e).splitlines()[0]})") from e
    state = _unwrap(obj, path)
    shapes = {k: tuple(v.shape) if isinstance(v, Tensor) else None for k, v in state.items()}
    return shapes, state.__getitem__


def _summary(kind: str, items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN]) + (", ..." if len(items) > _SHOWN else "")
    return f"{len(items)} {kind} ({shown})"


def match_keys(shapes: Mapping[str, tuple[int, ...] | None], expected: Mapping[str, Tensor], path: Path
               ) -> dict[str, str]:
    """Map each network key to its key in the file, or raise one CheckpointError listing every problem."""
    names: dict[str, str] = {}
    unexpected = []
    for key in shapes:
        if is_ignored_key(key):
            continue
        name = key.removeprefix(PREFIX)
        if name in expected and name not in names:
            names[name] = key
        else:  # not a network key, or the same key both with and without the prefix
            unexpected.append(key)
    missing = [PREFIX + k for k in expected if k not in names]
    mismatched = [f"{names[k]} {list(shapes[names[k]]) if shapes[names[k]] is not None else 'not a tensor'}"
                  f" != {list(ref.shape)}"
                  for k, ref in expected.items() if k in names and shapes[names[k]] != tuple(ref.shape)]
    problems = [_summary(kind, items) for kind, items in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
                if items]
    if problems:
        raise CheckpointError(f"{path}: does not match the network: " + "; ".join(problems),
                              hint="Check that the file belongs to the chosen model (the 7B and 14B networks differ in "
                                   "shape); if it was cut short, download it again.")
    return {k: names[k] for k in expected}


def checked_cast(tensor: object, ref: Tensor, path: Path, key: str, *, device: torch.device | str,
                 dtype: torch.dtype) -> Tensor:
    """``tensor`` from ``path`` cast for the slot ``ref`` of the network (floating point: to ``dtype``, on
    ``device``), refusing a tensor of the wrong kind (int64 where the network has a float weight) and one with NaN
    or infinite values (after the cast, so a value beyond ``dtype``'s range counts), naming the file and the key.
    The check runs on the tensor just cast, on ``device``: one pass over memory that the cast touched anyway."""
    if not isinstance(tensor, Tensor):
        raise CheckpointError(f"{path}: {key} is a {type(tensor).__name__}, not a tensor")
    if tensor.is_floating_point() != ref.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise CheckpointError(f"{path}: {key} holds {str(tensor.dtype).removeprefix('torch.')} values where the "
                              f"network has {str(ref.dtype).removeprefix('torch.')} ones",
                              hint="The file is not a released checkpoint of this model (or was converted wrongly); "
                                   "download it again.")
    out = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
    if out.is_floating_point() and not bool(torch.isfinite(out).all()):
        bad = int((~torch.isfinite(out)).sum())
        raise CheckpointError(f"{path}: {key} holds {bad} NaN or infinite value{'s' if bad != 1 else ''}"
                              + (f" (in {str(dtype).removeprefix('torch.')})" if dtype != tensor.dtype else ""),
                              hint="The file is damaged or was not saved from a working model; download it again.")
    return out


def load_network(path: Path, params: DiTParams, *, device: torch.device | str, dtype: torch.dtype = torch.bfloat16,
                 rope_mode: str = "compat", map_blocks: bool = False) -> VideoExtendGeneralDIT:
    """Build the network for ``params`` and load ``path`` (``.pt``/``.pth`` or ``.safetensors``) into it.

    Keys may carry the ``net.`` prefix or not, and the dict may sit under a ``"model"`` or ``"state_dict"``
    key. Raises :class:`~cosmos_cli.errors.CheckpointError` on missing, unexpected or mis-shaped keys.
    Returns the network in eval mode, without gradients, on ``device`` in ``dtype``.

    ``map_blocks`` (the ``map`` placement, :mod:`.mapped`): the transformer blocks' tensors are left as read, in
    the file's dtype, on the host: for a ``.pt`` file, ``torch.load(mmap=True)`` tensors, pages of the file's
    mapping (checked for NaN like the rest, which reads the file once). A ``.safetensors`` file's tensors are read
    into memory by safetensors, so a network loaded from one streams from that copy.
    """
    path = Path(path)
    with torch.device("meta"):
        model = VideoExtendGeneralDIT(params, rope_mode=rope_mode)
    shapes, read = _open(path)
    names = match_keys(shapes, model.state_dict(), path)
    expected = model.state_dict()
    state = {}
    for name, key in names.items():  # one tensor at a time, straight into the compute dtype on the device
        tensor = read(key)
        if map_blocks and name.startswith("blocks.") and isinstance(tensor, Tensor):  # left in the mapping
            state[name] = checked_cast(tensor, expected[name], path, key, device="cpu", dtype=tensor.dtype)
        else:
            state[name] = checked_cast(tensor, expected[name], path, key, device=device, dtype=dtype)
    model.load_state_dict(state, strict=True, assign=True)
    model.init_buffers(device)
    return model.eval().requires_grad_(False)


def random_state_dict(params: DiTParams, seed: int = 0, dtype: torch.dtype = torch.float32,
                      device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """Random weights in the released file's key format: ``net.``-prefixed keys, ``net.pos_embedder.seq`` and the
    three ``logvar.*`` keys. Linear weights have std 1/sqrt(fan_in) and RMSNorm gains are about 1, so a tiny
    network's output has unit-order variance. ``device``: where the numbers are drawn (a GPU draws a 7B network's
    in seconds; the tensors returned are on the CPU either way, and differ from the CPU's draw)."""
    with torch.device("meta"):
        model = VideoExtendGeneralDIT(params)
    gen = torch.Generator(device).manual_seed(seed)
    state: dict[str, Tensor] = {}
    for name, ref in model.state_dict().items():
        noise = torch.randn(ref.shape, generator=gen, device=device)
        if name == "affline_norm.weight" or name.endswith((".to_q.1.weight", ".to_k.1.weight")):
            value = 1.0 + 0.1 * noise
        elif name.startswith("extra_pos_embedder."):
            value = noise
        else:
            value = noise / ref.shape[-1] ** 0.5
        state[PREFIX + name] = value.to("cpu", dtype)
    state["net.pos_embedder.seq"] = torch.arange(max(params.pos_lens), dtype=torch.float32)
    state["logvar.0.freqs"] = torch.randn(128, generator=gen, device=device).cpu()
    state["logvar.0.phases"] = torch.rand(128, generator=gen, device=device).cpu()
    state["logvar.1.weight"] = torch.randn(1, 128, generator=gen, device=device).cpu() / 128**0.5
    return state


def write_random_checkpoint(path: Path, params: DiTParams, seed: int = 0, dtype: torch.dtype = torch.float32,
                            wrapper: str | None = None, device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """Write :func:`random_state_dict` to ``path`` (``torch.save``, or safetensors for ``.safetensors``);
    ``wrapper`` = ``"model"`` or ``"state_dict"`` nests it under that key. Returns the state dict written."""
    path = Path(path)
    state = random_state_dict(params, seed, dtype, device)
    if path.suffix == ".safetensors":
        if wrapper is not None:
            raise ValueError("a safetensors file cannot have a wrapper key")
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state if wrapper is None else {wrapper: state}, path)
    return state


def diffusers_key(key: str) -> str:
    """Original key (no ``net.``) -> diffusers ``CosmosTransformer3DModel`` key (diffusers-cosmos.md 2.2).

    Used to run diffusers on the same weights, for the parity tests and the benchmarks.."""
    top = {
        "x_embedder.proj.1.weight": "patch_embed.proj.weight",
        "t_embedder.1.linear_1.weight": "time_embed.t_embedder.linear_1.weight",
        "t_embedder.1.linear_2.weight": "time_embed.t_embedder.linear_2.weight",
        "affline_norm.weight": "time_embed.norm.weight",
        "final_layer.adaLN_modulation.1.weight": "norm_out.linear_1.weight",
        "final_layer.adaLN_modulation.2.weight": "norm_out.linear_2.weight",
        "final_layer.linear.weight": "proj_out.weight",
    }
    if key in top:
        return top[key]
    if key.startswith("extra_pos_embedder."):
        return key.replace("extra_pos_embedder.", "learnable_pos_embed.")
    block, sub, rest = re.fullmatch(r"blocks\.block(\d+)\.blocks\.(\d)\.(.+)", key).groups()
    attn = f"attn{int(sub) + 1}"
    inner = {
        "adaLN_modulation.1.weight": f"norm{int(sub) + 1}.linear_1.weight",
        "adaLN_modulation.2.weight": f"norm{int(sub) + 1}.linear_2.weight",
        "block.attn.to_q.0.weight": f"{attn}.to_q.weight",
        "block.attn.to_q.1.weight": f"{attn}.norm_q.weight",
        "block.attn.to_k.0.weight": f"{attn}.to_k.weight",
        "block.attn.to_k.1.weight": f"{attn}.norm_k.weight",
        "block.attn.to_v.0.weight": f"{attn}.to_v.weight",
        "block.attn.to_out.0.weight": f"{attn}.to_out.0.weight",
        "block.layer1.weight": "ff.net.0.proj.weight",
        "block.layer2.weight": "ff.net.2.weight",
    }[rest]
    return f"transformer_blocks.{block}.{inner}"
