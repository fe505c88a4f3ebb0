"""The errors a download stops with: one CosmosError each, with its hint."""

from __future__ import annotations

from cosmos_cli.errors import CosmosError


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
