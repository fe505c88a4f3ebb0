"""The one job runner of `generate` and `batch`: a loaded pipeline and the jobs run on it.

:class:`JobRunner` loads the pipeline as the memory plan says (:func:`cosmos_cli.generation.load_pipeline`) and runs
one job at a time on it. What both commands share lives here:

- a CUDA out-of-memory under ``--offload auto`` (one process, on a GPU) re-plans with the next leaner strategy
  (:func:`cosmos_cli.planner.leaner_strategy`), rebuilds the pipeline once and runs the job again; the leaner
  pipeline is kept for the jobs that follow (a batch's next lines do not plan again). Under an explicit
  strategy, the original's offload flags, on the CPU, in a run of several processes (the other ranks cannot follow
  a rebuild), or when the retry runs out of memory too, the out-of-memory error propagates: the caller words it
  (:func:`out_of_memory_error` for `generate`, one line in the report for `batch`);
- a guardrail block raises :class:`Blocked` (a :class:`GuardrailBlocked` that keeps the guardrail's own reason).

Where the files go is the caller's: `generate` writes the video where it is asked (the pipeline writes it
atomically), `batch` has it written to a hidden staged name and commits it with its sidecar.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from cosmos_cli.errors import GenerationError, GuardrailBlocked, RankError

if TYPE_CHECKING:
    from cosmos_cli.backend import Backend, ParallelRun, Pipeline
    from cosmos_cli.generation import GenerateRequest
    from cosmos_cli.jobs import GenerationJob, GenerationResult
    from cosmos_cli.progress import Progress
    from cosmos_cli.specs import ModelSpec
    from cosmos_cli.writes import WriteSlot


class Blocked(GuardrailBlocked):
    """A guardrail blocked the job; ``reason`` is the guardrail's own words (what a batch report records)."""

    def __init__(self, reason: str):
        super().__init__(f"blocked by the guardrail ({reason}); nothing was written")
        self.reason = reason


@dataclass(frozen=True)
class JobOutcome:
    """A job's result, and the out-of-memory retry it took (``retried_with`` None: none)."""

    result: GenerationResult
    retried_with: str | None = None
    retried_from: str | None = None

    @property
    def note(self) -> str:
        """The retry in words, for a batch line's message (empty without one)."""
        if self.retried_with is None:
            return ""
        return (f"retried with memory strategy {self.retried_with} after CUDA out of memory under "
                f"{self.retried_from}")


def oom_text(exc: BaseException) -> str:
    """The first line of a CUDA out-of-memory error."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else "CUDA out of memory"


class JobRunner:
    """``spec``'s pipeline loaded on ``device`` for ``req`` (its memory plan), and :meth:`run` for each job."""

    def __init__(self, backend: Backend, spec: ModelSpec, req: GenerateRequest, device: str, progress: Progress,
                 run: ParallelRun | None = None):
        from cosmos_cli import generation  # looked up at call time: tests replace generation.load_pipeline

        self.backend, self.spec, self.req, self.device, self.run_ = backend, spec, req, device, run
        self.pipeline: Pipeline | None = generation.load_pipeline(backend, spec, req, device, progress, run)

    @property
    def strategy(self) -> str:
        """The memory strategy the loaded pipeline was planned with."""
        return getattr(getattr(self.pipeline, "plan", None), "strategy", self.req.offload)

    def leaner(self) -> str | None:
        """The next leaner strategy than the loaded one (None after the leanest, or for an unknown name)."""
        from cosmos_cli.planner import leaner_strategy

        return leaner_strategy(self.strategy, self.spec)  # None for a name the backend does not implement

    @property
    def may_retry(self) -> bool:
        """Whether an out-of-memory is retried leaner: the strategy was the planner's choice (``--offload auto``,
        none of the original's offload flags), one process, a GPU (a CPU plan has no leaner placement)."""
        req = self.req
        return (req.offload == "auto" and not req.original_offload_flags and self.run_ is None
                and self.device != "cpu")

    @property
    def background_writes(self) -> bool:
        """Whether the loaded pipeline takes ``writes=`` (:mod:`cosmos_cli.writes`) in ``generate``."""
        return getattr(self.pipeline, "background_writes", False) is True

    def run(self, job: GenerationJob, progress: Progress, *, video_path: Path,
            prompt_path: Path | None = None, writes: WriteSlot | None = None) -> JobOutcome:
        """Generate ``job``; a CUDA out-of-memory is retried once with a leaner pipeline when :attr:`may_retry`
        (the pipeline writes its files only at the end, atomically, so none is half-written), else propagates.
        ``writes``: the line's slot of a :class:`~cosmos_cli.writes.BackgroundWriter`, passed on when the
        pipeline takes it (:attr:`background_writes`)."""
        import torch

        extra = {"writes": writes} if writes is not None and self.background_writes else {}
        retried_from = None
        for attempt in (1, 2):
            oom = None
            try:
                result = self.pipeline.generate(job, progress, video_path=video_path, prompt_path=prompt_path,
                                                **extra)
            except torch.cuda.OutOfMemoryError as exc:
                if attempt == 2 or not self.may_retry or self.leaner() is None:
                    raise
                oom = oom_text(exc)
            if oom is None:
                break  # leaving the except clause above dropped the failed attempt's tensors
            retried_from, leaner = self.strategy, self.leaner()
            progress.warning(f"CUDA out of memory under memory strategy {retried_from} ({oom}); retrying once with "
                             f"the next leaner one, {leaner}")
            self.reload(leaner, progress)
        if result.status == "blocked":
            raise Blocked(result.message or "no reason given")
        return JobOutcome(result, self.strategy if retried_from else None, retried_from)

    def reload(self, strategy: str, progress: Progress) -> None:
        """Close the pipeline and load it again planned with ``strategy`` (kept for the jobs that follow)."""
        from cosmos_cli import generation

        self.pipeline.close()
        self.pipeline = None  # a failed load leaves no pipeline: the error is the runner's, not the job's
        self.req = replace(self.req, offload=strategy)
        self.pipeline = generation.load_pipeline(self.backend, self.spec, self.req, self.device, progress)

    @property
    def broken(self) -> bool:
        """Whether the runner lost its pipeline (the leaner one failed to load): nothing more can run on it."""
        return self.pipeline is None

    def close(self) -> None:
        if self.pipeline is not None:
            self.pipeline.close()

    def __enter__(self) -> JobRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def out_of_memory_error(runner: JobRunner, exc: BaseException) -> GenerationError:
    """`generate`'s one line for an out-of-memory :meth:`JobRunner.run` did not retry: the strategy it ran under
    and the one to use instead (a :class:`RankError` in a run of several processes)."""
    strategy, leaner, oom = runner.strategy, runner.leaner(), oom_text(exc)
    if runner.run_ is not None:  # the other ranks cannot retry with this one: stop, naming the next strategy
        return RankError(f"rank {runner.run_.rank}: CUDA out of memory under memory strategy {strategy} ({oom})",
                         hint=f"Use --offload {leaner}." if leaner else
                         "Free GPU memory (other processes?) and see `cosmos memory-plan`.")
    if leaner is None:
        return GenerationError(f"CUDA out of memory even under the leanest strategy, {strategy} ({oom})",
                               hint="Free GPU memory (other processes?) and see `cosmos memory-plan`.")
    return GenerationError(f"CUDA out of memory under memory strategy {strategy}: "
                           f"use --offload {leaner} (or --offload auto)")
