"""Self-attention kernels at the default job's shapes, same GPU, same run: PyTorch's SDPA (its own choice: cuDNN
on Hopper), SDPA's flash kernel, and flash-attn-4 (``plugins/predict1/flash4.py``) where it is installed.

Shapes: both guidance branches batched (B = 2), 56,320 tokens (121 x 704 x 1280 -> 16 x 44 x 80 patches),
head dim 128; 32 heads (7B) and 40 heads (14B). Each kernel gets the (B, H, S, hd) views of (B, S, H, hd)
tensors that the network's Attention hands over. Reports the median of CUDA-event timings, TFLOP/s
(4 S S_kv hd per head and batch row; ``--kv-tokens 512``: the cross-attention to the text), and each kernel's
error against a float64 reference on 512 query rows (all keys): ``|out - ref| / |ref|`` over those rows.

    python benchmarks/bench_attention.py --out benchmarks/results/attention-h200.json
    python benchmarks/bench_attention.py --heads 32 40 --flash4-tiles 128x176 128x192 --out ...  # tile sweep
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_network import timed  # noqa: E402  (CUDA-event median)

from cosmos_plugins.predict1 import flash4  # noqa: E402

TOKENS = 16 * 44 * 80
HEAD_DIM = 128
CHECK_ROWS = 512


def sdpa_default(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


def sdpa_backend(backend):
    from torch.nn.attention import sdpa_kernel

    def run(q, k, v):
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v)

    return run


def flash4_tile(tile_m: int, tile_n: int):
    """flash-attn-4 with its forward tile set to ``tile_m`` x ``tile_n`` (its private ``_flash_attn_fwd``: the
    public call picks the tile itself, 128 x 128 for head dim 128 on Hopper), on the network's (B, H, S, hd) views."""
    fwd = flash4.flash4_module()._flash_attn_fwd

    def run(q, k, v):
        out = fwd(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), tile_mn=(tile_m, tile_n))
        return (out[0] if isinstance(out, tuple) else out).transpose(1, 2)

    return run


def main() -> None:
    from torch.nn.attention import SDPBackend

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heads", type=int, nargs="+", default=[32, 40])
    ap.add_argument("--tokens", type=int, default=TOKENS)
    ap.add_argument("--kv-tokens", type=int, default=None,
                    help="keys and values of another length (512: the cross-attention to the text); default --tokens")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--flash4-tiles", nargs="*", default=[], metavar="MxN",
                    help="also time flash-attn-4 with these forward tiles (e.g. 128x176), where it is installed")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    try:
        tiles = [tuple(int(n) for n in t.lower().split("x")) for t in args.flash4_tiles]
        if any(len(t) != 2 for t in tiles):
            raise ValueError
    except ValueError:
        ap.error(f"--flash4-tiles: expected MxN values such as 128x176, got {' '.join(args.flash4_tiles)}")
    device = torch.device("cuda", 0)
    reason = flash4.unusable_reason(device, torch.bfloat16, HEAD_DIM)
    kernels = {"sdpa (dispatcher's choice)": sdpa_default,
               "sdpa cudnn": sdpa_backend(SDPBackend.CUDNN_ATTENTION),
               "sdpa flash": sdpa_backend(SDPBackend.FLASH_ATTENTION)}
    if reason is None:
        flash4.register()
        kernels["flash-attn-4"] = flash4.flash4_attention
        for m, n in tiles:
            kernels[f"flash-attn-4 tile {m}x{n}"] = flash4_tile(m, n)
    report = {"benchmark": "self-attention kernels, B=2, head dim 128, bf16",
              "command": "python " + " ".join(sys.argv),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
              "cudnn": torch.backends.cudnn.version(), "flash4": reason or "installed", "results": []}
    S, SK = args.tokens, args.kv_tokens or args.tokens
    if SK != S:
        report["benchmark"] = f"attention kernels, {S} queries x {SK} keys, B=2, head dim 128, bf16"
    for H in args.heads:
        g = torch.Generator(device).manual_seed(H)
        qkv = [torch.randn(2, n, H, HEAD_DIM, generator=g, device=device, dtype=torch.bfloat16) for n in (S, SK, SK)]
        q, k, v = (t.transpose(1, 2) for t in qkv)  # (B, H, S, hd) views, as the network passes them
        ref = F.scaled_dot_product_attention(q[:, :, :CHECK_ROWS].double(), k.double(), v.double())
        flops = 2 * H * 4 * S * SK * HEAD_DIM
        for name, fn in kernels.items():
            row = {"heads": H, "tokens": S, "kv_tokens": SK, "kernel": name}
            try:
                out = fn(q, k, v)
                row["rel_err"] = ((out[:, :, :CHECK_ROWS].double() - ref).norm() / ref.norm()).item()
                del out
                row["seconds"] = timed(lambda fn=fn, a=(q, k, v): fn(*a), 1, args.repeats)
                row["tflops"] = flops / row["seconds"] / 1e12
            except Exception as exc:  # noqa: BLE001 - a kernel that cannot run this shape is a result too
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            report["results"].append(row)
            print(json.dumps(row), flush=True)
        del q, k, v, qkv, ref
        torch.cuda.empty_cache()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nflash-attn-4: {report['flash4']}; cuDNN {report['cudnn']}")
    print(f"{'heads':>5} {'kernel':28} {'ms':>8} {'TFLOP/s':>8} {'rel err':>9}")
    for r in report["results"]:
        if "error" in r:
            print(f"{r['heads']:5} {r['kernel']:28} {r['error'][:60]}")
        else:
            print(f"{r['heads']:5} {r['kernel']:28} {r['seconds'] * 1e3:8.1f} {r['tflops']:8.0f} {r['rel_err']:9.2e}")


if __name__ == "__main__":
    main()
