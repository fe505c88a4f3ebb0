"""`cosmos batch`: every line of a JSONL file, validated first, resumable, one model per GPU."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cosmos_cli import cluster_options as c
from cosmos_cli import options as o
from cosmos_cli.batch import BatchRequest
from cosmos_cli.batch.command import run_and_print
from cosmos_cli.commands.job_flags import JobFlags, with_job_flags
from cosmos_cli.errors import GenerationError, UsageError


@with_job_flags
def batch(
    file: Annotated[Path | None, typer.Argument(
        help="Batch file: one JSON object per line (see schemas/batch_job.schema.json).")] = None,
    job: JobFlags = None,
    skip_invalid: o.SkipInvalidOpt = False,
    fail_fast: o.FailFastOpt = False,
    gpus: o.GpusOpt = 1,
    report: o.ReportOpt = None,
    executor: c.ExecutorOpt = "local",
    ray_address: c.RayAddressOpt = None,
    ray_actors: c.RayActorsOpt = 0,
    ray_retries: c.RayRetriesOpt = 2,
    shard: c.ShardOpt = None,
    merge_reports: c.MergeReportsOpt = False,
) -> None:
    """Generate every line of a batch file. The options are each line's defaults; a line's keys override them
    (a line without "seed" uses --seed). Finished lines are skipped when the same command runs again.

    Several GPUs: --workers N shares the lines out (one model per GPU); under torchrun with --num-gpus N every line
    is one generation split over the N processes. Clusters: --executor ray, or --shard I/N then --merge-reports."""
    if file is not None and job.batch_input_path is not None and file != job.batch_input_path:
        raise UsageError(f"two batch files: {file} and --batch-input-path {job.batch_input_path}", hint="Give one.")
    file = file if file is not None else job.batch_input_path
    if file is None:
        raise UsageError("a batch file is required: cosmos batch FILE (or --batch_input_path FILE, the original's flag)")
    if merge_reports:
        return merge_and_print(file, job.output_dir, report, job.as_json)
    if executor not in ("local", "ray"):
        raise UsageError(f"--executor {executor}: expected local or ray")
    from cosmos_cli.batch.ray_executor import RayOptions
    from cosmos_cli.batch.shard import parse_shard

    defaults = job.request(file)
    run_and_print(BatchRequest(file, defaults, skip_invalid=skip_invalid, fail_fast=fail_fast, gpus=gpus,
                               report_path=report, shard=parse_shard(shard), executor=executor,
                               ray=RayOptions(ray_address, ray_actors, ray_retries)), job.as_json, job.quiet)


def merge_and_print(file: Path, output_dir: Path, report: Path | None, as_json: bool) -> None:
    """--merge-reports: the shard reports combined into one; the summary on stdout; exit 1 if lines lack output."""
    from cosmos_cli.batch.shard import merge_reports

    merged = merge_reports(file, output_dir, report)
    summary = {k: v for k, v in merged.items() if k != "items"}
    parts = [f"{v} {k.replace('_', ' ')}" for k, v in merged["counts"].items() if v]
    typer.echo(json.dumps(summary, indent=2) if as_json else
               f"{file}: {merged['lines']} lines from {merged['shards']} shards, {', '.join(parts)}; "
               f"report: {merged['report']}")
    if merged["exit_code"]:
        raise GenerationError(f"{len(merged['problems'])} of {merged['lines']} lines have no output",
                              hint=f"See {merged['report']}; run the shards again to retry them.")
