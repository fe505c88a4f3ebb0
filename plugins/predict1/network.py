"""The Cosmos-Predict1 Video2World diffusion transformer (``VideoExtendGeneralDIT``), in plain PyTorch.

One forward pass maps a c_in-scaled noisy latent to the raw EDM network output F:

    x [B,16,T,H,W] ++ condition mask ++ padding mask  ->  patch embed  ->  N x (self-attn, cross-attn, MLP)
    with AdaLN-LoRA modulation from the noise level  ->  final layer  ->  F [B,16,T,H,W]

Module attribute names mirror the keys of the released ``model.pt`` (minus their ``net.`` prefix), so the
file loads with no renaming table (see :mod:`cosmos_plugins.predict1.checkpoint`).

Numerics. The network runs in the dtype of its weights (bf16 for the released models). A few parts keep
the original's precision on purpose: the timestep sinusoid is computed in fp32, RMSNorm and RoPE compute
in fp32 and round once, and the learnable position embedding's norm is taken in fp32.
The RoPE angle table has two modes, chosen with the constructor's ``rope_mode``:

- ``"compat"`` (default) reproduces the released inference code, where the table's buffers had been cast to
  bf16 with the rest of the module. Every step (the frequency ranges, ``theta ** range`` with theta itself
  rounded to bf16, the reciprocal, the outer products and ``t / fps * 24``, fps rounded to bf16 too) is rounded
  to bf16, and only the finished angles are upcast. At full size that moves angles by up to about 0.15 rad (7B)
  / 0.28 rad (14B) from the exact values.
- ``"fp32"`` computes the table in fp32, as diffusers and the original's training code do.

The RoPE table and the learnable position embedding depend only on (T, H, W, fps) and the weights, so
:meth:`VideoExtendGeneralDIT.prepare` computes them once per generation and ``forward(..., tables=...)``
reuses them for every denoising step.

``blocks`` is iterated in order in a plain loop, and each block takes everything it needs as arguments, so a
memory engine can move the blocks on and off the GPU one at a time. How the blocks and the final layer are
computed is a :class:`BlockRunner` (``forward(..., runner=...)``: :class:`PlainBlocks` by default, the
memory-lean ``offload.LeanBlocks``), and which blocks run a ``cache(x, run_blocks)`` hook (the step cache): the
embedders before and the unpatchify after exist once, here.

Sequence parallelism (several processes computing one forward) enters through one argument,
``forward(..., shard=...)`` (a :class:`TokenShard`): the blocks then run on a contiguous range of tokens with a
distributed self-attention, and the output is gathered before the unpatchify. The network holds no
distributed state, so it can be moved, streamed or rebuilt freely between calls.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .params import DiTParams, dit_block_params, dit_params

ROPE_MODES = ("compat", "fp32")


def block_num_params(p: DiTParams) -> int:
    """Parameters of one transformer block: 255,853,056 for 7B, 393,216,512 for 14B."""
    return dit_block_params(p)


def num_params(p: DiTParams) -> int:
    """Parameters of the network: 7,236,208,640 for 7B, 14,267,169,792 for 14B.

    These are the ``nn.Parameter`` tensors, i.e. the checkpoint's ``net.*`` keys less the ``net.pos_embedder.seq``
    buffer (128 values); the file's ``logvar.*`` head (384 values) is not part of the network either.
    """
    return dit_params(p)


# ----------------------------------------------------------------------------------------------------------
# Building blocks


class RMSNorm(nn.Module):
    """RMSNorm over the last dim with a gain, computed in fp32 and rounded once (as TransformerEngine does)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        rstd = torch.rsqrt(xf.square().mean(-1, keepdim=True) + self.eps)
        return (xf * rstd).mul_(self.weight.float()).to(x.dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate-half RoPE, computed in fp32 and rounded once: x (B, S, H, hd), cos/sin (S, 1, hd/2) fp32.

    The angle table repeats its first half (the original's ``cat([t, h, w] * 2)``), so both halves of x turn by
    the same angles: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin).
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    out = torch.empty_like(x)
    out[..., :half] = x1 * cos - x2 * sin
    out[..., half:] = x2 * cos + x1 * sin
    return out


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(hd)) v on (B, H, S, hd), through PyTorch's SDPA dispatch.

    On Hopper with PyTorch >= 2.11 the dispatcher already picks the cuDNN kernel (1.8x the flash kernel at
    56,320 tokens; see benchmarks/results). We do not force a backend order: ``sdpa_kernel(...,
    set_priority=True)`` changes the process-wide priority for everything that runs afterwards (measured: it made
    diffusers' forward 1.4x slower when run after ours in the same process).
    """
    return F.scaled_dot_product_attention(q, k, v)


# attention(q, k, v) on (B, H, S, hd) -> (B, H, S, hd); a distributed self-attention has the same signature.
AttentionFn = Callable[[Tensor, Tensor, Tensor], Tensor]


# cache(x, run_blocks) -> x after every block, where run_blocks(x, start, stop) runs blocks start..stop-1.
BlockCache = Callable[[Tensor, Callable[[Tensor, int, int], Tensor]], Tensor]


@dataclass(frozen=True)
class BlockInputs:
    """What every block of one forward takes besides x: emb (B, D), adaln_lora_3d (B, 3D), crossattn_emb
    (B, M, C), rope 2 x (S, 1, hd/2), extra_pos (1, S, D) (S: this process's tokens), and the distributed
    self-attention of a token shard (None: the local attention)."""

    emb: Tensor
    adaln_lora_3d: Tensor
    crossattn_emb: Tensor
    rope: tuple[Tensor, Tensor]
    extra_pos: Tensor
    self_attention: AttentionFn | None = None


class BlockRunner(Protocol):
    """How a forward computes its transformer blocks and final layer (``forward(..., runner=...)``): the
    network's prologue (embedders) and epilogue (gather, unpatchify) stay in :meth:`VideoExtendGeneralDIT.forward`.
    :class:`PlainBlocks` calls each block; the memory-lean runner (``offload.LeanBlocks``) chunks the tokens."""

    def run(self, blocks: Sequence[nn.Module], x: Tensor, start: int, stop: int, inputs: BlockInputs) -> Tensor:
        """x (B, S, D) after blocks ``start .. stop - 1``."""
        ...

    def final(self, layer: nn.Module, x: Tensor, inputs: BlockInputs) -> Tensor:
        """The final layer: (B, S, D) -> (B, S, pt*ps*ps*C)."""
        ...


class PlainBlocks:
    """Every block called as a module, in order (its hooks fire: the memory engine streams through them).

    ``attention`` is the self-attention kernel of the blocks (same signature as :func:`attention`; None: that
    one, PyTorch's SDPA), e.g. :func:`~.flash4.flash4_attention`; a token shard's distributed self-attention
    takes its place when there is one."""

    def __init__(self, attention: AttentionFn | None = None):
        self.attention = attention

    def run(self, blocks: Sequence[nn.Module], x: Tensor, start: int, stop: int, inputs: BlockInputs) -> Tensor:
        i = inputs
        self_attention = self.attention if i.self_attention is None else i.self_attention
        for block in blocks[start:stop]:
            x = block(x, i.emb, i.adaln_lora_3d, i.crossattn_emb, i.rope, i.extra_pos, self_attention)
        return x

    def final(self, layer: nn.Module, x: Tensor, inputs: BlockInputs) -> Tensor:
        return layer(x, inputs.emb, inputs.adaln_lora_3d)


PLAIN_BLOCKS = PlainBlocks()


class TokenShard(Protocol):
    """Sequence parallelism seen from the network (see :mod:`cosmos_plugins.predict1.parallel`).

    The process computes the tokens ``start:stop`` (of the t-major flattened (t h w) sequence) through the
    blocks; ``self_attention`` lets those tokens attend to every token (held by the other processes), and
    ``gather`` puts the final layer's (B, stop - start, F) back together into (B, S, F).
    """

    start: int
    stop: int

    def self_attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor: ...

    def gather(self, x: Tensor) -> Tensor: ...


class Attention(nn.Module):
    """Multi-head attention with per-head q/k RMSNorm; RoPE on q/k when ``rope`` is given (self-attention)."""

    def __init__(self, dim: int, context_dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.to_q = nn.Sequential(nn.Linear(dim, dim, bias=False), RMSNorm(head_dim))
        self.to_k = nn.Sequential(nn.Linear(context_dim, dim, bias=False), RMSNorm(head_dim))
        self.to_v = nn.Sequential(nn.Linear(context_dim, dim, bias=False))
        self.to_out = nn.Sequential(nn.Linear(dim, dim, bias=False))

    def forward(self, x: Tensor, context: Tensor | None = None, rope: tuple[Tensor, Tensor] | None = None,
                attn_fn: AttentionFn | None = None) -> Tensor:
        """x (B, S, D), context (B, M, C) or None for self-attention -> (B, S, D).

        ``attn_fn`` replaces :func:`attention` (a distributed self-attention); None is the local one."""
        B, S, D = x.shape
        context = x if context is None else context
        q = self.to_q[0](x).unflatten(-1, (self.num_heads, -1))  # (B, S, H, hd)
        k = self.to_k[0](context).unflatten(-1, (self.num_heads, -1))  # (B, M, H, hd)
        v = self.to_v[0](context).unflatten(-1, (self.num_heads, -1))  # (B, M, H, hd)
        q, k = self.to_q[1](q), self.to_k[1](k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = (attn_fn or attention)(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # (B, H, S, hd)
        return self.to_out[0](out.transpose(1, 2).reshape(B, S, D))  # (B, S, D)


class VideoAttn(nn.Module):
    """Holds the attention as ``.attn`` so the keys read ``block.attn.to_q...`` as in the checkpoint."""

    def __init__(self, dim: int, context_dim: int, num_heads: int):
        super().__init__()
        self.attn = Attention(dim, context_dim, num_heads)

    def forward(self, x: Tensor, context: Tensor | None = None, rope: tuple[Tensor, Tensor] | None = None,
                attn_fn: AttentionFn | None = None) -> Tensor:
        return self.attn(x, context, rope, attn_fn)


def gelu(x: Tensor) -> Tensor:
    return F.gelu(x)  # exact (erf) GELU


class FeedForward(nn.Module):
    """layer2(GELU(layer1(x))). ``activation`` is the GELU (:func:`gelu`); ``fast.to_fp8`` replaces it by one that
    hands the FP8 ``layer2`` the same values already quantized (``fast.Fp8Gelu``)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.layer1 = nn.Linear(dim, hidden, bias=False)
        self.layer2 = nn.Linear(hidden, dim, bias=False)
        self.activation: Callable[[Tensor], Any] = gelu

    def forward(self, x: Tensor) -> Tensor:
        return self.layer2(self.activation(self.layer1(x)))


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """AdaLN's modulation of a sub-block's input: LN(x) * (1 + scale) + shift (layer norm without affine, eps 1e-6)."""
    return F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale) + shift


def adaln_lora(dim: int, lora_dim: int, chunks: int) -> nn.Sequential:
    return nn.Sequential(nn.SiLU(), nn.Linear(dim, lora_dim, bias=False), nn.Linear(lora_dim, chunks * dim, bias=False))


class AdaLNSubBlock(nn.Module):
    """x + gate * f(LN(x) * (1 + scale) + shift), with (shift, scale, gate) from AdaLN-LoRA.

    ``modulate`` computes f's input (:func:`modulate`); ``fast.to_fp8`` replaces it by one that hands f's FP8
    linears the same values already quantized (``fast.Fp8Modulate``)."""

    def __init__(self, block: nn.Module, dim: int, lora_dim: int):
        super().__init__()
        self.block = block
        self.adaLN_modulation = adaln_lora(dim, lora_dim, 3)
        self.modulate: Callable[[Tensor, Tensor, Tensor], Any] = modulate

    def forward(self, x: Tensor, emb: Tensor, adaln_lora_3d: Tensor, *args) -> Tensor:
        mod = self.adaLN_modulation(emb) + adaln_lora_3d  # (B, 3D)
        shift, scale, gate = mod.unsqueeze(1).chunk(3, dim=-1)  # 3 x (B, 1, D)
        return x + gate * self.block(self.modulate(x, shift, scale), *args)


class TransformerBlock(nn.Module):
    """One DiT block: self-attention (with RoPE), cross-attention to the text, MLP."""

    def __init__(self, p: DiTParams):
        super().__init__()
        D, L = p.model_channels, p.adaln_lora_dim
        self.blocks = nn.ModuleList([
            AdaLNSubBlock(VideoAttn(D, D, p.num_heads), D, L),
            AdaLNSubBlock(VideoAttn(D, p.crossattn_emb_channels, p.num_heads), D, L),
            AdaLNSubBlock(FeedForward(D, p.mlp_hidden), D, L),
        ])

    def forward(self, x: Tensor, emb: Tensor, adaln_lora_3d: Tensor, crossattn_emb: Tensor,
                rope: tuple[Tensor, Tensor], extra_pos: Tensor, self_attention: AttentionFn | None = None) -> Tensor:
        """x (B, S, D), emb (B, D), adaln_lora_3d (B, 3D), crossattn_emb (B, M, C), rope 2 x (S, 1, hd/2),
        extra_pos (1, S, D) -> (B, S, D). ``self_attention`` replaces the local attention of the first sub-block
        only (cross-attention to the text stays local)."""
        self_attn, cross_attn, mlp = self.blocks
        x = x + extra_pos
        x = self_attn(x, emb, adaln_lora_3d, None, rope, self_attention)
        x = cross_attn(x, emb, adaln_lora_3d, crossattn_emb)
        return mlp(x, emb, adaln_lora_3d)


# ----------------------------------------------------------------------------------------------------------
# Embeddings


class Patchify(nn.Module):
    """(B, C, T, H, W) -> (B, T/r, H/m, W/n, C*r*m*n), features channel-major: index c*r*m*n + i*m*n + j*n + k."""

    def __init__(self, patch_spatial: int, patch_temporal: int):
        super().__init__()
        self.ps, self.pt = patch_spatial, patch_temporal

    def forward(self, x: Tensor) -> Tensor:
        B, C, T, H, W = x.shape
        x = x.reshape(B, C, T // self.pt, self.pt, H // self.ps, self.ps, W // self.ps, self.ps)
        return x.permute(0, 2, 4, 6, 1, 3, 5, 7).flatten(4)  # (B, T', H', W', C*pt*ps*ps)


class PatchEmbed(nn.Module):
    def __init__(self, p: DiTParams):
        super().__init__()
        self.proj = nn.Sequential(Patchify(p.patch_spatial, p.patch_temporal),
                                  nn.Linear(p.patch_in_features, p.model_channels, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)  # (B, C, T, H, W) -> (B, T', H', W', D)


class Timesteps(nn.Module):
    """Noise level -> [cos(t f), sin(t f)] (cos first), f_k = 10000^(-k / (D/2)), computed in fp32."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: Tensor) -> Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        angles = t.float()[:, None] * freqs[None]  # (B, D/2)
        return torch.cat([angles.cos(), angles.sin()], dim=-1)  # (B, D) fp32


class TimestepEmbedding(nn.Module):
    """The AdaLN-LoRA vector shared by every block: linear_2(SiLU(linear_1(s))), (B, D) -> (B, 3D)."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(dim, dim, bias=False)
        self.linear_2 = nn.Linear(dim, 3 * dim, bias=False)

    def forward(self, s: Tensor) -> Tensor:
        return self.linear_2(F.silu(self.linear_1(s)))


class LearnablePosEmbAxis(nn.Module):
    """Per-axis learnable absolute embedding, e[t,h,w] = pos_t[t] + pos_h[h] + pos_w[w], RMS-normalized."""

    def __init__(self, p: DiTParams):
        super().__init__()
        len_t, len_h, len_w = p.pos_lens
        self.pos_emb_h = nn.Parameter(torch.zeros(len_h, p.model_channels))
        self.pos_emb_w = nn.Parameter(torch.zeros(len_w, p.model_channels))
        self.pos_emb_t = nn.Parameter(torch.zeros(len_t, p.model_channels))

    def forward(self, T: int, H: int, W: int) -> Tensor:
        """Patch-grid sizes -> (1, T*H*W, D) in the weights' dtype; the norm is taken in fp32."""
        e = self.pos_emb_t[:T, None, None] + self.pos_emb_h[None, :H, None] + self.pos_emb_w[None, None, :W]
        norm = torch.linalg.vector_norm(e, dim=-1, keepdim=True, dtype=torch.float32)  # (T, H, W, 1)
        norm = 1e-6 + norm * (1.0 / e.shape[-1]) ** 0.5
        return (e / norm.to(e.dtype)).flatten(0, 2).unsqueeze(0)  # (1, T*H*W, D)


class RopePosition3D(nn.Module):
    """3D RoPE angle table. ``seq`` (= arange of the longest axis) mirrors the checkpoint's buffer; it is not
    saved (the loader ignores the file's copy) and is rebuilt by :meth:`VideoExtendGeneralDIT.init_buffers`."""

    def __init__(self, p: DiTParams, rope_mode: str):
        super().__init__()
        if rope_mode not in ROPE_MODES:
            raise ValueError(f"rope_mode must be one of {ROPE_MODES}, got {rope_mode!r}")
        self.p, self.rope_mode = p, rope_mode
        self.register_buffer("seq", torch.arange(max(p.pos_lens), dtype=torch.float32), persistent=False)

    def reset_buffers(self, device: torch.device | str | None = None):
        self.seq = torch.arange(max(self.p.pos_lens), dtype=torch.float32, device=device)

    def angles(self, T: int, H: int, W: int, fps: float | None) -> Tensor:
        """Patch-grid sizes -> angles (T*H*W, hd) fp32 on the CPU, layout [t, h, w, t, h, w] per token."""
        p = self.p
        dt = torch.bfloat16 if self.rope_mode == "compat" else torch.float32
        dim_h, dim_t = p.rope_dims
        seq = self.seq.detach().to("cpu", dt)

        def freqs(dim: int, ratio: float) -> Tensor:
            theta = 10000.0 * ratio ** (dim / (dim - 2))  # NTK-aware base
            rng = (torch.arange(0, dim, 2)[: dim // 2].float() / dim).to(dt)
            # compat: theta is rounded to bf16 too and theta**rng is rounded to bf16 (the original's bf16 buffers)
            return 1.0 / torch.tensor(theta, dtype=dt) ** rng

        pos_t = seq[:T] if fps is None else seq[:T] / torch.tensor(fps, dtype=dt) * p.base_fps
        ang_t = torch.outer(pos_t, freqs(dim_t, p.rope_t_extrapolation_ratio))  # (T, dim_t/2)
        ang_h = torch.outer(seq[:H], freqs(dim_h, p.rope_h_extrapolation_ratio))  # (H, dim_h/2)
        ang_w = torch.outer(seq[:W], freqs(dim_h, p.rope_w_extrapolation_ratio))  # (W, dim_h/2)
        grid = torch.cat([ang_t[:, None, None].expand(T, H, W, -1),
                          ang_h[None, :, None].expand(T, H, W, -1),
                          ang_w[None, None, :].expand(T, H, W, -1)], dim=-1)  # (T, H, W, hd/2)
        return torch.cat([grid, grid], dim=-1).flatten(0, 2).float()  # (T*H*W, hd)


class FinalLayer(nn.Module):
    def __init__(self, p: DiTParams):
        super().__init__()
        self.adaLN_modulation = adaln_lora(p.model_channels, p.adaln_lora_dim, 2)
        self.linear = nn.Linear(p.model_channels, p.patch_out_features, bias=False)

    def forward(self, x: Tensor, emb: Tensor, adaln_lora_3d: Tensor) -> Tensor:
        D = x.shape[-1]
        mod = self.adaLN_modulation(emb) + adaln_lora_3d[:, : 2 * D]  # (B, 2D)
        shift, scale = mod.unsqueeze(1).chunk(2, dim=-1)  # 2 x (B, 1, D)
        return self.linear(F.layer_norm(x, (D,), eps=1e-6) * (1 + scale) + shift)  # (B, S, pt*ps*ps*C)


# ----------------------------------------------------------------------------------------------------------
# The network


@dataclass(frozen=True)
class PosTables:
    """What :meth:`VideoExtendGeneralDIT.prepare` computes once per generation.

    ``shape`` is the latent (T, H, W); ``rope_cos``/``rope_sin`` are (S, 1, hd/2) fp32 (the first half of the
    angle table: the second half repeats it) and ``extra_pos`` is (1, S, D) in the weights' dtype, with
    S = T'*H'*W' tokens.
    """

    shape: tuple[int, int, int]
    fps: float | None
    rope_cos: Tensor
    rope_sin: Tensor
    extra_pos: Tensor

    @property
    def rope(self) -> tuple[Tensor, Tensor]:
        return self.rope_cos, self.rope_sin


class VideoExtendGeneralDIT(nn.Module):
    """Cosmos-Predict1 Video2World DiT. ``rope_mode`` is ``"compat"`` (bf16 table, as released) or ``"fp32"``."""

    def __init__(self, params: DiTParams, rope_mode: str = "compat"):
        super().__init__()
        p = self.params = params
        D = p.model_channels
        self.x_embedder = PatchEmbed(p)
        self.pos_embedder = RopePosition3D(p, rope_mode)
        self.extra_pos_embedder = LearnablePosEmbAxis(p)
        self.t_embedder = nn.Sequential(Timesteps(D), TimestepEmbedding(D))
        self.affline_norm = RMSNorm(D)
        self.blocks = nn.ModuleDict({f"block{i}": TransformerBlock(p) for i in range(p.num_blocks)})
        self.final_layer = FinalLayer(p)

    @property
    def rope_mode(self) -> str:
        return self.pos_embedder.rope_mode

    def init_buffers(self, device: torch.device | str | None = None):
        """Rebuild the non-persistent buffers (after building on the meta device)."""
        self.pos_embedder.reset_buffers(device)

    def _grid(self, T: int, H: int, W: int) -> tuple[int, int, int]:
        p = self.params
        if T % p.patch_temporal or H % p.patch_spatial or W % p.patch_spatial:
            raise ValueError(f"latent size T={T}, H={H}, W={W} is not divisible by the patch size "
                             f"({p.patch_temporal}, {p.patch_spatial}, {p.patch_spatial})")
        grid = (T // p.patch_temporal, H // p.patch_spatial, W // p.patch_spatial)
        if any(g > m for g, m in zip(grid, p.pos_lens, strict=True)):
            raise ValueError(f"latent size T={T}, H={H}, W={W} exceeds the network's maximum "
                             f"({p.max_frames}, {p.max_img_h}, {p.max_img_w})")
        return grid

    def prepare(self, T: int, H: int, W: int, fps: Tensor | float | None, device: torch.device | str | None = None,
                dtype: torch.dtype | None = None) -> PosTables:
        """Position tables for a latent of size (T, H, W) at ``fps``; reuse them for every step.

        ``fps`` is a float, a tensor of equal values (one per batch row), or None (positions are frame indices,
        the same as fps = base_fps). ``device``/``dtype`` default to those of the weights.
        """
        weight = self.extra_pos_embedder.pos_emb_t
        device = weight.device if device is None else torch.device(device)
        dtype = weight.dtype if dtype is None else dtype
        if isinstance(fps, Tensor):
            if fps.numel() == 0 or fps.min() != fps.max():
                raise ValueError(f"fps must be one value for the whole batch, got {fps.tolist()}")
            fps = float(fps.flatten()[0])
        if fps is not None and not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        grid = self._grid(T, H, W)
        angles = self.pos_embedder.angles(*grid, fps)[:, None, : self.params.head_dim // 2]  # (S, 1, hd/2) fp32
        return PosTables(
            shape=(T, H, W),
            fps=fps,
            rope_cos=angles.cos().to(device),
            rope_sin=angles.sin().to(device),
            extra_pos=self.extra_pos_embedder(*grid).to(device, dtype),
        )

    def forward(self, x: Tensor, timesteps: Tensor, crossattn_emb: Tensor, fps: Tensor | float | None,
                condition_video_input_mask: Tensor, padding_mask: Tensor | None = None,
                tables: PosTables | None = None, shard: TokenShard | None = None,
                cache: BlockCache | None = None, runner: BlockRunner | None = None) -> Tensor:
        """Raw network output F.

        Args:
            x: (B, C_in, T, H, W), already scaled by c_in.
            timesteps: (B,) or scalar, c_noise = log(sigma) / 4.
            crossattn_emb: (B, M, crossattn_emb_channels) text embedding (padded rows are attended, not masked).
            fps: float or (B,) tensor of one value; ignored when ``tables`` is given.
            condition_video_input_mask: (B, 1, T, H, W), 1 on the conditioning latent frames.
            padding_mask: (B or 1, 1, H_any, W_any), nearest-resized to (H, W); None means zeros.
            tables: the result of :meth:`prepare` for this (T, H, W, fps); computed here when None.
            shard: sequence parallelism: the blocks run on the tokens ``shard.start:shard.stop`` only, with
                ``shard.self_attention``, and ``shard.gather`` reassembles the final layer's output. None: all
                tokens here.
            cache: step caching (:class:`~.fast.StepCache`): ``cache(x, run_blocks)`` returns x after every block,
                running some of them with ``run_blocks(x, start, stop)`` and reusing earlier work for the rest.
                None: every block runs.
            runner: how the blocks and the final layer are computed (a :class:`BlockRunner`; the memory-lean
                one chunks the tokens); None: :class:`PlainBlocks`.
        Returns:
            (B, out_channels, T, H, W) in the weights' dtype.
        """
        p = self.params
        dtype = self.x_embedder.proj[1].weight.dtype
        B, _, T, H, W = x.shape
        if tables is None:
            tables = self.prepare(T, H, W, fps, device=x.device, dtype=dtype)
        elif tables.shape != (T, H, W):
            raise ValueError(f"tables were prepared for latent size {tables.shape}, got {(T, H, W)}")
        Tp, Hp, Wp = self._grid(T, H, W)

        x = torch.cat([x.to(dtype), condition_video_input_mask.to(dtype).expand(B, 1, T, H, W)], dim=1)  # (B, C+1, T, H, W)
        if p.concat_padding_mask:
            if padding_mask is None:
                pm = x.new_zeros(B, 1, H, W)
            else:
                pm = F.interpolate(padding_mask.to(dtype), size=(H, W), mode="nearest").expand(B, 1, H, W)
            x = torch.cat([x, pm.unsqueeze(2).expand(B, 1, T, H, W)], dim=1)  # (B, C+2, T, H, W)
        x = self.x_embedder(x).flatten(1, 3)  # (B, S, D)

        s = self.t_embedder[0](timesteps.reshape(-1).expand(B)).to(dtype)  # (B, D)
        adaln_lora_3d = self.t_embedder[1](s)  # (B, 3D)
        emb = self.affline_norm(s)  # (B, D)
        crossattn_emb = crossattn_emb.to(dtype)

        rope, extra_pos, self_attention = tables.rope, tables.extra_pos, None
        if shard is not None:  # this process's tokens only
            if not 0 <= shard.start < shard.stop <= x.shape[1]:
                raise ValueError(f"token shard {shard.start}:{shard.stop} is outside the {x.shape[1]} tokens")
            part = slice(shard.start, shard.stop)
            x, extra_pos, rope = x[:, part], extra_pos[:, part], (rope[0][part], rope[1][part])  # (B, S/N, D)
            self_attention = shard.self_attention
        inputs = BlockInputs(emb, adaln_lora_3d, crossattn_emb, rope, extra_pos, self_attention)
        runner = PLAIN_BLOCKS if runner is None else runner
        blocks = list(self.blocks.values())

        def run_blocks(x: Tensor, start: int, stop: int) -> Tensor:
            return runner.run(blocks, x, start, stop, inputs)

        x = run_blocks(x, 0, len(blocks)) if cache is None else cache(x, run_blocks)  # (B, S, D)

        x = runner.final(self.final_layer, x, inputs)  # (B, S, ps*ps*pt*C)
        if shard is not None:
            x = shard.gather(x)  # (B, S/N, ps*ps*pt*C) -> (B, S, ps*ps*pt*C)
        ps, pt = p.patch_spatial, p.patch_temporal
        x = x.reshape(B, Tp, Hp, Wp, ps, ps, pt, p.out_channels)  # features channel-minor: (p1, p2, t, C)
        x = x.permute(0, 7, 1, 6, 2, 4, 3, 5)  # (B, C, T', pt, H', p1, W', p2)
        return x.reshape(B, p.out_channels, T, H, W)
