"""Mistral's Pixtral-12B release made into the original's ``Pixtral-12B/{model.pt,config.json}``.

The conversion ``cosmos download`` runs for the prompt upsampler's entries (``CheckpointFile.convert ==
"pixtral-12b"``), reached through the spec (``ModelSpec.conversions``), and the facts it shares with the
upsampler's loader (:mod:`.upsampler`): the vision encoder the Video2World upsampler is built for and the keys
of the converted ``config.json``. Importing this module does not import torch.
"""

from __future__ import annotations

import dataclasses
import json
import mmap
import os
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

from cosmos_cli.errors import CheckpointError
from cosmos_cli.specs import Conversion


@dataclass(frozen=True)
class PixtralVisionParams:
    """The Pixtral vision encoder (defaults: the 400M ViT of Pixtral-12B, asserted by the original's converter)."""

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_channels: int = 3
    image_size: int = 1024
    patch_size: int = 16
    rope_theta: float = 10000.0
    image_token_id: int = 10


VISION_ENCODERS = {"pixtral-12b-vit": PixtralVisionParams()}
# Mistral's params.json LLM keys and their names in the converted config.json (the rest keep their name).
_RENAMED = {"hidden_dim": "ffn_hidden_size"}
PARAMS_LLM_KEYS = ("dim", "n_layers", "head_dim", "hidden_dim", "n_heads", "n_kv_heads", "rope_theta", "norm_eps",
                   "vocab_size")
CONFIG_KEYS = (*(_RENAMED.get(k, k) for k in PARAMS_LLM_KEYS), "vision_encoder")  # the converted config.json's

_SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
    "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}


def _map_safetensors(path: Path) -> dict:
    """The tensors of a safetensors file as views of a private memory map: nothing is read until used."""
    import torch

    with open(path, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
    (header_len,) = struct.unpack("<Q", mm[:8])
    header = json.loads(mm[8 : 8 + header_len])
    base = 8 + header_len
    tensors = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dtype = getattr(torch, _SAFETENSORS_DTYPES[meta["dtype"]])
        start, end = meta["data_offsets"]
        count = (end - start) // torch.empty((), dtype=dtype).element_size()
        tensors[name] = torch.frombuffer(mm, dtype=dtype, count=count, offset=base + start).reshape(meta["shape"])
    return tensors


def _pixtral_config(params: dict) -> dict:
    if set(params) != {*PARAMS_LLM_KEYS, "vision_encoder"}:
        raise CheckpointError(f"Pixtral params.json has unexpected keys: {sorted(params)}",
                              hint="Is this mistralai/Pixtral-12B-2409?")
    vit = params["vision_encoder"]
    expected = dataclasses.asdict(VISION_ENCODERS["pixtral-12b-vit"])
    wrong = {k: vit.get(k) for k, v in expected.items() if vit.get(k) != v}
    if wrong or params["norm_eps"] != 1e-5:
        raise CheckpointError(f"Pixtral params.json describes another vision encoder: {wrong or params['norm_eps']}",
                              hint="Is this mistralai/Pixtral-12B-2409?")
    return {_RENAMED.get(k, k): ("pixtral-12b-vit" if k == "vision_encoder" else v) for k, v in params.items()}


def convert_pixtral_12b(inputs: dict[str, Path], outputs: dict[str, Path]) -> None:
    """Mistral's Pixtral-12B release -> the original's ``Pixtral-12B/{model.pt,config.json}``.

    ``model.pt`` holds ``{"model": {"model.<llm>", "mm_projector.<...>", "vision_encoder.<...>"},
    "mm_projector": {...}, "vision_encoder": {...}}`` (the projector's ``w_in``/``w_out`` renamed to
    ``projector.0``/``projector.2``); tensors shared between the dictionaries are stored once. The source is
    memory-mapped, so the conversion needs page cache, not 25 GB of RAM.
    """
    import torch

    model_out = next(p for p in outputs.values() if p.name.endswith(".pt"))
    config_out = next(p for p in outputs.values() if p.name.endswith(".json"))
    config = _pixtral_config(json.loads(inputs["params.json"].read_text()))
    tensors = _map_safetensors(inputs["consolidated.safetensors"])
    vit_prefix, proj_prefix = "vision_encoder.", "vision_language_adapter."
    vit = {k[len(vit_prefix):]: v for k, v in tensors.items() if k.startswith(vit_prefix)}
    projector = {k[len(proj_prefix):].replace("w_in.", "projector.0.").replace("w_out.", "projector.2."): v
                 for k, v in tensors.items() if k.startswith(proj_prefix)}
    llm = {k: v for k, v in tensors.items() if not k.startswith((vit_prefix, proj_prefix))}
    model = {**{f"model.{k}": v for k, v in llm.items()}, **{f"mm_projector.{k}": v for k, v in projector.items()},
             **{f"vision_encoder.{k}": v for k, v in vit.items()}}
    model_out.parent.mkdir(parents=True, exist_ok=True)
    tmp = model_out.with_name(model_out.name + ".converting")
    with open(tmp, "wb") as fh:
        torch.save({"model": model, "mm_projector": projector, "vision_encoder": vit}, fh)
    os.replace(tmp, model_out)
    tmp_config = config_out.with_name(config_out.name + ".converting")
    tmp_config.write_text(json.dumps(config))
    os.replace(tmp_config, config_out)


def check_pixtral_12b(outputs: dict[str, Path]) -> list[tuple[str, str]]:
    """Every member's CRC in the model.pt zip (a streamed read of the whole file) and the config's keys."""
    problems = []
    for name, path in outputs.items():
        if not path.is_file():
            problems.append((name, "missing"))
        elif path.suffix == ".pt":
            try:
                with zipfile.ZipFile(path) as zf:
                    bad = zf.testzip()
                if bad is not None:
                    problems.append((name, f"damaged member {bad}"))
            except (zipfile.BadZipFile, OSError) as exc:
                problems.append((name, f"not a readable torch checkpoint ({exc})"))
        else:
            try:
                config = json.loads(path.read_text())
                missing = {"dim", "n_layers", "ffn_hidden_size", "vision_encoder"} - set(config)
                if missing:
                    problems.append((name, f"keys missing: {sorted(missing)}"))
            except (ValueError, OSError) as exc:
                problems.append((name, f"not readable JSON ({exc})"))
    return problems


PIXTRAL_12B = Conversion("pixtral-12b", run=convert_pixtral_12b, check=check_pixtral_12b)
