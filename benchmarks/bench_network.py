"""Our diffusion network against diffusers' CosmosTransformer3DModel, full size, same GPU, same run.

Builds the 7B and 14B Video2World networks with random bf16 weights and times one forward at the default job
(121x704x1280 -> latent 16x88x160, 56,320 tokens, 512 text tokens): ours with one branch (B=1) and with both
guidance branches batched (B=2, one denoising step), then diffusers on the *same weights* (converted key
names), whose pipeline runs the two branches as two B=1 forwards. Reports seconds (median of CUDA-event
timings), achieved TFLOP/s, peak memory, and the relative difference of the outputs (bf16).

    python benchmarks/bench_network.py --models 7B 14B --out benchmarks/results/network-h100.json
    python benchmarks/bench_network.py --models 7B --compile --out ...   # + the compiled step

Where flash-attn-4 can run (``plugins/predict1/flash4.py``) the step is also timed with it as the blocks'
self-attention (``flash4``; with ``--compile``: ``compile`` and ``compile_flash4`` too), each against diffusers in
the same run. The eager variants run before the blocks are compiled. (Before 2026-12-04 evening, ``flash4`` ran
after ``compile_blocks`` under ``--compile``: its figure in ``network-7b-flash4-h200.json`` and
``network-14b-compile-flash4-h200.json`` is the compiled step; see their ``erratum`` key.)
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

from cosmos_plugins.predict1.checkpoint import diffusers_key
from cosmos_plugins.predict1.fast import compile_blocks
from cosmos_plugins.predict1.flash4 import self_attention_kernel
from cosmos_plugins.predict1.network import PlainBlocks, VideoExtendGeneralDIT
from cosmos_plugins.predict1.params import DiTParams
from cosmos_plugins.predict1.specs import PREDICT1_7B, PREDICT1_14B

LATENT = (16, 88, 160)
TEXT_TOKENS = 512
GiB = 1 << 30


def forward_flops(p: DiTParams, batch: int = 1) -> float:
    """Matrix-product FLOPs of one forward (2 per multiply-add): linear layers and attention."""
    n = LATENT[0] * (LATENT[1] // p.patch_spatial) * (LATENT[2] // p.patch_spatial)
    d, c = p.model_channels, p.crossattn_emb_channels
    hidden = int(d * p.mlp_ratio)
    per_block_linear = 2 * n * (4 * d * d + 2 * d * d + 2 * d * hidden) + 2 * TEXT_TOKENS * 2 * d * c
    per_block_attn = 4 * n * n * d + 4 * n * TEXT_TOKENS * d
    return batch * p.num_blocks * (per_block_linear + per_block_attn)


def timed(fn, warmup: int = 1, repeats: int = 3) -> float:
    """Median seconds of ``fn`` by CUDA events (the host clock's mean on a machine without CUDA: --smoke runs)."""
    for _ in range(warmup):
        fn()
    if not torch.cuda.is_available():
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - t0) / repeats
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


def peak_of(fn) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


@torch.no_grad()
def random_network(p: DiTParams, seed: int, device: str = "cuda") -> VideoExtendGeneralDIT:
    """Full-size network with random bf16 weights made on the GPU (std 1/sqrt(fan_in), norm gains ~1)."""
    with torch.device("meta"):
        net = VideoExtendGeneralDIT(p, rope_mode="fp32")
    net = net.to_empty(device=device).to(torch.bfloat16)
    gen = torch.Generator(device).manual_seed(seed)
    for name, t in net.named_parameters():
        t.normal_(generator=gen)
        if name == "affline_norm.weight" or name.endswith((".to_q.1.weight", ".to_k.1.weight")):
            t.mul_(0.1).add_(1.0)
        elif not name.startswith("extra_pos_embedder."):
            t.div_(math.sqrt(t.shape[-1]))
    net.init_buffers(device)
    return net.eval().requires_grad_(False)


def make_inputs(p: DiTParams, seed: int, device: str = "cuda"):
    gen = torch.Generator(device).manual_seed(seed)
    x = torch.randn(1, p.in_channels, *LATENT, generator=gen, device=device).to(torch.bfloat16)
    emb = torch.randn(2, TEXT_TOKENS, p.crossattn_emb_channels, generator=gen, device=device).to(torch.bfloat16)
    emb[:, 40:] = 0  # T5 zeroes the padded positions
    mask = torch.zeros(1, 1, *LATENT, device=device, dtype=torch.bfloat16)
    mask[:, :, :1] = 1
    t = torch.tensor([0.25 * math.log(10.9)], device=device)
    return x, emb, mask, t


def diffusers_network(p: DiTParams, state: dict, device: str = "cuda"):
    from diffusers import CosmosTransformer3DModel

    with torch.device("meta"):
        net = CosmosTransformer3DModel(
            in_channels=p.in_channels + 1, out_channels=p.out_channels, num_attention_heads=p.num_heads,
            attention_head_dim=p.model_channels // p.num_heads, num_layers=p.num_blocks, mlp_ratio=p.mlp_ratio,
            text_embed_dim=p.crossattn_emb_channels, adaln_lora_dim=p.adaln_lora_dim,
            max_size=(p.max_frames, p.max_img_h, p.max_img_w),
            patch_size=(p.patch_temporal, p.patch_spatial, p.patch_spatial),
            rope_scale=(p.rope_t_extrapolation_ratio, p.rope_h_extrapolation_ratio, p.rope_w_extrapolation_ratio),
            concat_padding_mask=True, extra_pos_embed_type="learnable")
    net.load_state_dict({diffusers_key(k): v for k, v in state.items() if k != "pos_embedder.seq"}, strict=True,
                        assign=True)
    for block in net.transformer_blocks:  # the original's q/k RMSNorm eps
        for attn in (block.attn1, block.attn2):
            attn.norm_q.eps = attn.norm_k.eps = 1e-6
    return net.eval().requires_grad_(False)


def rebuild_network(p: DiTParams, state: dict, device: str = "cuda") -> VideoExtendGeneralDIT:
    with torch.device("meta"):
        net = VideoExtendGeneralDIT(p, rope_mode="fp32")
    net.load_state_dict(state, strict=True, assign=True)
    net.init_buffers(device)
    return net.eval().requires_grad_(False)


def time_diffusers(p: DiTParams, state: dict, x, emb, mask, t, args, res: dict):
    dnet = diffusers_network(p, state)
    pm = torch.zeros(1, 1, 704, 1280, device="cuda", dtype=torch.bfloat16)

    def theirs():
        return dnet(hidden_states=x, timestep=t, encoder_hidden_states=emb[:1], fps=24, condition_mask=mask,
                    padding_mask=pm, return_dict=False)[0]

    with torch.no_grad():
        res["diffusers_b1_s"] = timed(theirs, 1, args.repeats)
        res["diffusers_b1_peak_gib"] = peak_of(theirs) / GiB
        out = theirs().float()
    res["diffusers_b1_tflops"] = forward_flops(p) / res["diffusers_b1_s"] / 1e12
    res["diffusers_step_s"] = 2 * res["diffusers_b1_s"]  # the pipeline's two B=1 forwards per step
    dnet = None  # free it (the closure above must not outlive this call)
    torch.cuda.empty_cache()
    return out


def run_model(label: str, p: DiTParams, args) -> dict:
    res: dict = {"model": label, "forward_pflop": forward_flops(p) / 1e15,
                 "order": "diffusers first" if args.diffusers_first else "ours first"}
    net = random_network(p, seed=0)
    res["params"] = sum(t.numel() for t in net.parameters())
    res["weights_gib"] = torch.cuda.memory_allocated() / GiB
    x, emb, mask, t = make_inputs(p, seed=1)
    state = dict(net.state_dict())
    out_theirs = None
    if args.diffusers_first and not args.skip_diffusers:
        net = None
        out_theirs = time_diffusers(p, state, x, emb, mask, t, args, res)
        net = rebuild_network(p, state)
    tables = net.prepare(*LATENT, 24.0)
    x2, t2 = torch.cat([x, x]), t.expand(2)

    def ours_b1():
        return net(x, t, emb[:1], 24.0, mask, tables=tables)

    def ours_b2():
        return net(x2, t2, emb, 24.0, mask, tables=tables)

    with torch.no_grad():
        res["ours_b1_s"] = timed(ours_b1, 1, args.repeats)
        res["ours_b1_peak_gib"] = peak_of(ours_b1) / GiB
        res["ours_step_batched_s"] = timed(ours_b2, 1, args.repeats)
        res["ours_step_batched_peak_gib"] = peak_of(ours_b2) / GiB
        out_ours = ours_b1().float()
    res["ours_b1_tflops"] = forward_flops(p) / res["ours_b1_s"] / 1e12
    res["ours_step_batched_tflops"] = forward_flops(p, 2) / res["ours_step_batched_s"] / 1e12
    variants = {}  # the other ways of computing a step, each timed here: name -> output of one branch (B=1)
    kernel = self_attention_kernel(torch.device("cuda", 0), torch.bfloat16, p.head_dim)
    runs = [("flash4", kernel, False)] if kernel is not None else []
    if args.compile:
        runs += [("compile", None, True)] + ([("compile_flash4", kernel, True)] if kernel is not None else [])
    blocks_compiled = False
    for name, attention, compiled in runs:
        if compiled and not blocks_compiled:  # after every eager variant (compiling the blocks cannot be undone)
            compile_blocks(net)
            blocks_compiled = True
        runner = PlainBlocks(attention)
        with torch.no_grad():
            res[f"ours_{name}_step_batched_s"] = timed(
                lambda runner=runner: net(x2, t2, emb, 24.0, mask, tables=tables, runner=runner), 1, args.repeats)
            variants[name] = net(x, t, emb[:1], 24.0, mask, tables=tables, runner=runner).float()
        res[f"ours_{name}_step_batched_tflops"] = forward_flops(p, 2) / res[f"ours_{name}_step_batched_s"] / 1e12
        res[f"ours_{name}_vs_sdpa_rel_diff"] = ((variants[name] - out_ours).abs().max() / out_ours.abs().max()).item()
    net = tables = None
    torch.cuda.empty_cache()
    if not args.skip_diffusers:
        if out_theirs is None:
            out_theirs = time_diffusers(p, state, x, emb, mask, t, args, res)
        res["ours_b1_vs_diffusers"] = res["ours_b1_s"] / res["diffusers_b1_s"]
        res["ours_step_vs_diffusers_step"] = res["ours_step_batched_s"] / res["diffusers_step_s"]
        res["output_rel_diff_bf16"] = ((out_ours - out_theirs).abs().max() / out_theirs.abs().max()).item()
        for name, out in variants.items():
            res[f"ours_{name}_step_vs_diffusers_step"] = res[f"ours_{name}_step_batched_s"] / res["diffusers_step_s"]
            res[f"ours_{name}_rel_diff_bf16"] = ((out - out_theirs).abs().max() / out_theirs.abs().max()).item()
    del state
    torch.cuda.empty_cache()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["7B", "14B"], choices=["7B", "14B"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-diffusers", action="store_true")
    ap.add_argument("--diffusers-first", action="store_true",
                    help="time diffusers before ours (nothing of ours has run in the process yet)")
    ap.add_argument("--compile", action="store_true",
                    help="also time the step with the blocks through torch.compile (after the eager timings)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    specs = {"7B": PREDICT1_7B, "14B": PREDICT1_14B}
    report = {
        "benchmark": "network forward, default job 121x704x1280, random bf16 weights",
        "command": "python " + " ".join(sys.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "host": platform.node(),
        "results": [],
    }
    try:
        import diffusers

        report["diffusers"] = diffusers.__version__
    except ImportError:
        args.skip_diffusers = True
    for m in args.models:
        report["results"].append(run_model(m, specs[m].network, args))
        print(json.dumps(report["results"][-1], indent=1), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{'model':6} {'ours B=1 s':>11} {'TFLOP/s':>8} {'ours step s':>12} {'diffusers B=1 s':>16} "
          f"{'TFLOP/s':>8} {'step ratio':>10} {'peak ours/diff GiB':>19} {'rel diff':>9}")
    for r in report["results"]:
        print(f"{r['model']:6} {r['ours_b1_s']:11.3f} {r['ours_b1_tflops']:8.0f} {r['ours_step_batched_s']:12.3f} "
              f"{r.get('diffusers_b1_s', float('nan')):16.3f} {r.get('diffusers_b1_tflops', float('nan')):8.0f} "
              f"{r.get('ours_step_vs_diffusers_step', float('nan')):10.3f} "
              f"{r['ours_b1_peak_gib']:8.1f}/{r.get('diffusers_b1_peak_gib', float('nan')):<9.1f} "
              f"{r.get('output_rel_diff_bf16', float('nan')):9.2e}")
    print(f"\n{'model':6} {'variant':15} {'step s':>8} {'TFLOP/s':>8} {'vs 2 diffusers fwd':>19} {'vs diffusers':>13}")
    for r in report["results"]:
        for name in ("", "flash4_", "compile_", "compile_flash4_"):
            if f"ours_{name}step_batched_s" not in r:
                continue
            ratio = r.get(f"ours_{name}step_vs_diffusers_step", float("nan"))
            diff = r.get(f"ours_{name}rel_diff_bf16", r.get("output_rel_diff_bf16", float("nan")) if not name else
                         float("nan"))
            print(f"{r['model']:6} {(name.rstrip('_') or 'eager sdpa'):15} {r[f'ours_{name}step_batched_s']:8.3f} "
                  f"{r[f'ours_{name}step_batched_tflops']:8.0f} {ratio:19.3f} {diff:13.2e}")


if __name__ == "__main__":
    main()
