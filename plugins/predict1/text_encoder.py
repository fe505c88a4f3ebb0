"""The T5 text encoder, from a local folder in the layout of ``checkpoints/google-t5/t5-11b``.

As the original (``T5TokenizerFast`` + ``T5EncoderModel``): prompts padded/truncated to 512 tokens, ``</s>``
appended, each prompt encoded on its own, and the embeddings of padded positions set to zero. Read here without
``transformers``: the tokenizer is the folder's ``tokenizer.json`` run by the ``tokenizers`` library (what
``T5TokenizerFast`` wraps), the network is :class:`.t5.T5Encoder` built from ``config.json``, and the weights
come from ``model.safetensors`` or ``pytorch_model.bin`` through the same strict, pickle-free reader as the
diffusion network (the encoder's keys only: a released file also holds the decoder, which is never read). Nothing
is fetched at run time.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from cosmos_cli.errors import CheckpointError

from .t5 import T5Config, T5Encoder

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_UNUSED = ("decoder.", "lm_head.")  # the released file is a whole encoder-decoder
_EMBEDDING = ("shared.weight", "encoder.embed_tokens.weight")  # tied: either names the embedding
LAYERS = "encoder.block."  # the encoder's layers: what the stream and map placements stream


def _weights_file(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"{folder}: no T5 weights here (neither {' nor '.join(WEIGHT_FILES)})",
                          hint="Download the text encoder again.")


def _check_legacy_fits(path: Path) -> None:
    """A legacy-format (pre-zip, torch < 1.6) ``pytorch_model.bin`` cannot be memory-mapped: it is read whole (the
    released T5-11B file, encoder and decoder, is 45 GB), which the memory plan does not count (it plans for a
    mapped file, read tensor by tensor). Refuse it in one line, before reading, where the host has less memory
    available than the file's size."""
    import zipfile

    from cosmos_cli.hostmem import available_host_bytes

    if path.suffix == ".safetensors" or zipfile.is_zipfile(path):
        return
    need, have = path.stat().st_size, available_host_bytes()
    if have is not None and need > have:
        gib = lambda b: f"{b / (1 << 30):.1f} GiB"  # noqa: E731
        raise CheckpointError(
            f"{path}: a legacy-format (pre-zip) PyTorch file, which cannot be memory-mapped: reading it takes "
            f"{gib(need)} of host memory and {gib(have)} is available",
            hint=f"Re-save it once in the zip format on a machine with more memory (python -c \"import torch; "
                 f"p='{path}'; torch.save(torch.load(p, weights_only=True), p)\"; its MD5 then differs from the "
                 f"release's), or give this process more memory.")


def read_config(path: Path) -> T5Config:
    """The encoder's shape from a T5 ``config.json``; anything that is not a T5 encoder's is one error."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path.parent}: no T5 text encoder here (config.json is missing)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    proj = raw.get("feed_forward_proj", "relu")
    if proj not in ("relu", "gated-gelu"):
        raise CheckpointError(f"{path}: feed_forward_proj {proj!r} is not a T5 encoder's (relu or gated-gelu)")
    ints = {}
    for key, default in (("d_model", None), ("d_kv", None), ("num_heads", None), ("d_ff", None),
                         ("num_layers", None), ("vocab_size", None), ("relative_attention_num_buckets", 32),
                         ("relative_attention_max_distance", 128)):
        value = raw.get(key, default)
        if type(value) is not int or not 0 < value <= 1 << 20:
            raise CheckpointError(f"{path}: {key} must be a positive whole number, got {value!r}")
        ints[key] = value
    if ints["relative_attention_num_buckets"] < 4:
        raise CheckpointError(f"{path}: relative_attention_num_buckets must be at least 4")
    eps = raw.get("layer_norm_epsilon", 1e-6)
    if type(eps) not in (int, float) or not 0 < eps < 1:
        raise CheckpointError(f"{path}: layer_norm_epsilon must be a small positive number, got {eps!r}")
    return T5Config(**ints, layer_norm_epsilon=float(eps), gated=proj == "gated-gelu")


def load_encoder(folder: Path, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 map_blocks: bool = False) -> T5Encoder:
    """The encoder of ``folder``, strictly: every encoder key present with its shape and finite values, no key
    that is neither the encoder's nor the decoder's. Built on the meta device, each tensor cast on its way to
    ``device``: no second full copy.

    ``map_blocks`` (the ``map`` placement, :mod:`.mapped`): the layers' tensors are left as read, in the file's
    dtype, on the host: for a zip-format ``pytorch_model.bin``, pages of the file's mapping (checked for NaN like
    the rest, which reads them once), no copy. A legacy-format or ``.safetensors`` file is read into memory by its
    reader, and the layers then stream from that copy."""
    from .checkpoint import _open, _summary, checked_cast

    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"the T5 encoder runs in float32 or bfloat16, not {dtype}")
    config = read_config(folder / "config.json")
    path = _weights_file(folder)
    _check_legacy_fits(path)
    shapes, read = _open(path)
    with torch.device("meta"):
        model = T5Encoder(config)
    expected = model.state_dict()
    names = {k: k for k in expected if k in shapes}
    if "shared.weight" not in shapes and "encoder.embed_tokens.weight" in shapes:
        names["shared.weight"] = "encoder.embed_tokens.weight"
    used = set(names.values()) | set(_EMBEDDING)
    unexpected = [k for k in shapes if k not in used and not k.startswith(_UNUSED)]
    missing = [k for k in expected if k not in names]
    wrong = [f"{names[k]} {list(shapes[names[k]]) if shapes[names[k]] is not None else 'not a tensor'} != "
             f"{list(v.shape)}" for k, v in expected.items() if k in names and shapes[names[k]] != tuple(v.shape)]
    problems = [_summary(kind, items) for kind, items in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong)) if items]
    if problems:
        raise CheckpointError(f"{path}: does not match the T5 encoder of {folder / 'config.json'}: "
                              + "; ".join(problems), hint="Download the text encoder again.")
    state = {}
    for k, ref in expected.items():
        tensor = read(names[k])
        if map_blocks and k.startswith(LAYERS) and isinstance(tensor, torch.Tensor):  # left in the mapping
            state[k] = checked_cast(tensor, ref, path, names[k], device="cpu", dtype=tensor.dtype)
        else:
            state[k] = checked_cast(tensor, ref, path, names[k], device=device, dtype=dtype)
    model.load_state_dict(state, assign=True)
    return model.eval().requires_grad_(False)


class PromptTokenizer:
    """A T5 ``tokenizer.json`` as ``T5TokenizerFast`` runs it: the file's normaliser, pre-tokeniser, unigram
    model and post-processor (which appends ``</s>``); cut to ``max_length`` with ``</s>`` kept, padded with
    ``<pad>``."""

    def __init__(self, path: Path, max_length: int):
        from tokenizers import Tokenizer

        try:
            self.backend = Tokenizer.from_file(str(path))
        except Exception as exc:  # the library raises its own Exception for any malformed file
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if not path.is_file():
                first = "the file is missing"
            raise CheckpointError(f"{path}: cannot read the T5 tokenizer: {first}",
                                  hint="Download the text encoder again.") from None
        self.backend.no_truncation()
        self.backend.no_padding()
        pad = self.backend.token_to_id("<pad>")
        if pad is None:
            raise CheckpointError(f"{path}: the tokenizer has no <pad> token: not a T5 tokenizer")
        self.pad_id, self.max_length = pad, max_length

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def ids(self, prompt: str) -> list[int]:
        """Every token of ``prompt``, ``</s>`` included, uncut."""
        return self.backend.encode(prompt).ids

    def padded(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``input_ids`` and ``attention_mask``, each ``[1, max_length]``."""
        self.backend.enable_truncation(self.max_length)
        try:
            ids = self.backend.encode(prompt).ids
        finally:
            self.backend.no_truncation()
        mask = [1] * len(ids) + [0] * (self.max_length - len(ids))
        ids = ids + [self.pad_id] * (self.max_length - len(ids))
        return torch.tensor([ids], dtype=torch.long), torch.tensor([mask], dtype=torch.long)


class T5TextEncoder:
    def __init__(self, model: T5Encoder, tokenizer: PromptTokenizer):
        self.model = model
        self.tokenizer = tokenizer

    @property
    def max_length(self) -> int:
        return self.tokenizer.max_length

    @classmethod
    def load(cls, folder: Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
             max_length: int = 512, map_blocks: bool = False) -> T5TextEncoder:
        """``dtype``: the weights' dtype, fp32 by default as the original (the file's own; the pipeline's choice:
        ``pipeline.text_encoder_dtype``). With bf16 every weight is cast, ``wo`` too, and the embedding comes out
        in bf16. ``map_blocks``: the layers left in the file's mapping (:func:`load_encoder`)."""
        folder = Path(folder)
        model = load_encoder(folder, device=device, dtype=dtype, map_blocks=map_blocks)
        tokenizer = PromptTokenizer(folder / "tokenizer.json", max_length)
        if tokenizer.vocab_size > model.config.vocab_size:
            raise CheckpointError(f"{folder / 'tokenizer.json'}: {tokenizer.vocab_size} tokens, but the encoder "
                                  f"embeds {model.config.vocab_size}: the files are not one T5's",
                                  hint="Download the text encoder again.")
        return cls(model, tokenizer)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device) -> T5TextEncoder:
        self.model.to(device)
        return self

    def token_count(self, prompt: str) -> int:
        """Tokens in ``prompt`` with T5's closing ``</s>``: more than ``max_length`` and :meth:`encode` cuts it."""
        return len(self.tokenizer.ids(prompt))

    @torch.inference_mode()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """``[len(prompts), max_length, d_model]`` embeddings, zero beyond each prompt's tokens."""
        # One call for all the prompts (a streamed or mapped encoder then reads its layers once), each prompt
        # computed on its own inside it, as the original encodes them one at a time (t5.Block.forward)
        padded = [self.tokenizer.padded(prompt) for prompt in prompts]
        ids = torch.cat([i for i, _ in padded]).to(self.device)
        mask = torch.cat([m for _, m in padded]).to(self.device)
        hidden = self.model(ids, mask)
        for row, (_, m) in enumerate(padded):
            hidden[row, int(m.sum()):] = 0
        return hidden


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
