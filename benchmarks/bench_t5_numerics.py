"""The T5 text embedding with bf16 weights against fp32 weights (the original keeps T5 in fp32).

For each encoder, the same weights are held in fp32 and in bf16 (``from_pretrained(dtype=...)`` casts the file's
fp32 values; here the fp32 model is cast), and each prompt is encoded as the pipeline does
(:class:`cosmos_plugins.predict1.text_encoder.T5TextEncoder`: padded to ``max_length``, one prompt at a time,
zeros past the prompt's tokens). Reported per prompt, all norms over the whole ``[1, max_length, d_model]``
embedding, computed in float64:

* ``rel_err_bf16``: ||e_bf16 - e_fp32|| / ||e_fp32||, the cost of bf16 weights and arithmetic;
* ``rel_err_cast``: ||bf16(e_fp32) - e_fp32|| / ||e_fp32||, the rounding every embedding gets anyway, since the
  network is fed a bf16 copy (the floor bf16 weights are to be compared with);
* ``rel_err_fp32``: ||e_fp32 - e_fp64|| / ||e_fp64|| (``--fp64``), how far fp32 itself is from exact;
* encode seconds per prompt in each dtype (median of ``--repeats`` after a warm-up; CUDA events on a GPU), and on a
  GPU the peak memory of one encode above the weights.

Encoders: ``demo``, the bundled demo model's T5-style encoder (assets/demo/t5-demo: 2 layers, d_model 128, random
frozen weights) with its own tokenizer on the demo's held-out prompts (assets/examples/prompts.json) and the
default negative prompt; ``t5-11b``, an encoder of google-t5/t5-11b's shape (d_model 1024, d_ff 65536, 24 layers,
128 heads of 128) with **random weights** (transformers' T5 initialisation, seeded; no download) on random token
ids of realistic lengths (no T5 tokenizer is needed). Random weights lack the trained model's large activation
outliers, so the 11B figures say how bf16 rounding accumulates through that depth and width, not the exact error
of the released weights.

    python benchmarks/bench_t5_numerics.py --encoders demo --out benchmarks/results/t5-numerics-demo-cpu.json
    python3 benchmarks/bench_t5_numerics.py --encoders demo t5-11b --device cuda --fp64 \\
        --out benchmarks/results/t5-numerics-h200.json
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
GiB = 1 << 30
# Token counts of the random-id prompts for the 11B-shaped encoder: a short prompt, the original's default
# negative prompt (about 120 T5 tokens), long and upsampled prompts, and one filling all 512 positions.
T5_11B_LENGTHS = (16, 60, 120, 200, 320, 512)


class RandomIdTokenizer:
    """Stands in for the T5 tokenizer (``PromptTokenizer``'s interface): the "prompt" ``"<n>"`` becomes n random
    ids (the last one ``</s>``), padded to ``max_length`` with 0, as the real tokenizer's output is shaped."""

    def __init__(self, vocab_size: int, seed: int = 0, max_length: int = 512):
        self.vocab_size, self.seed, self.max_length = vocab_size, seed, max_length

    def ids(self, prompt: str) -> list[int]:
        n = int(prompt)
        g = torch.Generator().manual_seed(self.seed + n)
        return [*torch.randint(3, self.vocab_size, (n - 1,), generator=g).tolist(), 1]

    def padded(self, prompt: str):
        n = min(int(prompt), self.max_length)
        ids = torch.zeros(1, self.max_length, dtype=torch.long)
        ids[0, :n] = torch.tensor(self.ids(str(n)))
        return ids, (torch.arange(self.max_length) < n).long()[None]


def t5_11b_config(num_layers: int = 24, d_ff: int = 65536):
    """google-t5/t5-11b's encoder dimensions (its config.json), built locally (fewer layers or a narrower
    feed-forward only for a quick check of this script on a CPU)."""
    from cosmos_plugins.predict1.t5 import T5Config

    return T5Config(vocab_size=32128, d_model=1024, d_kv=128, d_ff=d_ff, num_layers=num_layers, num_heads=128)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def encode_seconds(encoder, prompts, repeats: int, device: torch.device) -> float:
    """Median seconds of one ``encode([prompt])`` over ``prompts`` x ``repeats`` (after one warm-up each)."""
    times = []
    for p in prompts:
        encoder.encode([p])
        for _ in range(repeats):
            sync(device)
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                encoder.encode([p])
                end.record()
                torch.cuda.synchronize(device)
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                encoder.encode([p])
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


def encode_peak_bytes(encoder, prompt, device: torch.device) -> int | None:
    """GPU memory one encode allocates above what was allocated before it (None on the CPU)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    out = encoder.encode([prompt])
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del out
    return int(peak)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm())


def measure(name: str, encoders: dict, prompts: list, labels: list, device: torch.device, repeats: int) -> dict:
    """Compare the encoders of ``encoders`` (dtype name -> T5TextEncoder) on ``prompts``."""
    rows = []
    for label, prompt in zip(labels, prompts, strict=True):
        emb = {k: enc.encode([prompt]) for k, enc in encoders.items()}
        e32 = emb["float32"]
        row = {"prompt": label, "tokens": int((e32.abs().sum(-1) > 0).sum()),
               "rel_err_bf16": rel(emb["bfloat16"], e32), "rel_err_cast": rel(e32.to(torch.bfloat16), e32)}
        # the same comparison once both are cast to bf16, as the network receives them
        row["rel_err_bf16_after_cast"] = rel(emb["bfloat16"].to(torch.bfloat16), e32.to(torch.bfloat16))
        tok = e32.abs().sum(-1) > 0  # the prompt's positions
        per_token = ((emb["bfloat16"].double() - e32.double()).norm(dim=-1)[tok] / e32.double().norm(dim=-1)[tok])
        row["max_token_rel_err_bf16"] = float(per_token.max())
        if "float64" in emb:
            row["rel_err_fp32"] = rel(e32, emb["float64"])
        rows.append(row)
        print(f"  {name} {label}: bf16 {row['rel_err_bf16']:.2e}, cast floor {row['rel_err_cast']:.2e}", file=sys.stderr)
    model = encoders["float32"].model
    n_params = sum(p.numel() for p in model.parameters())
    result = {"encoder": name, "num_params": n_params, "prompts": rows,
              "rel_err_bf16_mean": statistics.fmean(r["rel_err_bf16"] for r in rows),
              "rel_err_bf16_max": max(r["rel_err_bf16"] for r in rows),
              "rel_err_cast_mean": statistics.fmean(r["rel_err_cast"] for r in rows)}
    if "float64" in encoders:
        result["rel_err_fp32_max"] = max(r["rel_err_fp32"] for r in rows)
    for k in ("float32", "bfloat16"):
        result[f"weight_bytes_{k}"] = n_params * (4 if k == "float32" else 2)
        result[f"encode_seconds_{k}"] = encode_seconds(encoders[k], prompts, repeats, device)
        result[f"encode_peak_bytes_{k}"] = encode_peak_bytes(encoders[k], prompts[-1], device)
    return result


def demo_encoders(device: torch.device, fp64: bool):
    from cosmos_plugins.predict1.specs import DEFAULT_NEGATIVE_PROMPT
    from cosmos_plugins.predict1.text_encoder import T5TextEncoder

    folder = ROOT / "assets" / "demo" / "t5-demo"
    encs = {"float32": T5TextEncoder.load(folder, device=device, dtype=torch.float32, max_length=32)}
    encs["bfloat16"] = T5TextEncoder.load(folder, device=device, dtype=torch.bfloat16, max_length=32)
    if fp64:
        encs["float64"] = T5TextEncoder(copy.deepcopy(encs["float32"].model).double(), encs["float32"].tokenizer)
    prompts = [e["prompt"] for e in json.loads((ROOT / "assets" / "examples" / "prompts.json").read_text())]
    prompts.append(DEFAULT_NEGATIVE_PROMPT)  # truncated to the demo's 32 tokens, as the pipeline does
    labels = [f"examples[{i}]" for i in range(len(prompts) - 1)] + ["default negative prompt"]
    return encs, prompts, labels


def t5_11b_encoders(device: torch.device, fp64: bool, seed: int, num_layers: int = 24, d_ff: int = 65536):
    from cosmos_plugins.predict1.t5 import T5Encoder
    from cosmos_plugins.predict1.text_encoder import T5TextEncoder

    config = t5_11b_config(num_layers, d_ff)
    gen = torch.Generator(device).manual_seed(seed)
    with torch.device(device):  # initialised where it runs (4.8 B parameters)
        model = T5Encoder(config).eval().requires_grad_(False)
    d, inner = config.d_model, config.num_heads * config.d_kv
    std = {"shared": 1.0, "q": (d * config.d_kv) ** -0.5, "k": d**-0.5, "v": d**-0.5, "o": inner**-0.5,
           "relative_attention_bias": d**-0.5, "wi": d**-0.5, "wo": config.d_ff**-0.5}
    for name, t in model.named_parameters():  # T5's initialisation (transformers' _init_weights); norms at 1
        if "layer_norm" not in name:
            t.normal_(0.0, std[name.split(".")[-2]], generator=gen)
    tok = RandomIdTokenizer(config.vocab_size, seed)
    encs = {"float32": T5TextEncoder(model, tok)}
    encs["bfloat16"] = T5TextEncoder(copy.deepcopy(model).to(torch.bfloat16), tok)
    if fp64:
        encs["float64"] = T5TextEncoder(copy.deepcopy(model).double(), tok)
    prompts = [str(n) for n in T5_11B_LENGTHS]
    return encs, prompts, [f"{n} random ids" for n in T5_11B_LENGTHS]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--encoders", nargs="+", default=["demo"], choices=["demo", "t5-11b"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--fp64", action="store_true", help="also compare fp32 with a float64 copy")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--t5-layers", type=int, default=24, help="(quick checks only) fewer layers than t5-11b's 24")
    ap.add_argument("--t5-d-ff", type=int, default=65536, help="(quick checks only) a narrower feed-forward")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    results = []
    for name in args.encoders:
        encs, prompts, labels = (demo_encoders(device, args.fp64) if name == "demo"
                                 else t5_11b_encoders(device, args.fp64, args.seed, args.t5_layers, args.t5_d_ff))
        with torch.inference_mode():
            results.append(measure(name, encs, prompts, labels, device, args.repeats))
        del encs
        if device.type == "cuda":
            torch.cuda.empty_cache()
    data = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "encoder": "cosmos_plugins.predict1.t5",
        "tf32": torch.backends.cuda.matmul.allow_tf32,
        "results": results,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(data, indent=2) + "\n")
    print(f"{'encoder':8} {'params':>8} {'bf16 rel err':>14} {'cast floor':>11} {'fp32 vs fp64':>13} "
          f"{'fp32 s':>8} {'bf16 s':>8} {'fp32 weights':>13} {'bf16 weights':>13} {'fp32 act':>9} {'bf16 act':>9}")
    for r in results:
        act = lambda k, r=r: "-" if r[k] is None else f"{r[k] / GiB:.2f}G"  # noqa: E731
        fp64 = f"{r['rel_err_fp32_max']:.1e}" if "rel_err_fp32_max" in r else "-"
        print(f"{r['encoder']:8} {r['num_params'] / 1e6:7.1f}M "
              f"{r['rel_err_bf16_mean']:.2e}/{r['rel_err_bf16_max']:.1e} {r['rel_err_cast_mean']:11.2e} {fp64:>13} "
              f"{r['encode_seconds_float32']:8.4f} {r['encode_seconds_bfloat16']:8.4f} "
              f"{r['weight_bytes_float32'] / GiB:12.2f}G {r['weight_bytes_bfloat16'] / GiB:12.2f}G "
              f"{act('encode_peak_bytes_float32'):>9} {act('encode_peak_bytes_bfloat16'):>9}")
    print("(bf16 rel err: mean/max over the prompts; cast floor: bf16 rounding of the fp32 embedding, which the "
          "network gets anyway)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
