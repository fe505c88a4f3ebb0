"""Train the bundled demo Video2World model (``assets/demo``) from scratch, from a fixed seed.

    python -m tools.demo.train tokenizer --out DIR   # phase 1: the T5-style text encoder and the video tokenizer
    python -m tools.demo.train dit --out DIR         # phase 2: the diffusion network (reads phase 1's files in DIR)
    python -m tools.demo.train all --out DIR         # both
    python -m tools.demo.train all --out /tmp/demo --smoke   # every step with tiny counts: minutes on a CPU

``DIR`` (default ``assets/demo``) becomes a checkpoint folder in the layout of :data:`PREDICT1_DEMO`'s files, in
the formats of a released one: ``Cosmos-Predict1-Demo-Video2World/model.pt`` (``net.*`` keys, bf16),
``Cosmos-Tokenize1-CV8x8x8-Demo/{encoder.jit,decoder.jit,mean_std.pt}`` and ``t5-demo/`` (a ``transformers``
T5 folder). Loss curves and a summary go to ``--log-dir`` (default ``benchmarks/results/demo_train``).

The bundled weights come from the defaults below, on one H100 (PyTorch 2.11), in one call: phase 1 took 3.4 min
(2.6 min of training), phase 2 5.4 min (1 min to render and encode the clips, 1 min to compile, 3.3 min of
training). The recipe (:class:`Recipe`):

* Data: :mod:`tools.demo.scenes` clips (33 frames, 128x128, 24 fps) from ``TRAIN_SEEDS`` only, rendered on
  every CPU core. The evaluation (:mod:`tools.demo.evaluate`) uses ``EVAL_SEEDS``, which training never sees.
* Text encoder: T5 with random weights (seed 0), frozen, stored in bf16; its tokenizer is
  :func:`build_word_tokenizer` over the captions' words. The network learns to read its embeddings.
* Tokenizer: the causal CV8x8x8 architecture at width 24, trained as an autoencoder on 6,144 clips (2,100 steps
  of 16 clips, AdamW 1e-3): L1 + MSE on pixels with the object's pixels weighted 21x (they are ~3% of a frame;
  unweighted, the tokenizer learns the backgrounds and loses the object), and Gaussian noise of 2% of the
  latent's std added before decoding so the decoder tolerates the diffusion model's errors. ``mean_std.pt``
  holds the per-channel, per-latent-frame mean and std of its latents over 2,048 further training clips.
* Network: ``VideoExtendGeneralDIT`` at width 256, 8 blocks, 4 heads, on 24,576 clips (3,000 steps of 256,
  AdamW 5e-4), trained with the EDM objective exactly as :mod:`cosmos_plugins.predict1.sampler` samples: the
  network sees ``c_in(s) x`` and ``c_noise(s)``, its output F is regressed onto ``(x0 - c_skip x) / c_out``
  (EDM's weighting), sigma_data 0.5 on the tokenizer's normalized latent. Video2World conditioning: 1 or 2
  latent frames (1 or 9 input frames, half each) are given as the clean latent seen at sigma 0.001 and scaled
  by ``c_in(0.001)``, flagged by the condition-mask channel, and left out of the loss. Classifier-free
  guidance: the caption embedding is replaced by the default negative prompt's in 10% of the samples and by
  the empty prompt's in 5%. Noise levels: log-normal (mean -0.5, std 1.4) for 80% of the samples,
  log-uniform over the sampler's whole range [0.0002, 80] for the rest. Linear warm-up then cosine decay,
  gradient clipping at 1, bf16 autocast, ``torch.compile``; the EMA of the weights (0.999) is what ships.

Determinism: every random draw comes from generators seeded by ``--seed`` (data order, noise, dropout,
initialisation) and the data are pure functions of their seeds, so a CPU run repeats bit for bit. On a GPU,
cuDNN picks its convolution algorithms by timing them (``cudnn.benchmark``) and those algorithms and the attention
kernels' backward passes accumulate in an order that can change from run to run, so two GPU runs agree only to
rounding at first and drift apart slowly; ``--deterministic`` turns the timing off and asks PyTorch for
deterministic kernels where it has them, at some cost in speed.

Each phase fits one 10-minute call on the GPU machine: phase 1 writes its files into ``DIR``, phase 2 reads them
from there. ``--tok-steps 0`` / ``--dit-steps 0`` size a training loop to ``--train-minutes`` by timing a few
steps first (the count is printed and kept in the summary; pass it to repeat the run): the bundled run used
``--tok-steps 0 --train-minutes 2.8`` and ``--dit-clips 24576 --dit-steps 0 --train-minutes 3.2``, which gave
the step counts that are now the defaults.
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime
import json
import math
import os
import re
import sys
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # tools/ is not an installed package
    sys.path.insert(0, str(REPO))

from cosmos_cli.specs import NETWORK, TEXT_ENCODER, TOKENIZER  # noqa: E402
from cosmos_plugins.predict1 import sampler as S  # noqa: E402
from cosmos_plugins.predict1.fixtures import DEFAULT_WORDS  # noqa: E402
from cosmos_plugins.predict1.network import PosTables, VideoExtendGeneralDIT  # noqa: E402
from cosmos_plugins.predict1.specs import DEFAULT_NEGATIVE_PROMPT, PREDICT1_DEMO  # noqa: E402
from tools.demo.scenes import (  # noqa: E402
    BACKGROUNDS,
    FPS,
    NUM_FRAMES,
    SIZE,
    TRAIN_SEEDS,
    make_dataset,
    render_background,
    sample_params,
)

DEFAULT_OUT = REPO / "assets" / "demo"
DEFAULT_LOG_DIR = REPO / "benchmarks" / "results" / "demo_train"
SPEC = PREDICT1_DEMO


@dataclass(frozen=True)
class Recipe:
    seed: int = 0
    # Phase 1: the tokenizer.
    tok_clips: int = 6144  # training clips, seeds 0..tok_clips-1
    tok_steps: int = 2100
    tok_batch: int = 16
    tok_lr: float = 1e-3
    tok_warmup: int = 200
    tok_latent_noise: float = 0.02  # std of the noise added to the latent before decoding, relative to its std
    tok_object_weight: float = 20.0  # extra loss weight of object pixels (about 3% of a frame)
    stats_clips: int = 2048  # clips whose latents give mean_std.pt (seeds after the training clips)
    # Phase 2: the diffusion network.
    dit_clips: int = 24576  # seeds 0..dit_clips-1
    val_clips: int = 256  # validation loss on the next seeds
    dit_steps: int = 3000
    dit_batch: int = 256
    dit_lr: float = 5e-4
    dit_warmup: int = 200
    ema: float = 0.999
    p_mean: float = -0.5
    p_std: float = 1.4
    uniform_share: float = 0.2  # samples whose sigma is log-uniform over [SIGMA_MIN, SIGMA_MAX]
    drop_negative: float = 0.10  # caption -> negative prompt (the sampler's unconditional branch)
    drop_empty: float = 0.05  # caption -> empty prompt
    nine_frame_share: float = 0.5  # samples conditioned on 9 input frames (2 latent frames); the rest on 1
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    log_every: int = 50
    val_every: int = 500


RECIPE = Recipe()
SMOKE = replace(RECIPE, tok_clips=24, tok_steps=3, tok_batch=2, tok_warmup=1, stats_clips=8, dit_clips=48,
                val_clips=8, dit_steps=3, dit_batch=4, dit_warmup=1, log_every=1, val_every=2)
VAL_SIGMAS = (0.02, 0.2, 1.0, 5.0, 20.0)
OBJECT_THRESHOLD = 24  # uint8 levels: a pixel this far from the empty background is (part of) the object  # fixed noise levels of the network's validation loss


# ----------------------------------------------------------------------------------------------------------
# Shared helpers


def checkpoint_layout(out: Path) -> tuple[Path, Path, Path]:
    """(model.pt, tokenizer folder, T5 folder) of the demo spec under ``out``."""
    net = out / SPEC.files_of(NETWORK)[0].local
    tok = (out / SPEC.files_of(TOKENIZER)[0].local).parent
    t5 = (out / SPEC.files_of(TEXT_ENCODER)[0].local).parent
    return net, tok, t5


def caption_words() -> list[str]:
    """The words of every caption the scenes can produce (and the fixtures' words), sorted."""
    words = set(DEFAULT_WORDS)
    for seed in range(20_000):  # every template, colour, adverb and background phrase appears many times
        words.update(re.findall(r"[a-z]+", sample_params(seed).caption.lower()))
    return sorted(words)


def pixels(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) -> (B, 3, T, H, W) float32 ``x / 128 - 1``, the Predict1 specs' normalisation
    (``ModelSpec.input_normalisation``, applied by :func:`cosmos_cli.media.frames_to_tensor`; the original's)."""
    return frames.permute(0, 4, 1, 2, 3).float() / 128.0 - 1.0


def to_uint8(video: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) in [-1, 1] -> (B, T, H, W, 3) uint8, as the pipeline's fp32 conversion."""
    return ((video.float() + 1.0) / 2).clamp(0, 1).permute(0, 2, 3, 4, 1).mul(255).round().to(torch.uint8)


def psnr_u8(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.float() - b.float()).square().mean().item()
    return 100.0 if mse == 0 else 10 * math.log10(255.0**2 / mse)


def lr_at(step: int, steps: int, base: float, warmup: int, min_ratio: float) -> float:
    """Linear warm-up, then a cosine decay to ``min_ratio * base`` at the last step."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def render(first_seed: int, n: int, workers: int) -> tuple[np.ndarray, list[str], list[int]]:
    """Clips ``first_seed ..``: frames (N, T, H, W, 3) uint8, captions, and the index of each one's background
    in :data:`BACKGROUNDS`."""
    frames, captions, params = make_dataset(n, seed=first_seed, workers=workers, frames=NUM_FRAMES, size=SIZE)
    return frames, captions, [BACKGROUNDS.index(p.background) for p in params]


def object_mask(frames: torch.Tensor, backgrounds: torch.Tensor) -> torch.Tensor:
    """Where the object is: (B, T, H, W, 3) uint8 frames and their (B, H, W, 3) uint8 empty backgrounds ->
    (B, 1, T, H, W) bool, pixels more than :data:`OBJECT_THRESHOLD` away from the background in a channel."""
    diff = (frames.to(torch.int16) - backgrounds[:, None].to(torch.int16)).abs().amax(-1)
    return (diff > OBJECT_THRESHOLD)[:, None]


class CsvLog:
    def __init__(self, path: Path, fields: list[str]):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = path.open("w", newline="")
        self.writer = csv.DictWriter(self.file, fields)
        self.writer.writeheader()

    def row(self, **values) -> None:
        self.writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in values.items()})
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def log(msg: str) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S}] {msg}", flush=True)


def calibrate(step_fn, budget_s: float, multiple: int = 100, probe: int = 20, warm: int = 5) -> int:
    """How many calls of ``step_fn(i)`` fit in ``budget_s``, from timing ``probe`` calls after ``warm``."""
    for i in range(warm):
        step_fn(i)
    _sync()
    t0 = time.perf_counter()
    for i in range(probe):
        step_fn(warm + i)
    _sync()
    per_step = (time.perf_counter() - t0) / probe
    steps = max(multiple, int(budget_s / per_step) // multiple * multiple)
    log(f"calibration: {per_step * 1000:.1f} ms per step -> {steps} steps for {budget_s:.0f} s")
    return steps


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


# ----------------------------------------------------------------------------------------------------------
# Phase 1: text encoder and tokenizer


def write_text_encoder(folder: Path, seed: int) -> None:
    """The T5 folder: random weights from ``seed``, stored in bf16, with the caption-word tokenizer."""
    from cosmos_plugins.predict1.text_encoder import write_t5_checkpoint

    write_t5_checkpoint(folder, SPEC.text_encoder, caption_words(), seed=seed)
    weights = folder / "pytorch_model.bin"
    state = torch.load(weights, map_location="cpu", weights_only=True)
    vocab = state["shared.weight"].shape[0]
    if vocab != SPEC.text_encoder.vocab_size:
        raise RuntimeError(f"the caption tokenizer has {vocab} entries; PREDICT1_DEMO says "
                           f"{SPEC.text_encoder.vocab_size}: update T5_DEMO.vocab_size")
    torch.save({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()}, weights)


def write_tokenizer(folder: Path, tok, mean: torch.Tensor, std: torch.Tensor) -> None:
    """``encoder.jit``/``decoder.jit`` (TorchScript traces laid out as the released files, weights in bf16, the
    Haar constants in fp32) and ``mean_std.pt`` (flat channel-major mean and std, C x L values)."""
    from cosmos_plugins.predict1.tokenizer import DECODER_FILE, ENCODER_FILE, MEAN_STD_FILE, trace_shape
    from cosmos_plugins.predict1.tokenizer.fixtures import _DecoderJit, _EncoderJit
    from cosmos_plugins.predict1.tokenizer.modules import _HaarBase

    folder.mkdir(parents=True, exist_ok=True)
    tok = copy.deepcopy(tok).cpu().to(torch.bfloat16).eval()
    for m in tok.modules():
        if isinstance(m, _HaarBase):
            m.wavelets = m.wavelets.float()  # exact taps; the modules cast them to the compute dtype
    x = (torch.rand(trace_shape(tok.params), generator=torch.Generator().manual_seed(0)) * 2 - 1).to(torch.bfloat16)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        enc = torch.jit.trace(_EncoderJit(tok.encoder), x, check_trace=False)
        dec = torch.jit.trace(_DecoderJit(tok.decoder), tok.encoder(x), check_trace=False)
    torch.jit.save(enc, str(folder / ENCODER_FILE))
    torch.jit.save(dec, str(folder / DECODER_FILE))
    torch.save((mean.float().flatten().contiguous(), std.float().flatten().contiguous()), folder / MEAN_STD_FILE)


def train_tokenizer(out: Path, r: Recipe, device: torch.device, log_dir: Path, workers: int,
                    minutes: float, time_cap: float | None = None) -> dict:
    from cosmos_plugins.predict1.tokenizer import VideoTokenizer

    t_start = time.perf_counter()
    _, tok_dir, t5_dir = checkpoint_layout(out)
    write_text_encoder(t5_dir, r.seed)
    log(f"wrote the text encoder to {t5_dir}")

    frames, _, bg = render(TRAIN_SEEDS.start, r.tok_clips, workers)
    data = torch.from_numpy(np.ascontiguousarray(frames)).to(device)  # (N, T, H, W, 3) uint8
    del frames
    backgrounds = torch.stack([torch.from_numpy(render_background(b, SIZE)) for b in BACKGROUNDS]).to(device)
    bg = torch.tensor(bg, device=device)
    held, _, _ = render(TRAIN_SEEDS.start + r.tok_clips, r.stats_clips, workers)  # latent statistics, validation
    held = torch.from_numpy(np.ascontiguousarray(held))
    val = held[:16].to(device)
    log(f"rendered {r.tok_clips} + {r.stats_clips} clips in {time.perf_counter() - t_start:.0f} s")

    torch.manual_seed(r.seed)
    tok = VideoTokenizer(SPEC.tokenizer).to(device)
    init_state = copy.deepcopy(tok.state_dict())
    opt = torch.optim.AdamW(tok.parameters(), lr=r.tok_lr, betas=(0.9, 0.99), weight_decay=0.0)
    gen = torch.Generator().manual_seed(r.seed + 1)
    noise_gen = torch.Generator(device).manual_seed(r.seed + 2)
    steps = r.tok_steps

    def step(i: int) -> torch.Tensor:
        for group in opt.param_groups:
            group["lr"] = lr_at(i, steps, r.tok_lr, r.tok_warmup, r.min_lr_ratio)
        idx = torch.randint(len(data), (r.tok_batch,), generator=gen).to(device)
        clips = data[idx]
        x = pixels(clips)
        weight = 1 + r.tok_object_weight * object_mask(clips, backgrounds[bg[idx]]).float()
        with autocast(device):
            z = tok.encoder(x)
            noise = torch.randn(z.shape, generator=noise_gen, device=device)
            z = z + r.tok_latent_noise * z.detach().float().std() * noise
            y = tok.decoder(z).float()
        err = y - x
        l1, mse = err.abs().mean(), err.square().mean()
        loss = ((err.abs() + err.square()) * weight).mean() / weight.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tok.parameters(), r.grad_clip)
        opt.step()
        return torch.stack([loss.detach(), l1.detach(), mse.detach()])

    if steps == 0:  # size the phase to the time left, then start again from the same state
        steps = 10**9
        steps = calibrate(step, budget_s=minutes * 60)
        tok.load_state_dict(init_state)
        opt = torch.optim.AdamW(tok.parameters(), lr=r.tok_lr, betas=(0.9, 0.99), weight_decay=0.0)
        gen.manual_seed(r.seed + 1)
        noise_gen.manual_seed(r.seed + 2)

    planned = steps
    curve = CsvLog(log_dir / "tokenizer_loss.csv", ["step", "loss", "l1", "psnr_train", "lr", "seconds"])
    # loss: the object-weighted L1 + MSE that is optimised; l1 and psnr_train: unweighted, over whole frames
    val_log = CsvLog(log_dir / "tokenizer_val.csv", ["step", "psnr_val"])
    t0 = time.perf_counter()
    acc = torch.zeros(3, device=device)
    tok.train()
    for i in range(steps):
        acc += step(i)
        if time_cap and time.perf_counter() - t0 > time_cap * 60 and i + 1 < steps:
            log(f"time cap: stopping the tokenizer at step {i + 1} of {steps}")
            steps = i + 1
        if (i + 1) % r.log_every == 0 or i + 1 == steps:
            loss, l1, mse = (acc / ((i % r.log_every) + 1)).tolist()
            acc.zero_()
            curve.row(step=i + 1, loss=loss, l1=l1, psnr_train=10 * math.log10(4 / max(mse, 1e-12)),
                      lr=opt.param_groups[0]["lr"], seconds=time.perf_counter() - t0)
        if (i + 1) % r.val_every == 0 or i + 1 == steps:
            val_psnr = _tokenizer_psnr(tok, val, device)
            val_log.row(step=i + 1, psnr_val=val_psnr)
            log(f"tokenizer step {i + 1}/{steps}: loss {loss:.4f}, validation PSNR {val_psnr:.2f} dB")
        if i + 1 == steps:
            break
    curve.close()
    val_log.close()
    train_s = time.perf_counter() - t0
    data = None  # free the GPU copy before the statistics

    tok.eval()
    mean, std = _latent_stats(tok, held, device)
    write_tokenizer(tok_dir, tok, mean, std)
    final_psnr = _tokenizer_psnr(tok, val, device)
    log(f"wrote the tokenizer to {tok_dir} (validation PSNR {final_psnr:.2f} dB)")
    return {"tok_steps": steps, "stopped_by_time_cap": steps != planned, "tok_train_seconds": round(train_s, 1), "tok_val_psnr_db": round(final_psnr, 2),
            "phase_seconds": round(time.perf_counter() - t_start, 1)}


@torch.no_grad()
def _tokenizer_psnr(tok, clips: torch.Tensor, device: torch.device) -> float:
    """Round trip of uint8 clips through encoder and decoder (fp32), PSNR in dB of the uint8 result."""
    was_training = tok.training
    tok.eval()
    outs = [to_uint8(tok.decoder(tok.encoder(pixels(clips[i:i + 8].to(device))))) for i in range(0, len(clips), 8)]
    tok.train(was_training)
    return psnr_u8(torch.cat(outs).cpu(), clips.cpu())


@torch.no_grad()
def _latent_stats(tok, clips: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel and latent frame mean and std of the raw latents of ``clips``: two (C, L) tensors."""
    total = total_sq = None
    for i in range(0, len(clips), 16):
        z = tok.encoder(pixels(clips[i:i + 16].to(device))).double()  # (B, C, L, h, w)
        s, sq = z.sum((0, 3, 4)), z.square().sum((0, 3, 4))
        total, total_sq = (s, sq) if total is None else (total + s, total_sq + sq)
    count = len(clips) * z.shape[3] * z.shape[4]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(1e-12).sqrt().clamp_min(1e-3)
    return mean.float().cpu(), std.float().cpu()


# ----------------------------------------------------------------------------------------------------------
# Phase 2: the diffusion network


@torch.no_grad()
def encode_clips(tok, first_seed: int, n: int, workers: int, device: torch.device, chunk: int = 4096
                 ) -> tuple[torch.Tensor, list[str]]:
    """Latents (N, 16, T', h, w) fp32 on ``device`` (normalized, times sigma_data: what the sampler sees) and
    captions of the clips with seeds ``first_seed ..``."""
    latents, captions = None, []
    for start in range(0, n, chunk):
        count = min(chunk, n - start)
        frames, caps, _ = render(first_seed + start, count, workers)
        captions += caps
        frames = torch.from_numpy(np.ascontiguousarray(frames))
        for i in range(0, count, 64):
            with autocast(device):
                z = tok.encode(pixels(frames[i:i + 64].to(device))).float() * S.SIGMA_DATA
            if latents is None:
                latents = torch.empty((n, *z.shape[1:]), device=device)
            latents[start + i:start + i + len(z)] = z
    return latents, captions


@torch.no_grad()
def text_table(t5_dir: Path, captions: list[str], device: torch.device) -> tuple[torch.Tensor, list[int]]:
    """Embeddings (U + 2, M, D) of the unique captions, then the negative prompt, then the empty prompt, and the
    row of each caption."""
    from cosmos_plugins.predict1.text_encoder import T5TextEncoder

    encoder = T5TextEncoder.load(t5_dir, device=device, dtype=torch.float32, max_length=SPEC.text_encoder.max_length)
    unique = sorted(set(captions))
    row = {c: i for i, c in enumerate(unique)}
    table = torch.cat([encoder.encode([c]) for c in [*unique, DEFAULT_NEGATIVE_PROMPT, ""]])
    return table.float(), [row[c] for c in captions]


def build_network(seed: int, device: torch.device) -> VideoExtendGeneralDIT:
    """The network with PyTorch's default initialisation, random position embeddings, and the AdaLN
    modulations and the output layer at zero (so each block starts as the identity and F as 0)."""
    torch.manual_seed(seed)
    net = VideoExtendGeneralDIT(SPEC.network, rope_mode="fp32")
    with torch.no_grad():
        for name in ("pos_emb_t", "pos_emb_h", "pos_emb_w"):
            getattr(net.extra_pos_embedder, name).normal_()
        net.final_layer.linear.weight.zero_()
        net.t_embedder[1].linear_2.weight.zero_()
        for m in net.modules():
            if hasattr(m, "adaLN_modulation"):
                m.adaLN_modulation[2].weight.zero_()
    net.init_buffers()
    return net.to(device)


def _compiled(forward, params, inputs: tuple, device: torch.device):
    """``torch.compile(forward)``, compiled now on one forward and backward pass over ``inputs`` (no update);
    ``forward`` itself if that fails."""
    try:
        fwd = torch.compile(forward)
        t0 = time.perf_counter()
        with autocast(device):
            out = fwd(*inputs)
        out.float().square().mean().backward()
        for p in params:
            p.grad = None
        _sync()
        log(f"compiled the network in {time.perf_counter() - t0:.0f} s")
        return fwd
    except Exception as exc:  # noqa: BLE001 - any compiler failure: train eagerly instead
        log(f"torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "running eagerly")
        for p in params:
            p.grad = None
        return forward


class DiTBatch:
    """Draws training inputs exactly as the sampler presents them to the network."""

    def __init__(self, r: Recipe, latents: torch.Tensor, text: torch.Tensor, rows: list[int], device, seed: int):
        self.r, self.latents, self.text, self.device = r, latents, text, device
        self.rows = torch.tensor(rows, device=device)
        self.negative, self.empty = len(text) - 2, len(text) - 1
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        self.gen = torch.Generator(self.device).manual_seed(self.seed)

    def _rand(self, *shape) -> torch.Tensor:
        return torch.rand(shape, generator=self.gen, device=self.device)

    def draw(self, batch: int):
        r, g = self.r, self.gen
        idx = torch.randint(len(self.latents), (batch,), generator=g, device=self.device)
        x0 = self.latents[idx]  # (B, C, T, H, W)
        B, _, T, H, W = x0.shape
        # Noise levels: log-normal, with a share log-uniform over the sampler's whole range.
        lognormal = (r.p_mean + r.p_std * torch.randn(B, generator=g, device=self.device)).exp()
        uniform = (math.log(S.SIGMA_MIN) + self._rand(B) * math.log(S.SIGMA_MAX / S.SIGMA_MIN)).exp()
        sigma = torch.where(self._rand(B) < r.uniform_share, uniform, lognormal).clamp(S.SIGMA_MIN, S.SIGMA_MAX)
        # Condition frames: 1 latent frame (1 input frame) or 2 (9 input frames).
        n_cond = torch.where(self._rand(B) < r.nine_frame_share, 2, 1)
        cond = (torch.arange(T, device=self.device)[None] < n_cond[:, None]).float()[:, None, :, None, None]
        # Text: the caption, or the negative / empty prompt (the unconditional branch of guidance).
        u = self._rand(B)
        rows = torch.where(u < r.drop_negative, self.negative,
                           torch.where(u < r.drop_negative + r.drop_empty, self.empty, self.rows[idx]))
        return x0, sigma, cond, self.text[rows], self.noisy_input(x0, sigma, cond)

    def noisy_input(self, x0, sigma, cond, gen=None):
        g = self.gen if gen is None else gen
        eps = torch.randn(x0.shape, generator=g, device=self.device)
        eps_aug = torch.randn(x0.shape, generator=g, device=self.device)
        s = sigma.view(-1, 1, 1, 1, 1)
        x = x0 + s * eps  # the noisy latent
        given = (x0 + S.AUGMENT_SIGMA * eps_aug) * S.c_in(S.AUGMENT_SIGMA)  # the sampler's "augmented" latent
        return x, cond * given + (1 - cond) * x * S.c_in(s)


def dit_loss(F_out: torch.Tensor, x0, x, sigma, cond) -> torch.Tensor:
    """EDM loss on the generated region: ||F - (x0 - c_skip x) / c_out||^2, mean over its elements."""
    s = sigma.view(-1, 1, 1, 1, 1)
    target = (x0 - S.c_skip(s) * x) / S.c_out(s)
    weight = (1 - cond).expand_as(x0)
    return ((F_out.float() - target).square() * weight).sum() / weight.sum()


def write_network(path: Path, net: VideoExtendGeneralDIT, params: list[torch.Tensor]) -> None:
    """``model.pt`` as released: ``net.``-prefixed keys (and the ``net.pos_embedder.seq`` buffer), here in bf16."""
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [n for n, _ in net.named_parameters()]
    state = {f"net.{n}": p.detach().to("cpu", torch.bfloat16).contiguous() for n, p in zip(names, params, strict=True)}
    state["net.pos_embedder.seq"] = torch.arange(max(SPEC.network.pos_lens), dtype=torch.float32)
    torch.save(state, path)


def train_dit(out: Path, r: Recipe, device: torch.device, log_dir: Path, workers: int, minutes: float,
              compile_net: bool, time_cap: float | None = None) -> dict:
    from cosmos_plugins.predict1.tokenizer import load_tokenizer

    t_start = time.perf_counter()
    net_file, tok_dir, t5_dir = checkpoint_layout(out)
    tok = load_tokenizer(tok_dir, SPEC.tokenizer, device=device, dtype=torch.float32)
    latents, captions = encode_clips(tok, TRAIN_SEEDS.start, r.dit_clips, workers, device)
    val_latents, val_captions = encode_clips(tok, TRAIN_SEEDS.start + r.dit_clips, r.val_clips, workers, device)
    del tok
    text, rows = text_table(t5_dir, captions + val_captions, device)
    rows, val_rows = rows[:len(captions)], torch.tensor(rows[len(captions):], device=device)
    log(f"encoded {r.dit_clips} + {r.val_clips} clips, {len(text) - 2} captions, in "
        f"{time.perf_counter() - t_start:.0f} s; latent std {latents.std().item():.3f}")

    net = build_network(r.seed, device)
    init_state = copy.deepcopy(net.state_dict())
    T, H, W = latents.shape[2:]
    rope = net.prepare(T, H, W, float(FPS), device=device, dtype=torch.float32)  # RoPE: fixed; position
    grid = net._grid(T, H, W)  # embedding: learned, so computed in every forward

    def forward(x, t, emb, mask):
        tables = PosTables(rope.shape, rope.fps, rope.rope_cos, rope.rope_sin, net.extra_pos_embedder(*grid))
        return net(x, t, emb, None, mask, tables=tables)

    params = list(net.parameters())
    if compile_net:  # compiled on inputs drawn like the training batches (same shapes and strides)
        x0, sigma, cond, emb, (_, x_in) = DiTBatch(r, latents, text, rows, device, seed=r.seed + 99).draw(r.dit_batch)
        fwd = _compiled(forward, params, (x_in, S.c_noise(sigma), emb, cond.expand(-1, 1, *x0.shape[2:])), device)
    else:
        fwd = forward

    def fresh_optimizer():
        return torch.optim.AdamW(params, lr=r.dit_lr, betas=(0.9, 0.99), weight_decay=0.0)

    opt = fresh_optimizer()
    batch = DiTBatch(r, latents, text, rows, device, seed=r.seed + 3)
    steps = r.dit_steps

    def step(i: int) -> torch.Tensor:
        for group in opt.param_groups:
            group["lr"] = lr_at(i, steps, r.dit_lr, r.dit_warmup, r.min_lr_ratio)
        x0, sigma, cond, emb, (x, x_in) = batch.draw(r.dit_batch)
        with autocast(device):
            out_ = fwd(x_in, S.c_noise(sigma), emb, cond.expand(-1, 1, *x0.shape[2:]))
        loss = dit_loss(out_, x0, x, sigma, cond)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, r.grad_clip)
        opt.step()
        return torch.stack([loss.detach(), norm.detach()])

    if steps == 0:
        steps = 10**9
        steps = calibrate(step, budget_s=minutes * 60)
        net.load_state_dict(init_state)
        opt = fresh_optimizer()
        batch.reset()

    planned = steps
    ema = [p.detach().clone() for p in params]
    curve = CsvLog(log_dir / "dit_loss.csv", ["step", "loss", "grad_norm", "lr", "seconds"])
    val_log = CsvLog(log_dir / "dit_val.csv", ["step", *[f"loss_sigma_{s:g}" for s in VAL_SIGMAS], "loss_mean"])
    t0 = time.perf_counter()
    acc = torch.zeros(2, device=device)
    net.train()
    for i in range(steps):
        acc += step(i)
        if time_cap and time.perf_counter() - t0 > time_cap * 60 and i + 1 < steps:
            log(f"time cap: stopping the network at step {i + 1} of {steps}")
            steps = i + 1
        decay = min(r.ema, (1 + i) / (10 + i))
        torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        if (i + 1) % r.log_every == 0 or i + 1 == steps:
            loss, norm = (acc / ((i % r.log_every) + 1)).tolist()
            acc.zero_()
            curve.row(step=i + 1, loss=loss, grad_norm=norm, lr=opt.param_groups[0]["lr"],
                      seconds=time.perf_counter() - t0)
        if (i + 1) % r.val_every == 0 or i + 1 == steps:
            losses = _val_losses(forward, net, ema, val_latents, text[val_rows], r.dit_batch, device, r.seed)
            val_log.row(step=i + 1, **{f"loss_sigma_{s:g}": v for s, v in zip(VAL_SIGMAS, losses, strict=True)},
                        loss_mean=float(np.mean(losses)))
            log(f"network step {i + 1}/{steps}: train loss {loss:.4f}, EMA validation loss "
                + " ".join(f"{s:g}:{v:.4f}" for s, v in zip(VAL_SIGMAS, losses, strict=True)))
        if i + 1 == steps:
            break
    curve.close()
    val_log.close()
    train_s = time.perf_counter() - t0
    write_network(net_file, net, ema)
    log(f"wrote the network (EMA weights, bf16) to {net_file}")
    return {"dit_steps": steps, "stopped_by_time_cap": steps != planned, "dit_train_seconds": round(train_s, 1),
            "dit_seconds_per_step": round(train_s / steps, 4), "phase_seconds": round(time.perf_counter() - t_start, 1)}


@torch.no_grad()
def _val_losses(forward, net, ema, latents, text, batch, device, seed) -> list[float]:
    """Loss of the EMA weights on the validation latents (1 condition frame, their captions ``text``) at each
    of :data:`VAL_SIGMAS`, with fixed noise. Runs eagerly: a compiled graph would be built again for it."""
    live = [p.detach().clone() for p in net.parameters()]
    for p, e in zip(net.parameters(), ema, strict=True):
        p.data.copy_(e)
    gen = torch.Generator(device).manual_seed(seed + 4)
    losses = []
    for s in VAL_SIGMAS:
        total = 0.0
        for i in range(0, len(latents), batch):
            x0, emb = latents[i:i + batch], text[i:i + batch]
            B, _, T, H, W = x0.shape
            sigma = torch.full((B,), s, device=device)
            cond = (torch.arange(T, device=device) < 1).float().view(1, 1, T, 1, 1).expand(B, 1, T, 1, 1)
            eps = torch.randn(x0.shape, generator=gen, device=device)
            x = x0 + s * eps
            given = x0 * S.c_in(S.AUGMENT_SIGMA)
            x_in = cond * given + (1 - cond) * x * S.c_in(s)
            with autocast(device):
                out = forward(x_in, S.c_noise(sigma), emb, cond.expand(B, 1, T, H, W))
            total += dit_loss(out, x0, x, sigma, cond).item() * B
        losses.append(total / len(latents))
    for p, v in zip(net.parameters(), live, strict=True):
        p.data.copy_(v)
    return losses


# ----------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("phase", choices=["tokenizer", "dit", "all"])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="checkpoint folder to write (default assets/demo)")
    ap.add_argument("--log-dir", type=Path, default=DEFAULT_LOG_DIR, help="loss curves and summary")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=RECIPE.seed)
    ap.add_argument("--tok-steps", type=int, default=None, help="0: as many as fit in --train-minutes")
    ap.add_argument("--dit-steps", type=int, default=None, help="0: as many as fit in --train-minutes")
    ap.add_argument("--dit-clips", type=int, default=None)
    ap.add_argument("--train-minutes", type=float, default=3.0,
                    help="with --tok-steps 0 / --dit-steps 0: size that training loop to this many minutes")
    ap.add_argument("--time-cap", type=float, default=None,
                    help="stop a training loop after this many minutes (a safety net: the run is then not the recipe)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes that render clips")
    ap.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                    help="torch.compile the network (auto: on CUDA only)")
    ap.add_argument("--deterministic", action="store_true", help="deterministic kernels where PyTorch has them")
    ap.add_argument("--smoke", action="store_true", help="tiny counts, to check the script end to end")
    args = ap.parse_args(argv)

    r = replace(SMOKE if args.smoke else RECIPE, seed=args.seed)
    for field, value in (("tok_steps", args.tok_steps), ("dit_steps", args.dit_steps), ("dit_clips", args.dit_clips)):
        if value is not None:
            r = replace(r, **{field: value})
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:  # let cuDNN time its convolution algorithms (the tokenizer's): faster, and one more source of jitter
        torch.backends.cudnn.benchmark = True
    args.out.mkdir(parents=True, exist_ok=True)
    args.log_dir.mkdir(parents=True, exist_ok=True)

    summary_path = args.log_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary.update({"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "torch": torch.__version__, "smoke": args.smoke})
    if args.phase in ("tokenizer", "all"):
        summary["tokenizer"] = {"recipe": asdict(r)}
        summary["tokenizer"] |= train_tokenizer(args.out, r, device, args.log_dir, args.workers, args.train_minutes,
                                             args.time_cap)
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    if args.phase in ("dit", "all"):
        compile_net = args.compile == "on" or (args.compile == "auto" and device.type == "cuda")
        summary["dit"] = {"recipe": asdict(r)}
        summary["dit"] |= train_dit(args.out, r, device, args.log_dir, args.workers, args.train_minutes, compile_net,
                                   args.time_cap)
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    log("done: " + json.dumps({k: ({kk: vv for kk, vv in v.items() if kk != "recipe"} if isinstance(v, dict) else v)
                               for k, v in summary.items()}))


if __name__ == "__main__":
    main()
