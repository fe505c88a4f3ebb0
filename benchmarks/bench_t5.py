"""Our T5 encoder against transformers' on one full-size T5-11B-shaped folder: load time from a cold page cache,
encode time, peaks, and how far the embeddings are apart.

Each implementation runs in a child process of its own (the import is part of what a user waits for), after the
folder's pages are dropped from the page cache: ``ours`` is ``T5TextEncoder.load`` (``plugins/predict1/t5.py``,
what ``cosmos generate`` runs), ``transformers`` is ``T5EncoderModel.from_pretrained`` + ``T5TokenizerFast`` as
the original loads them (reference spec section 7). Both in fp32 (the original's dtype) on ``--device``, 512
tokens per prompt. The folder is the one ``bench_e2e.py`` writes (random weights, ``pytorch_model.bin`` in fp32
holding the encoder and one decoder layer, a small local tokenizer), or any T5 folder.

    python benchmarks/bench_t5.py --folder /tmp/cosmos-bench-e2e/google-t5/t5-11b --out benchmarks/results/t5-h200.json
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from hostinfo import disk_of, drop_page_cache, gpu_name  # noqa: E402

GiB = 1 << 30
PROMPTS = ("a robot arm picks up a red cup from the table", "a car drives along a wet street at night",
           "a ball rolls left across the floor")
IMPLS = ("ours", "transformers")


def child(impl: str, folder: Path, device: str, out: Path) -> None:
    """Load, encode every prompt three times (the first is the warm-up), save the embeddings and the figures."""
    t0 = time.perf_counter()
    import torch

    if impl == "ours":
        from cosmos_plugins.predict1.text_encoder import T5TextEncoder

        enc = T5TextEncoder.load(folder, device=device, dtype=torch.float32, max_length=512)
        loaded_with = "transformers" in sys.modules

        def encode(prompt: str) -> torch.Tensor:
            return enc.encode([prompt])
    else:
        from transformers import T5EncoderModel, T5TokenizerFast

        tok = T5TokenizerFast.from_pretrained(folder, local_files_only=True)
        model = T5EncoderModel.from_pretrained(folder, local_files_only=True).to(device).eval()
        loaded_with = True

        @torch.inference_mode()
        def encode(prompt: str) -> torch.Tensor:
            t = tok([prompt], max_length=512, padding="max_length", truncation=True, return_tensors="pt")
            hidden = model(input_ids=t.input_ids.to(device), attention_mask=t.attention_mask.to(device)).last_hidden_state
            hidden[:, int(t.attention_mask.sum()):] = 0
            return hidden
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
    load_s = time.perf_counter() - t0
    times, embeddings = [], {}
    for prompt in PROMPTS:
        for _ in range(3):
            t = time.perf_counter()
            e = encode(prompt)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        embeddings[prompt] = e.float().cpu()
    torch.save(embeddings, out / f"{impl}.pt")
    (out / f"{impl}.json").write_text(json.dumps({
        "impl": impl, "import_and_load_s": round(load_s, 2),
        "encode_s_median_warm": round(sorted(times[1::3] + times[2::3])[len(PROMPTS) - 1], 4),
        "encode_s_first": round(times[0], 4), "transformers_imported": loaded_with,
        "gpu_peak_gib": round(torch.cuda.max_memory_allocated() / GiB, 2) if cuda else None}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-t5"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--child", choices=IMPLS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.child:
        child(args.child, args.folder, args.device, args.work)
        return
    rows = []
    for impl in IMPLS:
        for f in args.folder.rglob("*"):
            if f.is_file():
                drop_page_cache(f)
        cmd = [sys.executable, __file__, "--child", impl, "--folder", str(args.folder), "--device", args.device,
               "--work", str(args.work)]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd)
        _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{impl}: the child failed")
        row = json.loads((args.work / f"{impl}.json").read_text())
        row.update(wall_s=round(time.perf_counter() - t0, 2), rss_peak_gib=round(usage.ru_maxrss * 1024 / GiB, 2))
        rows.append(row)
    import torch

    ours, ref = (torch.load(args.work / f"{i}.pt") for i in IMPLS)
    rel = {p: float((ours[p] - ref[p]).abs().max() / ref[p].abs().max()) for p in PROMPTS}
    report = {"benchmark": "T5 encoder: ours vs transformers, fp32, cold page cache, one process each",
              "command": " ".join([sys.executable, *sys.argv]),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "device": gpu_name() if args.device.startswith("cuda") else "cpu",
              "torch": importlib.metadata.version("torch"), "transformers": importlib.metadata.version("transformers"),
              "folder": str(args.folder), "folder_bytes": sum(f.stat().st_size for f in args.folder.rglob("*")
                                                              if f.is_file()),
              "disk": disk_of(args.folder), "rows": rows, "max_rel_diff_per_prompt": rel}
    print(f"{'impl':13} {'wall s':>7} {'load s':>7} {'encode s':>9} {'GPU GiB':>8} {'RSS GiB':>8}  transformers")
    for r in rows:
        print(f"{r['impl']:13} {r['wall_s']:7.2f} {r['import_and_load_s']:7.2f} {r['encode_s_median_warm']:9.4f} "
              f"{r['gpu_peak_gib'] or 0:8.2f} {r['rss_peak_gib']:8.2f}  {r['transformers_imported']}")
    print("max |ours - transformers| / max |transformers|:", {p[:20]: f"{v:.1e}" for p, v in rel.items()})
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
