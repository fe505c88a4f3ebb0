"""Write complete random checkpoint folders in the original on-disk layout and formats.

``model.pt`` (the network's ``net.*`` keys, as the released file), ``encoder.jit``/``decoder.jit``/``mean_std.pt``
(TorchScript archives as the released tokenizer) and a ``transformers`` T5 folder. Used by the tests (tiny
specs), the benchmarks and the demo model's training script; loading them goes through the real loaders.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cosmos_cli.specs import NETWORK, TEXT_ENCODER, TOKENIZER, ModelSpec

# Words the small T5 tokenizers know (enough for the tests' and the demo's prompts).
DEFAULT_WORDS = (
    "a an the of on in to and with is are it its at from by for up down left right towards away bounces bounce "
    "bouncing rolls rolling slides sliding moves moving falls ball box cube robot arm cup table floor wall ground "
    "red green blue yellow white black grey gray orange purple pink dark light bright small large big slowly "
    "quickly fast slow across over under scene video camera still static motion"
).split()


def write_checkpoint_folder(root: Path, spec: ModelSpec, *, seed: int = 0, words=DEFAULT_WORDS,
                            network_dtype: torch.dtype = torch.float32, device: str = "cpu") -> Path:
    """Write every file ``spec`` needs under ``root`` with random weights; returns ``root``. ``device``: where the
    network's and the text encoder's random numbers are drawn (a GPU makes full-size folders in seconds)."""
    from .checkpoint import write_random_checkpoint
    from .text_encoder import write_t5_checkpoint
    from .tokenizer.fixtures import write_tokenizer_checkpoint

    root = Path(root)
    net_file = root / spec.files_of(NETWORK)[0].local
    net_file.parent.mkdir(parents=True, exist_ok=True)
    write_random_checkpoint(net_file, spec.network, seed=seed, dtype=network_dtype, device=device)
    tok_dir = (root / spec.files_of(TOKENIZER)[0].local).parent
    tok_dir.mkdir(parents=True, exist_ok=True)
    write_tokenizer_checkpoint(tok_dir, spec.tokenizer, seed=seed + 1)
    t5_dir = (root / spec.files_of(TEXT_ENCODER)[0].local).parent
    write_t5_checkpoint(t5_dir, spec.text_encoder, list(words), seed=seed + 2, device=device,
                        return_encoder=False)
    return root
