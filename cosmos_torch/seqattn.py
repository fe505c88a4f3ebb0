"""Self-attention across ranks for sequence parallelism: each rank holds a contiguous range of the tokens.

* Ulysses (:meth:`SequenceShard.self_attention` with ``"ulysses"``, when the rank count divides the heads): an
  all-to-all turns "my tokens, all heads" into "all tokens, my heads", each rank runs ordinary attention on its
  heads, a second all-to-all turns it back;
* ring (any rank count): the key/value blocks travel round the ranks while each rank attends its queries to the
  block it holds, merging the partial results with their log-sum-exp (:func:`merge_partial`).

Model-agnostic: q, k, v are (B, H, S/n, hd); a network takes a :class:`SequenceShard` as its token shard (the
predict1 network's ``TokenShard``: ``start``, ``stop``, ``self_attention``, ``gather``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from cosmos_cli.errors import UsageError

from .dist import DistContext, _collective


def attention_with_lse(q: Tensor, k: Tensor, v: Tensor, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """softmax(q k^T / sqrt(hd)) v and its log-sum-exp: (B, H, Sq, hd), (B, H, Sq) fp32.

    Uses PyTorch's fused kernels that return the log-sum-exp: on CUDA in bf16/fp16 the cuDNN kernel (the one
    the network's own attention gets on Hopper, ~1.8x the flash kernel at full size), else the flash kernel; the
    CPU flash kernel on the CPU; otherwise a math path over query chunks of ``chunk``."""
    if q.device.type == "cuda" and q.dtype in (torch.float16, torch.bfloat16):
        if _CUDNN_LSE[0] is not False:
            try:
                out, lse = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True)[:2]
                _CUDNN_LSE[0] = True
                return out, lse.reshape(q.shape[:3])  # (B, H, Sq) (some versions add a trailing 1)
            except (RuntimeError, AttributeError):  # no cuDNN attention for this GPU/build/shape: flash instead
                if _CUDNN_LSE[0] is True:
                    raise
                _CUDNN_LSE[0] = False
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v)[:2]
        return out, lse
    if q.device.type == "cpu" and hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)
        return out, lse
    return _attention_with_lse_math(q, k, v, chunk)


_CUDNN_LSE: list[bool | None] = [None]  # whether the cuDNN kernel ran here (None: not tried yet)


def _attention_with_lse_math(q: Tensor, k: Tensor, v: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
    scale = q.shape[-1] ** -0.5
    kf, vf = k.float(), v.float()
    outs, lses = [], []
    for i in range(0, q.shape[2], chunk):
        s = (q[:, :, i:i + chunk].float() @ kf.transpose(-1, -2)) * scale  # (B, H, c, Sk)
        lse = torch.logsumexp(s, dim=-1)
        outs.append(((s - lse.unsqueeze(-1)).exp() @ vf).to(q.dtype))
        lses.append(lse)
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)


def merge_partial(out: Tensor | None, lse: Tensor | None, part: Tensor, part_lse: Tensor) -> tuple[Tensor, Tensor]:
    """Combine two attention results over disjoint key sets, given their log-sum-exps (fp32 accumulation)."""
    part, part_lse = part.float(), part_lse.float()
    if out is None:
        return part, part_lse
    new = torch.logaddexp(lse, part_lse)
    return out * (lse - new).exp().unsqueeze(-1) + part * (part_lse - new).exp().unsqueeze(-1), new


class SequenceShard:
    """One rank's part of a forward: tokens ``start:stop``; implements the network's ``TokenShard``."""

    def __init__(self, ctx: DistContext, group, ranks: list[int], attention: str, tokens: int):
        self.ctx, self.group, self.ranks, self.attention = ctx, group, ranks, attention
        self.n = len(ranks)
        self.index = ranks.index(ctx.rank)
        if tokens % self.n:
            raise UsageError(f"{self.n} ranks cannot split {tokens} tokens evenly")
        per = tokens // self.n
        self.start, self.stop = self.index * per, (self.index + 1) * per

    def self_attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """(B, H, S/n, hd) x3 -> (B, H, S/n, hd): this rank's queries against every rank's keys."""
        if self.attention == "ulysses":
            return self._ulysses(q, k, v)
        return self._ring(q, k, v)

    def _ulysses(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        n, (B, H, s, hd) = self.n, q.shape
        h = H // n
        send = q.new_empty(n, 3, B, h, s, hd)  # [destination rank, q/k/v, ...]: rank j gets heads j*h:(j+1)*h
        for i, t in enumerate((q, k, v)):
            send[:, i].copy_(t.unflatten(1, (n, h)).transpose(0, 1))
        recv = torch.empty_like(send)  # [source rank = token range, q/k/v, B, h, s, hd]
        with _collective(self.ctx.rank, "self-attention (Ulysses all-to-all)"):
            dist.all_to_all_single(recv, send, group=self.group)
        del send
        full = recv.permute(1, 2, 3, 0, 4, 5).reshape(3, B, h, n * s, hd)  # all tokens, my heads
        del recv
        out = F.scaled_dot_product_attention(full[0], full[1], full[2])  # (B, h, S, hd)
        del full
        back = out.unflatten(2, (n, s)).permute(2, 0, 1, 3, 4).contiguous()  # [destination = token range, ...]
        got = torch.empty_like(back)  # [source rank = head range, B, h, s, hd]
        with _collective(self.ctx.rank, "self-attention (Ulysses all-to-all back)"):
            dist.all_to_all_single(got, back, group=self.group)
        return got.permute(1, 0, 2, 3, 4).reshape(B, H, s, hd)

    def _ring(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        n, i = self.n, self.index
        nxt, prv = self.ranks[(i + 1) % n], self.ranks[(i - 1) % n]
        kv = torch.stack([k, v])  # (2, B, H, s, hd): this rank's block, then the others' as they come round
        out = lse = None
        for step in range(n):
            if step < n - 1:
                incoming = torch.empty_like(kv)
                ops = [dist.P2POp(dist.isend, kv, nxt, self.group), dist.P2POp(dist.irecv, incoming, prv, self.group)]
                with _collective(self.ctx.rank, "self-attention (ring exchange)"):
                    works = dist.batch_isend_irecv(ops)
            part, part_lse = attention_with_lse(q, kv[0], kv[1])  # overlaps the exchange
            out, lse = merge_partial(out, lse, part, part_lse)
            if step < n - 1:
                with _collective(self.ctx.rank, "self-attention (ring exchange)"):
                    for w in works:
                        w.wait()
                kv = incoming
        return out.to(q.dtype)

    def gather(self, x: Tensor) -> Tensor:
        """(B, S/n, F) on each rank -> (B, S, F) on every rank."""
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.n)]
        with _collective(self.ctx.rank, "gathering the network output"):
            dist.all_gather(parts, x, group=self.group)
        return torch.cat(parts, dim=1)
