"""Our T5 encoder and tokenizer against transformers' (the original's), on the same files; the loader's strictness.

The reference is ``transformers.T5EncoderModel`` + ``T5TokenizerFast`` loaded from the same folder, as the original
loads them (reference spec section 7). Our encoder runs the same operations in the same order, so in fp32 (the
original's dtype) the two agree to the bit where both run the same kernels; the tolerance allows only a reordered fp32 sum in a
matrix product (relative 2^-23 per term, times the inner dimension, d_ff at most), far below any real mistake
(a missing scale, a wrong bucket, an unmasked pad is off by order one).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cosmos_cli.errors import CheckpointError
from cosmos_plugins.predict1 import bundled_checkpoint_dir
from cosmos_plugins.predict1.params import T5Params
from cosmos_plugins.predict1.specs import DEFAULT_NEGATIVE_PROMPT
from cosmos_plugins.predict1.t5 import relative_position_bucket
from cosmos_plugins.predict1.text_encoder import T5TextEncoder, load_encoder, write_t5_checkpoint

WORDS = ["a", "red", "ball", "rolls", "left", "robot", "arm", "picks", "up", "the", "cube", "on", "table"]
PROMPTS = ["a red ball rolls left", "", "   ", "A Robot arm picks up the cube on the table.",
           "unknown wörds, ünïcode — and  double  spaces\tand\nnewlines", "left " * 40, DEFAULT_NEGATIVE_PROMPT]
DEMO_T5 = bundled_checkpoint_dir() / "t5-demo"


def _tolerance(d_ff: int) -> float:
    return d_ff * 2.0**-23


@pytest.fixture(scope="module", params=[False, True], ids=["relu", "gated-gelu"])
def folder(request, tmp_path_factory) -> Path:
    params = T5Params(d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=3, vocab_size=512, max_length=24,
                      gated=request.param)
    out = tmp_path_factory.mktemp("t5")
    write_t5_checkpoint(out, params, WORDS, seed=5, return_encoder=False)
    return out


def reference(folder: Path, dtype: torch.dtype):
    from transformers import T5EncoderModel, T5TokenizerFast

    model = T5EncoderModel.from_pretrained(folder, local_files_only=True, dtype=dtype).eval()
    return model, T5TokenizerFast.from_pretrained(folder, local_files_only=True)


@pytest.mark.parametrize("where", ["fixture", "demo"])
def test_embeddings_match_transformers(folder, where):
    """fp32, the original's dtype. (In bf16 transformers 5 runs the softmax in bf16 where 4.49, the original's,
    ran it in fp32, as ours does; the bf16 error bound is tests/test_t5_numerics.py's.)"""
    path = folder if where == "fixture" else DEMO_T5
    max_length = 24 if where == "fixture" else 32
    ours = T5TextEncoder.load(path, max_length=max_length)
    model, tok = reference(path, torch.float32)
    tol = _tolerance(json.loads((path / "config.json").read_text())["d_ff"])
    for prompt in PROMPTS:
        got = ours.encode([prompt])
        t = tok([prompt], max_length=max_length, padding="max_length", truncation=True, return_tensors="pt")
        assert ours.tokenizer.padded(prompt)[0].tolist() == t.input_ids.tolist(), prompt
        assert ours.tokenizer.padded(prompt)[1].tolist() == t.attention_mask.tolist(), prompt
        assert ours.token_count(prompt) == len(tok(prompt, truncation=False).input_ids), prompt
        with torch.inference_mode():
            want = model(input_ids=t.input_ids, attention_mask=t.attention_mask).last_hidden_state
            want[:, int(t.attention_mask.sum()):] = 0
        assert got.dtype == want.dtype == torch.float32
        assert float((got - want).abs().max() / want.abs().max()) <= tol, (prompt, where)


def test_relative_buckets_are_t5s():
    """Worked by hand from T5's definition (32 buckets, 128 max distance; bidirectional: 16 a side, exact below 8)."""
    rel = torch.tensor([-200, -128, -9, -8, -7, -1, 0, 1, 7, 8, 9, 20, 127, 128, 500])
    # |d| >= 8: 8 + floor(log(|d|/8) / log(16) * 8), capped at 15 (20 -> 10); keys after the query add 16
    want = [15, 15, 8, 8, 7, 1, 0, 17, 23, 24, 24, 26, 31, 31, 31]
    assert relative_position_bucket(rel, 32, 128).tolist() == want


def test_truncation_keeps_the_closing_token():
    enc = T5TextEncoder.load(DEMO_T5, max_length=8)
    ids, mask = enc.tokenizer.padded("a red ball rolls left and a blue box moves right")
    eos = enc.tokenizer.backend.token_to_id("</s>")
    assert ids.shape == (1, 8) and ids[0, -1] == eos and mask.sum() == 8
    assert enc.token_count("a red ball rolls left and a blue box moves right") > 8


def _state(folder: Path) -> dict:
    return torch.load(folder / "pytorch_model.bin", weights_only=True)


def test_the_decoder_is_not_read_and_either_embedding_name_is_accepted(folder, tmp_path):
    state = _state(folder)
    assert any(k.startswith("decoder.") for k in state)  # the released layout: a whole encoder-decoder
    want = load_encoder(folder).state_dict()
    for drop in ("shared.weight", "encoder.embed_tokens.weight"):
        d = tmp_path / drop
        d.mkdir()
        (d / "config.json").write_bytes((folder / "config.json").read_bytes())
        torch.save({k: v for k, v in state.items() if k != drop and not k.startswith("decoder.")}, d / "pytorch_model.bin")
        got = load_encoder(d).state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want)


def test_legacy_format_file_loads(folder, tmp_path):
    """A ``pytorch_model.bin`` written before torch 1.6's zip format cannot be memory-mapped: read whole."""
    (tmp_path / "config.json").write_bytes((folder / "config.json").read_bytes())
    torch.save(_state(folder), tmp_path / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    want = load_encoder(folder).state_dict()
    got = load_encoder(tmp_path).state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_prompts_encoded_together_equal_each_encoded_alone(folder):
    """One call for the prompt and the negative prompt (one pass over a streamed encoder's layers) gives each the
    bits of its own one-prompt call, as the original encodes them one at a time."""
    ours = T5TextEncoder.load(folder, max_length=24)
    together = ours.encode(list(PROMPTS))
    for row, prompt in enumerate(PROMPTS):
        assert torch.equal(together[row:row + 1], ours.encode([prompt])), prompt


def test_mapped_layers_stay_in_the_file_and_stream_to_the_same_embeddings(folder):
    """``map_blocks`` (the stream-mapped strategies): the layers' tensors are left in the file's mapping, in the
    file's dtype (here fp32 under a bf16 compute dtype), the rest cast; streamed through the map placement's
    staging ring they give the embeddings of the encoder loaded whole in that dtype, exactly."""
    from cosmos_plugins.predict1.mapped import MappedStreamed
    from cosmos_plugins.predict1.offload import place

    plain = T5TextEncoder.load(folder, dtype=torch.bfloat16, max_length=24)
    mapped = T5TextEncoder.load(folder, dtype=torch.bfloat16, max_length=24, map_blocks=True)
    layers = {k: v for k, v in mapped.model.state_dict().items() if k.startswith("encoder.block.")}
    assert layers and all(v.dtype == torch.float32 for v in layers.values())
    assert mapped.model.shared.weight.dtype == torch.bfloat16
    # the layers are views of one mapping of the file: their data lies within the file's size of each other
    ptrs = [v.data_ptr() for v in layers.values()]
    assert max(ptrs) - min(ptrs) < (folder / "pytorch_model.bin").stat().st_size
    placed = place(mapped, "map", "cpu", blocks=list(mapped.model.encoder.block), module=mapped.model)
    assert type(placed) is MappedStreamed
    for prompt in PROMPTS:
        with placed.active() as te:
            got = te.encode([prompt])
        assert torch.equal(got, plain.encode([prompt])), prompt


def test_a_legacy_file_larger_than_the_host_memory_is_refused_before_reading(folder, tmp_path, monkeypatch):
    """A legacy file is read whole, which the plan does not count: where it is larger than the memory available,
    one error naming it, before anything is read; a zip-format file of any size is mapped, not refused."""
    import cosmos_cli.hostmem

    (tmp_path / "config.json").write_bytes((folder / "config.json").read_bytes())
    torch.save(_state(folder), tmp_path / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    size = (tmp_path / "pytorch_model.bin").stat().st_size
    monkeypatch.setattr(cosmos_cli.hostmem, "available_host_bytes", lambda: size - 1)
    with pytest.raises(CheckpointError) as err:
        load_encoder(tmp_path)
    assert "pytorch_model.bin: a legacy-format" in err.value.message and "Re-save it once" in err.value.hint
    monkeypatch.setattr(cosmos_cli.hostmem, "available_host_bytes", lambda: size)
    load_encoder(tmp_path)
    monkeypatch.setattr(cosmos_cli.hostmem, "available_host_bytes", lambda: 1)
    load_encoder(folder)  # zip format


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("encoder.block.1.layer.1.DenseReluDense.wo.weight"), "1 missing keys (encoder.block.1.layer.1"),
    (lambda s: s.update({"encoder.block.9.extra": torch.zeros(1)}), "1 unexpected keys (encoder.block.9.extra)"),
    (lambda s: s.update({"encoder.final_layer_norm.weight": torch.ones(7)}), "encoder.final_layer_norm.weight [7] != [32]"),
    (lambda s: s["encoder.block.0.layer.0.SelfAttention.q.weight"].view(-1)[3].fill_(float("nan")),
     "encoder.block.0.layer.0.SelfAttention.q.weight holds 1 NaN or infinite value"),
])
def test_a_damaged_file_is_one_error_naming_the_key(folder, tmp_path, change, message):
    state = {k: v.clone() for k, v in _state(folder).items()}
    change(state)
    (tmp_path / "config.json").write_bytes((folder / "config.json").read_bytes())
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin") as e:
        load_encoder(tmp_path)
    assert message in e.value.message


@pytest.mark.parametrize("edit, message", [
    ({"d_model": "32"}, "d_model must be a positive whole number"),
    ({"num_layers": -1}, "num_layers must be a positive whole number"),
    ({"feed_forward_proj": "swiglu"}, "feed_forward_proj 'swiglu' is not a T5 encoder's"),
    ({"layer_norm_epsilon": 3}, "layer_norm_epsilon must be a small positive number"),
])
def test_a_bad_config_is_one_error(folder, tmp_path, edit, message):
    config = {**json.loads((folder / "config.json").read_text()), **edit}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "pytorch_model.bin").write_bytes((folder / "pytorch_model.bin").read_bytes())
    with pytest.raises(CheckpointError, match="config.json") as e:
        load_encoder(tmp_path)
    assert message in e.value.message


def test_encoding_a_prompt_does_not_import_transformers():
    """transformers' import costs seconds in every process (each rank under torchrun): the encoder needs none of it."""
    code = ("import sys, torch; from cosmos_plugins.predict1.text_encoder import T5TextEncoder; "
            f"e = T5TextEncoder.load({str(DEMO_T5)!r}, max_length=32); e.encode(['a red ball']); "
            "print('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
