"""A toy second model family: its own tiny video network, one spec, strict loading; nothing of Predict1.

It implements the ``gpu`` and ``swap`` placements of the planner and refuses the others (streaming blocks is
more than a toy should hold); its spec lists the two strategies that use them, so the planner offers no other. Importing it imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cosmos_cli.backend import Backend
from cosmos_cli.errors import CheckpointError, UsageError
from cosmos_cli.hookspecs import hookimpl
from cosmos_cli.jobs import GenerationResult
from cosmos_cli.specs import NETWORK, CheckpointFile, Component, ModelSpec, PixelNormalisation, Strategy


@dataclass(frozen=True)
class ToyParams:
    channels: int = 8
    vocab: int = 256  # the prompt's UTF-8 bytes

    @property
    def num_params(self) -> int:  # embedding + two 3x3x3 convolutions with biases
        c = self.channels
        return self.vocab * c + (3 * 27 * c + c) + (c * 27 * 3 + 3)


TOY = ToyParams()
# Its two strategies, the placements it implements: gpu, and swap for its one component (the original project's
# flag for offloading the network means the second).
STRATEGIES = (
    Strategy("resident", "the network stays on the GPU"),
    Strategy("offload-all", "the network is on the GPU only while it denoises, its two guidance branches one after "
             "the other", placements=((NETWORK, "swap"),), cfg_batched=False,
             original_flags=("--offload_diffusion_transformer",), others="swap"),
)
SPEC = ModelSpec(
    name="Toy-Video2World", backend="toy", description="a toy video model (conformance tests)", aliases=("toy",),
    network=TOY, files=(CheckpointFile(NETWORK, "", "model.pt", "Toy-Video2World/model.pt"),),
    components=(Component(NETWORK, ("denoise",), num_params=TOY.num_params, dtype="float32",
                          activation_bytes=(("denoise", 4 * TOY.channels * 5 * 16 * 16 * 4),)),),
    num_frames=5, height=16, width=16, fps=8, num_steps=2, input_frames=(1,), default_input_frames=1,
    stages=("denoise",), strategies=STRATEGIES, hidden=True,
    input_normalisation=PixelNormalisation(scale=2 / 255, offset=-1.0))  # [0, 255] onto [-1, 1]; no negative prompt


def build_network(p: ToyParams):
    import torch
    from torch import nn

    class ToyVideoNet(nn.Module):
        """x (B, 3, T, H, W) in [-1, 1] and prompt bytes (B, L) -> an update of x's shape."""

        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(p.vocab, p.channels)
            self.inp = nn.Conv3d(3, p.channels, 3, padding=1)
            self.out = nn.Conv3d(p.channels, 3, 3, padding=1)

        def forward(self, x, tokens):
            text = self.embed(tokens).mean(1)[:, :, None, None, None]  # (B, C, 1, 1, 1)
            return self.out(torch.tanh(self.inp(x) + text))  # (B, 3, T, H, W)

    return ToyVideoNet()


def write_checkpoint(root: Path, seed: int = 0) -> None:
    import torch

    path = Path(root) / SPEC.files_of(NETWORK)[0].local
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng():  # random weights from ``seed``, leaving the caller's generator alone
        torch.manual_seed(seed)
        torch.save(build_network(TOY).state_dict(), path)


class ToyPipeline:
    def __init__(self, spec: ModelSpec, plan, checkpoint_dir: Path, device: str):
        import torch

        self.spec, self.device, self.placement = spec, torch.device(device), plan.placement(NETWORK)
        if self.placement not in ("gpu", "swap"):
            raise UsageError(f"the toy backend does not implement the {self.placement!r} placement "
                             f"(strategy {plan.strategy})", hint="Use --offload resident or offload-all.")
        path = Path(checkpoint_dir) / spec.files_of(NETWORK)[0].local
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.net = build_network(spec.network).eval().requires_grad_(False)
        expected = set(self.net.state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise CheckpointError(f"{path}: does not match the toy network: missing keys {missing}, "
                                  f"unexpected keys {unexpected}")
        self.net.load_state_dict(state, strict=True)
        self.net.to("cpu" if self.placement == "swap" else self.device)  # swap: on the device only to denoise

    def generate(self, job, progress, *, video_path: Path, prompt_path: Path | None = None) -> GenerationResult:
        import torch

        from cosmos_cli.media import frames_to_tensor, read_frames, write_text, write_video

        s = self.spec
        with torch.inference_mode():
            cond = frames_to_tensor(read_frames(job.visual_input, job.num_input_frames), s.height, s.width,
                                    normalisation=s.input_normalisation)
            x = cond[:, :, -1:].repeat(1, 1, s.num_frames, 1, 1).to(self.device)  # (1, 3, T, H, W)
            x = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(job.seed)).to(self.device)
            tokens = torch.tensor([list((job.prompt or "").encode()[:64] or b" ")], device=self.device)
            self.net.to(self.device)
            for _ in range(job.num_steps):
                x = x + self.net(x, tokens) / job.num_steps
            if self.placement == "swap":
                self.net.to("cpu")
            frames = ((x[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()
        write_video(video_path, frames, fps=job.fps)
        if prompt_path is not None:
            write_text(prompt_path, job.prompt or "")
        return GenerationResult(video_path, prompt_path, job.prompt)

    def close(self) -> None:
        self.net = None


class ToyBackend(Backend):
    id = "toy"
    version = "0.0.1"

    def models(self):
        return (SPEC,)

    def build_pipeline(self, spec, plan, *, checkpoint_dir, device, progress=None, options=None, parallel=None,
                       network_dir=None, fast=None, compile=False):  # no options of its own, one process
        return ToyPipeline(spec, plan, checkpoint_dir, device)


@hookimpl
def register_backends(register):
    register(ToyBackend())
