"""The T5 encoder (google-t5/t5-11b's, and the small ones of the tests and the demo), written for this project.

The computation is T5's as the original runs it through ``transformers.T5EncoderModel`` (reference spec section
7), op for op, so the two agree to the last bit in fp32 and bf16 (tests/test_t5.py checks it on the same
weights): an embedding lookup with no scaling; per block an RMS norm computed in fp32 (``x * rsqrt(mean(x^2) +
eps) * weight``, cast back to a bf16 weight's dtype), self-attention with no ``1/sqrt(d)`` scaling and a learned
relative-position bias (bucketed, bidirectional, in the first block only and shared by the others) plus the
padding mask, a softmax in fp32, then a feed-forward of ``wi -> relu -> wo`` (``gated-gelu``: ``gelu_tanh(wi_0) *
wi_1 -> wo``); a final RMS norm. Dropout is inference's identity. fp16 is not supported (T5 overflows in fp16,
which transformers patches with clamps the original never needed).

Module names are those of the released state dict (``encoder.block.N.layer.0.SelfAttention.q``...), so a file's
keys map onto this module one to one. Importing this needs torch only: not ``transformers``, whose import costs
seconds in every process that encodes a prompt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F


@dataclass(frozen=True)
class T5Config:
    """The encoder's shape, as a ``config.json`` of a T5 folder gives it."""

    d_model: int
    d_kv: int
    num_heads: int
    d_ff: int
    num_layers: int
    vocab_size: int
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    gated: bool = False  # feed_forward_proj "gated-gelu" (T5 v1.1) rather than "relu" (T5, t5-11b)


class RMSNorm(nn.Module):
    """T5's layer norm: no mean, no bias; statistics in fp32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.eps)
        if self.weight.dtype == torch.bfloat16:
            x = x.to(self.weight.dtype)
        return self.weight * x


class SelfAttention(nn.Module):
    def __init__(self, c: T5Config, has_bias: bool):
        super().__init__()
        inner = c.num_heads * c.d_kv
        self.num_heads, self.d_kv = c.num_heads, c.d_kv
        self.q = nn.Linear(c.d_model, inner, bias=False)
        self.k = nn.Linear(c.d_model, inner, bias=False)
        self.v = nn.Linear(c.d_model, inner, bias=False)
        self.o = nn.Linear(inner, c.d_model, bias=False)
        self.num_buckets, self.max_distance = c.relative_attention_num_buckets, c.relative_attention_max_distance
        self.has_bias = has_bias
        if has_bias:
            self.relative_attention_bias = nn.Embedding(c.relative_attention_num_buckets, c.num_heads)

    def position_bias(self, length: int, device: torch.device) -> Tensor:
        """``[1, heads, length, length]``: the learned bias of each query-key offset's bucket."""
        pos = torch.arange(length, dtype=torch.long, device=device)
        buckets = relative_position_bucket(pos[None, :] - pos[:, None], self.num_buckets, self.max_distance)
        return self.relative_attention_bias(buckets).permute(2, 0, 1).unsqueeze(0)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        b, n, _ = x.shape

        def heads(t: Tensor) -> Tensor:
            return t.view(b, n, self.num_heads, self.d_kv).transpose(1, 2)

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        scores = torch.matmul(q, k.transpose(3, 2))  # no 1/sqrt(d_kv): T5 folds it into its initialisation
        scores += bias
        weights = F.softmax(scores.float(), dim=-1).type_as(scores)
        out = torch.matmul(weights, v).transpose(1, 2).contiguous().view(b, n, -1)
        return self.o(out)


def relative_position_bucket(relative: Tensor, num_buckets: int, max_distance: int) -> Tensor:
    """T5's bidirectional buckets: half for keys after the query; within each half, exact offsets below a quarter
    of the buckets, then logarithmically wider ones up to ``max_distance`` (farther offsets share the last)."""
    num_buckets //= 2
    buckets = (relative > 0).to(torch.long) * num_buckets
    distance = torch.abs(relative)
    max_exact = num_buckets // 2
    far = max_exact + (torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact)
                       * (num_buckets - max_exact)).to(torch.long)
    far = torch.min(far, torch.full_like(far, num_buckets - 1))
    return buckets + torch.where(distance < max_exact, distance, far)


class AttentionLayer(nn.Module):
    def __init__(self, c: T5Config, has_bias: bool):
        super().__init__()
        self.SelfAttention = SelfAttention(c, has_bias)
        self.layer_norm = RMSNorm(c.d_model, c.layer_norm_epsilon)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        return x + self.SelfAttention(self.layer_norm(x), bias)


class DenseReluDense(nn.Module):
    def __init__(self, c: T5Config):
        super().__init__()
        self.gated = c.gated
        if c.gated:
            self.wi_0 = nn.Linear(c.d_model, c.d_ff, bias=False)
            self.wi_1 = nn.Linear(c.d_model, c.d_ff, bias=False)
        else:
            self.wi = nn.Linear(c.d_model, c.d_ff, bias=False)
        self.wo = nn.Linear(c.d_ff, c.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.gated:
            h = F.gelu(self.wi_0(x), approximate="tanh") * self.wi_1(x)
        else:
            h = F.relu(self.wi(x))
        return self.wo(h.to(self.wo.weight.dtype))


class FeedForwardLayer(nn.Module):
    def __init__(self, c: T5Config):
        super().__init__()
        self.DenseReluDense = DenseReluDense(c)
        self.layer_norm = RMSNorm(c.d_model, c.layer_norm_epsilon)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.DenseReluDense(self.layer_norm(x))


class Block(nn.Module):
    def __init__(self, c: T5Config, has_bias: bool):
        super().__init__()
        self.layer = nn.ModuleList([AttentionLayer(c, has_bias), FeedForwardLayer(c)])

    def forward(self, x: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
        """``bias``: the padding mask's; the first block adds its learned position bias to it (inside its own
        forward, so that a streamed block's weights are in place when they are read) and every block returns the
        bias the next one uses. Each prompt (row) is computed on its own, with the shapes of a one-prompt call, so
        a batch gives each prompt's one-prompt result bit for bit while a streamed block is copied in once for all
        of them."""
        attention = self.layer[0]
        rows, biases = [], []
        for i in range(x.shape[0]):
            b = bias[i:i + 1]
            if attention.SelfAttention.has_bias:
                b = attention.SelfAttention.position_bias(x.shape[1], x.device) + b
            rows.append(self.layer[1](attention(x[i:i + 1], b)))
            biases.append(b)
        return torch.cat(rows), torch.cat(biases)


class Stack(nn.Module):
    def __init__(self, c: T5Config):
        super().__init__()
        self.block = nn.ModuleList([Block(c, has_bias=i == 0) for i in range(c.num_layers)])
        self.final_layer_norm = RMSNorm(c.d_model, c.layer_norm_epsilon)


class T5Encoder(nn.Module):
    """``forward(input_ids [B, L], attention_mask [B, L]) -> [B, L, d_model]`` (the last hidden state; each row as
    computed alone, see :meth:`Block.forward`)."""

    def __init__(self, c: T5Config):
        super().__init__()
        self.config = c
        self.shared = nn.Embedding(c.vocab_size, c.d_model)
        self.encoder = Stack(c)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        x = self.shared(input_ids)
        dtype = x.dtype
        bias = (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min  # the padding's
        for block in self.encoder.block:
            x, bias = block(x, bias)
        return torch.cat([self.encoder.final_layer_norm(x[i:i + 1]) for i in range(x.shape[0])])
