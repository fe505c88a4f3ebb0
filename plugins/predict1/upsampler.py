"""Prompt upsampler: Pixtral-12B run through `transformers` (LLaVA with the Pixtral vision encoder).

Expected folder: ``<checkpoint_dir>/Pixtral-12B/`` in either of two layouts.

1. A `transformers` folder: the ``mistral-community/pixtral-12b`` snapshot, or any folder written by
   ``LlavaForConditionalGeneration.save_pretrained`` plus the processor's ``save_pretrained``::

       config.json                 ("model_type": "llava", Pixtral vision config, Mistral text config)
       model*.safetensors (+ model.safetensors.index.json)
       tokenizer.json, tokenizer_config.json, special_tokens_map.json, preprocessor_config.json

2. The original's converted checkpoint, as its download script (and ``cosmos download``) leaves it::

       model.pt      {"model": {"model.<llm>", "mm_projector.projector.{0,2}.*", "vision_encoder.<vit>"}, ...}
       config.json   {"dim", "n_layers", "head_dim", "ffn_hidden_size", "n_heads", "n_kv_heads", "rope_theta",
                      "norm_eps", "vocab_size", "vision_encoder": "pixtral-12b-vit"}

   plus the tokenizer and image-processor files of ``mistral-community/pixtral-12b`` (tokenizer.json,
   tokenizer_config.json, special_tokens_map.json, preprocessor_config.json), which the original fetched from
   the Hub at every run (pitfall 11; we never go online). They are looked for, in order, in the folder itself,
   in ``processor_folder`` when given, and in ``<checkpoint_dir>/mistral-community/pixtral-12b/`` (where
   ``cosmos download`` puts them).

   ``model.pt`` holds Mistral's own key names; :func:`convert_original_state_dict` maps them to the
   `transformers` names and permutes the query/key rows from Mistral's interleaved rotary layout to the
   half-split one. ``vision_encoder`` names a known ViT (:data:`VISION_ENCODERS`) or is a dict of
   :class:`PixtralVisionParams` fields (small test models); both, and the config's keys, are
   :mod:`.pixtral_convert`'s, which writes that folder.

Behaviour follows the original (spec section 8): the input image (or the last video frame, chosen by the
caller) is shrunk so that its longer side is at most 1024 px, the dialog is ``<s>[INST][IMG]\\n<instruction>[/INST]``
with ``[IMG]`` expanded to one token per 16x16 patch, and decoding uses temperature 0.01, top-p 0.9 and at
most 400 new tokens. Two deliberate differences: a user prompt is given to the model to refine (the original
discarded it; ``ignore_prompt=True`` reproduces that), and sampling draws from a private generator seeded
with ``seed``, so the result is reproducible and the global RNG that the diffusion noise uses is untouched
(pitfall 14).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import torch

from cosmos_cli.errors import CheckpointError, GenerationError, InputError

from .pixtral_convert import CONFIG_KEYS, VISION_ENCODERS, PixtralVisionParams

INSTRUCTION = (
    "Your task is to transform a given prompt into a refined and concise video description, no more than 150 words.\n"
    "Focus only on the content, no filler words or descriptions on the style. Never mention things outside the video."
)
MAX_NEW_TOKENS = 400
TEMPERATURE = 0.01
TOP_P = 0.9
MAX_IMAGE_SIDE = 1024

IMAGE_TOKEN, IMAGE_BREAK_TOKEN, IMAGE_END_TOKEN = "[IMG]", "[IMG_BREAK]", "[IMG_END]"
ORIGINAL_WEIGHTS = "model.pt"
PROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json")
PROCESSOR_DIR = "mistral-community/pixtral-12b"  # relative to the checkpoint folder


def _original_config_to_llava(cfg: dict):
    """A ``LlavaConfig`` from the original's ``config.json`` (its LLM keys plus a named or explicit ViT)."""
    from transformers import LlavaConfig, MistralConfig, PixtralVisionConfig

    missing = [k for k in CONFIG_KEYS if k not in cfg]
    if missing:
        raise CheckpointError(f"Pixtral config.json lacks {', '.join(missing)}",
                              hint="Expected the config.json that the original download script writes next to model.pt.")
    vit = cfg["vision_encoder"]
    if isinstance(vit, str):
        if vit not in VISION_ENCODERS:
            raise CheckpointError(f"unknown Pixtral vision encoder {vit!r}; known: {', '.join(VISION_ENCODERS)}")
        vp = VISION_ENCODERS[vit]
    else:
        vp = PixtralVisionParams(**vit)
    vision = PixtralVisionConfig(
        hidden_size=vp.hidden_size, intermediate_size=vp.intermediate_size, num_hidden_layers=vp.num_hidden_layers,
        num_attention_heads=vp.num_attention_heads, num_channels=vp.num_channels, image_size=vp.image_size,
        patch_size=vp.patch_size, head_dim=vp.hidden_size // vp.num_attention_heads, hidden_act="silu",
        rope_theta=float(vp.rope_theta),
    )
    text = MistralConfig(
        vocab_size=cfg["vocab_size"], hidden_size=cfg["dim"], intermediate_size=cfg["ffn_hidden_size"],
        num_hidden_layers=cfg["n_layers"], num_attention_heads=cfg["n_heads"], num_key_value_heads=cfg["n_kv_heads"],
        head_dim=cfg["head_dim"], rms_norm_eps=cfg["norm_eps"], hidden_act="silu", sliding_window=None,
        max_position_embeddings=1024000, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
        rope_theta=float(cfg["rope_theta"]),
    )
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=vp.image_token_id,
                       projector_hidden_act="gelu", vision_feature_layer=-1, vision_feature_select_strategy="full",
                       image_seq_length=1, multimodal_projector_bias=True, tie_word_embeddings=False)


def _rope_rows(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Reorder query/key rows from interleaved rotary pairs (Mistral) to the half-split layout (`transformers`)."""
    out_dim, in_dim = weight.shape
    head_dim = out_dim // num_heads
    # (heads, head_dim/2, 2, in) -> (heads, 2, head_dim/2, in)
    return weight.reshape(num_heads, head_dim // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


# (original key pattern, transformers key template, rotary heads: "text_q", "text_kv", "vision" or None)
_KEY_RULES: tuple[tuple[str, str, str | None], ...] = (
    (r"model\.tok_embeddings\.weight", "model.language_model.embed_tokens.weight", None),
    (r"model\.norm\.weight", "model.language_model.norm.weight", None),
    (r"model\.output\.weight", "lm_head.weight", None),
    (r"model\.layers\.(\d+)\.attention\.wq\.weight", "model.language_model.layers.{0}.self_attn.q_proj.weight", "text_q"),
    (r"model\.layers\.(\d+)\.attention\.wk\.weight", "model.language_model.layers.{0}.self_attn.k_proj.weight", "text_kv"),
    (r"model\.layers\.(\d+)\.attention\.wv\.weight", "model.language_model.layers.{0}.self_attn.v_proj.weight", None),
    (r"model\.layers\.(\d+)\.attention\.wo\.weight", "model.language_model.layers.{0}.self_attn.o_proj.weight", None),
    (r"model\.layers\.(\d+)\.feed_forward\.w1\.weight", "model.language_model.layers.{0}.mlp.gate_proj.weight", None),
    (r"model\.layers\.(\d+)\.feed_forward\.w2\.weight", "model.language_model.layers.{0}.mlp.down_proj.weight", None),
    (r"model\.layers\.(\d+)\.feed_forward\.w3\.weight", "model.language_model.layers.{0}.mlp.up_proj.weight", None),
    (r"model\.layers\.(\d+)\.attention_norm\.weight", "model.language_model.layers.{0}.input_layernorm.weight", None),
    (r"model\.layers\.(\d+)\.ffn_norm\.weight", "model.language_model.layers.{0}.post_attention_layernorm.weight", None),
    (r"mm_projector\.projector\.0\.(weight|bias)", "model.multi_modal_projector.linear_1.{0}", None),
    (r"mm_projector\.projector\.2\.(weight|bias)", "model.multi_modal_projector.linear_2.{0}", None),
    (r"vision_encoder\.(patch_conv|ln_pre)\.weight", "model.vision_tower.{0}.weight", None),
    (r"vision_encoder\.transformer\.layers\.(\d+)\.attention\.wq\.weight",
     "model.vision_tower.transformer.layers.{0}.attention.q_proj.weight", "vision"),
    (r"vision_encoder\.transformer\.layers\.(\d+)\.attention\.wk\.weight",
     "model.vision_tower.transformer.layers.{0}.attention.k_proj.weight", "vision"),
    (r"vision_encoder\.transformer\.layers\.(\d+)\.attention\.wv\.weight",
     "model.vision_tower.transformer.layers.{0}.attention.v_proj.weight", None),
    (r"vision_encoder\.transformer\.layers\.(\d+)\.attention\.wo\.weight",
     "model.vision_tower.transformer.layers.{0}.attention.o_proj.weight", None),
    (r"vision_encoder\.transformer\.layers\.(\d+)\.feed_forward\.w1\.weight",
     "model.vision_tower.transformer.layers.{0}.feed_forward.gate_proj.weight", None),
    (r"vision_encoder\.transformer\.layers\.(\d+)\.feed_forward\.w2\.weight",
     "model.vision_tower.transformer.layers.{0}.feed_forward.down_proj.weight", None),
    (r"vision_encoder\.transformer\.layers\.(\d+)\.feed_forward\.w3\.weight",
     "model.vision_tower.transformer.layers.{0}.feed_forward.up_proj.weight", None),
    (r"vision_encoder\.transformer\.layers\.(\d+)\.(attention_norm|ffn_norm)\.weight",
     "model.vision_tower.transformer.layers.{0}.{1}.weight", None),
)
_COMPILED_RULES = tuple((re.compile(p), t, r) for p, t, r in _KEY_RULES)


def convert_original_state_dict(state_dict: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """Map the original's ``model.pt["model"]`` to `transformers` LLaVA names; unknown keys are an error."""
    heads = {
        "text_q": config.text_config.num_attention_heads,
        "text_kv": config.text_config.num_key_value_heads,
        "vision": config.vision_config.num_attention_heads,
    }
    out, unknown = {}, []
    for key, value in state_dict.items():
        for pattern, template, rope in _COMPILED_RULES:
            m = pattern.fullmatch(key)
            if m:
                out[template.format(*m.groups())] = _rope_rows(value, heads[rope]) if rope else value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"Pixtral model.pt has {len(unknown)} unexpected keys: {', '.join(unknown[:5])}")
    return out


def resize_for_upsampler(image_rgb_uint8: np.ndarray, max_side: int = MAX_IMAGE_SIDE):
    """The original's resize: shrink (never enlarge) so the longer side is at most ``max_side``, rounding up."""
    from PIL import Image

    image = Image.fromarray(image_rgb_uint8)
    w, h = image.size
    ratio = max(w / max_side, h / max_side)
    if ratio > 1:
        image = image.resize((math.ceil(w / ratio), math.ceil(h / ratio)), Image.Resampling.BICUBIC)
    return image


def dialog_text(prompt: str | None, bos_token: str) -> str:
    """The single user turn of the original's dialog; a given prompt is appended for the model to refine."""
    content = f"{IMAGE_TOKEN}\n{INSTRUCTION}"
    if prompt:
        content += f"\nThe prompt to transform: {prompt}"
    return f"{bos_token}[INST]{content}[/INST]"


def expand_image_tokens(text: str, height: int, width: int, patch_size: int) -> str:
    """One ``[IMG]`` per patch, rows closed by ``[IMG_BREAK]``, the very last token replaced by ``[IMG_END]``."""
    rows, cols = height // patch_size, width // patch_size
    tokens = ([IMAGE_TOKEN] * cols + [IMAGE_BREAK_TOKEN]) * rows
    tokens[-1] = IMAGE_END_TOKEN
    return text.replace(IMAGE_TOKEN, "".join(tokens), 1)


class _SeededTopP:
    """A logits processor that samples one token by top-p and forces it: greedy search then picks it.

    Sampling uses the original's rule (softmax at ``temperature``, keep the smallest prefix of the sorted
    probabilities whose mass before each token is at most ``top_p``, renormalize, draw with the exponential
    race), but from a private generator, so the draw is reproducible and the global RNG is left alone.
    """

    def __init__(self, generator: torch.Generator, temperature: float, top_p: float):
        self.generator, self.temperature, self.top_p = generator, temperature, top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)  # (B, V)
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        sorted_probs[(torch.cumsum(sorted_probs, dim=-1) - sorted_probs) > self.top_p] = 0.0
        sorted_probs /= sorted_probs.sum(dim=-1, keepdim=True)
        race = torch.empty_like(sorted_probs).exponential_(1, generator=self.generator)
        choice = order.gather(-1, torch.argmax(sorted_probs / race, dim=-1, keepdim=True))  # (B, 1)
        forced = torch.full_like(scores, float("-inf"))
        return forced.scatter_(-1, choice, 0.0)


def find_processor_folder(folder: Path, processor_folder: Path | None = None) -> Path:
    """The first of ``folder``, ``processor_folder`` and ``<folder>/../mistral-community/pixtral-12b`` that holds
    the tokenizer and image-processor files."""
    candidates = [folder, *([Path(processor_folder)] if processor_folder else []), folder.parent / PROCESSOR_DIR]
    for candidate in candidates:
        if all((candidate / n).is_file() for n in PROCESSOR_FILES):
            return candidate
    raise CheckpointError(
        f"the Pixtral tokenizer files ({', '.join(PROCESSOR_FILES)}) are in none of {', '.join(map(str, candidates))}",
        hint="Run `cosmos download`, which fetches them from mistral-community/pixtral-12b, or pass "
             "--disable-prompt-upsampler.",
    )


class PromptUpsampler:
    """Pixtral-12B turning an image (and optionally a prompt) into a detailed video prompt."""

    def __init__(self, model, tokenizer, image_processor, device: str):
        self.model, self.tokenizer, self.image_processor = model, tokenizer, image_processor
        self.device = str(device)

    @classmethod
    def load(cls, folder: Path, *, device: str, dtype: torch.dtype,
             processor_folder: Path | None = None) -> PromptUpsampler:
        """Load from a `transformers` folder or from the original's ``model.pt`` + ``config.json`` (module doc)."""
        from transformers import LlavaForConditionalGeneration

        folder = Path(folder)
        if not folder.is_dir():
            raise CheckpointError(f"prompt upsampler folder not found: {folder}",
                                  hint="Run `cosmos download`, or pass --disable-prompt-upsampler.")
        processor_dir = find_processor_folder(folder, processor_folder)
        if (folder / ORIGINAL_WEIGHTS).is_file():
            model = cls._load_original(folder, dtype)
        elif (folder / "config.json").is_file():
            model, info = LlavaForConditionalGeneration.from_pretrained(
                folder, dtype=dtype, local_files_only=True, output_loading_info=True)
            _check_loading_info(folder, info)
        else:
            raise CheckpointError(f"prompt upsampler folder {folder} has neither model.pt nor a transformers config.json")
        model.to(device).eval()
        tokenizer, image_processor = _load_processor(processor_dir)
        return cls(model, tokenizer, image_processor, device)

    @staticmethod
    def _load_original(folder: Path, dtype: torch.dtype):
        from transformers import LlavaForConditionalGeneration

        config = _original_config_to_llava(json.loads((folder / "config.json").read_text()))
        checkpoint = torch.load(folder / ORIGINAL_WEIGHTS, map_location="cpu", weights_only=True, mmap=True)
        if not isinstance(checkpoint, dict) or "model" not in checkpoint:
            raise CheckpointError(f"{folder / ORIGINAL_WEIGHTS} is not the original's converted Pixtral checkpoint "
                                  "(no 'model' entry)")
        state_dict = convert_original_state_dict(checkpoint["model"], config)
        model, info = LlavaForConditionalGeneration.from_pretrained(
            None, config=config, state_dict=state_dict, dtype=dtype, output_loading_info=True)
        _check_loading_info(folder, info)
        return model

    def to(self, device: str) -> PromptUpsampler:
        """Move the model (park it on ``"cpu"``, bring it to ``"cuda"``)."""
        self.model.to(device)
        self.device = str(device)
        return self

    @torch.inference_mode()
    def upsample(self, image_rgb_uint8: np.ndarray, prompt: str | None, *, seed: int,
                 ignore_prompt: bool = False) -> str:
        """The upsampled prompt for a ``(H, W, 3)`` uint8 RGB image (the input image or last video frame)."""
        from transformers import GenerationConfig, LogitsProcessorList

        image = np.asarray(image_rgb_uint8)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(f"the prompt upsampler needs an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
        user_prompt = None if ignore_prompt or not prompt or not prompt.strip() else prompt.strip()

        pil_image = resize_for_upsampler(image)
        patch = _patch_size(self.image_processor)
        pixels = self.image_processor([pil_image], patch_size={"height": patch, "width": patch}, return_tensors="pt")
        height, width = (int(v) for v in pixels["image_sizes"][0])
        text = expand_image_tokens(dialog_text(user_prompt, self.tokenizer.bos_token), height, width, patch)
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(self.device)

        generator = torch.Generator(device=self.device).manual_seed(int(seed))
        eos = self.tokenizer.eos_token_id
        config = GenerationConfig(max_new_tokens=MAX_NEW_TOKENS, do_sample=False, eos_token_id=eos, pad_token_id=eos,
                                  bos_token_id=self.tokenizer.bos_token_id)
        output = self.model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids),
            pixel_values=pixels["pixel_values"].to(self.device, self.model.dtype),
            image_sizes=pixels["image_sizes"].to(self.device),
            generation_config=config,
            logits_processor=LogitsProcessorList([_SeededTopP(generator, TEMPERATURE, TOP_P)]),
        )
        result = self.tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True).strip()
        if not result:
            raise GenerationError("the prompt upsampler produced an empty prompt",
                                  hint="Give a --prompt and pass --disable-prompt-upsampler.")
        return result


def _patch_size(image_processor) -> int:
    patch = image_processor.patch_size
    return int(patch["height"] if isinstance(patch, dict) else patch)


def _load_processor(folder: Path):
    """The tokenizer and the PIL image processor (the original's resampling, not torchvision's)."""
    import transformers

    processor_cls = getattr(transformers, "PixtralImageProcessorPil", None) or transformers.PixtralImageProcessor
    tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(folder, local_files_only=True)
    for token in (IMAGE_TOKEN, IMAGE_BREAK_TOKEN, IMAGE_END_TOKEN):
        if tokenizer.convert_tokens_to_ids(token) in (None, tokenizer.unk_token_id):
            raise CheckpointError(f"the Pixtral tokenizer in {folder} has no {token} token")
    return tokenizer, processor_cls.from_pretrained(folder, local_files_only=True)


def _check_loading_info(folder: Path, info: dict) -> None:
    problems = {k: sorted(info.get(k) or ()) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    problems = {k: v for k, v in problems.items() if v}
    if problems:
        detail = "; ".join(f"{k.replace('_', ' ')}: {', '.join(map(str, v[:5]))}" for k, v in problems.items())
        raise CheckpointError(f"Pixtral weights in {folder} do not match the model ({detail})")


__all__ = ["PromptUpsampler", "PixtralVisionParams", "VISION_ENCODERS", "convert_original_state_dict",
           "resize_for_upsampler", "dialog_text", "expand_image_tokens"]
