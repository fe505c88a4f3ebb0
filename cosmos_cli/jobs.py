"""Generation jobs and the validation of batch files.

``schemas/batch_job.schema.json`` is the contract for one JSONL line; :func:`validate_batch` checks a whole
file against it and against what the schema cannot express (the input exists, is a readable image or
video with enough frames, the model accepts that many input frames, output names are unique). ``cosmos
validate`` and ``cosmos batch`` both call it, so a batch never starts on a file ``validate`` would reject.
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from cosmos_cli.errors import InputError
from cosmos_cli.limits import MAX_BATCH_FILE_BYTES, MAX_LINE_BYTES

SCHEMA_FILE = "batch_job.schema.json"

RAW_TEXT_SHOWN = 2000  # characters of an invalid line kept for the batch report


@dataclass(frozen=True)
class GenerationJob:
    """One fully resolved generation: every value set, paths absolute. ``negative_prompt`` None (only where a job is
    built by hand; :func:`cosmos_cli.generation.make_job` always sets it) is the model's
    ``ModelSpec.default_negative_prompt``."""

    visual_input: Path
    prompt: str | None
    negative_prompt: str | None = None
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
    notes: tuple[str, ...] = ()  # what the user should know about how the job ran (e.g. a prompt cut short)
    details: dict[str, str] = field(default_factory=dict)  # the backend's words on how it ran (e.g. its kernels)


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
    invalid_texts: dict[int, str] = field(default_factory=dict)  # each invalid line as written (cut short)

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
    from jsonschema import Draft202012Validator, validators

    schema = dict(batch_schema())
    if require_prompt:
        schema["required"] = [*schema["required"], "prompt"]
    Draft202012Validator.check_schema(schema)
    # JSON Schema counts 1.0 as an integer; the code behind "seed" or "num_steps" does not: only int is one here.
    checker = Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _, x: isinstance(x, int) and not isinstance(x, bool))
    return validators.extend(Draft202012Validator, type_checker=checker)(schema)


class BadJsonValue(ValueError):
    """A line that is JSON to Python's parser but not to the contract: NaN/Infinity, a number out of range, a key
    given twice."""

    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field, self.message = field, message


def _refuse_constant(name: str):
    raise BadJsonValue(None, f"{name} is not a JSON number (JSON has no NaN or Infinity): use a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadJsonValue(None, f"the number {text[:40]} is too large (beyond the float range)")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 30:  # the largest bound (the seed's) has 10 digits
        raise BadJsonValue(None, f"the integer {text[:40]}... has {len(text.lstrip('-'))} digits: far out of range")
    return int(text)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise BadJsonValue(key, "the key appears twice in this line (which one counts is not defined): keep one")
        obj[key] = value
    return obj


def parse_json_line(text: str) -> Any:
    """``json.loads`` for one batch line, stricter than Python's: NaN, Infinity, numbers beyond the float range
    and duplicate keys raise :class:`BadJsonValue` (plain JSON errors raise ``json.JSONDecodeError``)."""
    return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_bounded_int,
                      object_pairs_hook=_no_duplicates)


def read_batch_lines(path: Path, max_bytes: int | None = None) -> Iterator[tuple[int, bytes | None]]:
    """``(line number, bytes without the newline)`` of a batch file, streamed; ``None`` for a line longer than
    :data:`~cosmos_cli.limits.MAX_LINE_BYTES` (the rest of it is skipped). Only a regular file is read (a FIFO
    would block, ``/dev/zero`` never ends), of at most :data:`~cosmos_cli.limits.MAX_BATCH_FILE_BYTES` (or
    ``max_bytes``: a driver that streams the file holds far less than the file)."""
    limit = MAX_BATCH_FILE_BYTES if max_bytes is None else max_bytes
    if not path.exists():
        raise InputError(f"{path}: no such file", hint="Check the path of the batch file.")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a JSONL file", hint="Pass the path of a .jsonl file.")
    try:  # O_NONBLOCK: opening a FIFO does not wait for a writer; the type is checked on what was opened
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror})", hint="Check the file's permissions.") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"{path}: not a regular file (a pipe, device or socket)",
                             hint="Save the batch to a file and pass its path.")
        if info.st_size > limit:
            raise InputError(f"{path}: {info.st_size / 2**20:.0f} MiB is larger than the "
                             f"{_size(limit)} a batch file may have",
                             hint="Split it into several batch files.")
        total = 0
        lineno = 0
        while True:
            chunk = f.readline(MAX_LINE_BYTES + 1)
            if not chunk:
                return
            lineno += 1
            total += len(chunk)
            too_long = len(chunk) > MAX_LINE_BYTES and not chunk.endswith(b"\n")
            while too_long and chunk and not chunk.endswith(b"\n"):  # skip to the end of the long line
                chunk = f.readline(MAX_LINE_BYTES)
                total += len(chunk)
                if total > limit:
                    break
            if total > limit:  # the file grew while we read it
                raise InputError(f"{path}: longer than the {_size(limit)} a batch file may have",
                                 hint="Split it into several batch files.")
            yield lineno, None if too_long else chunk.removesuffix(b"\n")


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
    if v == "maximum":
        return ValidationIssue(line, fieldname, f"must be <= {err.validator_value}, got {json.dumps(err.instance)}")
    if v in ("minLength", "pattern") and fieldname == "prompt":
        return ValidationIssue(line, fieldname, "must be a non-empty string")
    if v == "minLength":
        return ValidationIssue(line, fieldname, "must not be empty")
    if v == "pattern" and fieldname == "name":
        return ValidationIssue(line, fieldname,
                               f"{json.dumps(err.instance)} is not a valid file stem: use letters, digits, '.', '_' and '-' only")
    return ValidationIssue(line, fieldname, err.message)


def _size(n: int) -> str:
    return f"{n // 2**20} MiB" if n >= 2**20 else f"{n} bytes"


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


def check_lines(
    path: Path,
    *,
    require_prompt: bool,
    default_input_frames: int,
    allowed_input_frames: tuple[int, ...] | None,
    model_name: str | None = None,
    check_media: bool = True,
    names=None,
    probes=None,
    max_bytes: int | None = None,
) -> Iterator[tuple[int, dict[str, Any], Path | None, list[ValidationIssue], str]]:
    """:func:`validate_batch`, one line at a time and holding nothing: ``(line, object, resolved input, issues,
    text)`` for every non-blank line (the text only for an invalid line). ``names`` (output name -> line, for the
    uniqueness check) and ``probes`` (input -> media info or error) are mappings the caller may supply, e.g. a
    compact or bounded one for files of millions of lines; by default plain dicts."""
    from cosmos_cli.media import probe

    validator = _validator(require_prompt)
    probes = {} if probes is None else probes  # each distinct file is opened once
    names = {} if names is None else names
    for lineno, raw in read_batch_lines(path, max_bytes):
        if raw is None:
            yield (lineno, {}, None, [ValidationIssue(
                lineno, None, f"line longer than {_size(MAX_LINE_BYTES)} (a job fits in a few KB)")],
                "(line too long)")
            continue
        try:
            line_text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8").removesuffix("\r")
        except UnicodeDecodeError as exc:
            yield (lineno, {}, None, [ValidationIssue(
                lineno, None, f"not valid UTF-8 (byte {exc.start + 1} of the line); save the file as UTF-8")],
                raw.decode("utf-8", errors="replace"))
            continue
        if not line_text.strip():
            continue
        issues: list[ValidationIssue] = []
        try:
            obj = parse_json_line(line_text)
        except BadJsonValue as exc:
            yield (lineno, {}, None, [ValidationIssue(lineno, exc.field, exc.message)], line_text)
            continue
        except ValueError as exc:  # json.JSONDecodeError, or a number Python cannot hold
            where = f" at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
            yield (lineno, {}, None, [ValidationIssue(
                lineno, None, f"not valid JSON: {getattr(exc, 'msg', exc)}{where}")], line_text)
            continue
        if not isinstance(obj, dict):
            issues.append(ValidationIssue(lineno, None, f"must be a JSON object, got {type(obj).__name__}"))
            yield (lineno, {}, None, issues, line_text)
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
                    # cosmos_cli.batch.plan.frames_for_line; a line's own "num_input_frames" is taken at its word)
                    what = "an image has 1 frame" if info.kind == "image" else f"the video has {info.num_frames} frames"
                    issues.append(ValidationIssue(lineno, "visual_input", f"{vi}: needs {n_frames} input frames but {what}"))
        yield lineno, obj, resolved, issues, line_text if issues else ""


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
    path = Path(path)
    report = ValidationReport(path=path)
    pending = list(check_lines(path, require_prompt=require_prompt, default_input_frames=default_input_frames,
                               allowed_input_frames=allowed_input_frames, model_name=model_name,
                               check_media=check_media))

    if not pending:
        report.issues.append(ValidationIssue(None, None, "the file has no jobs (it is empty or only blank lines)"))
        return report
    for lineno, obj, resolved, issues, text in pending:
        if issues:
            report.issues.extend(issues)
            report.invalid_lines.add(lineno)
            report.invalid_texts[lineno] = text[:RAW_TEXT_SHOWN]
        else:
            report.lines.append(BatchLine(lineno, obj, resolved))
    return report
