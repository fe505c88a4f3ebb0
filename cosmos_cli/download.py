"""Fetch exactly the checkpoint files generation reads, resumably, and check every byte.

:func:`plan_download` asks the Hub what each :class:`~cosmos_cli.specs.CheckpointFile` of the chosen models
stands for (commit, size, SHA-256) and what is already on disk; :func:`format_plan` is the dry-run report;
:func:`download` fetches what is missing, checks it and runs the conversions; :func:`verify` re-hashes an
existing folder.

On disk, in the original project's layout (``local`` of each entry):

* plain files sit at ``<checkpoint_dir>/<local>``. Next to them, huggingface_hub's local-folder metadata
  (``<root>/.cache/huggingface/download/<path>.metadata``: commit, etag, time) is written in the format
  huggingface_hub writes, so ``hf_hub_download(local_dir=...)``, ``snapshot_download`` and the original
  download script see our files as current, and a folder they made is taken as it is, without re-hashing.
* ``hf_cache`` entries are a huggingface_hub cache (``models--org--name/{blobs,snapshots,refs}``).
* a transfer that stops (network, Ctrl-C, full disk) leaves ``<path>.<etag>.incomplete`` under
  ``.cache/huggingface/download/`` (``blobs/<etag>.incomplete`` in a cache folder); the next run continues it
  with an HTTP Range request. We drive the transfer with huggingface_hub's ``http_get`` rather than
  ``hf_hub_download``, which (2.x) deletes its partial file when a transfer fails and so cannot resume.

Every file is hashed after its transfer, in 8 MiB chunks: SHA-256 against the Hub's LFS record (or the git
blob id for small files stored in git) and, where the original lists one, MD5.

The Hub's listing is untrusted input: a file name we would use must be a plain relative path (no absolute
name, no ``..``, ``.`` or empty segment, no NUL, control character or backslash), the commit id must be 40
hex digits (the one asked for, when the spec pins one), blob ids and SHA-256 values must be hex of their
length, and every path we write is resolved and must stay inside the checkpoint folder
(:func:`check_listing_name`, :func:`check_commit`, :func:`check_inside`). A listing that breaks any of these
stops the plan with one line before anything is written.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import json
import mmap
import os
import re
import shutil
import struct
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from cosmos_cli import __version__
from cosmos_cli.errors import CheckpointError, CosmosError, UsageError
from cosmos_cli.registry import all_models, find_model
from cosmos_cli.specs import GUARDRAIL, UPSAMPLER, CheckpointFile, ModelSpec

CHUNK = 8 << 20  # bytes read at a time when hashing: memory stays constant whatever the file size
MODEL_TYPES = ("Video2World",)  # the original script's --model_types values that we run
_OTHER_TYPES = ("text2world", "text2world-sample-av-multiview", "video2world-sample-av-multiview")

# States of a planned file on disk.
DONE = "done"  # in place and recorded as checked (our metadata or huggingface_hub's)
PRESENT = "present"  # in place but never checked here: hashed before it is trusted
PARTIAL = "partial"  # an interrupted transfer that the next run continues
MISSING = "missing"


# ---------------------------------------------------------------------------------------------- errors


class DownloadError(CosmosError):
    """A download that cannot go on."""


class HubAuthError(DownloadError):
    """Not logged in, or a token the Hub rejects."""


class GatedRepoAccessError(DownloadError):
    """A gated repository whose license the user has not accepted."""


class RemoteMissingError(DownloadError):
    """A repository, revision or file the Hub does not have."""


class HubUnreachableError(DownloadError):
    """No network, offline mode, or the Hub failing."""

    default_hint = "Check the connection (and HF_ENDPOINT / proxy settings), then run the command again: finished files are kept and partial ones resume."


class DiskSpaceError(DownloadError):
    """Not enough free disk space."""


class ChecksumError(DownloadError):
    """A fetched file whose hash is not the one the Hub or the original script lists."""


class VerifyFailed(DownloadError):
    """`cosmos download --verify` found missing or damaged files (each is listed on stdout)."""


class UnsafeListingError(DownloadError):
    """A Hub answer naming a path or id that could write outside the checkpoint folder."""

    default_hint = ("Nothing was written. Check HF_ENDPOINT (a mirror or proxy may be answering for the Hub) and "
                    "report the repository: cosmos only writes plain relative names inside --checkpoint-dir.")


# ------------------------------------------------------------------------------ untrusted listings

_COMMIT = re.compile(r"[0-9a-fA-F]{40}")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def check_listing_name(repo: str, name: object) -> str:
    """``name`` if it is a plain relative POSIX path, else :class:`UnsafeListingError` saying why."""
    if not isinstance(name, str) or not name:
        raise UnsafeListingError(f"{repo} lists a file with an empty or non-text name: {name!r}")
    why = None
    if "\0" in name:
        why = "contains a NUL byte"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        why = "contains a control character"
    elif "\\" in name:
        why = "contains a backslash"
    elif name.startswith("/") or re.match(r"[A-Za-z]:", name):
        why = "is absolute"
    elif any(seg == ".." for seg in name.split("/")):
        why = "contains '..'"
    elif any(seg in ("", ".") for seg in name.split("/")):
        why = "has an empty or '.' path segment"
    if why:
        raise UnsafeListingError(f"refusing the file {name!r} listed by {repo}: its name {why}")
    return name


def check_commit(repo: str, sha: object, asked: str) -> str:
    """The commit id the Hub answered: 40 hex digits, and the commit asked for when that was one."""
    if not isinstance(sha, str) or not _COMMIT.fullmatch(sha):
        raise UnsafeListingError(f"{repo} answered the commit id {sha!r} for revision {asked!r}: "
                                 "a commit id must be 40 hex digits")
    if _COMMIT.fullmatch(asked) and sha.lower() != asked.lower():
        raise UnsafeListingError(f"{repo}: asked for commit {asked}, the Hub answered {sha}")
    return sha


def _check_digest(repo: str, name: str, kind: str, value: object, pattern: re.Pattern) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise UnsafeListingError(f"{repo} lists {name} with the {kind} {value!r}, which is not a hex digest")
    return value.lower()


def check_inside(ckdir: Path, *paths: Path) -> None:
    """Every path, resolved (symbolic links followed), lies inside ``ckdir``, resolved."""
    root = Path(ckdir).resolve()
    for path in paths:
        resolved = Path(path).resolve()
        if resolved != root and root not in resolved.parents:
            raise UnsafeListingError(f"refusing to write {path}: it resolves to {resolved}, outside {root}",
                                     hint="A name from the Hub or a symbolic link in the checkpoint folder points "
                                          "outside it; nothing is written outside the folder.")


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

    Names may be comma-separated. ``Video2World`` (as a name or a type) is what every cosmos model is; the
    original's other types are refused. Without a name it is a usage error that lists the models the Hub has
    files for (the default model may well be one that ships with cosmos).
    """
    wanted: list[str] = []
    types = list(model_types)
    for item in names:
        for name in (p.strip() for p in item.split(",")):
            if not name:
                continue
            low = name.lower()
            (types if low in _OTHER_TYPES or low in (t.lower() for t in MODEL_TYPES) else wanted).append(name)
    for t in types:
        if t.lower() not in (m.lower() for m in MODEL_TYPES):
            raise UsageError(f"model type {t!r} is not supported: cosmos runs Video2World models",
                             hint="Leave --model_types out, or pass --model_types Video2World.")
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


# ------------------------------------------------------------------------------------------ the Hub


def hub_endpoint() -> str:
    """``HF_ENDPOINT`` read now (huggingface_hub reads it once, at import), else huggingface_hub's default."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _transport_errors() -> tuple[type[BaseException], ...]:
    try:  # huggingface_hub 2.x talks through httpx2; older releases through httpx
        import httpx2 as httpx
    except ImportError:  # pragma: no cover - depends on the installed huggingface_hub
        import httpx
    return (httpx.TransportError,)


class _Hub:
    """The Hub calls we make, each one's errors turned into one-line CosmosErrors."""

    def __init__(self, endpoint: str, token: str | None):
        from huggingface_hub import HfApi

        self.endpoint = endpoint
        self.token = token
        self.api = HfApi(endpoint=endpoint, token=token, library_name="cosmos-cli", library_version=__version__)
        self._infos: dict[tuple[str, str], object] = {}

    @contextmanager
    def errors(self, repo: str, path: str | None = None, revision: str = "main") -> Iterator[None]:
        from huggingface_hub.errors import (
            EntryNotFoundError,
            GatedRepoError,
            HfHubHTTPError,
            OfflineModeIsEnabled,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        where = f"{repo}/{path}" if path else repo
        login = "Log in with `hf auth login`, pass --token, or set HF_TOKEN."
        try:
            yield
        except GatedRepoError as exc:
            page = f"{self.endpoint}/{repo}"
            if self.token is None or _status(exc) == 401:
                raise GatedRepoAccessError(
                    f"{repo} is a gated repository and you are not logged in",
                    hint=f"Accept its license at {page}, then: {login}") from None
            raise GatedRepoAccessError(
                f"no access to the gated repository {repo}: accept its license at {page}",
                hint="Accept it while logged in as the owner of the token, then run the command again.") from None
        except RevisionNotFoundError:
            raise RemoteMissingError(f"revision {revision!r} not found in {repo}",
                                     hint="Check the revision in the model spec.") from None
        except RepositoryNotFoundError:
            raise RemoteMissingError(
                f"repository {repo} not found on {self.endpoint}",
                hint="Check the name; if the repository is private, log in with an account that can see it. "
                + ("" if self.token else login)) from None
        except EntryNotFoundError:
            raise RemoteMissingError(f"{path} is missing from {repo} (revision {revision})",
                                     hint="The repository changed: update the model spec's file list.") from None
        except OfflineModeIsEnabled:
            raise HubUnreachableError("offline mode is on (HF_HUB_OFFLINE=1): cannot reach the Hub",
                                      hint="Unset HF_HUB_OFFLINE (and TRANSFORMERS_OFFLINE) to download.") from None
        except HfHubHTTPError as exc:
            status = _status(exc)
            if status == 401:
                raise HubAuthError("the Hub rejected the token",
                                   hint=f"The token may be expired or mistyped. {login}") from None
            if status is not None and (status >= 500 or status in (408, 429)):
                raise HubUnreachableError(f"the Hub answered {status} for {where}") from None
            raise DownloadError(f"the Hub answered {status} for {where}") from None
        except _transport_errors() as exc:
            raise HubUnreachableError(f"cannot reach the Hub at {self.endpoint} ({type(exc).__name__})") from None

    def info(self, repo: str, revision: str):
        key = (repo, revision)
        if key not in self._infos:
            with self.errors(repo, revision=revision):
                self._infos[key] = self.api.model_info(repo, revision=revision, files_metadata=True)
        return self._infos[key]

    def url(self, f: PlannedFile) -> str:
        from huggingface_hub import hf_hub_url

        return hf_hub_url(f.repo, f.remote, revision=f.revision, endpoint=self.endpoint)

    def headers(self) -> dict[str, str]:
        from huggingface_hub.utils import build_hf_headers

        return build_hf_headers(token=self.token, library_name="cosmos-cli", library_version=__version__)

    def check_access(self, f: PlannedFile) -> CosmosError | None:
        """Ask for one file's metadata: a gated repository answers with its access error before any transfer."""
        from huggingface_hub import get_hf_file_metadata

        try:
            with self.errors(f.repo, f.remote, f.revision):
                get_hf_file_metadata(self.url(f), token=self.token, endpoint=self.endpoint)
        except (GatedRepoAccessError, HubAuthError) as exc:
            return exc
        return None


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


# ------------------------------------------------------------------------------------------ planning


def _is_pattern(name: str) -> bool:
    return any(c in name for c in "*?[")


def _cache_folder(repo: str) -> str:
    return "models--" + repo.replace("/", "--")


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


# ------------------------------------------------------------------------------- disk bookkeeping


def _written_paths(ckdir: Path, f: PlannedFile) -> tuple[Path, ...]:
    """Every path a planned file may create: the file, its partial transfer and record (a cache entry: the
    blob, the snapshot link and the ref)."""
    paths = [ckdir / f.local, _partial_path(ckdir, f)]
    if f.hf_cache:
        paths += [_blob_path(ckdir, f), ckdir / f.root / "refs" / f.ref]
    else:
        paths.append(_metadata_path(ckdir, f))
    return tuple(paths)


def _meta_dir(ckdir: Path, f: PlannedFile) -> Path:
    return ckdir / f.root / ".cache" / "huggingface" / "download"


def _metadata_path(ckdir: Path, f: PlannedFile) -> Path:
    return _meta_dir(ckdir, f) / f"{f.remote}.metadata"


def _partial_path(ckdir: Path, f: PlannedFile) -> Path:
    if f.hf_cache:
        return ckdir / f.root / "blobs" / f"{f.etag}.incomplete"
    return _meta_dir(ckdir, f) / f"{f.remote}.{f.etag}.incomplete"


def _blob_path(ckdir: Path, f: PlannedFile) -> Path:
    return ckdir / f.root / "blobs" / f.etag


def _read_metadata(ckdir: Path, f: PlannedFile) -> tuple[str, str, float] | None:
    """huggingface_hub's local-folder record for a file: (commit, etag, time), if any."""
    try:
        commit, etag, stamp = _metadata_path(ckdir, f).read_text().splitlines()[:3]
        return commit.strip(), etag.strip(), float(stamp)
    except (OSError, ValueError):
        return None


def _write_metadata(ckdir: Path, f: PlannedFile) -> None:
    path = _metadata_path(ckdir, f)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{f.revision}\n{f.etag}\n{time.time()}\n")


def _forget(ckdir: Path, f: PlannedFile) -> None:
    """Drop the record that says a file was checked (a cache entry: its snapshot link), so the next download
    hashes it again and fetches it anew if it is still bad."""
    if f.hf_cache:
        (ckdir / f.local).unlink(missing_ok=True)
    else:
        _metadata_path(ckdir, f).unlink(missing_ok=True)


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


# ------------------------------------------------------------------------------------------ progress


class _Progress:
    """rich bars on stderr: one per file while it transfers, and one for the whole run."""

    def __init__(self, total: int, done: int, label: str, enabled: bool = True):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), TimeRemainingColumn(),
                                 console=Console(stderr=True), disable=not enabled)
        self.overall = self.progress.add_task(label, total=total, completed=done)

    def __enter__(self) -> _Progress:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def advance(self, n: int) -> None:
        self.progress.advance(self.overall, n)

    def file_bar(self, name: str) -> Callable[..., _FileBar]:
        """A ``tqdm_class`` for huggingface_hub's ``http_get``: it calls it with tqdm's keyword arguments."""

        def make(*, total: int | None = None, initial: int = 0, **_: object) -> _FileBar:
            return _FileBar(self, name, total, initial)

        return make


class _FileBar:
    def __init__(self, owner: _Progress, name: str, total: int | None, initial: int):
        self.owner = owner
        self.task = owner.progress.add_task(f"  {name}", total=total, completed=initial)

    def update(self, n: int = 1) -> None:
        self.owner.progress.advance(self.task, n)
        self.owner.advance(n)

    def close(self) -> None:
        self.owner.progress.update(self.task, visible=False)

    def __enter__(self) -> _FileBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------------------------------ fetching


@dataclass
class DownloadReport:
    fetched: list[str] = field(default_factory=list)  # local paths transferred (fully or the rest of a partial)
    checked: list[str] = field(default_factory=list)  # present files hashed and accepted
    converted: list[str] = field(default_factory=list)
    fetched_bytes: int = 0


def download(plan: DownloadPlan, *, token: str | None = None, progress: bool = True) -> DownloadReport:
    """Fetch, check and convert everything the plan lists; refuse to start without access or disk space."""
    from huggingface_hub import get_token

    for rp in plan.repos:
        if rp.access_error is not None:
            raise rp.access_error
    if not plan.fits:
        raise DiskSpaceError(
            f"not enough disk space in {plan.checkpoint_dir}: the download needs {human_bytes(plan.needed_bytes)}, "
            f"{human_bytes(plan.free_bytes)} is free",
            hint="Free some space, choose another --checkpoint-dir, or leave parts out with --no-upsampler / "
                 "--no-guardrail. `cosmos download --dry-run` lists every file.")
    hub = _Hub(plan.endpoint, token or get_token())
    ckdir = plan.checkpoint_dir
    report = DownloadReport()
    already = sum(f.size - f.bytes_to_fetch for f in plan.files)
    with _Progress(plan.total_bytes, already, "total", enabled=progress) as bars, _disk_errors(ckdir):
        for f in plan.files:
            _fetch_one(f, ckdir, hub, bars, report)
        for conv in plan.conversions:
            if not conv.done:
                inputs = {f.remote: ckdir / f.local for f in plan.files if f.convert == conv.name}
                _run_conversion(conv, inputs, ckdir)
                report.converted.extend(conv.outputs)
    return report


@contextmanager
def _disk_errors(ckdir: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
            raise DiskSpaceError(f"the disk is full: {exc.filename or ckdir}",
                                 hint="Free some space and run the command again: the partial file is kept "
                                      "and the transfer resumes.") from None
        if isinstance(exc, PermissionError):
            raise DownloadError(f"cannot write {exc.filename or ckdir}: permission denied",
                                hint="Choose a --checkpoint-dir you can write to.") from None
        raise


def _fetch_one(f: PlannedFile, ckdir: Path, hub: _Hub, bars: _Progress, report: DownloadReport) -> None:
    final = ckdir / f.local
    if f.state == DONE:
        return
    check_inside(ckdir, *_written_paths(ckdir, f))  # again: a link may have appeared since the plan
    if f.state == PRESENT:  # in place but never checked here (a cache entry: a blob without its link)
        have = _blob_path(ckdir, f) if f.hf_cache else final
        if not _mismatches(have, f):
            if f.hf_cache:
                _link_cached(ckdir, f)
            else:
                _write_metadata(ckdir, f)
            report.checked.append(f.local)
            return
        bars.advance(-f.size)
        have.unlink()  # a different file from the Hub's: fetch it again
    partial = _partial_path(ckdir, f)
    partial.parent.mkdir(parents=True, exist_ok=True)
    if not f.hf_cache:  # drop a partial transfer of an older version of the file
        for stale in partial.parent.glob(f"{Path(f.remote).name}.*.incomplete"):
            if stale != partial:
                stale.unlink()
    start = partial.stat().st_size if partial.is_file() else 0
    if start > f.size:
        partial.unlink()
        start = 0
    _transfer(f, partial, start, hub, bars)
    report.fetched.append(f.local)
    report.fetched_bytes += f.size - start
    bad = _mismatches(partial, f)
    if bad:
        partial.unlink()
        raise ChecksumError(f"checksum mismatch for {f.local} ({f.repo}/{f.remote}): {'; '.join(bad)}",
                            hint="The damaged copy was deleted: run the command again to fetch it anew. "
                                 "If it happens again, the file on the Hub differs from the one the spec expects.")
    if f.hf_cache:
        blob = _blob_path(ckdir, f)
        os.replace(partial, blob)
        _link_cached(ckdir, f)
    else:
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, final)
        _write_metadata(ckdir, f)


def _transfer(f: PlannedFile, partial: Path, start: int, hub: _Hub, bars: _Progress) -> None:
    """Stream the file into ``partial`` from byte ``start`` on (an HTTP Range request when resuming)."""
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.file_download import http_get

    with open(partial, "ab") as out, hub.errors(f.repo, f.remote, f.revision):
        try:
            http_get(hub.url(f), out, resume_size=start, headers=hub.headers(), expected_size=f.size,
                     displayed_filename=f.remote, tqdm_class=bars.file_bar(f.local))
        except OSError as exc:
            if exc.errno is None and not isinstance(exc, HfHubHTTPError):  # fewer bytes than announced
                raise HubUnreachableError(f"the transfer of {f.repo}/{f.remote} ended early") from None
            raise  # HTTP errors are named by hub.errors, disk errors by _disk_errors


def _link_cached(ckdir: Path, f: PlannedFile) -> None:
    """Make the snapshot entry and the ref, as huggingface_hub's cache has them."""
    blob = _blob_path(ckdir, f)
    pointer = ckdir / f.local
    pointer.parent.mkdir(parents=True, exist_ok=True)
    if pointer.is_symlink() or pointer.exists():
        pointer.unlink()
    try:
        pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    except OSError:  # no symlinks on this filesystem: keep a copy, as huggingface_hub does
        shutil.copyfile(blob, pointer)
    if f.ref != f.revision:  # a branch or tag: record which commit it meant, as huggingface_hub does
        ref = ckdir / f.root / "refs" / f.ref
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(f.revision)


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
    with _Progress(plan.total_bytes, 0, "verified", enabled=progress) as bars:
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


# --------------------------------------------------------------------------------------- conversions


@dataclass(frozen=True)
class Conversion:
    """``run(inputs, outputs)``: remote name -> fetched file, and output local path -> its absolute path.
    ``check(outputs)`` yields (output, problem) for a converted folder that is damaged."""

    run: Callable[[dict[str, Path], dict[str, Path]], None]
    check: Callable[[dict[str, Path]], list[tuple[str, str]]]


def _run_conversion(conv: ConversionPlan, inputs: dict[str, Path], ckdir: Path) -> None:
    CONVERSIONS[conv.name].run(inputs, {o: ckdir / o for o in conv.outputs})
    if conv.staging:
        shutil.rmtree(ckdir / conv.staging, ignore_errors=True)


_SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
    "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}


def _map_safetensors(path: Path) -> dict:
    """The tensors of a safetensors file as views of a private memory map: nothing is read until used."""
    import torch

    with open(path, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
    (header_len,) = struct.unpack("<Q", mm[:8])
    header = json.loads(mm[8 : 8 + header_len])
    base = 8 + header_len
    tensors = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dtype = getattr(torch, _SAFETENSORS_DTYPES[meta["dtype"]])
        start, end = meta["data_offsets"]
        count = (end - start) // torch.empty((), dtype=dtype).element_size()
        tensors[name] = torch.frombuffer(mm, dtype=dtype, count=count, offset=base + start).reshape(meta["shape"])
    return tensors


# The vision encoder the Video2World upsampler is built for (the original asserts the same values).
_PIXTRAL_VIT = {"hidden_size": 1024, "num_channels": 3, "image_size": 1024, "patch_size": 16, "rope_theta": 10000,
                "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16, "image_token_id": 10}
_PIXTRAL_LLM_KEYS = ("dim", "n_layers", "head_dim", "hidden_dim", "n_heads", "n_kv_heads", "rope_theta", "norm_eps",
                     "vocab_size")


def _pixtral_config(params: dict) -> dict:
    if set(params) != {*_PIXTRAL_LLM_KEYS, "vision_encoder"}:
        raise CheckpointError(f"Pixtral params.json has unexpected keys: {sorted(params)}",
                              hint="Is this mistralai/Pixtral-12B-2409?")
    vit = params["vision_encoder"]
    wrong = {k: vit.get(k) for k, v in _PIXTRAL_VIT.items() if vit.get(k) != v}
    if wrong or params["norm_eps"] != 1e-5:
        raise CheckpointError(f"Pixtral params.json describes another vision encoder: {wrong or params['norm_eps']}",
                              hint="Is this mistralai/Pixtral-12B-2409?")
    rename = {"hidden_dim": "ffn_hidden_size"}
    return {rename.get(k, k): ("pixtral-12b-vit" if k == "vision_encoder" else v) for k, v in params.items()}


def _convert_pixtral_12b(inputs: dict[str, Path], outputs: dict[str, Path]) -> None:
    """Mistral's Pixtral-12B release -> the original's ``Pixtral-12B/{model.pt,config.json}``.

    ``model.pt`` holds ``{"model": {"model.<llm>", "mm_projector.<...>", "vision_encoder.<...>"},
    "mm_projector": {...}, "vision_encoder": {...}}`` (the projector's ``w_in``/``w_out`` renamed to
    ``projector.0``/``projector.2``); tensors shared between the dictionaries are stored once. The source is
    memory-mapped, so the conversion needs page cache, not 25 GB of RAM.
    """
    import torch

    model_out = next(p for p in outputs.values() if p.name.endswith(".pt"))
    config_out = next(p for p in outputs.values() if p.name.endswith(".json"))
    config = _pixtral_config(json.loads(inputs["params.json"].read_text()))
    tensors = _map_safetensors(inputs["consolidated.safetensors"])
    vit_prefix, proj_prefix = "vision_encoder.", "vision_language_adapter."
    vit = {k[len(vit_prefix):]: v for k, v in tensors.items() if k.startswith(vit_prefix)}
    projector = {k[len(proj_prefix):].replace("w_in.", "projector.0.").replace("w_out.", "projector.2."): v
                 for k, v in tensors.items() if k.startswith(proj_prefix)}
    llm = {k: v for k, v in tensors.items() if not k.startswith((vit_prefix, proj_prefix))}
    model = {**{f"model.{k}": v for k, v in llm.items()}, **{f"mm_projector.{k}": v for k, v in projector.items()},
             **{f"vision_encoder.{k}": v for k, v in vit.items()}}
    model_out.parent.mkdir(parents=True, exist_ok=True)
    tmp = model_out.with_name(model_out.name + ".converting")
    with open(tmp, "wb") as fh:
        torch.save({"model": model, "mm_projector": projector, "vision_encoder": vit}, fh)
    os.replace(tmp, model_out)
    tmp_config = config_out.with_name(config_out.name + ".converting")
    tmp_config.write_text(json.dumps(config))
    os.replace(tmp_config, config_out)


def _check_pixtral_12b(outputs: dict[str, Path]) -> list[tuple[str, str]]:
    """Every member's CRC in the model.pt zip (a streamed read of the whole file) and the config's keys."""
    problems = []
    for name, path in outputs.items():
        if not path.is_file():
            problems.append((name, "missing"))
        elif path.suffix == ".pt":
            try:
                with zipfile.ZipFile(path) as zf:
                    bad = zf.testzip()
                if bad is not None:
                    problems.append((name, f"damaged member {bad}"))
            except (zipfile.BadZipFile, OSError) as exc:
                problems.append((name, f"not a readable torch checkpoint ({exc})"))
        else:
            try:
                config = json.loads(path.read_text())
                missing = {"dim", "n_layers", "ffn_hidden_size", "vision_encoder"} - set(config)
                if missing:
                    problems.append((name, f"keys missing: {sorted(missing)}"))
            except (ValueError, OSError) as exc:
                problems.append((name, f"not readable JSON ({exc})"))
    return problems


CONVERSIONS: dict[str, Conversion] = {
    "pixtral-12b": Conversion(run=_convert_pixtral_12b, check=_check_pixtral_12b),
}
