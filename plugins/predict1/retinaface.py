"""RetinaFace (ResNet-50) face detection and pixelation for the face-blur guardrail, in plain PyTorch.

Expected file: ``<guardrail>/face_blur_filter/Resnet50_Final.pth``, the biubug6/Pytorch_Retinaface release:
a state dict whose keys may carry a ``module.`` prefix or sit under ``"state_dict"``. Module attribute names
mirror those keys (``body.layer1.0.conv1.weight``, ``fpn.output1.0.weight``, ``ssh1.conv7x7_3.0.weight``,
``ClassHead.0.conv1x1.weight``...), so it loads with no renaming table. Documented unused keys:
``LandmarkHead.*`` (landmarks are not needed to blur) and any missing ``num_batches_tracked``.
The network's widths and depths are read from the file, so small test networks load through the same code.

Detection is the original filter's (spec section 9): RGB to BGR minus (104, 117, 123), priors for the frame
size, boxes decoded with variances (0.1, 0.2) and scaled to pixels, keep face score > 0.7, the 5000 best,
NMS at IoU 0.4, keep 750, ignore boxes under 20x20 px. Pixelation shrinks each box to 5x5 (bilinear) and
scales it back (nearest), in place, box after box. Frames go through the network in batches.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cosmos_cli.errors import CheckpointError

WEIGHTS_FILE = "Resnet50_Final.pth"
CONFIDENCE_THRESHOLD = 0.7
TOP_K = 5000
NMS_THRESHOLD = 0.4
KEEP_TOP_K = 750
MIN_FACE_SIZE = (20, 20)  # width, height in pixels
PIXELATE_BLOCKS = 5
BGR_MEAN = (104.0, 117.0, 123.0)
FRAMES_PER_BATCH = 4


@dataclass(frozen=True)
class RetinaFaceParams:
    """Architecture (defaults: ``cfg_re50``): a ResNet body, a 3-level FPN, SSH context modules, 2 anchors."""

    stem_channels: int = 64
    blocks: tuple[int, int, int, int] = (3, 4, 6, 3)
    out_channels: int = 256
    min_sizes: tuple[tuple[int, ...], ...] = ((16, 32), (64, 128), (256, 512))
    steps: tuple[int, ...] = (8, 16, 32)
    variances: tuple[float, float] = (0.1, 0.2)

    @property
    def leaky(self) -> float:  # the original's rule: leaky ReLU only for narrow (<= 64) feature maps
        return 0.1 if self.out_channels <= 64 else 0.0

    @property
    def anchors(self) -> int:
        return len(self.min_sizes[0])


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, leaky: float | None = None) -> nn.Sequential:
    """Conv (no bias) + BN (+ LeakyReLU when ``leaky`` is given): keys ``.0.weight``, ``.1.*``."""
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout)]
    if leaky is not None:
        layers.append(nn.LeakyReLU(leaky, inplace=True))
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    """torchvision's ResNet bottleneck (stride on the 3x3 conv), same attribute names."""

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.downsample = None
        if stride != 1 or cin != width * 4:
            self.downsample = nn.Sequential(nn.Conv2d(cin, width * 4, 1, stride, bias=False), nn.BatchNorm2d(width * 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class Body(nn.Module):
    """ResNet without its classifier; returns the outputs of layer2..4 (strides 8, 16, 32)."""

    def __init__(self, stem: int, blocks: tuple[int, int, int, int]):
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        cin = stem
        for i, n in enumerate(blocks):
            width, stride = stem * 2**i, 1 if i == 0 else 2
            layer = nn.Sequential(*(Bottleneck(cin if b == 0 else width * 4, width, stride if b == 0 else 1)
                                    for b in range(n)))
            setattr(self, f"layer{i + 1}", layer)
            cin = width * 4

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)  # (B, stem, H/4, W/4)
        c2 = self.layer1(x)
        c3 = self.layer2(c2)  # (B, 8*stem, H/8, W/8)
        c4 = self.layer3(c3)  # (B, 16*stem, H/16, W/16)
        c5 = self.layer4(c4)  # (B, 32*stem, H/32, W/32)
        return [c3, c4, c5]


class FPN(nn.Module):
    def __init__(self, in_channels: list[int], out: int, leaky: float):
        super().__init__()
        self.output1 = _conv_bn(in_channels[0], out, 1, leaky=leaky)
        self.output2 = _conv_bn(in_channels[1], out, 1, leaky=leaky)
        self.output3 = _conv_bn(in_channels[2], out, 1, leaky=leaky)
        self.merge1 = _conv_bn(out, out, 3, leaky=leaky)
        self.merge2 = _conv_bn(out, out, 3, leaky=leaky)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        o1, o2, o3 = self.output1(feats[0]), self.output2(feats[1]), self.output3(feats[2])
        o2 = self.merge2(o2 + F.interpolate(o3, size=o2.shape[-2:], mode="nearest"))
        o1 = self.merge1(o1 + F.interpolate(o2, size=o1.shape[-2:], mode="nearest"))
        return [o1, o2, o3]


class SSH(nn.Module):
    """Context module: 3x3, 5x5 (two 3x3) and 7x7 (three 3x3) branches concatenated."""

    def __init__(self, cin: int, out: int, leaky: float):
        super().__init__()
        self.conv3X3 = _conv_bn(cin, out // 2, 3)
        self.conv5X5_1 = _conv_bn(cin, out // 4, 3, leaky=leaky)
        self.conv5X5_2 = _conv_bn(out // 4, out // 4, 3)
        self.conv7X7_2 = _conv_bn(out // 4, out // 4, 3, leaky=leaky)
        self.conv7x7_3 = _conv_bn(out // 4, out // 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.conv5X5_1(x)
        return F.relu(torch.cat([self.conv3X3(x), self.conv5X5_2(b5), self.conv7x7_3(self.conv7X7_2(b5))], dim=1))


class Head(nn.Module):
    """1x1 conv predicting ``per_anchor`` values per anchor; flattened to (B, H*W*anchors, per_anchor)."""

    def __init__(self, cin: int, anchors: int, per_anchor: int):
        super().__init__()
        self.per_anchor = per_anchor
        self.conv1x1 = nn.Conv2d(cin, anchors * per_anchor, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1)  # (B, h, w, anchors * k)
        return out.reshape(out.shape[0], -1, self.per_anchor)


class RetinaFace(nn.Module):
    def __init__(self, p: RetinaFaceParams = RetinaFaceParams()):
        super().__init__()
        self.params = p
        self.body = Body(p.stem_channels, p.blocks)
        c = p.stem_channels * 4  # layer1 output = the original's ``in_channel``
        self.fpn = FPN([c * 2, c * 4, c * 8], p.out_channels, p.leaky)
        self.ssh1 = SSH(p.out_channels, p.out_channels, p.leaky)
        self.ssh2 = SSH(p.out_channels, p.out_channels, p.leaky)
        self.ssh3 = SSH(p.out_channels, p.out_channels, p.leaky)
        self.ClassHead = nn.ModuleList(Head(p.out_channels, p.anchors, 2) for _ in range(3))
        self.BboxHead = nn.ModuleList(Head(p.out_channels, p.anchors, 4) for _ in range(3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x``: (B, 3, H, W) BGR minus mean. Returns box offsets (B, P, 4) and face scores (B, P)."""
        fpn = self.fpn(self.body(x))
        feats = [self.ssh1(fpn[0]), self.ssh2(fpn[1]), self.ssh3(fpn[2])]
        loc = torch.cat([head(f) for head, f in zip(self.BboxHead, feats, strict=True)], dim=1)  # (B, P, 4)
        conf = torch.cat([head(f) for head, f in zip(self.ClassHead, feats, strict=True)], dim=1)  # (B, P, 2)
        return loc, F.softmax(conf, dim=-1)[..., 1]


def prior_boxes(height: int, width: int, p: RetinaFaceParams = RetinaFaceParams()) -> torch.Tensor:
    """Anchors (P, 4) as normalized (cx, cy, w, h), ordered level, row, column, size (the heads' order)."""
    levels = []
    for step, sizes in zip(p.steps, p.min_sizes, strict=True):
        rows, cols = math.ceil(height / step), math.ceil(width / step)
        cy = (torch.arange(rows, dtype=torch.float64) + 0.5) * step / height
        cx = (torch.arange(cols, dtype=torch.float64) + 0.5) * step / width
        grid_y, grid_x = torch.meshgrid(cy, cx, indexing="ij")  # (rows, cols)
        for_sizes = [torch.stack([grid_x, grid_y, torch.full_like(grid_x, s / width), torch.full_like(grid_y, s / height)],
                                 dim=-1) for s in sizes]
        levels.append(torch.stack(for_sizes, dim=2).reshape(-1, 4))  # (rows * cols * sizes, 4)
    return torch.cat(levels).float()


def decode_boxes(loc: torch.Tensor, priors: torch.Tensor, variances: tuple[float, float]) -> torch.Tensor:
    """Offsets (B, P, 4) on priors (P, 4) -> normalized corner boxes (B, P, 4) as (x1, y1, x2, y2)."""
    centers = priors[:, :2] + loc[..., :2] * variances[0] * priors[:, 2:]
    sizes = priors[:, 2:] * torch.exp(loc[..., 2:] * variances[1])
    top_left = centers - sizes / 2
    return torch.cat([top_left, top_left + sizes], dim=-1)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Greedy non-maximum suppression with inclusive pixel areas (``+1``); indices of kept boxes, best first."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores)[::-1]
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        w = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        inter = w * h
        order = rest[inter / (areas[best] + areas[rest] - inter) <= threshold]
    return keep


def filter_detections(boxes: np.ndarray, scores: np.ndarray, confidence: float = CONFIDENCE_THRESHOLD,
                      top_k: int = TOP_K, nms_threshold: float = NMS_THRESHOLD,
                      keep_top_k: int = KEEP_TOP_K) -> np.ndarray:
    """Pixel boxes (P, 4) and scores (P,) -> the kept boxes (N, 4) float32, best first."""
    selected = scores > confidence
    boxes, scores = boxes[selected], scores[selected]
    order = np.argsort(scores)[::-1][:top_k]
    boxes, scores = boxes[order].astype(np.float32), scores[order].astype(np.float32)
    return boxes[nms(boxes, scores, nms_threshold)][:keep_top_k]


def pixelate(region: np.ndarray, blocks: int = PIXELATE_BLOCKS) -> np.ndarray:
    import cv2

    h, w = region.shape[:2]
    small = cv2.resize(region, (blocks, blocks), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def pixelate_boxes(frame: np.ndarray, boxes: np.ndarray, min_size: tuple[int, int] = MIN_FACE_SIZE) -> int:
    """Pixelate each box of ``boxes`` (N, 4) in ``frame`` (H, W, 3), in place and in order; returns how many."""
    height, width = frame.shape[:2]
    done = 0
    for box in boxes:
        x1, y1, x2, y2 = (int(v) for v in box)  # truncation toward zero, as the original
        if x2 - x1 < min_size[0] or y2 - y1 < min_size[1]:
            continue
        top, bottom, left, right = max(y1, 0), min(y2, height), max(x1, 0), min(x2, width)
        if bottom <= top or right <= left:  # entirely outside the frame: nothing to hide
            continue
        frame[top:bottom, left:right] = pixelate(frame[top:bottom, left:right])
        done += 1
    return done


_UNUSED = re.compile(r"LandmarkHead\..*")


def params_from_state_dict(state_dict: dict[str, torch.Tensor]) -> RetinaFaceParams:
    try:
        stem = state_dict["body.conv1.weight"].shape[0]
        out = state_dict["fpn.output1.0.weight"].shape[0]
        anchors = state_dict["ClassHead.0.conv1x1.weight"].shape[0] // 2
    except KeyError as e:
        raise CheckpointError(f"{WEIGHTS_FILE} lacks {e.args[0]}: not a RetinaFace ResNet checkpoint") from e
    blocks = tuple(len({k.split(".")[2] for k in state_dict if k.startswith(f"body.layer{i}.")}) for i in range(1, 5))
    p = RetinaFaceParams(stem_channels=stem, blocks=blocks, out_channels=out)
    if anchors != p.anchors or min(blocks) == 0:
        raise CheckpointError(f"{WEIGHTS_FILE} has {anchors} anchors and {blocks} blocks; expected {p.anchors} "
                              "anchors and four ResNet stages")
    return p


def load_retinaface(path: Path) -> RetinaFace:
    """The network from ``Resnet50_Final.pth`` (fp32, CPU, eval), strictly except the documented unused keys."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"RetinaFace weights not found: {path}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # the 2019 file predates mmap-able zips
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} is not a state dict")
    if "state_dict" in checkpoint:
        checkpoint = checkpoint["state_dict"]
    state_dict = {k.removeprefix("module."): v for k, v in checkpoint.items() if not _UNUSED.fullmatch(k.removeprefix("module."))}
    p = params_from_state_dict(state_dict)
    with torch.device("meta"):
        net = RetinaFace(p)
    for key in net.state_dict():
        if key.endswith("num_batches_tracked"):
            state_dict.setdefault(key, torch.tensor(0, dtype=torch.long))
    result = net.load_state_dict(state_dict, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{path} does not match RetinaFace: missing {result.missing_keys[:5]}, "
                              f"unexpected {result.unexpected_keys[:5]}")
    return net.float().eval()


class FaceBlur:
    """RetinaFace detection + pixelation of video frames."""

    def __init__(self, net: RetinaFace, device: str, batch_size: int = FRAMES_PER_BATCH):
        self.net, self.device, self.batch_size = net, str(device), batch_size
        self._priors: dict[tuple[int, int], torch.Tensor] = {}

    @classmethod
    def load(cls, folder: Path, *, device: str, batch_size: int = FRAMES_PER_BATCH) -> FaceBlur:
        """From ``<guardrail>/face_blur_filter`` (holding ``Resnet50_Final.pth``)."""
        return cls(load_retinaface(Path(folder) / WEIGHTS_FILE).to(device), device, batch_size)

    def to(self, device: str) -> FaceBlur:
        self.net.to(device)
        self.device = str(device)
        self._priors.clear()
        return self

    @torch.inference_mode()
    def detect(self, frames: np.ndarray) -> list[np.ndarray]:
        """Face boxes (N, 4) in pixels (x1, y1, x2, y2) per frame of ``(T, H, W, 3)`` uint8 RGB frames."""
        height, width = frames.shape[1:3]
        key = (height, width)
        if key not in self._priors:
            self._priors[key] = prior_boxes(height, width, self.net.params).to(self.device)
        priors = self._priors[key]
        scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=self.device)
        mean = torch.tensor(BGR_MEAN, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        detections = []
        for start in range(0, len(frames), self.batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(frames[start:start + self.batch_size])).to(self.device)
            x = batch.permute(0, 3, 1, 2)[:, [2, 1, 0]].float() - mean  # (B, 3, H, W) BGR
            loc, scores = self.net(x)
            boxes = (decode_boxes(loc, priors, self.net.params.variances) * scale).cpu().numpy()
            scores = scores.cpu().numpy()
            detections.extend(filter_detections(b, s) for b, s in zip(boxes, scores, strict=True))
        return detections

    def apply(self, frames: np.ndarray) -> tuple[np.ndarray, int]:
        """A copy of ``frames`` with every detected face pixelated, and the number of boxes pixelated."""
        out = frames.copy()
        count = sum(pixelate_boxes(frame, boxes) for frame, boxes in zip(out, self.detect(frames), strict=True))
        return out, count
