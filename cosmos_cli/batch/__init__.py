"""Batch generation from a JSONL file: validated first, resumable, fault-tolerant, one model per GPU.

The flow of :func:`run_batch`:

1. **Validate** the whole file with :func:`cosmos_cli.jobs.validate_batch` (the code behind ``cosmos validate``)
   before any model loads. Any invalid line stops the batch with every error listed (exit code 1), unless
   ``skip_invalid``: then the valid lines run and each invalid one is reported as ``failed``.
2. **Plan** each line: the command-line options are the defaults, the line's keys override them (``prompt``,
   ``negative_prompt``, ``seed``, ``num_input_frames``, ``guidance``, ``num_steps``, ``fps``, ``name``). A line
   without ``seed`` uses ``--seed``: every line of a batch without seeds therefore shares one seed, and a
   batch re-run gives the same videos. A line without ``name`` is written as ``line00007`` (its line number).
3. **Resume** (see :mod:`cosmos_cli.batch.sidecar`): lines whose outputs are complete for the same parameters are ``skipped``.
4. **Run**: the model loads once (per worker) and stays placed by the memory plan across items, each item run
   by :class:`cosmos_cli.runner.JobRunner` as `generate` runs its job: a CUDA out-of-memory under ``--offload
   auto`` reloads the pipeline once with the next leaner strategy, retries the item (its message says so) and
   keeps that pipeline for the next items. One item's failure (an input that does not decode, a guardrail
   block, running out of memory again) is recorded and the batch goes on; ``fail_fast`` stops at the first.
   Ctrl-C stops after cleaning up the current item.
5. **Report**: ``batch_report.json`` (or ``report_path``), rewritten atomically while the batch runs and at the
   end, holds per line: the input line, the final prompt, the seed, the output paths, the status (``ok``,
   ``skipped``, ``failed``, ``blocked``, or ``not_run`` when Ctrl-C or ``--fail-fast`` stopped the batch first),
   the error message and the timings.

Several GPUs
------------
``gpus=N`` starts N worker processes (``spawn``); worker ``i`` loads the model on ``cuda:i`` (or the CPU with
``--device cpu``, for tests) and generates items ``i, i+N, ...`` of the lines still to do. Workers send their
progress and results to the parent, which draws one progress display and writes one report. Under
``torchrun`` (``WORLD_SIZE`` > 1) each rank takes lines ``rank, rank+WORLD_SIZE, ...`` on ``cuda:LOCAL_RANK``
and the records are gathered over ``torch.distributed`` (gloo) for rank 0 to write the combined report.

With ``--num-gpus N`` under torchrun (N processes) the ranks work together instead: every line is one generation
split over the N GPUs (see :mod:`cosmos_cli.generation`). Every rank validates the file; rank 0's plan is then
shared, so every rank runs the same items in the same order, and rank 0 alone commits the outputs and sidecars
and writes the report. A line that fails on rank 0 in a stage it runs alone (an input that does not decode, a
guardrail block) is recorded and the batch goes on; a failure of one rank inside the split work (out of memory,
a lost rank) stops the batch, since the others cannot go on without it.

The package
-----------
``plan`` (the request, validation, one job per line, the resume decisions), ``sidecar`` (what is at an output
path, committing one), ``item`` (running one line on a loaded pipeline), ``display`` (the events and their display),
``report`` (the records, the outcome, the coordinator), ``runners`` (the run modes and :func:`run_batch`);
``command`` (a batch run for a command: display, summary, exit code), ``shard`` (``--shard I/N``,
``--merge-reports``), ``stream`` (the streaming driver), ``ray_executor`` (``--executor ray``).
"""

from cosmos_cli.batch.display import BatchDisplay, EventProgress
from cosmos_cli.batch.item import run_item
from cosmos_cli.batch.plan import (
    BatchItem,
    BatchPlan,
    BatchRequest,
    job_params,
    line_request,
    plan_batch,
    prompt_hint,
    validate_for,
    validation_notes,
)
from cosmos_cli.batch.report import REPORT_NAME, STATUSES, BatchOutcome, Coordinator, ItemRecord
from cosmos_cli.batch.runners import run_batch

__all__ = [
    "REPORT_NAME",
    "STATUSES",
    "BatchDisplay",
    "BatchItem",
    "BatchOutcome",
    "BatchPlan",
    "BatchRequest",
    "Coordinator",
    "EventProgress",
    "ItemRecord",
    "job_params",
    "line_request",
    "plan_batch",
    "prompt_hint",
    "run_batch",
    "run_item",
    "validate_for",
    "validation_notes",
]
