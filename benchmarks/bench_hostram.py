"""The network streamed from the memory-mapped checkpoint (``map``) against pinned streaming and resident: denoising
time, GPU peak and host memory (RSS) per placement, at full size with random weights read from a file on local disk.

Writes (once, kept for later runs) a random bf16 ``model.pt`` of the 7B or 14B network in the released key format
under ``--weights-dir`` (say which disk: the script records the mount, filesystem and device model it is on). Then
each placement runs in its own child process, so each RSS is its own:

* ``resident``: the network loaded straight onto the GPU (through the file's mapping);
* ``stream``: the blocks parked in pinned host memory, streamed by a side CUDA stream (the stream* strategies);
* ``map``: the blocks left in the file's mapping, read ahead by a side thread into a 2-block pinned staging ring
  (the stream-mapped* strategies); ``map-cold`` the same with the file's pages dropped from the page cache before
  every forward (``madvise(MADV_DONTNEED)`` on the mapping, then ``posix_fadvise(POSIX_FADV_DONTNEED)``), which is
  what a file larger than the page cache costs (each forward reads the whole file from disk).

Each child times ``--forwards`` network forwards of one guidance branch at the default job (56,320 tokens; a
35-step generation is 70 of them under the sequential strategies), with the lean (chunked) forward when ``--lean``
(the *-lean strategies), and records ``torch.cuda.max_memory_allocated``, the process's RssAnon / RssFile /
RssShmem after the forwards and VmHWM, next to what the planner predicts for the network's part of the host memory
(:func:`cosmos_cli.planner.evaluate_host`: the pinned copy or the staging ring) and ``HOST_RUNTIME_BYTES`` (the
RssAnon of a child with CUDA up and no model: ``runtime``). The outputs of the first forward are compared across
placements (they must be equal: same weights, same kernels).

``--ram-limit 32GB`` runs each child in a fresh cgroup v2 with that ``memory.max`` (where this process may create
one under its own cgroup; otherwise recorded as not enforced); the limit counts the page cache the child's file
reads fill, so a mapped network larger than what is left re-reads from disk as it would on such a machine.
``--ballast-for VRAM,RAM`` makes that honest for a whole run: each child first holds (anonymous, touched) what the
planner predicts the rest of that run holds on the host, with the upsampler and guardrails off: the strategy
``plan_memory`` picks for that GPU and RAM, its host peak less the network's share and the runtime (T5's pinned
fp32 copy, the tokenizer's, the job's frames). ``--batch 2`` times both guidance branches in one forward (the
strategies that batch them, ``stream-mapped``); 1, one branch (the sequential ones).

    python benchmarks/bench_hostram.py --model 14B --weights-dir /local/nvme/bench --forwards 3 \
        --out benchmarks/results/hostram-14b-h200.json
    python benchmarks/bench_hostram.py --model 7B --weights-dir /local/nvme/bench --ram-limit 32GB --lean
    python benchmarks/bench_hostram.py --model tiny --device cpu --weights-dir /tmp/bench   # a dry run on a CPU
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from cosmos_cli.gpu import parse_size
from cosmos_cli.planner import HOST_RUNTIME_BYTES, evaluate_host, plan_memory
from cosmos_cli.specs import NETWORK
from cosmos_plugins.predict1 import offload as O
from cosmos_plugins.predict1.checkpoint import load_network, write_random_checkpoint
from cosmos_plugins.predict1.specs import PREDICT1_7B, PREDICT1_14B, PREDICT1_TINY
from cosmos_plugins.predict1.strategies import STRATEGIES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hostinfo import disk_of, drop_page_cache, memory_cgroup, remove_cgroup  # noqa: E402

GiB = 1 << 30
SPECS = {"7B": PREDICT1_7B, "14B": PREDICT1_14B, "tiny": PREDICT1_TINY}
LATENTS = {"7B": (16, 88, 160), "14B": (16, 88, 160), "tiny": (3, 4, 4)}
TEXT_TOKENS = {"7B": 512, "14B": 512, "tiny": 8}
PLACEMENTS = ("runtime", "resident", "stream", "map", "map-cold")
# the strategies whose network placement each measures (for the planner's host figures)
STRATEGY_OF = {"resident": "resident", "stream": "stream-sequential", "map": "stream-mapped-sequential",
               "map-cold": "stream-mapped-sequential"}
MADV_DONTNEED = 4


def status() -> dict[str, int]:
    """RssAnon, RssFile, RssShmem, VmHWM of this process in bytes (/proc/self/status)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("RssAnon", "RssFile", "RssShmem", "VmHWM", "VmRSS"):
            out[key] = int(rest.split()[0]) * 1024
    return out


def evict(path: Path) -> None:
    """Drop ``path``'s pages from this process's mapping and from the page cache (clean pages: read again later)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and Path(fields[5].strip()) == path.resolve():
            start, end = (int(a, 16) for a in fields[0].split("-"))
            libc.madvise(start, end - start, MADV_DONTNEED)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def make_inputs(p, latent, text_tokens: int, device: torch.device, dtype: torch.dtype, seed: int = 0, batch: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, p.in_channels, *latent, generator=gen).to(device, dtype)
    emb = torch.randn(batch, text_tokens, p.crossattn_emb_channels, generator=gen).to(device, dtype)
    mask = torch.zeros(batch, 1, *latent, device=device, dtype=dtype)
    mask[:, :, :1] = 1
    t = torch.tensor([0.25 * math.log(10.9)], device=device)
    return x, t, emb, torch.tensor([24.0], device=device), mask


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def child(args) -> dict:
    """One placement in this process: load, place, time the forwards, read the memory."""
    device = torch.device(args.device)
    spec = SPECS[args.model]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cuda":
        torch.cuda.init()
        torch.empty(1, device=device)  # the CUDA context, as in a run
    row: dict = {"placement": args.child}
    ballast = None
    if args.ballast_bytes:  # what the rest of the run holds on the host, touched so that it is resident
        ballast = torch.ones(args.ballast_bytes, dtype=torch.uint8)
        row["ballast_bytes"] = args.ballast_bytes
    if args.child == "runtime":
        row["rss"] = status()
        return row
    mapped = args.child.startswith("map")
    t0 = time.perf_counter()
    net = load_network(args.checkpoint, spec.network, device=device if args.child == "resident" else "cpu",
                       dtype=dtype, rope_mode="fp32", map_blocks=mapped)
    placement = {"resident": "gpu", "stream": "stream"}.get(args.child, "map")
    placed = O.place(net, placement, device, blocks=list(net.blocks.values()))
    row["load_s"] = time.perf_counter() - t0
    row["rss_after_load"] = status()
    inputs = make_inputs(spec.network, LATENTS[args.model], TEXT_TOKENS[args.model], device, dtype, batch=args.batch)
    times = []
    with torch.inference_mode(), placed.active():
        forward = O.network_forward(placed, args.lean)
        for i in range(args.forwards):
            if args.child == "map-cold":
                evict(args.checkpoint)
            sync(device)
            t1 = time.perf_counter()
            out = forward(*inputs)
            sync(device)
            times.append(time.perf_counter() - t1)
            if i == 0:
                torch.save(out.float().cpu(), args.work / f"{args.child}.pt")
            del out
        row["rss_during"] = status()
    row["forward_s"] = times
    row["gpu_peak_bytes"] = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    if mapped:
        row["staging_bytes"] = placed.staging_bytes
    placed.close()
    del ballast
    return row


def run_child(args, placement: str, limit: int | None) -> dict:
    cmd = [sys.executable, __file__, "--child", placement, "--model", args.model, "--device", args.device,
           "--checkpoint", str(args.checkpoint), "--work", str(args.work), "--forwards", str(args.forwards),
           "--batch", str(args.batch), "--ballast-bytes", str(args.ballast_bytes)]
    if args.lean:
        cmd.append("--lean")
    enforced = group = None
    pre = None
    if limit is not None:
        group = memory_cgroup(f"hostram-{placement}", limit)
        if group is not None:
            enforced = str(group)

            def pre():
                (group / "cgroup.procs").write_text(str(os.getpid()))
    # The file's pages leave the page cache first: a page is charged to the cgroup that reads it in, so pages this
    # process (the writer) or an earlier child left there would sit outside the child's limit.
    drop_page_cache(args.checkpoint)
    res = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=pre)
    remove_cgroup(group)
    if res.returncode != 0:
        return {"placement": placement, "error": f"exit {res.returncode}", "stderr": res.stderr[-3000:],
                "ram_limit_cgroup": enforced}
    row = json.loads(res.stdout.strip().splitlines()[-1])
    row["ram_limit_cgroup"] = enforced
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="7B", choices=list(SPECS))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--weights-dir", type=Path, default=Path("/tmp/cosmos-bench-hostram"))
    ap.add_argument("--forwards", type=int, default=3)
    ap.add_argument("--lean", action="store_true", help="the chunked forward of the *-lean strategies")
    ap.add_argument("--placements", nargs="*", default=list(PLACEMENTS), choices=PLACEMENTS)
    ap.add_argument("--ram-limit", default=None, help="run each placement under a cgroup v2 memory.max, e.g. 32GB")
    ap.add_argument("--ballast-for", default=None, help="VRAM,RAM: hold what the rest of that machine's run holds")
    ap.add_argument("--batch", type=int, default=1, choices=(1, 2), help="guidance branches per forward")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--ballast-bytes", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--checkpoint", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    spec = SPECS[args.model]
    args.weights_dir.mkdir(parents=True, exist_ok=True)
    args.checkpoint = args.weights_dir / f"{spec.name}-random-bf16.pt"
    args.work = args.weights_dir / "outputs"
    args.work.mkdir(exist_ok=True)
    for stale in args.work.glob("*.pt"):  # the first forward's outputs of an earlier run
        stale.unlink()
    t0 = time.perf_counter()
    if not args.checkpoint.exists():
        write_random_checkpoint(args.checkpoint, spec.network, seed=0, dtype=torch.bfloat16)
    device = torch.device(args.device)
    by_name = {s.name: s for s in STRATEGIES}
    ballast = None
    if args.ballast_for:
        vram, ram = (parse_size(v, "--ballast-for") for v in args.ballast_for.split(","))
        plan = plan_memory(spec, vram, ram_bytes=ram, upsampler=False, guardrail=False)
        use = evaluate_host(spec, by_name[plan.strategy], upsampler=False, guardrail=False)
        network_share = sum(b for n, _, b in use.held if n == NETWORK)
        args.ballast_bytes = use.peak_bytes - network_share - HOST_RUNTIME_BYTES
        ballast = {"for": args.ballast_for, "strategy": plan.strategy, "fits": plan.fits,
                   "predicted_host_peak_bytes": use.peak_bytes, "network_share_bytes": network_share,
                   "ballast_bytes": args.ballast_bytes, "page_cache_bytes": plan.page_cache_bytes}
    report = {
        "benchmark": "network streamed from the mapped checkpoint vs pinned vs resident (benchmarks/bench_hostram.py)",
        "command": "python " + " ".join(sys.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "model": spec.name,
        "lean": args.lean,
        "checkpoint_bytes": args.checkpoint.stat().st_size,
        "checkpoint_write_s": time.perf_counter() - t0,
        "disk": disk_of(args.checkpoint),
        "ram_limit": args.ram_limit,
        "ballast": ballast,
        "batch": args.batch,
        "host_runtime_bytes_planned": HOST_RUNTIME_BYTES,
        "rows": [],
    }
    limit = parse_size(args.ram_limit, "--ram-limit") if args.ram_limit else None
    net = spec.component(NETWORK)
    for placement in args.placements:
        row = run_child(args, placement, limit)
        if placement in STRATEGY_OF:
            strategy = by_name[STRATEGY_OF[placement]]
            row["strategy"] = strategy.name
            held = [b for n, _, b in evaluate_host(spec, strategy, upsampler=False, guardrail=False).held if n == NETWORK]
            row["predicted_network_host_bytes"] = sum(held)
            row["network_mapped_bytes"] = net.weight_bytes if strategy.mapped else 0
        report["rows"].append(row)
        print(json.dumps({k: row.get(k) for k in ("placement", "error", "forward_s", "gpu_peak_bytes")}), flush=True)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n")
    ref = next((args.work / f"{p}.pt" for p in ("resident", "stream", "map") if (args.work / f"{p}.pt").exists()), None)
    if ref is not None:
        base = torch.load(ref)
        for row in report["rows"]:
            path = args.work / f"{row['placement']}.pt"
            if path.exists() and "error" not in row:
                row["max_abs_diff_vs_" + ref.stem] = (torch.load(path) - base).abs().max().item()
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)


def print_table(report: dict) -> None:
    runtime = next((r for r in report["rows"] if r["placement"] == "runtime" and "rss" in r), None)
    base = runtime["rss"]["RssAnon"] if runtime else 0
    print(f"\n{report['model']} on {report['device']}, weights on {report['disk'].get('model', '?')} "
          f"({report['disk']['filesystem']} at {report['disk']['mount']})"
          + (f", RSS of CUDA + Python alone: {base / GiB:.2f} GiB (planned {HOST_RUNTIME_BYTES / GiB:.1f})"
             if runtime else ""))
    print(f"{'placement':10} {'s/forward':>10} {'70 fwd (s)':>11} {'GPU peak':>9} {'RssAnon':>8} {'RssFile':>8} "
          f"{'predicted':>9} {'diff':>8}")
    for r in report["rows"]:
        if r["placement"] == "runtime":
            continue
        if "error" in r:
            print(f"{r['placement']:10} error: {r['error']}")
            continue
        fwd = sorted(r["forward_s"])[len(r["forward_s"]) // 2]
        gpu = r["gpu_peak_bytes"] / GiB if r.get("gpu_peak_bytes") else float("nan")
        rss = r["rss_during"]
        diff = next((v for k, v in r.items() if k.startswith("max_abs_diff")), float("nan"))
        print(f"{r['placement']:10} {fwd:10.2f} {70 * fwd:11.0f} {gpu:9.2f} {(rss['RssAnon'] - base) / GiB:8.2f} "
              f"{rss['RssFile'] / GiB:8.2f} {r.get('predicted_network_host_bytes', 0) / GiB:9.2f} {diff:8.1e}")
    print("RssAnon is above the runtime child's; predicted: the planner's host bytes for the network (pinned copy or "
          "staging ring + non-block weights); RssFile: the mapped file's pages (page cache) and libraries")


if __name__ == "__main__":
    main()
