"""The split of one generation over the ranks of a context-parallel run: a pure function of the rank count, the
network's parameters and the latent size (see :mod:`.parallel` for the schemes)."""

from __future__ import annotations

from dataclasses import dataclass

from cosmos_cli.errors import UsageError

from .params import DiTParams, dit_tokens

SCHEMES = ("auto", "sequence", "cfg")
ATTENTIONS = ("auto", "ulysses", "ring")
# Overrides of the layout choice (``auto`` when unset), for measurements and for users who measured.
SCHEME_ENV, ATTENTION_ENV = "COSMOS_CP_SCHEME", "COSMOS_CP_ATTENTION"

@dataclass(frozen=True)
class Layout:
    """How ``world_size`` ranks split one generation's network work."""

    world_size: int
    scheme: str  # "single" | "sequence" | "cfg"
    branch_groups: int  # 1, or 2 for cfg (branch g runs on ranks g*group_size ... (g+1)*group_size - 1)
    group_size: int  # ranks that split one forward's tokens
    attention: str  # "local" (group_size 1) | "ulysses" | "ring"
    tokens: int
    reason: str

    @property
    def tokens_per_rank(self) -> int:
        return self.tokens // self.group_size


def _tokens_and_frames(params: DiTParams, latent_shape: tuple[int, int, int]) -> tuple[int, int]:
    T, H, W = latent_shape
    return dit_tokens(params, T, H, W), T // params.patch_temporal


def _group_ok(tokens: int, n: int) -> bool:
    return tokens % n == 0


def valid_world_sizes(params: DiTParams, latent_shape: tuple[int, int, int], upto: int = 16) -> list[int]:
    """The rank counts up to ``upto`` that can split this job (some scheme divides the work)."""
    tokens, _ = _tokens_and_frames(params, latent_shape)
    return [n for n in range(1, upto + 1) if _group_ok(tokens, n) or (n % 2 == 0 and _group_ok(tokens, n // 2))]


def choose_layout(world_size: int, params: DiTParams, latent_shape: tuple[int, int, int], *,
                  cfg_batched: bool = True, scheme: str = "auto", attention: str = "auto") -> Layout:
    """The split of one generation over ``world_size`` ranks (raises :class:`UsageError` when none works).

    Rule for ``auto``:

    * ``cfg`` when N is even and the memory plan batches the branches. The two branches cost exactly the same,
      so two halves of the ranks are perfectly balanced and need no communication inside the network: one
      all-gather of the output per step (7 MB in bf16 at the default job). Measured on one H100 with the
      communication replaced by local copies (benchmarks/results/parallel-compute-bound-h100.json), a rank's
      share of one step is 4.19 s (7B) / 7.15 s (14B) against 8.40 / 14.41 s for N=1: 2.01x. Sequence
      parallelism costs more per rank, 4.41 / 7.51 s (1.91x: smaller matrix products and the all-to-all
      packing), and then moves every self-attention's activations: Ulysses sends (N-1)/N of a rank's q, k, v
      and output per block, ~26 GB per step at N=2 for 7B (~42 GB for 14B), some 70-110 ms at NVLink speed.
      With N > 2 the cfg layout also halves the ranks in each all-to-all.
    * ``sequence`` otherwise: N odd, or a lean plan that runs the branches one at a time to save memory
      (``cfg_batched`` False): there cfg would give each GPU a whole branch's activations, while sequence
      parallelism divides them by N.

    Within a group of n ranks: ``ulysses`` when n divides the head count (32 for 7B, 40 for 14B: plain
    attention kernels on full sequences, two all-to-alls per block), else ``ring`` (any n; per-rank compute
    measured equal to Ulysses with the cuDNN kernel, but fp32 accumulators: +3.5 GB at 7B). Every group size must
    divide the token count. ``benchmarks/bench_parallel.py`` measures all three splits on two GPUs.
    """
    if scheme not in SCHEMES:
        raise UsageError(f"unknown parallel scheme {scheme!r}", hint=f"Use one of: {', '.join(SCHEMES)}.")
    if attention not in ATTENTIONS:
        raise UsageError(f"unknown parallel attention {attention!r}", hint=f"Use one of: {', '.join(ATTENTIONS)}.")
    if world_size < 1:
        raise UsageError(f"--num-gpus must be >= 1, got {world_size}")
    tokens, frames = _tokens_and_frames(params, latent_shape)
    if world_size == 1:
        return Layout(1, "single", 1, 1, "local", tokens, "one process")
    valid = valid_world_sizes(params, latent_shape)
    cfg_ok = world_size % 2 == 0 and _group_ok(tokens, world_size // 2)
    seq_ok = _group_ok(tokens, world_size)
    if not (cfg_ok or seq_ok):
        branches = (f"nor by {world_size // 2} (the guidance branches on two halves)" if world_size % 2 == 0
                    else "and an odd count cannot give the two guidance branches a half each")
        raise UsageError(f"{world_size} GPUs cannot split this job: its {tokens:,} tokens are not divisible by "
                         f"{world_size}, {branches}",
                         hint=f"Use one of these GPU counts: {', '.join(map(str, valid))}.")
    if scheme == "auto":
        if cfg_batched:
            scheme = "cfg" if cfg_ok else "sequence"
        else:
            scheme = "sequence" if seq_ok else "cfg"
    if scheme == "cfg" and not cfg_ok:
        why = "is odd" if world_size % 2 else f"/ 2 = {world_size // 2} does not divide the {tokens:,} tokens"
        raise UsageError(f"the cfg scheme needs an even GPU count whose half divides the work; {world_size} {why}",
                         hint=f"Use --cp-scheme sequence (or auto; {SCHEME_ENV} sets the default).")
    if scheme == "sequence" and not seq_ok:
        raise UsageError(f"the sequence scheme needs a GPU count that divides the {tokens:,} tokens; "
                         f"{world_size} does not", hint=f"Use --cp-scheme cfg (or auto; {SCHEME_ENV} sets the default).")
    groups = 2 if scheme == "cfg" else 1
    n = world_size // groups
    heads = params.num_heads
    if n == 1:
        attn = "local"
    elif attention == "ulysses" and heads % n:
        raise UsageError(f"Ulysses attention splits the {heads} heads over {n} ranks, which does not divide them",
                         hint=f"Set {ATTENTION_ENV}=ring (or auto).")
    else:
        attn = attention if attention != "auto" else ("ulysses" if heads % n == 0 else "ring")

    per = tokens // n
    where = (f"latent frames in blocks of {frames // n}" if frames % n == 0
             else "the flattened (t h w) token axis (the frame count does not divide)")
    split = (f"{tokens:,} tokens in {n} contiguous ranges of {per:,} along {where}, "
             + (f"Ulysses all-to-all over the {heads} heads ({heads // n} per rank)" if attn == "ulysses"
                else f"ring attention ({heads} heads do not divide by {n})" if attention == "auto"
                else "ring attention"))
    if scheme == "cfg":
        reason = (f"{world_size} GPUs: the two guidance branches on two groups of {n}"
                  + ("" if n == 1 else f"; within a group, {split}")
                  + "; one exchange of the output per step")
    else:
        if not cfg_batched:
            why = " (the memory plan runs the guidance branches one at a time)"
        else:
            why = f" ({world_size} is odd)" if world_size % 2 else " (as asked)"
        reason = f"{world_size} GPUs: sequence parallel{why}: {split}"
    return Layout(world_size, scheme, groups, n, attn, tokens, reason)


def latent_shape_of(spec) -> tuple[int, int, int]:
    """The latent (T, H, W) of a model spec's default job (16, 88, 160 for 121 x 704 x 1280)."""
    tok = spec.tokenizer
    return (tok.latent_frames(spec.num_frames), spec.height // tok.spatial_compression,
            spec.width // tok.spatial_compression)
