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

The parts: :mod:`~cosmos_cli.download.errors` (the error classes), :mod:`~cosmos_cli.download.hub` (the
Hub client and the listing checks), :mod:`~cosmos_cli.download.plan` (choosing models and files, the plan,
the dry-run report), :mod:`~cosmos_cli.download.cache` (where files and their records live on disk),
:mod:`~cosmos_cli.download.fetch`, :mod:`~cosmos_cli.download.verify` (hashing),
:mod:`~cosmos_cli.download.conversions`. This module
re-exports the public names.
"""

from cosmos_cli.download.conversions import CONVERSIONS, registered_conversions
from cosmos_cli.download.errors import (
    ChecksumError,
    DiskSpaceError,
    DownloadError,
    GatedRepoAccessError,
    HubAuthError,
    HubUnreachableError,
    RemoteMissingError,
    UnsafeListingError,
    VerifyFailed,
)
from cosmos_cli.download.fetch import DownloadReport, download
from cosmos_cli.download.hub import check_commit, check_inside, check_listing_name, hub_endpoint
from cosmos_cli.download.plan import (
    DONE,
    MISSING,
    PARTIAL,
    PRESENT,
    ConversionPlan,
    DownloadPlan,
    PlannedFile,
    RepoPlan,
    format_plan,
    free_bytes,
    hub_files,
    human_bytes,
    plan_download,
    resolve_models,
    select_files,
)
from cosmos_cli.download.verify import CHUNK, VerifyReport, hash_file, verify
from cosmos_cli.specs import Conversion

__all__ = [
    "CHUNK", "CONVERSIONS", "DONE", "MISSING", "PARTIAL", "PRESENT", "ChecksumError",
    "Conversion", "ConversionPlan", "DiskSpaceError", "DownloadError", "DownloadPlan", "DownloadReport",
    "GatedRepoAccessError", "HubAuthError", "HubUnreachableError", "PlannedFile", "RemoteMissingError",
    "RepoPlan", "UnsafeListingError", "VerifyFailed", "VerifyReport", "check_commit", "check_inside",
    "check_listing_name", "download", "format_plan", "free_bytes", "hash_file", "human_bytes", "hub_endpoint",
    "hub_files", "plan_download", "registered_conversions", "resolve_models", "select_files", "verify",
]
