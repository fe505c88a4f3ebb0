"""Memory of the `cosmos batch --executor ray` driver for a batch of N lines (default 1,000,000), no model needed.

The streaming driver (cosmos_cli/batch/stream.py) is run as the Ray driver runs it, without the actors:

1. ``index``: the whole file validated in one pass (``index_batch``), what the driver then holds for the run;
2. ``run``: every line planned a window at a time (``stream_plan``: the resume decisions of a local batch) and
   given the record an actor would return (``ok``), spooled; the running report rewritten on its schedule and the
   final report written from the spool.

``VmRSS`` after each phase and the peak (``VmHWM``) come from /proc/self/status; the baseline is the process with
cosmos_cli imported (and, with ``--ray``, Ray started and connected, as the real driver is). ``--local N`` also
measures the local batch's planner (``plan_batch``, everything in memory) on N lines, for the per-line comparison.

    python benchmarks/bench_batch_driver.py --lines 1000000 --ray --local 20000 \\
        --out benchmarks/results/batch-driver-1m.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def mem() -> dict[str, float]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1]) / 1024  # kB -> MiB
    return out


def write_batch(path: Path, image: Path, n: int) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            line = {"visual_input": str(image), "prompt": f"a red ball rolls to the left of a blue box, take {i}"}
            if i % 10 == 0:
                line["name"] = f"clip_{i}"
            f.write(json.dumps(line) + "\n")


def request(jsonl: Path, out: Path):
    from cosmos_cli.batch import BatchRequest
    from cosmos_cli.generation import GenerateRequest

    d = GenerateRequest(input_path=jsonl, prompt=None, model="predict1-tiny", output_dir=out,
                        disable_prompt_upsampler=True, disable_guardrail=True, device="cpu")
    return BatchRequest(jsonl, d, executor="ray")


def streamed(jsonl: Path, out: Path) -> dict:
    from cosmos_cli.batch import BatchDisplay, BatchItem, ItemRecord
    from cosmos_cli.batch.stream import RecordSpool, StreamCoordinator, index_batch, stream_plan
    from cosmos_cli.progress import QuietProgress
    from cosmos_cli.registry import find_model

    _, spec = find_model("predict1-tiny")
    req = request(jsonl, out)
    res: dict = {"before": mem()}
    t = time.perf_counter()
    index = index_batch(req, spec, QuietProgress())
    res["index_s"] = time.perf_counter() - t
    res["after_index"] = mem()
    out.mkdir(parents=True, exist_ok=True)
    spool = RecordSpool(out, index.last_line)
    coord = StreamCoordinator(req, spec, BatchDisplay("quiet"), out / "batch_report.json", index, spool, (0, 1))
    t = time.perf_counter()
    n_items = 0
    for x in stream_plan(req, spec, index, QuietProgress(), (0, 1)):
        if isinstance(x, BatchItem):  # the record an actor returns for a finished line
            n_items += 1
            coord.on_event(("record", 0, ItemRecord(
                x.line, x.job.name, "ok", input=x.data, visual_input=str(x.job.visual_input), prompt=x.job.prompt,
                seed=x.job.seed, params_hash=x.params_hash, video=str(x.video_path), prompt_file=str(x.prompt_path),
                device="node:1234/cuda:0", timings={"denoise": 1.0, "decode": 0.5, "total": 2.0})))
        else:
            coord.decided(x)
    res["run_s"] = time.perf_counter() - t
    t = time.perf_counter()
    outcome = coord.write_report(final=True)
    res["report_s"] = time.perf_counter() - t
    res["report_bytes"] = (out / "batch_report.json").stat().st_size
    spool.close()
    res["after_run"] = mem()
    res["items"] = n_items
    res["counts"] = outcome.counts
    return res


def local_plan(jsonl: Path, out: Path) -> dict:
    from cosmos_cli.batch import plan_batch
    from cosmos_cli.progress import QuietProgress
    from cosmos_cli.registry import find_model

    _, spec = find_model("predict1-tiny")
    before = mem()["VmRSS"]
    t = time.perf_counter()
    plan = plan_batch(request(jsonl, out), spec, QuietProgress())
    return {"lines": len(plan.items), "plan_s": time.perf_counter() - t, "held_mib": mem()["VmRSS"] - before}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--local", type=int, default=0, help="also plan this many lines with the local planner")
    ap.add_argument("--ray", action="store_true", help="start and connect Ray first, as the driver does")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import cv2
    import numpy as np

    import cosmos_cli.batch  # noqa: F401  (the driver's imports, in the baseline)

    result: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "lines": args.lines,
                    "device": f"{platform.processor() or platform.machine()} ({platform.node()})",
                    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if args.ray:
        import ray

        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        result["ray"] = ray.__version__
    result["baseline"] = mem()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        image = d / "frame.png"
        cv2.imwrite(str(image), np.full((40, 56, 3), 128, np.uint8))
        jsonl = d / "jobs.jsonl"
        write_batch(jsonl, image, args.lines)
        result["file_bytes"] = jsonl.stat().st_size
        result["streamed"] = streamed(jsonl, d / "out")
        if args.local:
            small = d / "small.jsonl"
            write_batch(small, image, args.local)
            result["local_plan"] = {**local_plan(small, d / "out-local"), "lines": args.local}
    if args.ray:
        ray.shutdown()
    s, base = result["streamed"], result["baseline"]["VmRSS"]
    rows = [("baseline RSS (imports" + (", Ray connected" if args.ray else "") + ")", f"{base:.0f} MiB"),
            (f"RSS holding {args.lines:,} validated lines", f"{s['after_index']['VmRSS']:.0f} MiB"),
            ("  of which the lines", f"{s['after_index']['VmRSS'] - base:.0f} MiB "
             f"({(s['after_index']['VmRSS'] - base) * 2**20 / args.lines:.0f} B/line)"),
            ("peak RSS, validation + run + report", f"{s['after_run']['VmHWM']:.0f} MiB"),
            ("validation", f"{s['index_s']:.0f} s ({s['index_s'] / args.lines * 1e6:.0f} us/line)"),
            ("planning + spooling records", f"{s['run_s']:.0f} s ({s['run_s'] / args.lines * 1e6:.0f} us/line)"),
            ("final report", f"{s['report_s']:.0f} s, {s['report_bytes'] / 2**20:.0f} MiB")]
    if args.local:
        lp = result["local_plan"]
        rows.append((f"local planner, {args.local:,} lines held", f"{lp['held_mib']:.0f} MiB "
                     f"({lp['held_mib'] * 2**20 / args.local:.0f} B/line)"))
    width = max(len(r[0]) for r in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    result["goal_mib"] = 500
    result["meets_goal"] = s["after_run"]["VmHWM"] < 500
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
