"""Hashing a file against what the Hub (or the original script) lists, and re-checking a downloaded folder."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cosmos_cli.download.cache import _forget
from cosmos_cli.download.conversions import CONVERSIONS
from cosmos_cli.download.plan import PARTIAL, DownloadPlan, PlannedFile
from cosmos_cli.progress import ByteBars

CHUNK = 8 << 20  # bytes read at a time when hashing: memory stays constant whatever the file size


# ------------------------------------------------------------------------------------------ hashing


def hash_file(path: Path, f: PlannedFile, on_bytes: Callable[[int], None] | None = None) -> dict[str, str]:
    """The digests ``f`` is checked with (sha256 or git blob sha1, md5 when listed), in one streamed read."""
    hashers: dict[str, hashlib._Hash] = {}
    if f.sha256:
        hashers["sha256"] = hashlib.sha256()
    elif f.git_sha1:
        hashers["git-sha1"] = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    if f.md5:
        hashers["md5"] = hashlib.md5()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            for h in hashers.values():
                h.update(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
    return {name: h.hexdigest() for name, h in hashers.items()}


def _mismatches(path: Path, f: PlannedFile, on_bytes: Callable[[int], None] | None = None) -> list[str]:
    size = path.stat().st_size
    if size != f.size:
        return [f"size {size} instead of {f.size}"]
    expected = {"sha256": f.sha256, "git-sha1": None if f.sha256 else f.git_sha1, "md5": f.md5}
    got = hash_file(path, f, on_bytes)
    return [f"{name} {value} instead of {expected[name]}" for name, value in got.items() if value != expected[name]]


# ---------------------------------------------------------------------------------------- verifying


@dataclass
class VerifyReport:
    checked: list[str] = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)  # (local path, what is wrong)


def verify(plan: DownloadPlan, *, progress: bool = True) -> VerifyReport:
    """Hash every planned file (and check converted outputs); list the missing or damaged ones.

    A damaged file also loses its "checked" record, so the next ``cosmos download`` fetches it again.
    """
    ckdir = plan.checkpoint_dir
    report = VerifyReport()
    with ByteBars(plan.total_bytes, 0, "verified", enabled=progress) as bars:
        for f in plan.files:
            path = ckdir / f.local
            if not path.is_file():
                report.bad.append((f.local, "missing" + (" (partial download)" if f.state == PARTIAL else "")))
                bars.advance(f.size)
                continue
            problems = _mismatches(path, f, bars.advance)
            if problems:
                report.bad.append((f.local, "; ".join(problems)))
                _forget(ckdir, f)
            else:
                report.checked.append(f.local)
        for conv in plan.conversions:
            if not conv.done:
                report.bad.extend((o, "missing (not converted yet)") for o in conv.outputs)
                continue
            for out, problem in CONVERSIONS[conv.name].check({o: ckdir / o for o in conv.outputs}):
                report.bad.append((out, problem))
            report.checked.extend(o for o in conv.outputs if o not in {b[0] for b in report.bad})
    return report
