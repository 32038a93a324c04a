"""A local fake of the Hugging Face Hub HTTP API, for dataset repos.

The real client, `huggingface_hub.HfApi(endpoint=server.url, token=...)`, works against it: the
routes and answers below follow what huggingface_hub 2.4 sends and needs (REFERENCE.md section 4).
Each repo keeps a linear history of commits per branch, each commit a full snapshot of the file
tree, so tests can check what was published, in which commit, and that a refused commit changed
nothing. Any request can be made to fail (`fail_next`).

Usage::

    hub = FakeHub(token="secret")                 # token=None: no auth at all
    hub.create_dataset_repo("tester/pypi-downloads", {"dataset.parquet": data})
    with hub.serve() as server:                   # started already; `with` stops it at the end
        api = HfApi(endpoint=server.url, token="secret")
        api.create_commit("tester/pypi-downloads", [...], commit_message="...",
                          repo_type="dataset", parent_commit=hub.head("tester/pypi-downloads"))
    hub.files("tester/pypi-downloads")            # {path: bytes} at main
    hub.commits("tester/pypi-downloads")          # [Commit, ...], oldest first
    hub.fail_next("GET", "/resolve/main/dataset.parquet", 500)
    hub.fail_next("HEAD", "/resolve/", "drop")     # close the connection without an answer
    hub.go_offline_after("GET", "/api/datasets/") # answer it, then refuse every connection
    hub.add_token("hf_other", user="someone")     # a second account: sees no private repo of tester's

Routes (anything else: 404 JSON error, a warning in the log and an entry in `hub.unhandled`):

    POST /api/repos/create                                   create_repo
    GET  /api/whoami-v2                                      whoami
    POST /api/validate-yaml                                  README.md front matter check
    GET  /api/datasets/{ns}/{name}[/revision/{rev}]          repo_info / dataset_info
    GET  /api/datasets/{ns}/{name}/tree/{rev}[/{path}]       list_repo_tree / list_repo_files
    GET  /api/datasets/{ns}/{name}/commits/{rev}             list_repo_commits
    POST /api/datasets/{ns}/{name}/preupload/{rev}           create_commit, step 1
    POST /datasets/{ns}/{name}.git/info/lfs/objects/batch    create_commit, step 2 (LFS)
    PUT  /_fake_lfs/upload/{id}, POST /_fake_lfs/verify/{id} stand-ins for the S3 upload URL
    POST /api/datasets/{ns}/{name}/commit/{rev}              create_commit, step 3
    HEAD, GET /datasets/{ns}/{name}/resolve/{rev}/{path}     file_exists, hf_hub_download

Deliberate simplifications, so nobody relies on them: dataset repos only; commits go to existing
branches only (no pull requests, tags or branch creation); LFS files are served by the resolve
route itself, where the real Hub answers 302 to a CDN (the client handles both); the upload mode
follows size and NUL bytes only, not `.gitattributes`; reads of public repos never check tokens;
any valid token may create a repo in any namespace and write to any repo it can see.

Accounts: every token belongs to a user (`token` to "tester", more with `add_token`). A private repo
is seen only by its owner's tokens: to anyone else it is 404 "Repository not found" on every route
(repo_info, tree, resolve, commit), as on the Hub, while creating it again is still 409 "already
created".
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import json
import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.message import Message
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import yaml

from .server import LocalServer, QuietHandler

logger = logging.getLogger(__name__)

USER = "tester"  # the account every token belongs to; namespace of repos created without one
LFS_THRESHOLD = 10 * 1024 * 1024  # the Hub wants files of 10 MiB and more in LFS
SAMPLE_SIZE = 512  # the client sends the first 512 bytes of each file to preupload
TREE_PAGE_SIZE = 1000  # the Hub's page size for tree listings (50 with expand=true)
STALE_PARENT_MESSAGE = "A commit has happened since. Please refresh and try again."

_SHA1_RE = re.compile(r"[0-9a-f]{40}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?")
# Same front matter pattern as huggingface_hub.repocard.
_YAML_BLOCK_RE = re.compile(r"^(\s*---[\r\n]+)([\S\s]*?)([\r\n]+---(\r\n|\n|$))")

# The initial commit of a new repo holds a `.gitattributes` like the Hub's (abridged: the real one
# lists more extensions). Informative only: this fake picks upload modes by content and size.
DEFAULT_GITATTRIBUTES = b"".join(
    pattern + b" filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        b"*.7z", b"*.arrow", b"*.bin", b"*.bz2", b"*.ckpt", b"*.gz", b"*.h5", b"*.joblib", b"*.lfs.*",
        b"*.lz4", b"*.msgpack", b"*.npy", b"*.npz", b"*.onnx", b"*.parquet", b"*.pickle", b"*.pkl",
        b"*.pt", b"*.pth", b"*.rar", b"*.safetensors", b"*.tar.*", b"*.tar", b"*.tgz", b"*.xz",
        b"*.zip", b"*.zst", b"*tfevents*", b"*.wav", b"*.mp3", b"*.bmp", b"*.gif", b"*.png",
        b"*.tiff", b"*.jpg", b"*.jpeg", b"*.webp", b"*.mp4", b"*.webm",
    )
)


# --------------------------------------------------------------------------------------------
# Content model: blobs and commits
# --------------------------------------------------------------------------------------------


def git_blob_sha1(data: bytes) -> str:
    """The git object id of `data` stored as a blob (what the Hub calls a regular file's oid)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The pointer file git stores in place of an LFS file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def wants_lfs(sample: bytes, size: int, threshold: int = LFS_THRESHOLD) -> bool:
    """The Hub's rule, as far as this fake follows it: binary (a NUL byte in the sample) or large."""
    return b"\0" in sample[:SAMPLE_SIZE] or size >= threshold


class Blob:
    """One file's content. For an LFS file git holds the pointer, so its git oid is the pointer's
    and its ETag is the content's sha256, as on the Hub."""

    __slots__ = ("data", "lfs", "sha256", "git_oid")

    def __init__(self, data: bytes, lfs: bool):
        self.data = bytes(data)
        self.lfs = lfs
        self.sha256 = hashlib.sha256(self.data).hexdigest()
        self.git_oid = git_blob_sha1(self.pointer if lfs else self.data)

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def pointer(self) -> bytes:
        return lfs_pointer(self.sha256, len(self.data))

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_oid

    def __repr__(self) -> str:
        return f"Blob(size={self.size}, lfs={self.lfs}, oid={self.git_oid[:10]})"


@dataclass(frozen=True)
class Commit:
    """A commit: its parent, message and the full file tree it leaves behind."""

    oid: str
    parent: str | None
    summary: str
    description: str
    date: datetime
    changed: frozenset[str]  # paths added, modified or deleted relative to the parent
    blobs: Mapping[str, Blob] = field(repr=False)

    @property
    def files(self) -> dict[str, bytes]:
        return {path: blob.data for path, blob in self.blobs.items()}

    @property
    def lfs_paths(self) -> frozenset[str]:
        return frozenset(path for path, blob in self.blobs.items() if blob.lfs)


@dataclass
class _Repo:
    repo_id: str
    private: bool
    created_at: datetime
    owner: str = USER  # the user whose tokens see the repo when it is private
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit oid
    # LFS content uploaded to this repo (sha256 -> bytes), committed or not yet.
    lfs_objects: dict[str, bytes] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        return self.commits.get(self.branches.get(revision, revision))

    def history(self, branch: str) -> list[Commit]:
        """Commits reachable from `branch`, oldest first."""
        out: list[Commit] = []
        oid: str | None = self.branches[branch]
        while oid is not None:
            commit = self.commits[oid]
            out.append(commit)
            oid = commit.parent
        return out[::-1]


@dataclass(frozen=True)
class _PendingUpload:
    repo_id: str
    oid: str
    size: int


@dataclass
class _Fault:
    method: str
    path_contains: str
    status: int | str  # an HTTP status, or DROP
    remaining: int
    body: Any
    headers: dict[str, str]


# --------------------------------------------------------------------------------------------
# HTTP plumbing: requests and answers as plain data, so the logic stays out of the handler
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Request:
    method: str
    path: str  # without the query string, still percent-encoded
    query: dict[str, str]
    headers: Message  # case-insensitive `get`
    body: bytes
    base_url: str  # scheme://host:port as the client reached us: used to build URLs back to us

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError as exc:
            raise _HubError(400, f"Request body is not valid JSON: {exc}") from exc


@dataclass
class _Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False  # close the connection without answering
    go_offline: bool = False  # stop accepting connections, then send this answer and close


def _json(
    status: int, payload: Any, headers: dict[str, str] | None = None, content_type: str = "application/json"
) -> _Response:
    return _Response(status, json.dumps(payload).encode(), content_type, dict(headers or {}))


def _header_safe(text: str) -> str:
    """Header values must be one line of latin-1; keep them plain ASCII."""
    return " ".join(text.split()).encode("ascii", "replace").decode("ascii")


def _error(
    status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None, **extra: Any
) -> _Response:
    """The Hub's error shape: JSON `{"error": ...}` plus `X-Error-Message` (the only place a client
    can read it on a HEAD) and `X-Error-Code`, from which the client picks its exception class."""
    out = {"X-Error-Message": _header_safe(message), **(headers or {})}
    if code is not None:
        out["X-Error-Code"] = code
    return _json(status, {"error": message, **extra}, out)


class _HubError(Exception):
    """Raised inside a route to answer with an error."""

    def __init__(
        self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None, **extra: Any
    ):
        super().__init__(message)
        self.response = _error(status, message, code, headers, **extra)


def _flag(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _front_matter(text: str) -> Any:
    """The YAML front matter of a card (None without one); raises yaml.YAMLError when invalid."""
    match = _YAML_BLOCK_RE.search(text)
    return yaml.safe_load(match.group(2)) if match else None


def _check_path(path: Any) -> str:
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path:
        raise _HubError(400, f"Invalid path in repo: {path!r}")
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts) or parts[0] == ".git":
        raise _HubError(400, f"Invalid path in repo: {path!r}")
    return path


# --------------------------------------------------------------------------------------------
# The fake
# --------------------------------------------------------------------------------------------

DROP = "drop"  # a `fail_next` status: close the connection without answering (a crashed proxy)

_REPO = r"(?P<ns>[^/]+)/(?P<name>[^/]+?)"
_REV = r"(?P<rev>[^/]+)"  # the client quotes revisions with safe="", so a branch "a/b" arrives as a%2Fb


class FakeHub:
    """State and behaviour of the fake Hub; `serve()` puts it on the network.

    All state sits behind one lock, held for the whole of each request: requests are small and
    this keeps every route atomic (a commit checks its parent and moves the branch in one step).
    """

    def __init__(
        self, token: str | None = None, *, lfs_threshold: int = LFS_THRESHOLD, tree_page_size: int = TREE_PAGE_SIZE
    ):
        self.token = token
        self._tokens: dict[str, str] = {token: USER} if token is not None else {}  # token -> user
        self.lfs_threshold = lfs_threshold
        self.tree_page_size = tree_page_size
        self._lock = threading.RLock()
        self._repos: dict[str, _Repo] = {}
        self._uploads: dict[str, _PendingUpload] = {}
        self._faults: list[_Fault] = []
        self._offline_triggers: list[tuple[str, str]] = []
        self._servers: list[LocalServer] = []
        self._requests: list[tuple[str, str]] = []
        self._unhandled: list[tuple[str, str]] = []
        self._oid_counter = itertools.count()
        self._routes: list[tuple[frozenset[str], re.Pattern[str], Callable[..., _Response]]] = [
            (frozenset({"POST"}), re.compile(r"/api/repos/create"), self._create_repo_route),
            (frozenset({"GET"}), re.compile(r"/api/whoami-v2"), self._whoami_route),
            (frozenset({"POST"}), re.compile(r"/api/validate-yaml"), self._validate_yaml_route),
            (frozenset({"GET"}), re.compile(rf"/api/datasets/{_REPO}(?:/revision/{_REV})?"), self._repo_info_route),
            (frozenset({"GET"}), re.compile(rf"/api/datasets/{_REPO}/tree/{_REV}(?:/(?P<path>.+))?"), self._tree_route),
            (frozenset({"GET"}), re.compile(rf"/api/datasets/{_REPO}/commits/{_REV}"), self._commits_route),
            (frozenset({"POST"}), re.compile(rf"/api/datasets/{_REPO}/preupload/{_REV}"), self._preupload_route),
            (frozenset({"POST"}), re.compile(rf"/api/datasets/{_REPO}/commit/{_REV}"), self._commit_route),
            (frozenset({"HEAD", "GET"}), re.compile(rf"/datasets/{_REPO}/resolve/{_REV}/(?P<path>.+)"), self._resolve_route),
            (frozenset({"POST"}), re.compile(rf"/datasets/{_REPO}\.git/info/lfs/objects/batch"), self._lfs_batch_route),
            (frozenset({"PUT"}), re.compile(r"/_fake_lfs/upload/(?P<upload_id>[0-9a-f]{32})"), self._lfs_upload_route),
            (frozenset({"POST"}), re.compile(r"/_fake_lfs/verify/(?P<upload_id>[0-9a-f]{32})"), self._lfs_verify_route),
        ]

    # ---- serving ---------------------------------------------------------------------------

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> LocalServer:
        """Start an HTTP server for this hub and return it (`.url`, `.stop()`); use it as a
        context manager to stop it at the end. Several servers may share one hub."""
        server = _StartedServer(_HubHandler, app=self, host=host, port=port).start()
        with self._lock:
            self._servers.append(server)  # for go_offline_after
        return server

    # ---- helpers for tests: seeding and inspection ----------------------------------------

    def create_dataset_repo(
        self,
        repo_id: str,
        files: Mapping[str, bytes | str] | None = None,
        *,
        private: bool = False,
        owner: str = USER,
    ) -> str:
        """Create a dataset repo (initial commit with `.gitattributes`, as the Hub does) and, when
        `files` is given, add them in one more commit (binary or large ones as LFS). Returns the head.
        A private repo is seen only by the tokens of `owner`."""
        ns, _, name = repo_id.partition("/")
        if not (_NAME_RE.fullmatch(ns) and _NAME_RE.fullmatch(name)):
            raise ValueError(f"repo_id must look like 'namespace/name', got {repo_id!r}")
        with self._lock:
            if repo_id in self._repos:
                raise ValueError(f"repo {repo_id} exists already")
            self._new_repo(repo_id, private, owner)
            if files:
                self.commit(repo_id, files, summary="Add files")
            return self.head(repo_id)

    def commit(
        self,
        repo_id: str,
        files: Mapping[str, bytes | str] | None = None,
        *,
        delete: Iterable[str] = (),
        summary: str = "Update files",
        branch: str = "main",
    ) -> str:
        """Commit directly, as another writer would (e.g. to make a client's parent_commit stale).
        Returns the new head."""
        with self._lock:
            repo = self._repos[repo_id]
            blobs = dict(repo.commits[repo.branches[branch]].blobs)
            for path in delete:
                del blobs[path]
            for path, content in (files or {}).items():
                data = content.encode() if isinstance(content, str) else bytes(content)
                lfs = wants_lfs(data, len(data), self.lfs_threshold)
                if lfs:
                    repo.lfs_objects[hashlib.sha256(data).hexdigest()] = data
                blobs[_check_path(path)] = Blob(data, lfs)
            return self._add_commit(repo, branch, blobs, summary, "").oid

    def add_token(self, token: str, user: str) -> None:
        """Accept `token` as belonging to `user` (another account than the main token's, say)."""
        if self.token is None:
            raise ValueError("a FakeHub without a token checks no tokens at all")
        with self._lock:
            self._tokens[token] = user

    def repo_exists(self, repo_id: str) -> bool:
        with self._lock:
            return repo_id in self._repos

    def head(self, repo_id: str, branch: str = "main") -> str:
        with self._lock:
            return self._repos[repo_id].branches[branch]

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """Every file at `revision` (a branch or a commit oid), `.gitattributes` included."""
        return self._commit(repo_id, revision).files

    def lfs_files(self, repo_id: str, revision: str = "main") -> set[str]:
        """The paths stored through LFS at `revision`."""
        return set(self._commit(repo_id, revision).lfs_paths)

    def commits(self, repo_id: str, branch: str = "main") -> list[Commit]:
        """The branch's history, oldest first (the first is the repo's initial commit)."""
        with self._lock:
            return self._repos[repo_id].history(branch)

    @property
    def requests(self) -> list[tuple[str, str]]:
        """(method, path without query string) of every request received, in order."""
        with self._lock:
            return list(self._requests)

    @property
    def unhandled(self) -> list[tuple[str, str]]:
        """Requests no route matched: coverage this fake lacks."""
        with self._lock:
            return list(self._unhandled)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()
            self._unhandled.clear()

    # ---- fault injection -------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        path_contains: str,
        status: int,
        times: int = 1,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer the next `times` requests with `method` ("*" for any) whose path contains
        `path_contains` with `status`, before any other check (like a failing proxy or backend).
        `status` DROP ("drop") closes the connection without answering instead.
        `body`: None for the Hub's JSON error shape, a dict/list for JSON, str/bytes for raw text
        (status 200 with a text body: a page without the Hub's headers, like a captive portal).
        Mind the client's own retries: it retries 5xx on preupload, LFS and tree calls (after
        1, 2, 4... seconds), and hf_hub_download repeats a HEAD that got a 5xx."""
        if times < 1:
            raise ValueError("times must be >= 1")
        if not isinstance(status, int) and status != DROP:
            raise ValueError(f"status must be an HTTP status or {DROP!r}")
        with self._lock:
            self._faults.append(_Fault(method.upper(), path_contains, status, times, body, dict(headers or {})))

    def go_offline_after(self, method: str, path_contains: str) -> None:
        """Answer the next request with `method` ("*" for any) whose path contains `path_contains`
        as usual, then refuse every connection to every server of this hub (the port is closed
        before the answer goes out, so the client's next request gets "connection refused")."""
        with self._lock:
            self._offline_triggers.append((method.upper(), path_contains))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._offline_triggers.clear()

    def _take_fault(self, req: _Request) -> _Response | None:
        for fault in self._faults:
            if fault.method in ("*", req.method) and fault.path_contains in req.path:
                fault.remaining -= 1
                if fault.remaining == 0:
                    self._faults.remove(fault)
                if fault.status == DROP:
                    return _Response(0, drop=True)
                if fault.body is None:
                    return _error(fault.status, f"Injected fault: {fault.status}", headers=fault.headers)
                if isinstance(fault.body, (dict, list)):
                    return _json(fault.status, fault.body, fault.headers)
                raw = fault.body.encode() if isinstance(fault.body, str) else bytes(fault.body)
                return _Response(fault.status, raw, "text/plain", dict(fault.headers))
        return None

    # ---- dispatch --------------------------------------------------------------------------

    def handle(self, req: _Request) -> _Response:
        resp = self._handle(req)
        with self._lock:
            for trigger in self._offline_triggers:
                if trigger[0] in ("*", req.method) and trigger[1] in req.path:
                    self._offline_triggers.remove(trigger)
                    resp.go_offline = True
                    break
        return resp

    def _handle(self, req: _Request) -> _Response:
        with self._lock:
            self._requests.append((req.method, req.path))
            injected = self._take_fault(req)
            if injected is not None:
                return injected
            for methods, pattern, route in self._routes:
                match = pattern.fullmatch(req.path)
                if match and req.method in methods:
                    params = {key: unquote(value) for key, value in match.groupdict().items() if value is not None}
                    try:
                        return route(req, **params)
                    except _HubError as exc:
                        return exc.response
            self._unhandled.append((req.method, req.path))
        logger.warning("FakeHub: no route for %s %s", req.method, req.path)
        return _error(404, f"FakeHub has no route for {req.method} {req.path}")

    # ---- state helpers ---------------------------------------------------------------------

    def _commit(self, repo_id: str, revision: str) -> Commit:
        with self._lock:
            commit = self._repos[repo_id].resolve(revision)
            if commit is None:
                raise KeyError(f"{repo_id} has no revision {revision!r}")
            return commit

    def _go_offline(self) -> None:
        """Close the listening sockets of every server: new connections are refused from now on."""
        with self._lock:
            servers = list(self._servers)
        for server in servers:
            server.httpd.shutdown()  # returns once the accept loop has stopped (a handler thread may call it)
            server.httpd.server_close()

    def _new_repo(self, repo_id: str, private: bool, owner: str = USER) -> _Repo:
        repo = _Repo(repo_id=repo_id, private=private, created_at=datetime.now(timezone.utc), owner=owner)
        self._repos[repo_id] = repo
        self._add_commit(repo, "main", {".gitattributes": Blob(DEFAULT_GITATTRIBUTES, lfs=False)}, "initial commit", "")
        return repo

    def _add_commit(self, repo: _Repo, branch: str, blobs: dict[str, Blob], summary: str, description: str) -> Commit:
        parent_oid = repo.branches.get(branch)
        before = repo.commits[parent_oid].blobs if parent_oid else {}
        changed = frozenset(
            path
            for path in set(before) | set(blobs)
            if (before[path].git_oid if path in before else None) != (blobs[path].git_oid if path in blobs else None)
        )
        date = datetime.now(timezone.utc)
        # Unique per commit (the counter), so even two identical commits get distinct oids.
        tree = sorted((path, blob.git_oid) for path, blob in blobs.items())
        seed = json.dumps([parent_oid, summary, description, _iso(date), next(self._oid_counter), tree])
        commit = Commit(
            oid=hashlib.sha1(seed.encode()).hexdigest(),
            parent=parent_oid,
            summary=summary,
            description=description,
            date=date,
            changed=changed,
            blobs=MappingProxyType(dict(blobs)),
        )
        repo.commits[commit.oid] = commit
        repo.branches[branch] = commit.oid
        return commit

    def _user(self, req: _Request) -> str | None:
        """The user the request's token belongs to (None: no or unknown token)."""
        if self.token is None:
            return USER
        scheme, _, token = (req.headers.get("Authorization") or "").partition(" ")
        return self._tokens.get(token) if scheme == "Bearer" else None

    def _authorized(self, req: _Request) -> bool:
        return self._user(req) is not None

    def _require_write(self, req: _Request) -> None:
        if self._authorized(req):
            return
        if req.headers.get("Authorization") is None:
            raise _HubError(401, "You must be authenticated to perform this action")
        raise _HubError(401, "Invalid credentials in Authorization header")

    def _repo(self, req: _Request, ns: str, name: str) -> _Repo:
        repo = self._repos.get(f"{ns}/{name}")
        # Like the Hub, a private repo is "not found" to whoever may not read it, even with a valid token.
        if repo is None or (repo.private and self._user(req) != repo.owner):
            raise _HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _revision(self, repo: _Repo, rev: str) -> Commit:
        commit = repo.resolve(rev)
        if commit is None:
            raise _HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return commit

    def _page(self, req: _Request, items: list[Any], page_size: int) -> _Response:
        """One page of `items` with a GitHub-style `Link: <...>; rel="next"` header, which the
        client follows (its cursor is opaque to it: ours is an offset)."""
        try:
            start = int(req.query.get("cursor", "0"))
        except ValueError:
            raise _HubError(400, "Invalid cursor") from None
        end = start + page_size
        headers = {}
        if end < len(items):
            query = urlencode({**req.query, "cursor": str(end)})
            headers["Link"] = f'<{req.base_url}{req.path}?{query}>; rel="next"'
        return _json(200, items[start:end], headers)

    # ---- routes: account and repos ---------------------------------------------------------

    def _whoami_route(self, req: _Request) -> _Response:
        user = self._user(req)
        if user is None:
            raise _HubError(401, "Invalid credentials in Authorization header")
        return _json(200, {
            "type": "user", "id": "0" * 24, "name": user, "fullname": "Test User", "email": None,
            "emailVerified": True, "isPro": False, "orgs": [],
            "auth": {"type": "access_token", "accessToken": {"displayName": "fake", "role": "write"}},
        })

    def _create_repo_route(self, req: _Request) -> _Response:
        self._require_write(req)
        payload = req.json()
        if not isinstance(payload, dict):
            raise _HubError(400, "Expected a JSON object")
        repo_type = payload.get("type") or "model"
        if repo_type != "dataset":
            raise _HubError(400, f"FakeHub serves dataset repos only, not {repo_type!r}")
        user = self._user(req) or USER
        ns, name = payload.get("organization") or user, payload.get("name")
        if not (isinstance(name, str) and _NAME_RE.fullmatch(name) and _NAME_RE.fullmatch(ns)):
            raise _HubError(400, f"Invalid repo name: {ns}/{name}")
        repo_id = f"{ns}/{name}"
        url = f"{req.base_url}/datasets/{repo_id}"
        if repo_id in self._repos:
            # The client's exist_ok=True relies on the 409; the url comes along like on the Hub. Also
            # for a private repo this token cannot see: the name is taken all the same.
            raise _HubError(409, "You already created this dataset repo", url=url)
        private = bool(payload.get("private")) or payload.get("visibility") == "private"
        self._new_repo(repo_id, private=private, owner=user)
        return _json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _repo_info_route(self, req: _Request, ns: str, name: str, rev: str = "main") -> _Response:
        repo = self._repo(req, ns, name)
        commit = self._revision(repo, rev)
        with_blobs = _flag(req.query.get("blobs"))
        siblings = []
        for path, blob in sorted(commit.blobs.items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if with_blobs:
                sibling.update(size=blob.size, blobId=blob.git_oid)
                if blob.lfs:
                    sibling["lfs"] = {"size": blob.size, "sha256": blob.sha256, "pointerSize": len(blob.pointer)}
            siblings.append(sibling)
        info: dict[str, Any] = {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": ns,
            "sha": commit.oid,
            "lastModified": _iso(commit.date),
            "createdAt": _iso(repo.created_at),
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(blob.size for blob in commit.blobs.values()),
        }
        readme = commit.blobs.get("README.md")
        if readme is not None:
            try:
                card = _front_matter(readme.data.decode("utf-8", "replace"))
            except yaml.YAMLError:
                card = None
            if isinstance(card, dict):
                info["cardData"] = card
        return _json(200, info)

    def _validate_yaml_route(self, req: _Request) -> _Response:
        payload = req.json()
        content = payload.get("content") if isinstance(payload, dict) else None
        if not isinstance(content, str):
            raise _HubError(400, "Expected {'content': str}")
        try:
            card = _front_matter(content)
        except yaml.YAMLError as exc:
            message = f"Invalid YAML in README.md front matter: {exc}"
            return _error(400, message, errors=[{"message": message}], warnings=[])
        if card is None:
            # The Hub warns about a card without metadata; the client turns it into warnings.warn.
            return _json(200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata in repo card"}]})
        if not isinstance(card, dict):
            message = "README.md front matter must be a YAML mapping"
            return _error(400, message, errors=[{"message": message}], warnings=[])
        return _json(200, {"errors": [], "warnings": []})

    # ---- routes: reading files ---------------------------------------------------------------

    def _tree_route(self, req: _Request, ns: str, name: str, rev: str, path: str = "") -> _Response:
        repo = self._repo(req, ns, name)
        commit = self._revision(repo, rev)
        prefix = path.strip("/")
        recursive = _flag(req.query.get("recursive"))
        folders: dict[str, list[Blob]] = {}
        for file_path, blob in commit.blobs.items():
            parts = file_path.split("/")
            for depth in range(1, len(parts)):
                folders.setdefault("/".join(parts[:depth]), []).append(blob)
        if prefix and prefix not in folders:
            raise _HubError(404, f"Folder {prefix} does not exist", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        under = f"{prefix}/" if prefix else ""

        def listed(entry_path: str) -> bool:
            rest = entry_path[len(under):]
            return entry_path.startswith(under) and entry_path != prefix and (recursive or "/" not in rest)

        entries: list[dict[str, Any]] = []
        for folder, blobs in folders.items():
            if listed(folder):
                tree_oid = hashlib.sha1("".join(sorted(b.git_oid for b in blobs)).encode()).hexdigest()
                entries.append({"type": "directory", "oid": tree_oid, "size": 0, "path": folder})
        for file_path, blob in commit.blobs.items():
            if listed(file_path):
                entry: dict[str, Any] = {"type": "file", "oid": blob.git_oid, "size": blob.size, "path": file_path}
                if blob.lfs:
                    entry["lfs"] = {"oid": blob.sha256, "size": blob.size, "pointerSize": len(blob.pointer)}
                entries.append(entry)
        entries.sort(key=lambda e: e["path"])
        page_size = min(self.tree_page_size, 50) if _flag(req.query.get("expand")) else self.tree_page_size
        return self._page(req, entries, page_size)

    def _commits_route(self, req: _Request, ns: str, name: str, rev: str) -> _Response:
        repo = self._repo(req, ns, name)
        commit: Commit | None = self._revision(repo, rev)
        items = []
        while commit is not None:
            items.append({
                "id": commit.oid, "title": commit.summary, "message": commit.description,
                "date": _iso(commit.date), "authors": [{"user": USER}],
            })
            commit = repo.commits.get(commit.parent) if commit.parent else None
        return self._page(req, items, 50)

    def _resolve_route(self, req: _Request, ns: str, name: str, rev: str, path: str) -> _Response:
        """File download. The client's HEAD needs X-Repo-Commit, an ETag (git oid, or sha256 for
        LFS with X-Linked-Etag/X-Linked-Size) and the true Content-Length; a missing file must be
        404 + EntryNotFound or `file_exists` raises instead of answering False."""
        repo = self._repo(req, ns, name)
        commit = self._revision(repo, rev)
        blob = commit.blobs.get(path)
        if blob is None:
            raise _HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{blob.etag}"', "Accept-Ranges": "bytes"}
        if blob.lfs:
            headers.update({"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(blob.size)})
        data, status = blob.data, 200
        range_header = req.headers.get("Range")
        if range_header:  # the client asks for a range only to resume a broken download
            unsatisfiable = {"Content-Range": f"bytes */{blob.size}"}
            match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", range_header)
            start = int(match.group(1)) if match and match.group(1) else None
            end = int(match.group(2)) if match and match.group(2) else None
            if match is None or (start is None and end is None):
                raise _HubError(416, f"Unsupported range: {range_header}", headers=unsatisfiable)
            if start is None:  # suffix range: the last `end` bytes
                start, end = max(blob.size - end, 0), blob.size - 1
            end = blob.size - 1 if end is None else min(end, blob.size - 1)
            if start > end:
                raise _HubError(416, f"Unsatisfiable range: {range_header}", headers=unsatisfiable)
            data, status = blob.data[start : end + 1], 206
            headers["Content-Range"] = f"bytes {start}-{end}/{blob.size}"
        return _Response(status, data, "application/octet-stream", headers)

    # ---- routes: writing (create_commit) -----------------------------------------------------

    def _preupload_route(self, req: _Request, ns: str, name: str, rev: str) -> _Response:
        self._require_write(req)
        repo = self._repo(req, ns, name)
        commit = self._revision(repo, rev)
        if _flag(req.query.get("create_pr")):
            raise _HubError(400, "FakeHub does not implement pull requests")
        payload = req.json()
        files = payload.get("files") if isinstance(payload, dict) else None
        if not isinstance(files, list):
            raise _HubError(400, "Expected {'files': [...]}")
        answer = []
        for item in files:
            try:
                path, sample, size = _check_path(item["path"]), base64.b64decode(item["sample"]), int(item["size"])
            except (KeyError, TypeError, ValueError, binascii.Error):
                raise _HubError(400, f"Malformed preupload entry: {item!r}") from None
            entry: dict[str, Any] = {
                "path": path,
                "uploadMode": "lfs" if wants_lfs(sample, size, self.lfs_threshold) else "regular",
                "shouldIgnore": False,
            }
            existing = commit.blobs.get(path)
            if existing is not None:
                # The client skips a file whose oid it computes the same (sha256 for LFS, git oid else).
                entry["oid"] = existing.sha256 if existing.lfs else existing.git_oid
            answer.append(entry)
        return _json(200, {"files": answer, "commitOid": commit.oid})

    def _lfs_batch_route(self, req: _Request, ns: str, name: str) -> _Response:
        """Git LFS batch API: for each object not stored yet, an upload URL back to this server
        (standing in for a pre-signed S3 URL: no auth needed) and a verify URL."""
        self._require_write(req)
        repo = self._repo(req, ns, name)
        payload = req.json()
        if not isinstance(payload, dict) or payload.get("operation") != "upload":
            raise _HubError(400, "FakeHub implements the LFS batch API for uploads only")
        objects = []
        for obj in payload.get("objects") or []:
            oid, size = obj.get("oid"), obj.get("size")
            if not (isinstance(oid, str) and _SHA256_RE.fullmatch(oid) and isinstance(size, int) and size >= 0):
                objects.append({"oid": str(oid), "size": size if isinstance(size, int) else 0,
                                "error": {"code": 422, "message": "Invalid oid or size"}})
                continue
            entry: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            stored = repo.lfs_objects.get(oid)
            if stored is None or len(stored) != size:  # no "actions" = already there, nothing to send
                upload_id = uuid.uuid4().hex
                self._uploads[upload_id] = _PendingUpload(repo.repo_id, oid, size)
                entry["actions"] = {
                    "upload": {"href": f"{req.base_url}/_fake_lfs/upload/{upload_id}"},
                    "verify": {"href": f"{req.base_url}/_fake_lfs/verify/{upload_id}"},
                }
            objects.append(entry)
        return _json(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                     content_type="application/vnd.git-lfs+json")

    def _pending(self, upload_id: str) -> tuple[_PendingUpload, _Repo]:
        pending = self._uploads.get(upload_id)
        repo = self._repos.get(pending.repo_id) if pending else None
        if pending is None or repo is None:
            raise _HubError(404, "Unknown upload URL")
        return pending, repo

    def _lfs_upload_route(self, req: _Request, upload_id: str) -> _Response:
        pending, repo = self._pending(upload_id)
        if len(req.body) != pending.size:
            raise _HubError(400, f"Upload size {len(req.body)} does not match the announced {pending.size}")
        if hashlib.sha256(req.body).hexdigest() != pending.oid:
            raise _HubError(400, f"Uploaded content does not match sha256 {pending.oid}")
        repo.lfs_objects[pending.oid] = req.body
        return _Response(200, b"", "text/plain", {"ETag": f'"{hashlib.md5(req.body).hexdigest()}"'})

    def _lfs_verify_route(self, req: _Request, upload_id: str) -> _Response:
        self._require_write(req)
        pending, repo = self._pending(upload_id)
        stored = repo.lfs_objects.get(pending.oid)
        if stored is None or len(stored) != pending.size:
            raise _HubError(404, f"LFS object {pending.oid} was not uploaded")
        return _json(200, {"success": True})

    def _commit_route(self, req: _Request, ns: str, name: str, rev: str) -> _Response:
        """NDJSON commit: a header line, then file / lfsFile / deletedFile / deletedFolder lines.
        Refused as a whole (412) when the header's parentCommit is not the branch tip."""
        self._require_write(req)
        repo = self._repo(req, ns, name)
        if _flag(req.query.get("create_pr")):
            raise _HubError(400, "FakeHub does not implement pull requests")
        if rev not in repo.branches:
            message = f"Invalid rev id: {rev} (FakeHub commits to existing branches only)"
            raise _HubError(404, message, "RevisionNotFound")
        try:
            lines = [json.loads(line) for line in req.body.splitlines() if line.strip()]
        except ValueError as exc:
            raise _HubError(400, f"Commit body is not NDJSON: {exc}") from exc
        if not lines or not isinstance(lines[0], dict) or lines[0].get("key") != "header":
            raise _HubError(400, "The first NDJSON line must be the header")
        header = lines[0].get("value") or {}
        summary = header.get("summary")
        if not isinstance(summary, str) or not summary.strip():
            raise _HubError(400, "Commit summary is required")
        tip = repo.branches[rev]
        parent = header.get("parentCommit")
        if parent is not None and parent != tip:
            raise _HubError(412, STALE_PARENT_MESSAGE)

        blobs = dict(repo.commits[tip].blobs)
        for line in lines[1:]:
            key, value = (line.get("key"), line.get("value") or {}) if isinstance(line, dict) else (None, {})
            if key == "file":
                path = _check_path(value.get("path"))
                if value.get("encoding", "base64") != "base64":
                    raise _HubError(400, f"Unsupported encoding for {path}: {value.get('encoding')}")
                try:
                    data = base64.b64decode(value.get("content") or "", validate=True)
                except (binascii.Error, TypeError):
                    raise _HubError(400, f"Invalid base64 content for {path}") from None
                if wants_lfs(data, len(data), self.lfs_threshold):
                    raise _HubError(400, f"Your push was rejected: {path} is binary or too large, use LFS")
                blobs[path] = Blob(data, lfs=False)
            elif key == "lfsFile":
                path = _check_path(value.get("path"))
                if value.get("algo", "sha256") != "sha256":
                    raise _HubError(400, f"Unsupported LFS algo for {path}: {value.get('algo')}")
                data = repo.lfs_objects.get(value.get("oid"))
                if data is None:
                    raise _HubError(
                        422, f"Your push was rejected because an LFS pointer pointed to a file that does not exist: {path}"
                    )
                if "size" in value and value["size"] != len(data):
                    raise _HubError(
                        422, f"LFS pointer size {value['size']} does not match the uploaded {len(data)} bytes: {path}"
                    )
                blobs[path] = Blob(data, lfs=True)
            elif key == "deletedFile":
                path = _check_path(value.get("path"))
                if blobs.pop(path, None) is None:
                    raise _HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            elif key == "deletedFolder":
                folder = _check_path(str(value.get("path")).rstrip("/")) + "/"
                doomed = [path for path in blobs if path.startswith(folder)]
                if not doomed:
                    raise _HubError(404, f"A folder with this name doesn't exist: {folder}", "EntryNotFound")
                for path in doomed:
                    del blobs[path]
            else:
                raise _HubError(400, f"Unknown commit operation: {key!r}")

        commit = self._add_commit(repo, rev, blobs, summary, header.get("description") or "")
        return _json(200, {
            "success": True,
            "commitOid": commit.oid,
            "commitUrl": f"{req.base_url}/datasets/{repo.repo_id}/commit/{commit.oid}",
            "hookOutput": "",
        })


# --------------------------------------------------------------------------------------------
# HTTP server glue
# --------------------------------------------------------------------------------------------


class _HubHandler(QuietHandler):
    """Turns HTTP requests into `_Request`s for the FakeHub in `self.server.app`."""

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

    def _dispatch(self) -> None:
        hub: FakeHub = self.server.app  # type: ignore[attr-defined]
        # Read the body before anything else, even for requests we refuse: on a keep-alive
        # connection unread bytes would be taken for the next request.
        body = self._read_request_body()
        split = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(split.query, keep_blank_values=True).items()}
        host = self.headers.get("Host") or "{}:{}".format(*self.server.server_address[:2])
        req = _Request(self.command, split.path, query, self.headers, body, f"http://{host}")
        try:
            resp = hub.handle(req)
        except Exception:  # a bug in the fake: say so loudly rather than hang the client
            logger.exception("FakeHub failed on %s %s", self.command, self.path)
            resp = _error(500, f"FakeHub internal error on {self.command} {split.path}")
        if resp.drop:
            self.close_connection = True  # the socket closes with nothing written
            return
        if resp.go_offline:
            # Closed before the answer leaves, so the client's next connection is surely refused.
            hub._go_offline()
            resp.headers["Connection"] = "close"
        self.send_body(resp.status, resp.body, resp.content_type, resp.headers)

    def _read_request_body(self) -> bytes:
        """Content-Length or chunked bodies (httpx streams a file object it cannot size as chunks)."""
        if "chunked" not in (self.headers.get("Transfer-Encoding") or "").lower():
            return self.read_body()
        chunks = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline()  # CRLF after each chunk


class _StartedServer(LocalServer):
    """A LocalServer that `serve()` starts at once, and that `with` (which calls start() again)
    leaves running instead of failing on a second thread start."""

    def start(self) -> "_StartedServer":
        if self.thread.ident is None:
            super().start()
        return self
