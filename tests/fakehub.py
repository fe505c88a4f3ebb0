"""A fake Hugging Face Hub on 127.0.0.1 for download tests: the routes huggingface_hub 2.x calls, tiny repositories.

Two servers on ephemeral ports, like the real Hub and its CDN:

* the Hub: ``GET /api/models/<repo>[/revision/<rev>]`` (``?blobs=true`` adds sizes, blob ids and LFS records),
  ``GET /api/models/<repo>/tree/<rev>[/<path>]``, ``POST /api/models/<repo>/paths-info/<rev>``, and
  ``HEAD``/``GET /<repo>/resolve/<rev>/<path>``. Small files are served there (ETag = git blob id); LFS files
  answer ``302`` to the CDN with ``X-Linked-Etag`` (the SHA-256) and ``X-Linked-Size``, as the Hub does.
* the CDN: ``GET /cdn/<sha256>``, with ``Range`` support, no authentication (a signed URL in real life).

A repository may keep older commits (``history``: commit -> files) that are served when asked for by id, as
the Hub serves a pinned revision while ``main`` has moved on; and ``lies`` lets a test make the listing
(``siblings``) say what it likes about a path (hostile names, ids and digests).

Errors carry the headers huggingface_hub maps to its exceptions: ``X-Error-Code: RepoNotFound`` /
``RevisionNotFound`` / ``EntryNotFound`` (404) and ``GatedRepo`` (401 without a token, 403 with a token that
was not granted access). Tests can cut a transfer after N bytes, make the next requests fail with 503, and
serve bytes that differ from the hash the API lists. Every request is logged.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".pt", ".bin", ".jit", ".pth", ".h5", ".msgpack", ".safetensors", ".model", ".ot")


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class FakeRepo:
    """A model repository: path -> content. Files ending in an LFS suffix are stored as LFS."""

    repo_id: str
    files: dict[str, bytes]
    gated: bool = False
    commit: str = ""  # fixed when the repository is made: tests may then change files behind the Hub's back
    history: dict[str, dict[str, bytes]] = field(default_factory=dict)  # older commit -> its files
    lies: dict[str, dict] = field(default_factory=dict)  # path -> fields the listing shows instead of the truth
    listed_sha: str | None = None  # the "sha" the model info answers, when a test wants it to lie

    def __post_init__(self):
        if not self.commit:
            h = hashlib.sha1(self.repo_id.encode())
            for path in sorted(self.files):
                h.update(path.encode() + b"\0" + sha256(self.files[path]).encode())
            self.commit = h.hexdigest()

    def at(self, rev: str) -> FakeRepo | None:
        """The repository as of ``rev`` (``main``, the head commit or one in ``history``), else None."""
        rev = unquote(rev)
        if rev in ("main", self.commit):
            return self
        if rev in self.history:
            return FakeRepo(self.repo_id, self.history[rev], gated=self.gated, commit=rev)
        return None

    def all_files(self):
        """(path, data) of every commit, for the CDN."""
        yield from self.files.items()
        for files in self.history.values():
            yield from files.items()

    def is_lfs(self, path: str) -> bool:
        return path.endswith(LFS_SUFFIXES)

    def entry(self, path: str) -> dict:
        data = self.files[path]
        out = {"type": "file", "path": path, "size": len(data), "oid": git_sha1(data)}
        if self.is_lfs(path):
            out["lfs"] = {"oid": sha256(data), "size": len(data), "pointerSize": 134}
        return out

    def sibling(self, path: str) -> dict:
        data = self.files[path]
        out = {"rfilename": path, "size": len(data), "blobId": git_sha1(data)}
        if self.is_lfs(path):
            out["lfs"] = {"sha256": sha256(data), "size": len(data), "pointerSize": 134}
        lie = self.lies.get(path, {})
        out.update({k: v for k, v in lie.items() if k != "lfs"})
        if "lfs" in lie:
            out["lfs"] = {**out.get("lfs", {}), **lie["lfs"]}
        return out


@dataclass
class Logged:
    server: str  # "hub" or "cdn"
    method: str
    path: str
    range: str | None
    auth: str | None


@dataclass
class Fault:
    """Misbehaviour for one file's data: cut the body after ``cut_after`` bytes (once), then answer 503
    ``fail_next`` times; or serve ``corrupt`` bytes (the first byte flipped) every time."""

    cut_after: int | None = None
    fail_next: int = 0
    corrupt: bool = False


@dataclass
class FakeHub:
    repos: dict[str, FakeRepo] = field(default_factory=dict)
    granted: set[str] = field(default_factory=lambda: {"hf_granted"})  # tokens with access to gated repos
    rejected: set[str] = field(default_factory=lambda: {"hf_invalid"})  # tokens the Hub does not know
    log: list[Logged] = field(default_factory=list)
    faults: dict[str, Fault] = field(default_factory=dict)  # key: "<repo>/<path>"

    def __post_init__(self):
        self._lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []
        self.url = ""
        self.cdn_url = ""

    # -- lifecycle
    def add(self, repo: FakeRepo) -> FakeRepo:
        self.repos[repo.repo_id] = repo
        return repo

    def start(self) -> FakeHub:
        for role in ("hub", "cdn"):
            server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, role))
            server.daemon_threads = True
            server.timeout = 5
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
            self._servers.append(server)
        self.url = f"http://127.0.0.1:{self._servers[0].server_address[1]}"
        self.cdn_url = f"http://127.0.0.1:{self._servers[1].server_address[1]}"
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers.clear()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- queries for tests
    def data_requests(self, path: str | None = None) -> list[Logged]:
        """GETs that carried file content (resolve of small files, CDN for LFS), optionally for one repo path."""
        out = []
        for r in self.log:
            if r.method != "GET" or (r.server == "hub" and "/resolve/" not in r.path):
                continue
            if path is None or r.path.endswith("/" + path) or r.path.endswith(self._sha_of(path)):
                out.append(r)
        return out

    def _sha_of(self, key: str) -> str:
        for repo in self.repos.values():
            for p, data in repo.all_files():
                if f"{repo.repo_id}/{p}" == key or p == key:
                    return sha256(data)
        return "\0"

    def requests_for(self, repo_id: str) -> list[Logged]:
        return [r for r in self.log if f"/{repo_id}/" in r.path or r.path.endswith(f"/{repo_id}")]


def _handler(hub: FakeHub, role: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"
        timeout = 5

        def log_message(self, *args) -> None:  # quiet
            pass

        # -- plumbing
        def _log(self) -> None:
            with hub._lock:
                hub.log.append(Logged(role, self.command, urlsplit(self.path).path, self.headers.get("Range"),
                                      self.headers.get("Authorization")))

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, str(v))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, obj, headers: dict | None = None) -> None:
            self._send(200, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

        def _error(self, status: int, code: str | None, message: str, headers: dict | None = None) -> None:
            h = {"X-Error-Message": message, **(headers or {})}
            if code:
                h["X-Error-Code"] = code
            self._send(status, json.dumps({"error": message}).encode(), {"Content-Type": "application/json", **h})

        def _token(self) -> str | None:
            auth = self.headers.get("Authorization") or ""
            return auth[len("Bearer "):] if auth.startswith("Bearer ") else None

        def _repo(self, repo_id: str) -> FakeRepo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound", "Repository not found")
            return repo

        def _at(self, repo_id: str, rev: str) -> FakeRepo | None:
            """The repository at ``rev``, or None with the Hub's 404 sent."""
            repo = self._repo(repo_id)
            if repo is None:
                return None
            found = repo.at(rev)
            if found is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return found

        def _auth_ok(self, repo: FakeRepo) -> bool:
            token = self._token()
            if token in hub.rejected:
                self._error(401, None, "Invalid credentials in Authorization header")
                return False
            if not repo.gated or token in hub.granted:
                return True
            if token is None:
                self._error(401, "GatedRepo", f"Access to model {repo.repo_id} is restricted. You must have access "
                            "to it and be authenticated to access it. Please log in.")
            else:
                self._error(403, "GatedRepo", f"Access to model {repo.repo_id} is restricted and you are not in the "
                            f"authorized list. Visit {hub.url}/{repo.repo_id} to ask for access.")
            return False

        # -- routes
        def do_HEAD(self) -> None:
            self._route()

        def do_GET(self) -> None:
            self._route()

        def do_POST(self) -> None:
            self._route()

        def _route(self) -> None:
            self._log()
            parts = urlsplit(self.path)
            path, query = parts.path, parse_qs(parts.query)
            if role == "cdn":
                m = re.fullmatch(r"/cdn/([0-9a-f]{64})", path)
                return self._cdn(m.group(1)) if m else self._error(404, None, "no such object")
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
            if m and self.command == "GET":
                return self._model_info(m.group(1), m.group(2) or "main", query.get("blobs") == ["true"])
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path)
            if m and self.command == "GET":
                return self._tree(m.group(1), m.group(2), unquote(m.group(3) or ""), query.get("recursive") == ["true"])
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/paths-info/([^/]+)", path)
            if m and self.command == "POST":
                return self._paths_info(m.group(1), m.group(2))
            m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
            if m and self.command in ("GET", "HEAD"):
                return self._resolve(m.group(1), m.group(2), unquote(m.group(3)))
            self._error(404, None, f"no route for {self.command} {path}")

        def _model_info(self, repo_id: str, rev: str, blobs: bool) -> None:
            repo = self._at(repo_id, rev)
            if repo is None:
                return
            if self._token() in hub.rejected:
                return self._error(401, None, "Invalid credentials in Authorization header")
            siblings = [repo.sibling(p) if blobs else {"rfilename": p} for p in sorted(repo.files)]
            head = hub.repos[repo_id]
            sha = head.listed_sha if repo is head and head.listed_sha is not None else repo.commit
            self._json({"id": repo_id, "modelId": repo_id, "sha": sha, "private": False,
                        "gated": "manual" if repo.gated else False, "disabled": False, "siblings": siblings})

        def _tree(self, repo_id: str, rev: str, prefix: str, recursive: bool) -> None:
            repo = self._at(repo_id, rev)
            if repo is None:
                return
            base = prefix.rstrip("/") + "/" if prefix else ""
            entries, folders = [], set()
            for p in sorted(repo.files):
                if not p.startswith(base):
                    continue
                rest = p[len(base):]
                if "/" in rest and not recursive:
                    folders.add(base + rest.split("/")[0])
                    continue
                if recursive:
                    segs = rest.split("/")[:-1]
                    folders.update(base + "/".join(segs[: i + 1]) for i in range(len(segs)))
                entries.append(repo.entry(p))
            dirs = [{"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest()} for d in sorted(folders)]
            self._json(dirs + entries)

        def _paths_info(self, repo_id: str, rev: str) -> None:
            repo = self._at(repo_id, rev)
            if repo is None:
                return
            length = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(length).decode())
            self._json([repo.entry(p) for p in form.get("paths", []) if p in repo.files])

        def _resolve(self, repo_id: str, rev: str, path: str) -> None:
            repo = self._at(repo_id, rev)
            if repo is None or not self._auth_ok(repo):
                return
            if path not in repo.files:
                return self._error(404, "EntryNotFound", f"{path} does not exist", {"X-Repo-Commit": repo.commit})
            data = repo.files[path]
            headers = {"X-Repo-Commit": repo.commit, "Accept-Ranges": "bytes"}
            if repo.is_lfs(path):
                digest = sha256(data)
                headers.update({"X-Linked-Etag": f'"{digest}"', "X-Linked-Size": len(data),
                                "ETag": f'"{git_sha1(data)}"', "Location": f"{hub.cdn_url}/cdn/{digest}"})
                return self._send(302, b"", headers)
            headers["ETag"] = f'"{git_sha1(data)}"'
            self._serve(f"{repo_id}/{path}", data, headers)

        def _cdn(self, digest: str) -> None:
            for repo in hub.repos.values():
                for path, data in repo.all_files():
                    if sha256(data) == digest:
                        return self._serve(f"{repo.repo_id}/{path}", data, {"ETag": f'"{digest}"'})
            self._error(404, None, "no such object")

        def _serve(self, key: str, data: bytes, headers: dict) -> None:
            fault = hub.faults.get(key)
            if self.command == "GET" and fault is not None:
                with hub._lock:
                    cut, fail = fault.cut_after, fault.fail_next > 0 and fault.cut_after is None
                    if cut is not None:
                        fault.cut_after = None
                    elif fail:
                        fault.fail_next -= 1
                if fail:
                    return self._error(503, None, "Service Unavailable")
                if fault.corrupt:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
            else:
                cut = None
            start, end = 0, len(data) - 1
            status = 200
            rng = self.headers.get("Range")
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
            if self.command == "GET" and m:
                start = int(m.group(1))
                end = int(m.group(2)) if m.group(2) else len(data) - 1
                if start >= len(data):
                    return self._error(416, None, "Range Not Satisfiable", {"Content-Range": f"bytes */{len(data)}"})
                status = 206
                headers = {**headers, "Content-Range": f"bytes {start}-{end}/{len(data)}"}
            body = data[start : end + 1]
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, str(v))
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command == "HEAD":
                return
            if cut is not None:  # a connection that drops halfway
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler
