"""The Hub client (each call's errors as one-line CosmosErrors) and the checks its untrusted listings pass."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from cosmos_cli import __version__
from cosmos_cli.download.errors import (
    DownloadError,
    GatedRepoAccessError,
    HubAuthError,
    HubUnreachableError,
    RemoteMissingError,
    UnsafeListingError,
)
from cosmos_cli.errors import CosmosError

if TYPE_CHECKING:
    from cosmos_cli.download.plan import PlannedFile

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
