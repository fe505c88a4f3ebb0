"""End to end through the CLI at full size with random weights: what a user waits for, per video and to start.

Writes (once, kept for later runs) a checkpoint folder of random weights in the released on-disk formats and layout
under ``--root``: the network's ``model.pt`` (bf16, the released ``net.*`` keys), the CV8x8x8 tokenizer's
``encoder.jit`` / ``decoder.jit`` / ``mean_std.pt`` (TorchScript archives) and a T5-11B-shaped ``transformers``
folder (``pytorch_model.bin`` in fp32, the encoder and one decoder layer, with a small local tokenizer: the released
tokenizer files cannot be downloaded here). The prompt upsampler and the guardrails are not written: every run
passes ``--no-upsampler --no-guardrail`` (their load and run times are not in these figures).

Then each ``--runs`` entry runs the CLI in a child process, as a user runs it (``benchmarks/e2e_cli.py``:
``cosmos`` with the full-size specs' pinned MD5s cleared, which random files cannot match):

* ``MODE:N`` runs ``cosmos batch`` of N lines (one input image, N prompts and seeds) at ``--steps`` steps;
* ``MODE:g`` runs ``cosmos generate`` once.

MODE is one of :data:`MODES` (``exact``, ``compile``, ``fast`` = ``--fast step-cache,guidance-trunc,fp8``,
``fast-compile``, one ``--fast`` option alone...). Before each run the folder's pages are dropped from the page
cache (``--warm-cache`` keeps them), so the load is a cold read from the disk. Recorded per run: the child's wall
time, its peak RSS (``wait4``), the per-stage seconds of every video (the batch report's, or ``generate --json``'s),
the GPU peak (``generate --json``). Derived: *startup + load* = wall - the videos' own times (Python start,
imports, planning, loading every model, the report), *first video* (includes the first call's warm-ups and
``--compile``'s compilation), *per video, warm* = the median of the later videos of a batch (what a user with
1,000 prompts pays per video), *cold single video* = startup + load + first video (what one ``cosmos generate``
costs). ``--warmup-steps K`` puts a line of K steps before a batch's videos (not counted as one; its time is
``warmup_line``): then every counted video is warm, and *per video, warm* is the median of all of them. Each run
also records ``attention``, the self-attention kernel its videos used (their ``details``). Since 2026-12-04 a batch
writes each video's mp4 while its next line generates (``cosmos_cli.writes``): a video's ``write`` seconds are then
outside its own time, and the last video's write falls in *startup + load* (results before that date include the
write in every video's time).

    python benchmarks/bench_e2e.py --model 7B --root /local/nvme/e2e --runs exact:1 fast-compile:3 \\
        --out benchmarks/results/e2e-7b-h200.json
    python benchmarks/bench_e2e.py --model tiny --root /tmp/e2e-tiny --runs exact:2 exact:g --device cpu  # a dry run
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from hostinfo import cgroup_peak, disk_of, drop_page_cache, gpu_name, memory_cgroup, remove_cgroup, rss_fields  # noqa: E402

GiB = 1 << 30
MARKER = ".bench_e2e_complete.json"
INPUT = HERE.parent / "assets" / "diffusion" / "video2world_input0.jpg"
MODEL_NAMES = {"7B": "7B", "14B": "14B", "tiny": "predict1-tiny"}
MODES: dict[str, list[str]] = {
    "exact": [],
    "compile": ["--compile"],
    "fast": ["--fast", "step-cache,guidance-trunc,fp8"],
    "fast-compile": ["--fast", "step-cache,guidance-trunc,fp8", "--compile"],
    "guidance-trunc": ["--fast", "guidance-trunc"],
    "fp8": ["--fast", "fp8"],
    "fp8-compile": ["--fast", "fp8", "--compile"],
    "step-cache": ["--fast", "step-cache"],
    "fast-sim": ["--fast", "step-cache,guidance-trunc,fp8-sim"],  # the fast set where FP8 cannot run (CPU)
}
PROMPTS = (
    "A robot arm picks up a red cup from the table and places it on a shelf.",
    "A car drives along a wet city street at night, its headlights reflecting on the road.",
    "A forklift carries a pallet of boxes across a warehouse floor.",
    "A drone flies low over a field of crops at sunrise.",
)


def write_spiece_model(root: Path, spec) -> None:
    """The released T5 folder also holds ``spiece.model`` (a SentencePiece model), which the CLI's file check
    asks for; the folder writer's tokenizer is a fast one (``tokenizer.json``, what ``transformers`` reads when
    both are there). Write a small SentencePiece model trained on the same words so the folder is complete."""
    import io

    import sentencepiece as spm

    from cosmos_plugins.predict1.fixtures import DEFAULT_WORDS

    for f in spec.files:
        if f.local.endswith("spiece.model") and not (root / f.local).is_file():
            words = list(DEFAULT_WORDS)
            sentences = [" ".join(words[i:i + 8]) for i in range(0, len(words), 8)] * 4
            buf = io.BytesIO()
            spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=buf, vocab_size=200,
                                           hard_vocab_limit=False, minloglevel=2)
            (root / f.local).write_bytes(buf.getvalue())


def write_folder(model: str, root: Path, device: str) -> dict:
    """Write the random checkpoint folder (in this process; the parent runs it as a child)."""
    import torch

    from cosmos_cli.specs import NETWORK, TEXT_ENCODER, TOKENIZER
    from cosmos_plugins.predict1.fixtures import write_checkpoint_folder
    from cosmos_plugins.predict1.specs import SPECS

    spec = next(s for s in SPECS.values() if MODEL_NAMES[model] in (s.name, *s.aliases))
    t0 = time.perf_counter()
    with torch.no_grad():
        write_checkpoint_folder(root, spec, seed=0, network_dtype=torch.bfloat16, device=device)
    write_spiece_model(root, spec)
    absent = [f.local for f in spec.files if f.component in (NETWORK, TOKENIZER, TEXT_ENCODER)
              and "*" not in f.local and not (root / f.local).is_file()]
    if absent:
        raise SystemExit(f"the folder writer left out {', '.join(absent)}")
    files = {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}
    info = {"model": spec.name, "seconds": round(time.perf_counter() - t0, 1), "files": files,
            "bytes": sum(files.values())}
    (root / MARKER).write_text(json.dumps(info, indent=1))
    return info


def ensure_folder(args) -> dict:
    marker = args.root / MARKER
    if marker.is_file():
        info = json.loads(marker.read_text())
        if info.get("model_key") == args.model:
            return {**info, "written_now": False}
    shutil.rmtree(args.root, ignore_errors=True)
    args.root.mkdir(parents=True)
    cmd = [sys.executable, __file__, "--write", "--model", args.model, "--root", str(args.root),
           "--device", args.device]
    subprocess.run(cmd, check=True)
    info = json.loads(marker.read_text())
    info["model_key"] = args.model
    marker.write_text(json.dumps(info, indent=1))
    return {**info, "written_now": True}


def run_child(cmd: list[str], env: dict, log: Path, group: Path | None = None) -> dict:
    """Run ``cmd`` (in cgroup ``group`` when given); its wall time, exit code, stdout, peak RSS (``wait4``: this
    process holds no model, so the high-water mark the child inherits over ``exec`` is this small process's) and
    the peaks of its RssAnon (committed: anonymous and pinned memory) and RssFile (mapped file pages), sampled
    every 0.1 s from /proc."""
    peaks: dict[str, int] = {}

    def sample(pid: int, done: threading.Event) -> None:
        while not done.wait(0.1):
            now = rss_fields(pid)
            if now is None:
                return
            for k, v in now.items():
                peaks[k] = max(peaks.get(k, 0), v)

    def join_group() -> None:
        if group is not None:
            (group / "cgroup.procs").write_text(str(os.getpid()))

    with open(log, "w") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env, text=True, preexec_fn=join_group)
        done = threading.Event()
        sampler = threading.Thread(target=sample, args=(proc.pid, done), daemon=True)
        sampler.start()
        out = proc.stdout.read()
        done.set()
        sampler.join()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"rc": proc.returncode, "wall_s": wall, "stdout": out, "rss_peak_bytes": usage.ru_maxrss * 1024,
            "sampled_peaks": peaks, "cgroup_peak_bytes": cgroup_peak(group) if group is not None else None}


def predicted_host(model: str, strategy: str, ram_bytes: int | None) -> dict:
    """What the planner predicts on the host for ``strategy`` (upsampler and guardrails off, as every run here)."""
    from cosmos_cli.planner import plan_memory
    from cosmos_plugins.predict1.specs import SPECS

    spec = next(s for s in SPECS.values() if MODEL_NAMES[model] in (s.name, *s.aliases))
    plan = plan_memory(spec, None, strategy=strategy, upsampler=False, guardrail=False, ram_bytes=ram_bytes)
    return {"host_peak_bytes": plan.host_peak_bytes, "host_mapped_bytes": plan.host_mapped_bytes,
            "page_cache_bytes": plan.page_cache_bytes, "host_fits": plan.host_fits}


def one_run(args, mode: str, count: str, work: Path) -> dict:
    mode, _, strategy = mode.partition("@")
    name = f"{mode}{'@' + strategy if strategy else ''}-{count}"
    out_dir = work / name
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    if not args.warm_cache:
        for f in args.root.rglob("*"):
            if f.is_file():
                drop_page_cache(f)
    common = ["--model", MODEL_NAMES[args.model], "--checkpoint-dir", str(args.root), "--no-upsampler",
              "--no-guardrail", "--num-steps", str(args.steps), "--device", args.device, "--json", "-o", str(out_dir),
              *MODES[mode], *(["--offload", strategy] if strategy else []), *args.extra]
    cli = [sys.executable, str(HERE / "e2e_cli.py")]
    if count == "g":
        cmd = [*cli, "generate", "-i", str(INPUT), "-p", PROMPTS[0], "--seed", "1", *common]
    else:
        lines = [{"visual_input": str(INPUT), "prompt": PROMPTS[i % len(PROMPTS)], "seed": 1 + i}
                 for i in range(int(count))]
        if args.warmup_steps:  # a short first line: the first call's warm-ups and compilations, kept out of the videos
            lines.insert(0, {"visual_input": str(INPUT), "prompt": PROMPTS[-1], "seed": 0, "name": "warmup",
                             "num_steps": args.warmup_steps})
        batch = out_dir / "batch.jsonl"
        batch.write_text("".join(json.dumps(line) + "\n" for line in lines))
        cmd = [*cli, "batch", str(batch), *common]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    print(f"[{name}] {' '.join(cmd)}", flush=True)
    group = memory_cgroup(name, args.ram_limit_bytes) if args.ram_limit_bytes else None
    if args.ram_limit_bytes and group is None:
        print(f"[{name}] no cgroup could be made here: the RAM limit is not enforced", flush=True)
    res = run_child(cmd, env, out_dir / "stderr.txt", group)
    remove_cgroup(group)
    run = {"mode": mode, "flags": MODES[mode], "command": "generate" if count == "g" else f"batch of {count}",
           "strategy": strategy or "auto", "argv": cmd[1:], "rc": res["rc"], "wall_s": round(res["wall_s"], 2),
           "rss_peak_gib": round(res["rss_peak_bytes"] / GiB, 2),
           "ram_limit_bytes": args.ram_limit_bytes, "ram_limit_cgroup": str(group) if group else None,
           "cgroup_peak_gib": round(res["cgroup_peak_bytes"] / GiB, 2) if res["cgroup_peak_bytes"] else None,
           **{f"{k}_peak_gib": round(v / GiB, 2) for k, v in res["sampled_peaks"].items()}}
    if strategy:
        predicted = predicted_host(args.model, strategy, args.ram_limit_bytes)
        run["predicted_host_peak_gib"] = round(predicted["host_peak_bytes"] / GiB, 2)
        run["predicted_host_mapped_gib"] = round(predicted["host_mapped_bytes"] / GiB, 2)
        if res["sampled_peaks"].get("RssAnon"):
            run["host_peak_measured_over_predicted"] = round(res["sampled_peaks"]["RssAnon"]
                                                             / predicted["host_peak_bytes"], 3)
    if res["rc"] != 0:
        run["stderr_tail"] = (out_dir / "stderr.txt").read_text()[-3000:]
        return run
    if count == "g":
        result = json.loads(res["stdout"])
        videos = [{"timings": result["timings"], "peak_memory_bytes": result.get("peak_memory_bytes")}]
        videos[0]["timings"]["total"] = sum(v for k, v in result["timings"].items() if k != "total")
        videos[0]["details"] = result.get("details", {})
    else:
        report = json.loads((out_dir / "batch_report.json").read_text())
        videos = [{"timings": item["timings"], "status": item["status"], "details": item.get("details", {})}
                  for item in report["items"]]
    warmup = videos.pop(0) if count != "g" and args.warmup_steps else None
    totals = [v["timings"]["total"] for v in videos]
    run["videos"] = [{k: round(t, 3) for k, t in v["timings"].items()} for v in videos]
    run["attention"] = sorted({v["details"].get("attention", "?") for v in videos})  # the kernel each video used
    if videos[0].get("peak_memory_bytes"):
        run["gpu_peak_gib"] = round(videos[0]["peak_memory_bytes"] / GiB, 2)
    run["startup_load_s"] = round(res["wall_s"] - sum(totals) - (warmup["timings"]["total"] if warmup else 0), 2)
    run["first_video_s"] = round(totals[0], 2)
    if warmup:  # every full video ran after the warm-up line: all of them are warm
        run["warmup_line"] = {"steps": args.warmup_steps, "total_s": round(warmup["timings"]["total"], 2)}
        run["cold_single_video_s"] = None
        run["per_video_warm_s"] = round(statistics.median(totals), 2)
        warm = videos
    else:
        run["cold_single_video_s"] = round(run["startup_load_s"] + totals[0], 2)
        run["per_video_warm_s"] = round(statistics.median(totals[1:]), 2) if len(totals) > 1 else None
        warm = videos[1:] or videos
    run["denoise_s_per_step"] = round(statistics.median(v["timings"]["denoise"] for v in warm) / args.steps, 3)
    run["outside_denoise_s"] = round(statistics.median(
        v["timings"]["total"] - v["timings"]["denoise"] for v in warm), 2)
    return run


def print_table(report: dict) -> None:
    cols = ("run", "attention", "startup+load s", "first video s", "per video warm s", "s/step", "outside denoise s",
            "write s", "GPU peak GiB", "RSS peak GiB", "RssAnon peak GiB (predicted)", "RssFile peak GiB")
    print(" | ".join(cols))
    for r in report["runs"]:
        if r["rc"] != 0:
            print(f"{r['mode']} ({r['command']}) | FAILED rc={r['rc']}")
            continue
        write = statistics.median(v.get("write", 0.0) for v in r["videos"])
        anon = f"{r.get('RssAnon_peak_gib', '-')} ({r.get('predicted_host_peak_gib', '-')})"
        print(" | ".join(str(x) for x in (f"{r['mode']}@{r['strategy']} ({r['command']})", ",".join(r["attention"]),
                                           r["startup_load_s"],
                                           r["first_video_s"], r["per_video_warm_s"], r["denoise_s_per_step"],
                                           r["outside_denoise_s"], round(write, 2), r.get("gpu_peak_gib", "-"),
                                           r["rss_peak_gib"], anon, r.get("RssFile_peak_gib", "-"))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="7B", choices=list(MODEL_NAMES))
    ap.add_argument("--root", type=Path, default=Path("/tmp/cosmos-bench-e2e"))
    ap.add_argument("--runs", nargs="*", default=["exact:1"],
                    help="MODE[@STRATEGY]:N (batch of N lines) or MODE[@STRATEGY]:g (generate); STRATEGY: --offload")
    ap.add_argument("--ram-limit", default=None, help="run each child in a cgroup v2 with this memory.max, e.g. 32GB")
    ap.add_argument("--steps", type=int, default=35)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--warm-cache", action="store_true", help="keep the folder's pages in the page cache")
    ap.add_argument("--warmup-steps", type=int, default=0,
                    help="batch runs: first a line of this many steps (not counted as a video), so that every "
                         "counted video is warm (first-call compilations done); 0: none")
    ap.add_argument("--extra", nargs="*", default=[], help="more CLI flags for every run (e.g. --offload NAME)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--write", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.root = args.root.resolve()
    if args.write:
        write_folder(args.model, args.root, args.device)
        return
    args.ram_limit_bytes = None
    if args.ram_limit:
        from cosmos_cli.gpu import parse_size

        args.ram_limit_bytes = parse_size(args.ram_limit, "--ram-limit")
    for run in args.runs:
        mode, _, count = run.partition(":")
        if mode.partition("@")[0] not in MODES or not (count == "g" or count.isdigit() and int(count) > 0):
            ap.error(f"--runs {run}: expected MODE[@STRATEGY]:N or MODE[@STRATEGY]:g with MODE one of "
                     f"{', '.join(MODES)}")
    t0 = time.perf_counter()
    folder = ensure_folder(args)
    how = f"written in {folder['seconds']:.0f} s" if folder["written_now"] else "kept"
    print(f"checkpoint folder {args.root}: {folder['bytes'] / GiB:.1f} GiB, {how}", flush=True)
    report = {
        "benchmark": "end to end through the CLI (cosmos batch / generate), random weights, full-size files",
        "command": " ".join([sys.executable, *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": gpu_name() if args.device.startswith("cuda") else "cpu",
        "torch": importlib.metadata.version("torch"),
        "model": args.model, "steps": args.steps, "input": INPUT.name,
        "disk": disk_of(args.root), "folder": {k: v for k, v in folder.items() if k != "files"},
        "cold_cache": not args.warm_cache, "ram_limit": args.ram_limit,
        "flash4_tile": os.environ.get("COSMOS_BENCH_FLASH4_TILE") or "flash-attn-4's choice",
        "not_included": "prompt upsampler and guardrails (--no-upsampler --no-guardrail): not written, not run",
        "runs": [],
    }
    work = args.root.parent / (args.root.name + "-outputs")
    for run in args.runs:
        mode, _, count = run.partition(":")
        report["runs"].append(one_run(args, mode, count, work))
        if args.out:  # keep what was measured if a later run is cut off
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=1) + "\n")
    report["bench_s"] = round(time.perf_counter() - t0, 1)
    print_table(report)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
