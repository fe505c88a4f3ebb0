"""Video content safety filter: SigLIP so400m image features and the original's 7-class MLP (spec section 9).

Expected folder: ``<guardrail>/video_content_safety_filter/``::

    safety_filter.pt                        {"model": state dict of the classifier below}
    google/siglip-so400m-patch14-384/       a `transformers` folder (save_pretrained or snapshot_download), or
    models--google--siglip-so400m-patch14-384/snapshots/<rev>/   the Hugging Face cache layout the original used

The SigLIP folder may hold the full ``SiglipModel`` (text tower included, as published); only the vision tower
is loaded. ``safety_filter.pt`` keys are ``network.layers.{0,1,3,4,6}.*``:
``Linear(1152, 512) - BatchNorm - ReLU - Linear(512, 256) - BatchNorm - ReLU - Linear(256, 7)``; the layer
widths are read from the file, so smaller test classifiers load through the same code.

Each frame is preprocessed like the original (PIL bicubic resize to the encoder's size, rescale, normalize),
encoded, L2-normalized and classified; frames go through the encoder in batches. Class 0 is safe; any other
class on any frame makes the video unsafe.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from cosmos_cli.errors import CheckpointError

CLASS_NAMES = ("Safe", "Sexual_Content", "Violence", "Drugs", "Child_Abuse", "Hate_and_Harassment", "Self-Harm")
SIGLIP_REPO = "google/siglip-so400m-patch14-384"
CLASSIFIER_FILE = "safety_filter.pt"
FRAMES_PER_BATCH = 16


def resolve_hf_folder(root: Path, repo_id: str, marker: str = "config.json") -> Path:
    """Where a Hub model lives under ``root``: ``root/<org>/<name>`` or the HF cache ``root/models--org--name``.

    The cache layout's revision is ``refs/main`` when present, otherwise its only snapshot.
    """
    root = Path(root)
    plain = root / repo_id
    if (plain / marker).is_file():
        return plain
    cache = root / ("models--" + repo_id.replace("/", "--"))
    snapshots = cache / "snapshots"
    ref = cache / "refs" / "main"
    if ref.is_file() and (snapshots / ref.read_text().strip() / marker).is_file():
        return snapshots / ref.read_text().strip()
    found = sorted(p for p in snapshots.glob("*") if (p / marker).is_file()) if snapshots.is_dir() else []
    if len(found) == 1:
        return found[0]
    raise CheckpointError(f"{repo_id} not found under {root}: expected {plain}/{marker} or {snapshots}/<rev>/{marker}")


class SafetyMLP(nn.Module):
    """``layers``: the original's Sequential, so the checkpoint's ``network.layers.N.*`` keys load unchanged."""

    def __init__(self, input_size: int, hidden: tuple[int, int], num_classes: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, hidden[0]), nn.BatchNorm1d(hidden[0]), nn.ReLU(),
            nn.Linear(hidden[0], hidden[1]), nn.BatchNorm1d(hidden[1]), nn.ReLU(),
            nn.Linear(hidden[1], num_classes),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)  # (N, D) -> (N, num_classes)


class SafetyClassifier(nn.Module):
    def __init__(self, input_size: int = 1152, hidden: tuple[int, int] = (512, 256), num_classes: int = 7):
        super().__init__()
        self.network = SafetyMLP(input_size, hidden, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.network(features)

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor]) -> SafetyClassifier:
        try:
            in0 = state_dict["network.layers.0.weight"].shape  # (h0, D)
            in3 = state_dict["network.layers.3.weight"].shape  # (h1, h0)
            in6 = state_dict["network.layers.6.weight"].shape  # (C, h1)
        except KeyError as e:
            raise CheckpointError(f"{CLASSIFIER_FILE} lacks {e.args[0]}") from e
        if in6[0] != len(CLASS_NAMES):
            raise CheckpointError(f"{CLASSIFIER_FILE} has {in6[0]} classes, expected {len(CLASS_NAMES)}")
        with torch.device("meta"):
            model = cls(in0[1], (in0[0], in3[0]), in6[0])
        state_dict = dict(state_dict)
        for key in model.state_dict():  # optional in older files; nothing reads it in eval mode
            if key.endswith("num_batches_tracked"):
                state_dict.setdefault(key, torch.tensor(0, dtype=torch.long))
        result = model.load_state_dict(state_dict, strict=False, assign=True)
        if result.missing_keys or result.unexpected_keys:
            raise CheckpointError(f"{CLASSIFIER_FILE} does not match the classifier: missing "
                                  f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")
        return model


class VideoSafetyFilter:
    """SigLIP vision tower + classifier; :meth:`classify` returns one class index per frame."""

    def __init__(self, encoder, image_processor, classifier: SafetyClassifier, device: str, batch_size: int):
        self.encoder, self.image_processor, self.classifier = encoder, image_processor, classifier
        self.device, self.batch_size = str(device), batch_size

    @classmethod
    def load(cls, folder: Path, *, device: str, dtype: torch.dtype = torch.float32,
             batch_size: int = FRAMES_PER_BATCH) -> VideoSafetyFilter:
        import transformers

        folder = Path(folder)
        weights = folder / CLASSIFIER_FILE
        if not weights.is_file():
            raise CheckpointError(f"video safety classifier not found: {weights}")
        checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
        if not isinstance(checkpoint, dict) or "model" not in checkpoint:
            raise CheckpointError(f"{weights} has no 'model' entry")
        classifier = SafetyClassifier.from_state_dict(checkpoint["model"]).float()

        siglip = resolve_hf_folder(folder, SIGLIP_REPO)
        encoder, info = transformers.SiglipVisionModel.from_pretrained(
            siglip, dtype=dtype, local_files_only=True, output_loading_info=True)
        if info.get("missing_keys"):
            raise CheckpointError(f"SigLIP weights in {siglip} lack {sorted(info['missing_keys'])[:5]}")
        hidden = encoder.config.hidden_size
        if hidden != classifier.network.layers[0].in_features:
            raise CheckpointError(f"{weights} expects {classifier.network.layers[0].in_features}-d features, "
                                  f"the SigLIP encoder in {siglip} gives {hidden}")
        processor_cls = getattr(transformers, "SiglipImageProcessorPil", None) or transformers.SiglipImageProcessor
        processor = processor_cls.from_pretrained(siglip, local_files_only=True)
        encoder.to(device).eval()
        classifier.to(device).eval()
        return cls(encoder, processor, classifier, device, batch_size)

    def to(self, device: str) -> VideoSafetyFilter:
        self.encoder.to(device)
        self.classifier.to(device)
        self.device = str(device)
        return self

    @torch.inference_mode()
    def features(self, frames: np.ndarray) -> torch.Tensor:
        """L2-normalized image features of ``(N, H, W, 3)`` uint8 RGB frames: (N, D) float32."""
        pixels = self.image_processor(list(frames), return_tensors="pt")["pixel_values"]  # (N, 3, S, S)
        pooled = self.encoder(pixel_values=pixels.to(self.device, self.encoder.dtype)).pooler_output  # (N, D)
        pooled = pooled.float()
        return pooled / pooled.norm(dim=-1, keepdim=True)

    @torch.inference_mode()
    def classify(self, frames: np.ndarray) -> np.ndarray:
        """One class index per frame of ``(T, H, W, 3)`` uint8 RGB frames, ``batch_size`` frames per encoder call."""
        classes = []
        for start in range(0, len(frames), self.batch_size):
            logits = self.classifier(self.features(frames[start:start + self.batch_size]))  # (n, 7)
            classes.append(logits.argmax(dim=-1).cpu())
        return torch.cat(classes).numpy() if classes else np.zeros(0, dtype=np.int64)
