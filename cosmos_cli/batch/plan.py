"""Planning a batch: validation, one job per line (the options as defaults, the line's keys over them), the resume
decisions (see :mod:`cosmos_cli.batch.sidecar`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cosmos_cli.batch.report import ItemRecord
from cosmos_cli.batch.sidecar import SIDECAR_SUFFIX, existing_output, read_sidecar, remove_leftovers
from cosmos_cli.errors import CosmosError, UsageError, ValidationFailed
from cosmos_cli.generation import RESIZE_MODES, GenerateRequest, backend_options, make_job
from cosmos_cli.jobs import GenerationJob, default_name, parse_json_line, validate_batch
from cosmos_cli.progress import Progress
from cosmos_cli.registry import find_model
from cosmos_cli.specs import GUARDRAIL, UPSAMPLER, ModelSpec

if TYPE_CHECKING:
    from cosmos_cli.backend import Backend


@dataclass(frozen=True)
class BatchRequest:
    """A batch: the JSONL file and the generation options that are each line's defaults.

    ``defaults`` is the request ``cosmos generate`` would build from the same options; its ``input_path`` and
    ``name`` are not used (every line names its own input, and its output by ``name`` or line number).
    """

    file: Path
    defaults: GenerateRequest
    skip_invalid: bool = False
    fail_fast: bool = False
    gpus: int = 1
    report_path: Path | None = None
    shard: tuple[int, int] | None = None  # --shard I/N: see cosmos_cli.batch.shard
    executor: str = "local"  # or "ray": see cosmos_cli.batch.ray_executor
    ray: Any = None  # cosmos_cli.batch.ray_executor.RayOptions with --executor ray


@dataclass(frozen=True)
class BatchItem:
    """One valid line, resolved: its job, where its files go and the hash of what determines its video."""

    batch_file: str
    line: int
    data: dict[str, Any]
    job: GenerationJob
    params: dict[str, Any]
    params_hash: str
    video_path: Path
    prompt_path: Path
    regenerate_reason: str = ""

    @property
    def sidecar_path(self) -> Path:
        return self.video_path.with_name(self.job.name + SIDECAR_SUFFIX)

    @property
    def staged_video(self) -> Path:
        return self.video_path.with_name(f".{self.video_path.name}.pending")

    @property
    def staged_prompt(self) -> Path:
        return self.prompt_path.with_name(f".{self.prompt_path.name}.pending")


@dataclass
class BatchPlan:
    spec: ModelSpec
    items: list[BatchItem]  # lines to generate
    records: dict[int, ItemRecord]  # lines already decided: invalid, complete, conflicting
    invalid: set[int] = field(default_factory=set)  # the lines --skip-invalid skips

    def failed_before_start(self) -> bool:
        """A line failed before any generation for a reason other than being invalid (for --fail-fast)."""
        return any(not r.has_output for n, r in self.records.items() if n not in self.invalid)


def job_params(job: GenerationJob, spec: ModelSpec, req: GenerateRequest,
               options: Backend.Options | None = None) -> tuple[dict[str, Any], str]:
    """Everything that determines a line's video, and its SHA-256 (the resume key). ``options``: the backend's typed
    options for ``req`` (None: made from it), whose :meth:`~cosmos_cli.backend.Backend.Options.key_params` count."""
    if options is None:
        options = backend_options(find_model(spec.name)[0], req)
    params = {
        **options.key_params(),  # Predict1's: numerics
        **job.params(),
        "model": spec.name,
        "network_dir": req.network_dir,
        "prompt_upsampler": not req.disable_prompt_upsampler and spec.component(UPSAMPLER) is not None,
        "guardrail": not req.disable_guardrail and spec.component(GUARDRAIL) is not None,
    }
    if not req.fast.exact:  # (absent in exact mode, so earlier outputs keep their keys)
        params["fast"] = req.fast.describe()
    blob = json.dumps(params, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return params, hashlib.sha256(blob.encode("utf-8")).hexdigest()


def frames_for_line(data: dict[str, Any], defaults: GenerateRequest, visual_input: Path) -> int | None:
    """The line's input frame count: its own ``num_input_frames``, else ``--num-input-frames``, except that an image
    line under ``--num-input-frames N > 1`` uses its one frame (a note says so, see :func:`image_lines_note`).

    The original's ``check_input_frames`` (``cosmos_predict1/diffusion/inference/inference_utils.py``) logs "is an
    image but 9 frames are required" and ``video2world.py`` then skips the line (``continue``, exit code 0; read in
    the fork staggeredsix/cosmos-predict1-dev at 339c26455504bc08f7b270784ff9f32b65521068), so its Example 4/5
    command generates nothing for an image line; here the command runs as written and every line gets its video."""
    if "num_input_frames" in data:
        return data["num_input_frames"]
    n = defaults.num_input_frames
    if n is not None and n > 1:
        from cosmos_cli.media import probe

        try:
            if probe(visual_input).kind == "image":
                return 1
        except CosmosError:
            pass  # make_job reports it
    return n


def image_lines_note(lines: list[int], n: int | None) -> str:
    shown = ", ".join(map(str, lines[:8])) + (f" and {len(lines) - 8} more" if len(lines) > 8 else "")
    return (f"note: line{'s' if len(lines) > 1 else ''} {shown}: an image is one input frame, so "
            f"--num-input-frames {n} applies to the videos only (the original skips such lines)")


def line_request(defaults: GenerateRequest, data: dict[str, Any], visual_input: Path, name: str) -> GenerateRequest:
    """The command-line defaults with this line's keys applied."""
    return dataclasses.replace(
        defaults,
        input_path=visual_input,
        prompt=data.get("prompt", defaults.prompt),
        negative_prompt=data.get("negative_prompt", defaults.negative_prompt),
        seed=data.get("seed", defaults.seed),
        num_input_frames=frames_for_line(data, defaults, visual_input),
        guidance=float(data["guidance"]) if "guidance" in data else defaults.guidance,  # 7 and 7.0: one hash
        num_steps=data.get("num_steps", defaults.num_steps),
        fps=data.get("fps", defaults.fps),
        name=name,
    )


def validate_for(file: Path, spec: ModelSpec, defaults: GenerateRequest):
    """The one validation of a batch file, for `cosmos validate` and `cosmos batch` alike: the model's needs (a
    prompt on every line when it has no upsampler or the upsampler is off, unless --prompt gives one; its input
    frame counts) with the same options as defaults. Returns the :class:`~cosmos_cli.jobs.ValidationReport`."""
    return validate_batch(file, **validation_args(spec, defaults))


def validation_args(spec: ModelSpec, d: GenerateRequest) -> dict[str, Any]:
    """The model's needs and the options that validation checks each line against."""
    needs_prompt = d.disable_prompt_upsampler or spec.component(UPSAMPLER) is None
    return {"require_prompt": needs_prompt and not (d.prompt and d.prompt.strip()),
            "default_input_frames": d.num_input_frames or spec.default_input_frames,
            "allowed_input_frames": spec.input_frames, "model_name": spec.name}


def prompt_hint(report, spec: ModelSpec, defaults: GenerateRequest) -> str | None:
    """When lines lack a prompt only because no upsampler will write one: what to do about it."""
    if not any(i.field == "prompt" and "missing" in i.message for i in report.issues):
        return None
    why = ("--disable-prompt-upsampler is given" if defaults.disable_prompt_upsampler
           else f"{spec.name} has no prompt upsampler")
    return (f"A prompt is needed on every line because {why}: add \"prompt\" to the lines, or pass --prompt "
            "\"...\" as every line's default" + ("." if defaults.disable_prompt_upsampler else
                                                ", or use a model with an upsampler (--model 7B)."))


def validation_notes(report, defaults: GenerateRequest) -> list[str]:
    """What validation accepted but the user should know (image lines under --num-input-frames N)."""
    n = defaults.num_input_frames
    if not n or n <= 1:
        return []
    images = [bl.line for bl in report.lines
              if "num_input_frames" not in bl.data and frames_for_line(bl.data, defaults, bl.visual_input) == 1]
    return [image_lines_note(images, n)] if images else []


def plan_batch(req: BatchRequest, spec: ModelSpec, progress: Progress, *, shard: tuple[int, int] = (0, 1),
               report=None, on_valid: Callable[[], None] | None = None,
               leftovers: set[str] | None = None) -> BatchPlan:
    """Validate the file, resolve every valid line, and decide for each whether it needs generating.

    ``shard=(rank, world)`` restricts the resume decisions (and the clean-up of leftovers) to the lines a
    torchrun rank owns; validation always covers the whole file. ``on_valid`` runs once the file is known to be
    valid, before anything in the output folder is looked at or removed (the batch takes its folder lock there).
    """
    d = req.defaults
    out_dir = Path(d.output_dir)
    from cosmos_cli.outputs import check_folder

    check_folder(out_dir, "--output-dir")
    if d.resize not in RESIZE_MODES:
        raise UsageError(f"--resize must be one of {', '.join(RESIZE_MODES)}, got {d.resize!r}")
    report = report if report is not None else validate_for(req.file, spec, d)
    for issue in report.issues:
        progress.warning(issue.format(str(req.file)))
    if not report.valid and (not req.skip_invalid or issue_without_line(report)):
        what = (f"{len(report.invalid_lines)} of {report.jobs} lines are invalid" if report.invalid_lines
                else "not a valid batch file")
        raise ValidationFailed(f"{req.file}: {what}; nothing was generated",
                               hint=prompt_hint(report, spec, d) or
                               "Fix the lines listed above (`cosmos validate FILE` checks them), or pass "
                               "--skip-invalid to run the valid lines.")
    for note in validation_notes(report, d) if shard[0] == 0 else ():
        progress.warning(note)
    if on_valid is not None:
        on_valid()

    batch_file = str(Path(req.file).resolve())
    rank, world = shard
    records: dict[int, ItemRecord] = {}
    invalid: set[int] = set()
    for lineno in sorted(report.invalid_lines) if rank == 0 else ():
        invalid.add(lineno)
        reasons = "; ".join(f"{i.field}: {i.message}" if i.field else i.message
                            for i in report.issues if i.line == lineno)
        records[lineno] = ItemRecord(lineno, default_name(lineno), "failed", f"invalid line: {reasons}",
                                     input=raw_line(report.invalid_texts.get(lineno, "")))
    items: list[BatchItem] = []
    options = backend_options(find_model(spec.name)[0], d)  # the backend's own, for every line's resume key
    mine = report.lines[rank::world]
    for bl in mine:
        name = bl.data.get("name") or default_name(bl.line)
        base = ItemRecord(bl.line, name, "failed", input=bl.data, visual_input=str(bl.visual_input))
        try:
            job = make_job(line_request(d, bl.data, bl.visual_input, name), spec, name)
        except CosmosError as exc:  # what validation cannot see (e.g. the file changed since)
            records[bl.line] = dataclasses.replace(base, message=f"invalid line: {exc.message}")
            invalid.add(bl.line)
            progress.warning(f"line {bl.line} ({name}): failed: {records[bl.line].message}")
            continue
        job = dataclasses.replace(job, line=bl.line)
        params, digest = job_params(job, spec, d, options)
        item = BatchItem(batch_file, bl.line, bl.data, job, params, digest, out_dir / f"{name}.mp4",
                         out_dir / f"{name}.txt")
        remove_leftovers(item, leftovers)
        state, why = existing_output(item)
        base = dataclasses.replace(base, prompt=job.prompt, seed=job.seed, params_hash=digest)
        if state == "complete" and not d.overwrite:
            side = read_sidecar(item.sidecar_path) or {}
            records[bl.line] = dataclasses.replace(
                base, status="skipped", message="already complete with the same parameters",
                prompt=side.get("prompt", job.prompt), video=str(item.video_path),
                prompt_file=str(item.prompt_path) if item.prompt_path.exists() else None)
        elif state == "complete" and d.overwrite:
            items.append(dataclasses.replace(item, regenerate_reason="re-generated (--overwrite)"))
        elif state in ("foreign", "changed") and not d.overwrite:
            what = (f"kept {item.video_path}: made by this batch with other parameters ({why})" if state == "changed"
                    else why)
            records[bl.line] = dataclasses.replace(
                base, message=f"{what}; pass --overwrite to replace it, or choose another --output-dir")
            progress.warning(f"line {bl.line} ({name}): failed: {records[bl.line].message}")
        else:
            reason = (f"re-generated (--overwrite): {why}" if state == "changed" else
                      "replaced an existing output (--overwrite)" if state == "foreign" else "")
            items.append(dataclasses.replace(item, regenerate_reason=reason))
    return BatchPlan(spec, items, records, invalid)


def raw_line(text: str) -> dict[str, Any]:
    """An invalid line as it was written: its JSON object if it parses as one, else its text."""
    try:
        data = parse_json_line(text)  # (refuses NaN: a report never holds one)
    except ValueError:
        data = None
    return data if isinstance(data, dict) else {"text": text}


def issue_without_line(report) -> bool:
    """An issue about the whole file (not valid UTF-8, no jobs): --skip-invalid cannot skip it."""
    return any(i.line is None for i in report.issues) or not report.lines
