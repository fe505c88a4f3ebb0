"""The Pixtral prompt upsampler on a tiny random LLaVA + Pixtral model, in both on-disk layouts it accepts.

The fixtures write (1) a `transformers` ``save_pretrained`` folder and (2) the original's converted layout,
``model.pt`` (Mistral key names, interleaved rotary rows, bfloat16, the ``model`` / ``mm_projector`` /
``vision_encoder`` entries) + ``config.json``, from the same weights, each with a locally built tokenizer and
image processor. Nothing is downloaded.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cosmos_cli.errors import CheckpointError, GenerationError, InputError
from cosmos_plugins.predict1 import upsampler as U

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                  "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]"]
TINY_VIT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
            "num_channels": 3, "image_size": 64, "patch_size": 16, "rope_theta": 10000.0, "image_token_id": 10}
TINY_LLM = {"dim": 32, "n_layers": 2, "head_dim": 8, "ffn_hidden_size": 64, "n_heads": 4, "n_kv_heads": 2,
            "rope_theta": 1e9, "norm_eps": 1e-5}


def _processor_parts():
    """A byte-level BPE tokenizer with Pixtral's special-token ids ([IMG] = 10) and a 64 px image processor."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([U.INSTRUCTION, "A robot walks along a beach at sunset."], trainer)
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                     unk_token="<unk>", pad_token="<pad>")
    processor_cls = getattr(transformers, "PixtralImageProcessorPil", None) or transformers.PixtralImageProcessor
    return tokenizer, processor_cls(size={"longest_edge": 64}, patch_size={"height": 16, "width": 16})


def _tiny_model(vocab_size: int):
    from transformers import LlavaForConditionalGeneration

    config = U._original_config_to_llava({**TINY_LLM, "vocab_size": vocab_size, "vision_encoder": TINY_VIT})
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():  # weights representable in bfloat16, so both layouts hold exactly the same model
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    return model


def _interleave_rows(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """The inverse of the loader's permutation: half-split rotary rows back to Mistral's interleaved pairs."""
    out_dim, in_dim = weight.shape
    return weight.reshape(num_heads, 2, out_dim // num_heads // 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def _to_original(hf: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """What the original's download script writes: Mistral's names under model./mm_projector./vision_encoder."""
    llm = {"self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk", "self_attn.v_proj": "attention.wv",
           "self_attn.o_proj": "attention.wo", "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2",
           "mlp.up_proj": "feed_forward.w3", "input_layernorm": "attention_norm",
           "post_attention_layernorm": "ffn_norm"}
    vit = {"attention.q_proj": "attention.wq", "attention.k_proj": "attention.wk", "attention.v_proj": "attention.wv",
           "attention.o_proj": "attention.wo", "feed_forward.gate_proj": "feed_forward.w1",
           "feed_forward.down_proj": "feed_forward.w2", "feed_forward.up_proj": "feed_forward.w3"}
    out = {}
    for key, value in hf.items():
        value = value.to(torch.bfloat16)
        if key == "lm_head.weight":
            out["model.output.weight"] = value
        elif key.startswith("model.language_model."):
            rest = key.removeprefix("model.language_model.").replace("embed_tokens", "tok_embeddings")
            for new, old in llm.items():
                rest = rest.replace(f".{new}.", f".{old}.")
            if ".wq." in rest:
                value = _interleave_rows(value, config.text_config.num_attention_heads)
            elif ".wk." in rest:
                value = _interleave_rows(value, config.text_config.num_key_value_heads)
            out["model." + rest] = value
        elif key.startswith("model.multi_modal_projector."):
            rest = key.removeprefix("model.multi_modal_projector.")
            out["mm_projector.projector." + rest.replace("linear_1", "0").replace("linear_2", "2")] = value
        elif key.startswith("model.vision_tower."):
            rest = key.removeprefix("model.vision_tower.")
            for new, old in vit.items():
                rest = rest.replace(f".{new}.", f".{old}.")
            if ".wq." in rest or ".wk." in rest:
                value = _interleave_rows(value, config.vision_config.num_attention_heads)
            out["vision_encoder." + rest] = value
        else:
            raise AssertionError(key)
    return out


@pytest.fixture(scope="session")
def folders(tmp_path_factory):
    tokenizer, image_processor = _processor_parts()
    model = _tiny_model(len(tokenizer))
    root = tmp_path_factory.mktemp("upsampler")
    hf, original = root / "hf" / "Pixtral-12B", root / "original" / "Pixtral-12B"
    model.save_pretrained(hf)
    for folder in (hf, original):
        tokenizer.save_pretrained(folder)
        image_processor.save_pretrained(folder)
    vlm = _to_original(model.state_dict(), model.config)
    projector = {k.removeprefix("mm_projector."): v for k, v in vlm.items() if k.startswith("mm_projector.")}
    vision = {k.removeprefix("vision_encoder."): v for k, v in vlm.items() if k.startswith("vision_encoder.")}
    torch.save({"model": vlm, "mm_projector": projector, "vision_encoder": vision}, original / "model.pt")
    (original / "config.json").write_text(json.dumps({**TINY_LLM, "vocab_size": len(tokenizer), "vision_encoder": TINY_VIT}))
    return {"hf": hf, "original": original, "model": model, "tokenizer": tokenizer}


@pytest.fixture(scope="session")
def upsampler(folders) -> U.PromptUpsampler:
    return U.PromptUpsampler.load(folders["hf"], device="cpu", dtype=torch.float32)


@pytest.fixture(autouse=True)
def _short_generations(monkeypatch):
    monkeypatch.setattr(U, "MAX_NEW_TOKENS", 12)


def _image(h: int = 70, w: int = 100, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8)


def _spy_generate(monkeypatch, upsampler, new_tokens: list[int] | None = None):
    """Record generate's inputs; with ``new_tokens``, answer them instead of running the model."""
    calls = []
    real = upsampler.model.generate

    def spy(**kwargs):
        calls.append(kwargs)
        if new_tokens is None:
            return real(**kwargs)
        return torch.cat([kwargs["input_ids"], torch.tensor([new_tokens])], dim=1)

    monkeypatch.setattr(upsampler.model, "generate", spy)
    return calls


def test_original_decoding_settings():
    assert (U.TEMPERATURE, U.TOP_P, U.MAX_IMAGE_SIDE) == (0.01, 0.9, 1024)
    assert U.INSTRUCTION == (
        "Your task is to transform a given prompt into a refined and concise video description, no more than 150 words.\n"
        "Focus only on the content, no filler words or descriptions on the style. Never mention things outside the video.")


def test_generation_uses_400_tokens_and_its_output_becomes_the_prompt(upsampler, monkeypatch):
    monkeypatch.setattr(U, "MAX_NEW_TOKENS", 400)
    tok = upsampler.tokenizer
    answer = tok("A robot walks along a beach at sunset.", add_special_tokens=False)["input_ids"]
    calls = _spy_generate(monkeypatch, upsampler, new_tokens=[*answer, tok.eos_token_id])
    assert upsampler.upsample(_image(), None, seed=0) == "A robot walks along a beach at sunset."
    config = calls[0]["generation_config"]
    assert (config.max_new_tokens, config.do_sample, config.eos_token_id) == (400, False, tok.eos_token_id)


def test_upsample_is_seeded_deterministic_and_leaves_the_global_rng_alone(upsampler):
    state = torch.get_rng_state()
    first = upsampler.upsample(_image(), None, seed=7)
    assert first and first == upsampler.upsample(_image(), None, seed=7)
    assert torch.equal(state, torch.get_rng_state())


def test_dialog_matches_the_original_and_expands_image_tokens(upsampler, monkeypatch):
    calls = _spy_generate(monkeypatch, upsampler)
    upsampler.upsample(_image(70, 100), None, seed=0)
    text = upsampler.tokenizer.decode(calls[0]["input_ids"][0])
    # 70 x 100 -> the processor's 64 px limit -> 44 x 64 -> rounded up to 48 x 64: 3 rows of 4 patches
    rows = "[IMG]" * 4 + "[IMG_BREAK]"
    assert text == f"<s>[INST]{rows}{rows}{'[IMG]' * 4}[IMG_END]\n{U.INSTRUCTION}[/INST]"
    assert calls[0]["pixel_values"].shape == (1, 3, 48, 64)
    assert calls[0]["image_sizes"].tolist() == [[48, 64]]


def test_a_user_prompt_is_refined_unless_ignored(upsampler, monkeypatch):
    calls = _spy_generate(monkeypatch, upsampler)
    upsampler.upsample(_image(), "a robot on a beach", seed=0)
    upsampler.upsample(_image(), "a robot on a beach", seed=0, ignore_prompt=True)
    upsampler.upsample(_image(), "   ", seed=0)
    texts = [upsampler.tokenizer.decode(c["input_ids"][0]) for c in calls]
    assert texts[0].endswith(f"{U.INSTRUCTION}\nThe prompt to transform: a robot on a beach[/INST]")
    assert texts[1] == texts[2] and texts[1].endswith(f"{U.INSTRUCTION}[/INST]")


def test_the_original_converted_checkpoint_loads_to_the_same_model(folders, upsampler):
    converted = U.PromptUpsampler.load(folders["original"], device="cpu", dtype=torch.float32)
    expected = folders["model"].state_dict()
    loaded = converted.model.state_dict()
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key
    image = _image(90, 60, seed=3)
    assert converted.upsample(image, "a cat", seed=5) == upsampler.upsample(image, "a cat", seed=5)


def test_rotary_permutation_preserves_attention_scores():
    """Mistral rotates interleaved pairs (2i, 2i+1); `transformers` rotates halves (i, i + d/2). Permuting the
    rows of wq and wk must leave every query-key score unchanged."""
    torch.manual_seed(0)
    heads, head_dim, dim = 2, 8, 12
    wq, wk, x = torch.randn(heads * head_dim, dim), torch.randn(heads * head_dim, dim), torch.randn(2, dim)
    inv_freq = 1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)  # (d/2,)

    def interleaved(v, pos):  # (heads * d,) -> complex pairs
        pairs = torch.view_as_complex(v.reshape(heads, head_dim // 2, 2).contiguous())
        return torch.view_as_real(pairs * torch.polar(torch.ones_like(inv_freq), pos * inv_freq)).reshape(-1)

    def half_split(v, pos):
        v = v.reshape(heads, head_dim)
        cos, sin = torch.cos(pos * inv_freq).repeat(2), torch.sin(pos * inv_freq).repeat(2)
        rotated = torch.cat([-v[:, head_dim // 2:], v[:, :head_dim // 2]], dim=-1)
        return (v * cos + rotated * sin).reshape(-1)

    def scores(q, k):
        return (q.reshape(heads, head_dim) * k.reshape(heads, head_dim)).sum(-1)

    original = scores(interleaved(wq @ x[0], 3.0), interleaved(wk @ x[1], 5.0))
    hq, hk = U._rope_rows(wq, heads), U._rope_rows(wk, heads)
    torch.testing.assert_close(scores(half_split(hq @ x[0], 3.0), half_split(hk @ x[1], 5.0)), original)


def test_resize_follows_the_original():
    assert U.resize_for_upsampler(_image(704, 1280)).size == (1024, 564)  # ceil(704 / 1.25)
    assert U.resize_for_upsampler(_image(2000, 999)).size == (512, 1024)  # ceil(999 / 1.953125) = 512
    assert U.resize_for_upsampler(_image(30, 40)).size == (40, 30)  # never enlarged


def test_seeded_top_p_samples_inside_the_nucleus():
    scores = torch.log(torch.tensor([[0.05, 0.5, 0.45]]))
    draws = []
    for seed in range(40):
        processor = U._SeededTopP(torch.Generator().manual_seed(seed), temperature=1.0, top_p=0.3)
        forced = processor(None, scores.clone())
        assert torch.isinf(forced).sum() == 2
        draws.append(int(forced.argmax()))
    assert set(draws) == {1}  # mass before the 2nd token is 0.5 > 0.3: only the top token survives
    wide = [int(U._SeededTopP(torch.Generator().manual_seed(s), 1.0, 0.9)(None, scores.clone()).argmax()) for s in range(40)]
    assert set(wide) == {1, 2}  # 0.05 lies beyond 0.9 of the mass
    again = [int(U._SeededTopP(torch.Generator().manual_seed(s), 1.0, 0.9)(None, scores.clone()).argmax()) for s in range(40)]
    assert wide == again


def test_empty_generation_is_an_error(upsampler, monkeypatch):
    _spy_generate(monkeypatch, upsampler, new_tokens=[upsampler.tokenizer.eos_token_id])
    with pytest.raises(GenerationError, match="empty prompt"):
        upsampler.upsample(_image(), None, seed=0)


def test_bad_image_is_an_input_error(upsampler):
    with pytest.raises(InputError, match="uint8 RGB"):
        upsampler.upsample(np.zeros((8, 8), np.uint8), None, seed=0)


def test_placement(upsampler):
    assert upsampler.to("cpu") is upsampler and upsampler.device == "cpu"
    assert next(upsampler.model.parameters()).device.type == "cpu"


def test_processor_files_from_the_download_layout(folders, tmp_path):
    """``cosmos download`` keeps the converted weights in Pixtral-12B/ and the tokenizer files in
    mistral-community/pixtral-12b/ (next to a transformers config.json that must not be used)."""
    checkpoints = tmp_path / "checkpoints"
    weights, processor = checkpoints / "Pixtral-12B", checkpoints / "mistral-community" / "pixtral-12b"
    weights.mkdir(parents=True)
    processor.mkdir(parents=True)
    for name in ("model.pt", "config.json"):
        (weights / name).write_bytes((folders["original"] / name).read_bytes())
    with pytest.raises(CheckpointError, match="tokenizer.json") as info:
        U.PromptUpsampler.load(weights, device="cpu", dtype=torch.float32)
    assert "mistral-community/pixtral-12b" in info.value.hint
    for path in folders["original"].iterdir():
        if path.name not in ("model.pt", "config.json"):
            (processor / path.name).write_bytes(path.read_bytes())
    (processor / "config.json").write_text((folders["hf"] / "config.json").read_text())
    loaded = U.PromptUpsampler.load(weights, device="cpu", dtype=torch.float32)
    assert loaded.tokenizer.convert_tokens_to_ids("[IMG]") == 10
    assert U.find_processor_folder(weights, folders["hf"]) == folders["hf"]  # an explicit folder comes second


def test_unknown_keys_in_model_pt_are_listed(folders):
    config = U._original_config_to_llava({**TINY_LLM, "vocab_size": 320, "vision_encoder": TINY_VIT})
    with pytest.raises(CheckpointError, match="model.layers.0.attention.extra"):
        U.convert_original_state_dict({"model.layers.0.attention.extra": torch.zeros(1)}, config)


def test_known_vision_encoder_is_pixtral_12b():
    config = U._original_config_to_llava({**TINY_LLM, "vocab_size": 131072, "vision_encoder": "pixtral-12b-vit"})
    vision = config.vision_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads, vision.head_dim) == (1024, 24, 16, 64)
    assert (vision.patch_size, vision.image_size, vision.hidden_act, config.image_token_index) == (16, 1024, "silu", 10)
    assert math.isclose(config.text_config.rope_parameters["rope_theta"], 1e9)
    with pytest.raises(CheckpointError, match="unknown Pixtral vision encoder"):
        U._original_config_to_llava({**TINY_LLM, "vocab_size": 1, "vision_encoder": "other-vit"})


def test_missing_folder(tmp_path: Path):
    with pytest.raises(CheckpointError, match="not found"):
        U.PromptUpsampler.load(tmp_path / "nope", device="cpu", dtype=torch.float32)
