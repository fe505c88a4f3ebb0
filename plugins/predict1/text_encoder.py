"""The T5 text encoder, from a local ``transformers`` folder (``checkpoints/google-t5/t5-11b``).

As the original: ``T5TokenizerFast`` + ``T5EncoderModel``, prompts padded/truncated to 512 tokens, each prompt
encoded on its own, and the embeddings of padded positions set to zero. Nothing is fetched at run time: the
folder must hold the config, the weights and the tokenizer files.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from cosmos_cli.errors import CheckpointError


def _weights_file(folder: Path) -> Path:
    """The weights file transformers reads in ``folder`` (for error messages)."""
    for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json"):
        if (folder / name).is_file():
            return folder / name
    return folder


class T5TextEncoder:
    def __init__(self, model, tokenizer, max_length: int = 512):
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length

    @classmethod
    def load(cls, folder: Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
             max_length: int = 512) -> T5TextEncoder:
        """``dtype``: the weights' dtype, fp32 by default as the original (the file's own; the pipeline's choice:
        ``pipeline.text_encoder_dtype``). With bf16 every weight is cast, ``wo`` too (transformers keeps T5's
        ``wo`` in fp32 only for fp16), and the embedding comes out in bf16."""
        from transformers import T5EncoderModel, T5TokenizerFast
        from transformers.utils import logging as hf_logging

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"{folder}: no T5 text encoder here (config.json is missing)")
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            tokenizer = T5TokenizerFast.from_pretrained(folder, local_files_only=True)
            model = T5EncoderModel.from_pretrained(folder, local_files_only=True, dtype=dtype, low_cpu_mem_usage=True)
        except pickle.UnpicklingError as exc:  # torch.load(weights_only=True) met something other than tensors
            raise CheckpointError(f"{_weights_file(folder)}: refusing to load: it is not a plain weights file "
                                  f"(it holds pickled objects other than tensors)",
                                  hint="Download the text encoder again; never load such a file.") from exc
        except (OSError, ValueError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{folder}: cannot load the T5 text encoder: {first}") from exc
        model.eval().requires_grad_(False)
        model.to(device)
        for name, tensor in model.state_dict().items():  # NaN/inf weights would give a black video
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise CheckpointError(f"{_weights_file(folder)}: {name} holds NaN or infinite values",
                                      hint="The file is damaged; download the text encoder again.")
        return cls(model, tokenizer, max_length)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device) -> T5TextEncoder:
        self.model.to(device)
        return self

    def token_count(self, prompt: str) -> int:
        """Tokens in ``prompt`` with T5's closing ``</s>``: more than ``max_length`` and :meth:`encode` cuts it."""
        return len(self.tokenizer(prompt, truncation=False).input_ids)

    @torch.inference_mode()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """``[len(prompts), max_length, d_model]`` embeddings, zero beyond each prompt's tokens."""
        out = []
        for prompt in prompts:  # one at a time, as the original (padding then cannot change a prompt's result)
            tok = self.tokenizer([prompt], max_length=self.max_length, padding="max_length", truncation=True,
                                 return_tensors="pt")
            ids, mask = tok.input_ids.to(self.device), tok.attention_mask.to(self.device)
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
            length = int(mask.sum())
            hidden[:, length:] = 0
            out.append(hidden)
        return torch.cat(out)


SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")


def build_word_tokenizer(words: list[str]):
    """A T5TokenizerFast (SentencePiece-style unigram model) whose pieces are whole words, in lower and
    capitalised form, plus single characters; appends ``</s>`` like T5. For the small T5-style encoders we write
    ourselves (tests, the demo model), which have no trained SentencePiece model."""
    from transformers import T5TokenizerFast

    pieces: dict[str, float] = {tok: 0.0 for tok in SPECIAL_TOKENS}
    for w in words:
        for form in (w.lower(), w.capitalize()):
            pieces.setdefault("\u2581" + form, -1.0)
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'-":
        pieces.setdefault(ch, -10.0)
        pieces.setdefault("\u2581" + ch, -10.0)
    pieces.setdefault("\u2581", -20.0)
    return T5TokenizerFast(vocab=list(pieces.items()), extra_ids=0)


def write_t5_checkpoint(folder: Path, params, words: list[str], seed: int = 0, device: str = "cpu",
                        return_encoder: bool = True):
    """Write a T5 folder in the layout of ``google-t5/t5-11b``: ``config.json``, a ``pytorch_model.bin`` holding a
    whole encoder-decoder's state dict (as the released file, of which the encoder part is read) and the
    tokenizer files. Random weights, initialised on ``device`` (a GPU initialises a T5-11B-sized model in
    seconds). Returns the encoder part as a T5EncoderModel on the CPU (None unless ``return_encoder``)."""
    from transformers import T5Config, T5EncoderModel, T5ForConditionalGeneration

    tokenizer = build_word_tokenizer(words)
    config = T5Config(vocab_size=max(len(tokenizer), 8), d_model=params.d_model, d_kv=params.d_kv,
                      num_heads=params.num_heads, d_ff=params.d_ff, num_layers=params.num_layers,
                      num_decoder_layers=1, relative_attention_num_buckets=params.relative_attention_num_buckets,
                      feed_forward_proj="gated-gelu" if params.gated else "relu", pad_token_id=0, eos_token_id=1,
                      decoder_start_token_id=0, architectures=["T5ForConditionalGeneration"])
    torch.manual_seed(seed)
    with torch.device(device):
        full = T5ForConditionalGeneration(config).eval()
    state = {k: v.cpu() for k, v in full.state_dict().items()}
    del full
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    torch.save(state, folder / "pytorch_model.bin")
    tokenizer.save_pretrained(folder)
    if not return_encoder:
        return None
    encoder = T5EncoderModel(config).eval()
    encoder.load_state_dict({k: v for k, v in state.items() if k in encoder.state_dict()})
    return encoder
