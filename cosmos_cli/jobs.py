"""Generation jobs and the validation of batch files.

``schemas/batch_job.schema.json`` is the contract for one JSONL line; :func:`validate_batch` checks a whole
file against it and against what the schema cannot express (the input exists, is a readable image or
video with enough frames, the model accepts that many input frames, output names are unique). ``cosmos
validate`` and ``cosmos batch`` both call it, so a batch never starts on a file ``validate`` would reject.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from cosmos_cli.errors import InputError

SCHEMA_FILE = "batch_job.schema.json"

# The original's default negative prompt (cosmos-predict1 inference_utils), used verbatim.
DEFAULT_NEGATIVE_PROMPT = (
    "The video captures a series of frames showing ugly scenes, static with no motion, motion blur, "
    "over-saturation, shaky footage, low resolution, grainy texture, pixelated images, poorly lit areas, "
    "underexposed and overexposed scenes, poor color balance, washed out colors, choppy sequences, jerky "
    "movements, low frame rate, artifacting, color banding, unnatural transitions, outdated special effects, "
    "fake elements, unconvincing visuals, poorly edited content, jump cuts, visual noise, and flickering. "
    "Overall, the video is of poor quality."
)

JOB_KEYS = ("prompt", "negative_prompt", "seed", "num_input_frames", "guidance", "num_steps", "fps", "name")


@dataclass(frozen=True)
class GenerationJob:
    """One fully resolved generation: every value set, paths absolute."""

    visual_input: Path
    prompt: str | None
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    seed: int = 1
    num_input_frames: int = 1
    guidance: float = 7.0
    num_steps: int = 35
    fps: int = 24
    name: str = "output"
    line: int | None = None
    resize: str = "stretch"
    upsampler_ignores_prompt: bool = False

    def params(self) -> dict[str, Any]:
        """The values that determine the output (for resume checks and reports)."""
        return {
            "visual_input": str(self.visual_input),
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "seed": self.seed,
            "num_input_frames": self.num_input_frames,
            "guidance": self.guidance,
            "num_steps": self.num_steps,
            "fps": self.fps,
            "resize": self.resize,
            "upsampler_ignores_prompt": self.upsampler_ignores_prompt,
        }


@dataclass(frozen=True)
class GenerationResult:
    """What one generation produced."""

    video_path: Path | None
    prompt_path: Path | None
    final_prompt: str | None
    status: str = "ok"  # ok | blocked | failed
    message: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    peak_memory_bytes: int | None = None
    stage_peak_bytes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ValidationIssue:
    line: int | None
    field: str | None
    message: str

    def format(self, file: str) -> str:
        where = f"{file}:{self.line}" if self.line is not None else file
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "field": self.field, "message": self.message}


@dataclass(frozen=True)
class BatchLine:
    """A line that passed validation: its number, raw object and resolved input path."""

    line: int
    data: dict[str, Any]
    visual_input: Path


@dataclass
class ValidationReport:
    path: Path
    lines: list[BatchLine] = field(default_factory=list)
    issues: list[ValidationIssue] = field(default_factory=list)
    invalid_lines: set[int] = field(default_factory=set)

    @property
    def valid(self) -> bool:
        return not self.issues

    @property
    def jobs(self) -> int:
        return len(self.lines) + len(self.invalid_lines)

    def to_json(self) -> dict[str, Any]:
        return {"valid": self.valid, "jobs": self.jobs, "errors": [i.to_json() for i in self.issues]}


@lru_cache(maxsize=1)
def batch_schema() -> dict[str, Any]:
    return json.loads(resources.files("cosmos_schemas").joinpath(SCHEMA_FILE).read_text(encoding="utf-8"))


@lru_cache(maxsize=2)
def _validator(require_prompt: bool):
    from jsonschema import Draft202012Validator

    schema = dict(batch_schema())
    if require_prompt:
        schema["required"] = [*schema["required"], "prompt"]
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _schema_issue(line: int, err) -> ValidationIssue:
    """Turn a jsonschema error into one readable issue naming the field."""
    path = list(err.absolute_path)
    fieldname = str(path[0]) if path else None
    v = err.validator
    if v == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        known = ", ".join(err.schema.get("properties", {}))
        return ValidationIssue(line, extra[0] if len(extra) == 1 else ", ".join(extra),
                               f"unknown key (allowed keys: {known})")
    if v == "required":
        missing = err.message.split("'")[1] if "'" in err.message else err.message
        return ValidationIssue(line, missing, "required key is missing")
    if v == "type":
        return ValidationIssue(line, fieldname, f"must be of type {err.validator_value}, got {json.dumps(err.instance)}")
    if v == "minimum":
        return ValidationIssue(line, fieldname, f"must be >= {err.validator_value}, got {json.dumps(err.instance)}")
    if v in ("minLength", "pattern") and fieldname == "prompt":
        return ValidationIssue(line, fieldname, "must be a non-empty string")
    if v == "minLength":
        return ValidationIssue(line, fieldname, "must not be empty")
    if v == "pattern" and fieldname == "name":
        return ValidationIssue(line, fieldname,
                               f"{json.dumps(err.instance)} is not a valid file stem: use letters, digits, '.', '_' and '-' only")
    return ValidationIssue(line, fieldname, err.message)


def resolve_input(value: str, base_dir: Path) -> Path:
    """A relative path is looked up next to the JSONL file first, then in the current directory."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return p
    beside = base_dir / p
    if beside.exists():
        return beside.resolve()
    here = Path.cwd() / p
    if here.exists():
        return here.resolve()
    return beside


def default_name(line: int) -> str:
    """Output stem of a line without a ``name``: its line number."""
    return f"line{line:05d}"


def validate_batch(
    path: Path,
    *,
    require_prompt: bool,
    default_input_frames: int,
    allowed_input_frames: tuple[int, ...] | None,
    model_name: str | None = None,
    check_media: bool = True,
) -> ValidationReport:
    """Check every line of a JSONL batch file; return every issue found, in line order."""
    from cosmos_cli.media import probe

    path = Path(path)
    report = ValidationReport(path=path)
    if not path.exists():
        raise InputError(f"{path}: no such file", hint="Check the path of the batch file.")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a JSONL file", hint="Pass the path of a .jsonl file.")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        report.issues.append(ValidationIssue(line, None, f"not valid UTF-8 (byte {exc.start}); save the file as UTF-8"))
        return report

    validator = _validator(require_prompt)
    probes: dict[Path, Any] = {}  # each distinct file is opened once
    names: dict[str, int] = {}
    pending: list[tuple[int, dict[str, Any], Path | None, list[ValidationIssue]]] = []

    for lineno, line_text in enumerate(text.splitlines(), start=1):
        if not line_text.strip():
            continue
        issues: list[ValidationIssue] = []
        try:
            obj = json.loads(line_text)
        except json.JSONDecodeError as exc:
            issues.append(ValidationIssue(lineno, None, f"not valid JSON: {exc.msg} at column {exc.colno}"))
            pending.append((lineno, {}, None, issues))
            continue
        if not isinstance(obj, dict):
            issues.append(ValidationIssue(lineno, None, f"must be a JSON object, got {type(obj).__name__}"))
            pending.append((lineno, {}, None, issues))
            continue
        for err in sorted(validator.iter_errors(obj), key=lambda e: (list(e.absolute_path), e.validator)):
            issues.append(_schema_issue(lineno, err))

        bad_fields = {i.field for i in issues}
        name = obj.get("name") if "name" not in bad_fields and isinstance(obj.get("name"), str) else None
        stem = name if name is not None else default_name(lineno)
        if stem in names:
            issues.append(ValidationIssue(lineno, "name", f"output name {stem!r} is already used by line {names[stem]}"))
        else:
            names[stem] = lineno

        n_frames = obj.get("num_input_frames", default_input_frames)
        frames_ok = "num_input_frames" not in bad_fields and isinstance(n_frames, int) and not isinstance(n_frames, bool)
        if frames_ok and allowed_input_frames is not None and n_frames not in allowed_input_frames:
            who = f"model {model_name}" if model_name else "the model"
            src = "num_input_frames" if "num_input_frames" in obj else "num_input_frames (from --num-input-frames)"
            issues.append(ValidationIssue(lineno, src.split(" ")[0],
                                          f"{who} accepts {' or '.join(map(str, allowed_input_frames))} input frames, got {n_frames}"))
            frames_ok = False

        resolved = None
        vi = obj.get("visual_input")
        if isinstance(vi, str) and vi and "visual_input" not in bad_fields:
            resolved = resolve_input(vi, path.parent)
            if not resolved.exists():
                issues.append(ValidationIssue(lineno, "visual_input", f"file not found: {vi} (looked in {path.parent} and {Path.cwd()})"))
                resolved = None
            elif resolved.is_dir():
                issues.append(ValidationIssue(lineno, "visual_input", f"{vi} is a folder, not an image or video"))
                resolved = None
            elif check_media:
                if resolved not in probes:
                    try:
                        probes[resolved] = probe(resolved)
                    except InputError as exc:
                        probes[resolved] = exc
                info = probes[resolved]
                if isinstance(info, InputError):
                    issues.append(ValidationIssue(lineno, "visual_input", info.message))
                elif frames_ok and info.num_frames < n_frames and ("num_input_frames" in obj or info.kind != "image"):
                    # (an image under the command line's --num-input-frames N uses its one frame: see
                    # cosmos_cli.batch.frames_for_line; a line's own "num_input_frames" is taken at its word)
                    what = "an image has 1 frame" if info.kind == "image" else f"the video has {info.num_frames} frames"
                    issues.append(ValidationIssue(lineno, "visual_input", f"{vi}: needs {n_frames} input frames but {what}"))
        pending.append((lineno, obj, resolved, issues))

    if not pending:
        report.issues.append(ValidationIssue(None, None, "the file has no jobs (it is empty or only blank lines)"))
        return report
    for lineno, obj, resolved, issues in pending:
        if issues:
            report.issues.extend(issues)
            report.invalid_lines.add(lineno)
        else:
            report.lines.append(BatchLine(lineno, obj, resolved))
    return report
