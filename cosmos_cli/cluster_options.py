"""The options of ``cosmos batch`` beyond one machine (Ray, shards), written once with their help."""

from __future__ import annotations

from typing import Annotated

import typer

from cosmos_cli.options import _flag

P_CLUSTER = "Clusters"

ExecutorOpt = Annotated[
    str,
    typer.Option("--executor", rich_help_panel=P_CLUSTER, metavar="NAME",
                 help="local (this machine, --workers processes) or ray (one actor per model copy on a Ray "
                      "cluster: pip install cosmos-cli\\[ray])."),
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option("--ray-address", rich_help_panel=P_CLUSTER, metavar="ADDR",
                 help="The Ray cluster: auto (the one this node belongs to, or RAY_ADDRESS), HOST:PORT or "
                      "ray://HOST:PORT. Default: RAY_ADDRESS if set, else a Ray started on this machine."),
]
RayActorsOpt = Annotated[
    int,
    typer.Option("--ray-actors", min=0, rich_help_panel=P_CLUSTER, metavar="N",
                 help="Model copies (actors) on the cluster. 0: one per GPU of the cluster (--workers with "
                      "--device cpu)."),
]
RayRetriesOpt = Annotated[
    int,
    typer.Option("--ray-retries", min=0, rich_help_panel=P_CLUSTER, metavar="N",
                 help="How many times a line whose actor died (node lost, out of memory) is sent to another "
                      "actor before it is recorded failed."),
]
ShardOpt = Annotated[
    str | None,
    typer.Option("--shard", rich_help_panel=P_CLUSTER, metavar="I/N",
                 help="Run part I of N (0 <= I < N) of the valid lines, with its own report "
                      "batch_report.shard-I-of-N.json: for Slurm job arrays (--shard $SLURM_ARRAY_TASK_ID/N)."),
]
MergeReportsOpt = Annotated[
    bool,
    _flag("--merge-reports", rich_help_panel=P_CLUSTER,
          help="Generate nothing: combine the shard reports in --output-dir into batch_report.json."),
]
