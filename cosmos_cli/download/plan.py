"""Which files to have and their state: the models chosen, the Hub's listing, the disk; the dry-run report."""

from __future__ import annotations

import fnmatch
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from cosmos_cli.download.cache import _blob_path, _cache_folder, _partial_path, _read_metadata, _written_paths
from cosmos_cli.download.conversions import CONVERSIONS
from cosmos_cli.download.errors import RemoteMissingError, UnsafeListingError
from cosmos_cli.download.hub import (
    _COMMIT,
    _SHA256,
    _check_digest,
    _Hub,
    check_commit,
    check_inside,
    check_listing_name,
    hub_endpoint,
)
from cosmos_cli.errors import CheckpointError, CosmosError, UsageError
from cosmos_cli.registry import all_models, find_model
from cosmos_cli.specs import GUARDRAIL, UPSAMPLER, CheckpointFile, ModelSpec


def _model_types() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The original script's --model_types values the registered models answer to (``ModelSpec.model_type``),
    and the other values their specs name (``ModelSpec.other_model_types``), refused by name."""
    pairs = all_models(include_hidden=True)
    runs = tuple(dict.fromkeys(s.model_type for _, s in pairs if s.model_type))
    others = tuple(dict.fromkeys(t for _, s in pairs for t in s.other_model_types if t.lower() not in
                                 (r.lower() for r in runs)))
    return runs, others


# States of a planned file on disk.
DONE = "done"  # in place and recorded as checked (our metadata or huggingface_hub's)
PRESENT = "present"  # in place but never checked here: hashed before it is trusted
PARTIAL = "partial"  # an interrupted transfer that the next run continues
MISSING = "missing"


# ------------------------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class PlannedFile:
    """One file to have on disk: where it comes from, where it goes, what it must hash to, and its state."""

    component: str
    repo: str
    revision: str  # the commit it is fetched at
    remote: str  # path in the repository
    local: str  # relative to the checkpoint folder: the file itself (a snapshot path for cache entries)
    size: int
    sha256: str | None  # the LFS SHA-256; None for small files stored in git
    git_sha1: str | None  # the git blob id: the Hub's etag for files stored in git
    md5: str | None = None
    root: str = ""  # folder the repository's root maps to (a cache entry: its models--org--name folder)
    hf_cache: bool = False
    convert: str | None = None  # the conversion this file feeds, if any
    ref: str = "main"  # the branch or tag the spec asked for (a cache folder records it under refs/)
    state: str = MISSING
    partial_bytes: int = 0

    @property
    def etag(self) -> str:
        return self.sha256 or self.git_sha1 or ""

    @property
    def bytes_to_fetch(self) -> int:
        return {DONE: 0, PRESENT: 0, PARTIAL: self.size - self.partial_bytes}.get(self.state, self.size)


@dataclass(frozen=True)
class ConversionPlan:
    """Files fetched into a staging folder and converted into the ``outputs`` loaders read."""

    name: str
    outputs: tuple[str, ...]
    done: bool
    staging: str = ""
    output_bytes: int = 0  # estimate, for the disk check


@dataclass(frozen=True)
class RepoPlan:
    repo: str
    revision: str
    commit: str
    gated: bool
    access_error: CosmosError | None = None


@dataclass(frozen=True)
class DownloadPlan:
    checkpoint_dir: Path
    endpoint: str
    files: tuple[PlannedFile, ...]
    repos: tuple[RepoPlan, ...]
    conversions: tuple[ConversionPlan, ...]
    free_bytes: int
    left_out: tuple[str, ...] = ()  # cache entries skipped because a repository ships them

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def fetch_bytes(self) -> int:
        return sum(f.bytes_to_fetch for f in self.files)

    @property
    def needed_bytes(self) -> int:
        """Free space the run needs: what is left to fetch plus what the conversions write."""
        return self.fetch_bytes + sum(c.output_bytes for c in self.conversions if not c.done)

    @property
    def fits(self) -> bool:
        return self.needed_bytes <= self.free_bytes


# ------------------------------------------------------------------------------- choosing the models


def resolve_models(names: Sequence[str], model_types: Sequence[str] = ()) -> list[ModelSpec]:
    """Specs for model names/aliases; the original's ``--model_types`` values are accepted where they fit.

    Names may be comma-separated. A type (as a name or a --model_types value) that a registered model answers to
    (``Video2World`` for Predict1) selects nothing more; the other types the specs name are refused. Without a
    name it is a usage error that lists the models the Hub has files for (the default model may well be one that
    ships with cosmos).
    """
    wanted: list[str] = []
    types = list(model_types)
    runs, others = _model_types()
    known = {t.lower() for t in (*runs, *others)}
    for item in names:
        for name in (p.strip() for p in item.split(",")):
            if not name:
                continue
            (types if name.lower() in known else wanted).append(name)
    for t in types:
        if t.lower() not in (m.lower() for m in runs):
            raise UsageError(f"model type {t!r} is not supported: cosmos runs {' and '.join(runs) or 'no typed'} "
                             "models", hint="Leave --model_types out" + (f", or pass --model_types {runs[0]}."
                                                                           if runs else "."))
    if not wanted:
        raise UsageError("name the model(s) to download", hint=_models_hint())
    specs: list[ModelSpec] = []
    for name in wanted:
        _, spec = find_model(name)
        if spec not in specs:
            specs.append(spec)
    return specs


def hub_files(spec: ModelSpec) -> tuple[CheckpointFile, ...]:
    """The entries of ``spec`` that come from the Hub (bundled and locally made files have no repository)."""
    return tuple(f for f in spec.files if f.repo)


def _models_hint() -> str:
    listed = [s for _, s in all_models()]
    on_hub = [f"{s.aliases[0]} ({s.name})" if s.aliases else s.name for s in listed if hub_files(s)]
    local = [s.aliases[0] if s.aliases else s.name for s in listed if not hub_files(s)]
    hint = (f"For example `cosmos download {on_hub[0].split()[0]}`. Models on the Hub: {', '.join(on_hub)}."
            if on_hub else "No registered model has files on the Hub.")
    if local:
        hint += f" Nothing to download for {', '.join(local)}: it ships with cosmos."
    return hint


def select_files(specs: Sequence[ModelSpec], *, upsampler: bool = True, guardrail: bool = True) -> list[CheckpointFile]:
    """The checkpoint entries of ``specs``, without the upsampler/guardrail ones when those are off, deduplicated."""
    skip = ({UPSAMPLER} if not upsampler else set()) | ({GUARDRAIL} if not guardrail else set())
    out: list[CheckpointFile] = []
    for spec in specs:
        for f in hub_files(spec):
            if f.component not in skip and f not in out:
                out.append(f)
    return out


# ------------------------------------------------------------------------------------------ planning


def _is_pattern(name: str) -> bool:
    return any(c in name for c in "*?[")


def plan_download(
    files: Sequence[CheckpointFile],
    checkpoint_dir: Path,
    *,
    token: str | None = None,
    endpoint: str | None = None,
) -> DownloadPlan:
    """What to fetch for ``files``: ask the Hub for each repository's listing, look at the disk, check access."""
    from huggingface_hub import get_token

    ckdir = Path(checkpoint_dir)
    hub = _Hub(endpoint or hub_endpoint(), token or get_token())

    conversions: list[ConversionPlan] = []
    converted: set[str] = set()
    for name in dict.fromkeys(f.convert for f in files if f.convert):
        group = [f for f in files if f.convert == name]
        if name not in CONVERSIONS:
            raise CheckpointError(f"unknown conversion {name!r} in the model spec",
                                  hint=f"Known conversions: {', '.join(CONVERSIONS)}.")
        outputs = tuple(dict.fromkeys(f.local for f in group))
        done = all((ckdir / o).is_file() and (ckdir / o).stat().st_size > 0 for o in outputs)
        conversions.append(ConversionPlan(name, outputs, done, staging=group[0].repo.split("/")[-1]))
        if done:
            converted.add(name)

    planned: dict[str, PlannedFile] = {}
    repos: dict[tuple[str, str], RepoPlan] = {}

    def expand(entry: CheckpointFile) -> None:
        info = hub.info(entry.repo, entry.revision)
        commit = check_commit(entry.repo, info.sha, entry.revision)
        repos.setdefault((entry.repo, entry.revision),
                         RepoPlan(entry.repo, entry.revision, commit, bool(getattr(info, "gated", False))))
        siblings = {s.rfilename: s for s in (info.siblings or []) if isinstance(s.rfilename, str)}
        if _is_pattern(entry.filename):
            names = [n for n in siblings if fnmatch.fnmatchcase(n, entry.filename)]
            if not names:
                raise RemoteMissingError(f"no file in {entry.repo} matches {entry.filename!r}",
                                         hint="The repository changed: update the model spec's file list.")
        elif entry.filename in siblings:
            names = [entry.filename]
        else:
            raise RemoteMissingError(f"{entry.filename} is missing from {entry.repo} (revision {entry.revision})",
                                     hint="The repository changed: update the model spec's file list.")
        for name in sorted(names):
            check_listing_name(entry.repo, name)
            pf = _planned(entry, siblings[name], commit)
            check_inside(ckdir, *_written_paths(ckdir, pf))
            old = planned.get(pf.local)
            if old is not None:
                if (old.repo, old.remote) != (pf.repo, pf.remote):
                    raise CheckpointError(f"{old.repo}/{old.remote} and {pf.repo}/{pf.remote} both map to {pf.local}")
                pf = replace(old, md5=old.md5 or pf.md5)
            planned[pf.local] = pf

    for entry in files:
        if not entry.hf_cache and entry.convert not in converted:
            expand(entry)
    left_out: list[str] = []
    shipped = list(planned)  # files of the repositories themselves, before any cache entry
    for entry in files:
        if entry.hf_cache:
            prefix = f"{entry.local}/{_cache_folder(entry.repo)}/"
            if any(p.startswith(prefix) for p in shipped):
                left_out.append(f"{entry.repo}: {entry.filename} (shipped in {entry.local})")
                continue
            expand(entry)

    inspected = tuple(_inspect(pf, ckdir) for pf in planned.values())
    conversions = [replace(c, output_bytes=sum(f.size for f in inspected if f.convert == c.name)) for c in conversions]
    repo_plans = []
    for rp in repos.values():
        todo = [f for f in inspected if (f.repo, f.revision) == (rp.repo, rp.commit) and f.state != DONE]
        if rp.gated and todo:
            rp = replace(rp, access_error=hub.check_access(todo[0]))
        repo_plans.append(rp)
    return DownloadPlan(ckdir, hub.endpoint, inspected, tuple(repo_plans), tuple(conversions),
                        free_bytes(ckdir), tuple(left_out))


def _planned(entry: CheckpointFile, sibling, commit: str) -> PlannedFile:
    lfs = sibling.lfs
    size = lfs.size if lfs is not None else (sibling.size or 0)
    name = sibling.rfilename
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise UnsafeListingError(f"{entry.repo} lists {name} with the size {size!r}")
    sha256 = _check_digest(entry.repo, name, "SHA-256", lfs.sha256, _SHA256) if lfs is not None else None
    git_sha1 = None if lfs is not None else _check_digest(entry.repo, name, "blob id", sibling.blob_id, _COMMIT)
    common = dict(component=entry.component, repo=entry.repo, revision=commit, ref=entry.revision,
                  remote=name, size=size, sha256=sha256, git_sha1=git_sha1)
    if entry.hf_cache:
        root = f"{entry.local}/{_cache_folder(entry.repo)}"
        return PlannedFile(**common, local=f"{root}/snapshots/{commit}/{sibling.rfilename}", root=root,
                           hf_cache=True, md5=entry.md5)
    if entry.convert:
        root = entry.repo.split("/")[-1]
        return PlannedFile(**common, local=f"{root}/{sibling.rfilename}", root=root, convert=entry.convert,
                           md5=entry.md5)
    if _is_pattern(entry.filename):
        root = entry.local
    elif entry.local == entry.filename or entry.local.endswith("/" + entry.filename):
        root = entry.local[: len(entry.local) - len(entry.filename)].rstrip("/")
    else:
        raise CheckpointError(f"spec entry {entry.repo}/{entry.filename} -> {entry.local}: the local path must end "
                              "with the file's path in the repository")
    local = f"{root}/{sibling.rfilename}" if root else sibling.rfilename
    return PlannedFile(**common, local=local, root=root, md5=entry.md5 if not _is_pattern(entry.filename) else None)


def free_bytes(path: Path) -> int:
    """Free space on the disk that holds ``path`` (or its nearest existing parent)."""
    p = Path(path).resolve()
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def _inspect(f: PlannedFile, ckdir: Path) -> PlannedFile:
    final = ckdir / f.local
    if f.hf_cache:
        blob = _blob_path(ckdir, f)
        if final.is_file() and final.stat().st_size == f.size:
            return replace(f, state=DONE)
        if blob.is_file() and blob.stat().st_size == f.size:
            return replace(f, state=PRESENT)
    elif final.is_file():
        meta = _read_metadata(ckdir, f)
        st = final.stat()
        if meta and meta[1] == f.etag and st.st_size == f.size and st.st_mtime - 1 <= meta[2]:
            return replace(f, state=DONE)
        return replace(f, state=PRESENT)
    partial = _partial_path(ckdir, f)
    if partial.is_file() and 0 < partial.stat().st_size <= f.size:
        return replace(f, state=PARTIAL, partial_bytes=partial.stat().st_size)
    return replace(f, state=MISSING)


# ---------------------------------------------------------------------------------------- reporting


def human_bytes(n: int) -> str:
    """Decimal units, as the Hub shows sizes."""
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


_STATE_WORDS = {DONE: "here", PRESENT: "here, to check", PARTIAL: "partial", MISSING: "to fetch"}


def format_plan(plan: DownloadPlan) -> str:
    """The dry-run report: every repository and file with its size and state, the totals and the disk."""
    lines = [f"Hub: {plan.endpoint}    checkpoint folder: {plan.checkpoint_dir}"]
    outputs = {c.name: c for c in plan.conversions}
    for rp in plan.repos:
        files = [f for f in plan.files if f.repo == rp.repo and f.revision == rp.commit]
        head = f"{rp.repo} @ {rp.revision} ({rp.commit[:10]})" + (", gated" if rp.gated else "")
        lines.append(head)
        if rp.access_error is not None:
            lines.append(f"  ! {rp.access_error.message}")
        for f in files:
            state = _STATE_WORDS[f.state]
            if f.state == PARTIAL:
                state += f" ({human_bytes(f.partial_bytes)} here)"
            target = f"{Path(f.root).parent.as_posix()} (huggingface_hub cache)" if f.hf_cache else f.local
            if f.convert:
                target += f" (converted into {', '.join(outputs[f.convert].outputs)})"
            lines.append(f"  {f.remote} -> {target}  {human_bytes(f.size)}  {state}")
    for c in plan.conversions:
        if c.done:
            lines.append(f"{', '.join(c.outputs)}: converted already")
    for item in plan.left_out:
        lines.append(f"left out, already shipped: {item}")
    converted = sum(c.output_bytes for c in plan.conversions if not c.done)
    lines.append(f"Total: {len(plan.files)} files, {human_bytes(plan.total_bytes)}; "
                 f"here already: {human_bytes(plan.total_bytes - plan.fetch_bytes)}; "
                 f"to fetch: {human_bytes(plan.fetch_bytes)}"
                 + (f"; conversions write {human_bytes(converted)}" if converted else ""))
    verdict = "enough" if plan.fits else "NOT ENOUGH"
    lines.append(f"Disk: needs {human_bytes(plan.needed_bytes)}, {human_bytes(plan.free_bytes)} free "
                 f"at {plan.checkpoint_dir.resolve()} ({verdict})")
    return "\n".join(lines)
