"""A small in-memory Hugging Face Hub for tests: stdlib `http.server` on 127.0.0.1, ephemeral ports, threaded.

It speaks the part of the Hub protocol that huggingface_hub 2.4 / transformers 5.23 / peft 0.21 use for
`create_repo`, `create_branch`, `upload_folder` / `create_commit` / `push_to_hub`, `model_info`, `list_repo_tree` /
`list_repo_files`, `list_repo_refs` and `hf_hub_download` / `from_pretrained` (`/resolve/<revision>/<file>`).
The protocol facts come from the installed client (`huggingface_hub/_commit_api.py`, `lfs.py`, `file_download.py`,
`utils/_http.py`) and from `docs/offline-assets.md` section 7.

```
client ──► hub   http://127.0.0.1:<port>      /api/..., /<repo>/resolve/<rev>/<path>, /<repo>.git/info/lfs/...
        └► cdn   http://127.0.0.1:<port2>     PUT /upload/<sha256> (LFS upload), GET /lfs/<sha256> (LFS download)
```

Model of the data: every repository has commits (sha → files, parent, message) and branches (name → sha); a
revision is a branch name or a full or abbreviated commit sha. `create_repo` makes an initial commit holding
`.gitattributes`, like the Hub. Blobs whose path ends in an LFS suffix (`.safetensors`, `.bin`, ...) or that are at
least `lfs_threshold` bytes go through LFS: preupload answers `"lfs"`, the client asks the LFS batch endpoint, PUTs
the bytes to the second listener (a stand-in for the storage host, on another origin so that the client treats it
as one: no auth header, redirect not followed on HEAD), verifies, then commits an `lfsFile` item. Downloads of LFS
files answer `302` to that host with `X-Linked-Etag` (the sha256) and `X-Linked-Size`; regular files answer `200`
with `ETag` = the git blob sha1. Every answer from `resolve` carries `X-Repo-Commit`.

Xet is not implemented (`hf_xet` talks a binary protocol to its own storage service): clients must run with
`HF_HUB_DISABLE_XET=1`, which makes huggingface_hub use the legacy LFS path above. [`HubServer.env`] and
[`HubServer.patch_client`] set it; a client that forgets gets a `501` naming the variable.

Errors follow the Hub: status, JSON body `{"error": ...}`, `X-Error-Code` (`RepoNotFound`, `RevisionNotFound`,
`EntryNotFound`) and `X-Error-Message`. Private repositories: without a token `401` + `RepoNotFound` (the Hub does
not reveal that the repository exists), with a token of a user outside the namespace `404` + `RepoNotFound`; an
unknown token gets `401` "Invalid credentials in Authorization header"; writing needs a token with the `write` role
in the repository's namespace (`403` otherwise).

Two ways to point a client at it (huggingface_hub reads `HF_ENDPOINT`, `HF_HOME` and `HF_HUB_OFFLINE` into module
constants **at import time**, so setting environment variables later has no effect):

1. a fresh process: pass `env=server.env(hf_home)` to `subprocess.run`; everything is set before the first import.
   This is the robust way and the one to use for loading (`from_pretrained` in a clean process).
2. in the test process: `server.patch_client(monkeypatch, hf_home)` patches the constants that the calls used by
   the tests read at call time (endpoint, URL template, offline flag, cache and token paths, Xet switch), the
   module-level `HfApi` instance behind `huggingface_hub.create_repo` & co., and transformers' cached `HfApi`.
   It is checked by `tests/test_hub.py::test_patched_client_talks_to_local_hub`; if a client upgrade reads a new
   constant at import time, that test fails first.

Example:

```py
>>> with HubServer(tokens={"hf_write": ("tester", "write")}) as hub:
...     env = hub.env("/tmp/hf-home", token="hf_write")  # for subprocess.run(..., env=env)
...     env["HF_ENDPOINT"] == hub.url
True
```
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf", ".zip", ".npz")
GITATTRIBUTES = "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES).encode()
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
SHA_RE = re.compile(r"^[0-9a-f]{7,40}$")

# Prepended to scripts run in subprocesses: the conftest socket guard does not exist there.
SOCKET_GUARD = """
import socket as _socket
_connect = _socket.socket.connect
def _guarded(self, address):
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and (host.startswith("127.") or host in ("localhost", "::1") or host.startswith("/")):
        return _connect(self, address)
    raise RuntimeError(f"Tests must not touch the network (tried to connect to {address!r}).")
_socket.socket.connect = _guarded
"""


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob (sha1 over `"blob <len>\\0" + data`), the Hub's ETag for regular files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class Blob:
    """File content as stored in a commit; `lfs` blobs are served from the storage listener."""

    data: bytes
    lfs: bool

    @property
    def sha1(self) -> str:
        return git_blob_sha1(self.data)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def tree_entry(self, path: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "path": path, "size": len(self.data), "oid": self.sha1}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": len(self.data), "pointerSize": 134}
        return entry


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    files: dict[str, Blob]
    date: float = field(default_factory=time.time)


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        """A branch name, or a full or abbreviated (>= 7 hex digits) commit sha."""
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        if SHA_RE.match(revision):
            found = [c for oid, c in self.commits.items() if oid.startswith(revision)]
            if len(found) == 1:
                return found[0]
        return None

    def new_commit(self, parent: Commit | None, title: str, files: dict[str, Blob]) -> Commit:
        seed = f"{self.repo_id}\0{parent.oid if parent else ''}\0{title}\0{len(self.commits)}\0{time.time_ns()}"
        commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), parent.oid if parent else None, title, files)
        self.commits[commit.oid] = commit
        return commit


class HubError(Exception):
    """An HTTP error answer: status, optional `X-Error-Code` and a message."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


class HubServer:
    """An in-memory Hub on 127.0.0.1 (two listeners: the Hub itself and a stand-in LFS storage host).

    Args:
        tokens (`dict[str, tuple[str, str]]`, *optional*):
            Bearer token → `(user name, role)`, role `"read"` or `"write"`. A user may write to repositories of its own
            namespace and of the namespaces in `orgs`.
        orgs (`dict[str, list[str]]`, *optional*):
            User name → organisations the user belongs to.
        lfs_threshold (`int`, *optional*, defaults to 10 MB):
            Files of at least this size go through LFS whatever their suffix.

    Attributes:
        url (`str`): the Hub endpoint, `http://127.0.0.1:<port>` (use it as `HF_ENDPOINT`).
        storage_url (`str`): the storage listener.
        requests (`list[tuple[str, str]]`): `(method, path)` of every request, in order.
    """

    def __init__(
        self,
        tokens: dict[str, tuple[str, str]] | None = None,
        orgs: dict[str, list[str]] | None = None,
        lfs_threshold: int = 10_000_000,
    ) -> None:
        self.tokens = dict(tokens or {})
        self.orgs = dict(orgs or {})
        self.lfs_threshold = lfs_threshold
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.RLock()
        self._servers: list[ThreadingHTTPServer] = []
        self._connections: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self.url = ""
        self.storage_url = ""

    # lifecycle ---------------------------------------------------------------------------------------------------
    def start(self) -> HubServer:
        """Bind both listeners to ephemeral ports on 127.0.0.1 and serve them from daemon threads."""
        for role in ("hub", "storage"):
            handler = type(f"{role.title()}Handler", (_Handler,), {"hub": self, "role": role})
            server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
            server.daemon_threads = True
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            thread.start()
            self._servers.append(server)
            self._threads.append(thread)
        self.url = f"http://127.0.0.1:{self._servers[0].server_address[1]}"
        self.storage_url = f"http://127.0.0.1:{self._servers[1].server_address[1]}"
        return self

    def stop(self) -> None:
        """Stop serving and close the sockets (a stopped server refuses connections: 'server down')."""
        for server in self._servers:
            server.shutdown()
            server.server_close()
        # clients keep HTTP/1.1 connections alive in a pool: close them too, or a "stopped" server still answers
        for connection in list(self._connections):
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers.clear()
        self._threads.clear()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # client configuration ----------------------------------------------------------------------------------------
    def env(self, hf_home: str | os.PathLike, token: str | None = None, base: dict | None = None) -> dict[str, str]:
        """Environment for a fresh client process: endpoint, a private `HF_HOME`, online, Xet off, no telemetry.

        Args:
            hf_home (`str` or `os.PathLike`): the client's `HF_HOME` (cache, token file), e.g. a `tmp_path` folder.
            token (`str`, *optional*): exported as `HF_TOKEN`; otherwise `HF_TOKEN` is removed.
            base (`dict`, *optional*): the environment to start from; defaults to `os.environ`.
        """
        env = dict(os.environ if base is None else base)
        for key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN_PATH"):
            env.pop(key, None)
        env.update(
            HF_ENDPOINT=self.url,
            HF_HOME=str(hf_home),
            HF_HUB_OFFLINE="0",
            TRANSFORMERS_OFFLINE="0",
            HF_HUB_DISABLE_XET="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
        )
        if token is not None:
            env["HF_TOKEN"] = token
        return env

    def patch_client(self, monkeypatch: Any, hf_home: str | os.PathLike) -> None:
        """Point the already imported huggingface_hub / transformers of this process at the server (see module doc).

        Args:
            monkeypatch (`pytest.MonkeyPatch`): undoes everything at the end of the test.
            hf_home (`str` or `os.PathLike`): a private `HF_HOME` (cache and token paths are derived from it).
        """
        from huggingface_hub import constants, hf_api

        home = str(hf_home)
        for key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
            monkeypatch.delenv(key, raising=False)
        monkeypatch.setenv("HF_ENDPOINT", self.url)
        monkeypatch.setenv("HF_HOME", home)
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
        patches = {
            "ENDPOINT": self.url,
            "HUGGINGFACE_CO_URL_TEMPLATE": self.url + "/{repo_id}/resolve/{revision}/{filename}",
            "HF_HUB_OFFLINE": False,
            "HF_HOME": home,
            "HF_HUB_CACHE": os.path.join(home, "hub"),
            "HF_ASSETS_CACHE": os.path.join(home, "assets"),
            "HF_XET_CACHE": os.path.join(home, "xet"),
            "HF_TOKEN_PATH": os.path.join(home, "token"),
            "HF_STORED_TOKENS_PATH": os.path.join(home, "stored_tokens"),
            "AGENT_HARNESSES_PATH": os.path.join(home, ".agent_harnesses.json"),
            "HF_HUB_DISABLE_XET": True,
            "HF_HUB_DISABLE_TELEMETRY": True,
        }
        for name, value in patches.items():
            monkeypatch.setattr(constants, name, value)
        monkeypatch.setattr(hf_api.api, "endpoint", self.url)  # behind huggingface_hub.create_repo & co.
        try:
            import transformers.utils.hub as transformers_hub
        except ImportError:  # pragma: no cover - transformers is a dependency of the pack
            return
        if hasattr(transformers_hub, "_hf_api"):
            monkeypatch.setattr(transformers_hub, "_hf_api", None)  # recreated with the patched endpoint

    # state helpers for tests -------------------------------------------------------------------------------------
    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        """The stored repository (raises `KeyError` if there is none)."""
        return self.repos[(repo_type, repo_id)]

    def head(self, repo_id: str, branch: str = "main", repo_type: str = "model") -> str:
        """Commit sha of `branch`."""
        return self.repo(repo_id, repo_type).branches[branch]

    def corrupt(self, repo_id: str, path: str, data: bytes, branch: str = "main") -> str:
        """Replace a file's bytes in a new commit on `branch` without going through the client; returns the sha."""
        with self.lock:
            repo = self.repo(repo_id)
            parent = repo.resolve(branch)
            files = dict(parent.files)
            old = files.get(path)
            files[path] = Blob(data, old.lfs if old else False)
            if files[path].lfs:
                self.lfs_objects[files[path].sha256] = data
            commit = repo.new_commit(parent, f"corrupt {path}", files)
            repo.branches[branch] = commit.oid
            return commit.oid

    def is_lfs(self, path: str, size: int) -> bool:
        return path.endswith(LFS_SUFFIXES) or size >= self.lfs_threshold

    # auth --------------------------------------------------------------------------------------------------------
    def user_of(self, authorization: str | None) -> tuple[str, str] | None:
        """`(user, role)` for a bearer token, `None` without one; raises 401 for an unknown token."""
        if not authorization:
            return None
        token = authorization.split(" ", 1)[1].strip() if " " in authorization else authorization.strip()
        if token not in self.tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.tokens[token]

    def namespaces(self, user: str) -> set[str]:
        return {user, *self.orgs.get(user, [])}

    def readable(self, repo_type: str, repo_id: str, who: tuple[str, str] | None) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and who is None):
            # the Hub answers the same for "missing" and "private, not logged in"
            raise HubError(401 if who is None else 404, "Repository not found", "RepoNotFound")
        if repo.private and repo_id.split("/")[0] not in self.namespaces(who[0]):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def writable(self, repo_type: str, repo_id: str, who: tuple[str, str] | None) -> Repo:
        repo = self.readable(repo_type, repo_id, who)
        self.check_write(repo_id.split("/")[0], who)
        return repo

    def check_write(self, namespace: str, who: tuple[str, str] | None) -> None:
        if who is None:
            raise HubError(401, "Invalid username or password.")
        user, role = who
        if role != "write":
            raise HubError(403, f"The token of {user!r} has the role {role!r}, which cannot write")
        if namespace not in self.namespaces(user):
            raise HubError(403, f"You don't have the rights to write to the namespace {namespace!r}")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: HubServer
    role: str

    def setup(self) -> None:
        super().setup()
        self.hub._connections.add(self.connection)

    def finish(self) -> None:
        self.hub._connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature of the base class
        pass  # quiet: tests read `hub.requests` instead

    # plumbing ----------------------------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._dispatch("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            return self.rfile.read(length)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return b""

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type: str = "") -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, payload: Any, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers, "application/json")

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        self.hub.requests.append((method, split.path))
        self.query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        self.raw_parts = [p for p in split.path.split("/") if p]
        self.parts = [unquote(p) for p in self.raw_parts]
        body = self._body() if method in ("POST", "PUT", "DELETE") else b""
        try:
            with self.hub.lock:
                if self.role == "storage":
                    self._storage(method, body)
                else:
                    self._route(method, body)
        except HubError as err:
            headers = {"X-Error-Message": err.message, **err.headers}
            if err.code:
                headers["X-Error-Code"] = err.code
            self._json({"error": err.message}, err.status, headers)

    # routing -----------------------------------------------------------------------------------------------------
    def _route(self, method: str, body: bytes) -> None:
        p = self.parts
        who = self.hub.user_of(self.headers.get("Authorization"))
        if p[:1] == ["api"]:
            return self._api(method, p[1:], body, who)
        if len(p) >= 5 and p[-4:] == ["info", "lfs", "objects", "batch"] and method == "POST":
            repo_type, repo_id = self._repo_from_git_path(p[:-4])
            return self._lfs_batch(repo_type, repo_id, json.loads(body), who)
        if len(p) >= 5 and p[-4:] == ["info", "lfs", "objects", "verify"] and method == "POST":
            payload = json.loads(body)
            if payload.get("oid") not in self.hub.lfs_objects:
                raise HubError(404, f"LFS object {payload.get('oid')} was not uploaded")
            return self._json({"success": True})
        repo_type = "model"
        if p and p[0] in ("datasets", "spaces"):
            repo_type, p = REPO_TYPES[p[0]], p[1:]
        if len(p) >= 5 and p[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve(repo_type, f"{p[0]}/{p[1]}", p[3], "/".join(p[4:]), who)
        raise HubError(404, f"No route for {method} {self.path}")

    def _repo_from_git_path(self, parts: list[str]) -> tuple[str, str]:
        repo_type = "model"
        if parts and parts[0] in ("datasets", "spaces"):
            repo_type, parts = REPO_TYPES[parts[0]], parts[1:]
        if len(parts) != 2 or not parts[1].endswith(".git"):
            raise HubError(404, f"Not a repository path: {self.path}")
        return repo_type, f"{parts[0]}/{parts[1][: -len('.git')]}"

    def _api(self, method: str, p: list[str], body: bytes, who: tuple[str, str] | None) -> None:
        if p == ["agent-harnesses"]:
            return self._json({"standardEnvVars": [], "harnesses": {}})
        if p == ["whoami-v2"]:
            if who is None:
                raise HubError(401, "Invalid credentials in Authorization header")
            user, role = who
            orgs = [{"type": "org", "name": org} for org in self.hub.orgs.get(user, [])]
            auth = {"type": "access_token", "accessToken": {"displayName": "test", "role": role}}
            return self._json({"type": "user", "name": user, "orgs": orgs, "auth": auth})
        if p == ["validate-yaml"] and method == "POST":
            return self._json({"errors": [], "warnings": []})
        if p == ["repos", "create"] and method == "POST":
            return self._create_repo(json.loads(body or b"{}"), who)
        if p == ["repos", "delete"] and method == "DELETE":
            payload = json.loads(body or b"{}")
            repo_id = f"{payload.get('organization')}/{payload['name']}"
            self.hub.writable(payload.get("type") or "model", repo_id, who)
            del self.hub.repos[(payload.get("type") or "model", repo_id)]
            return self._json({})
        if p and p[0] in REPO_TYPES and len(p) >= 3:
            repo_type, repo_id, rest = REPO_TYPES[p[0]], f"{p[1]}/{p[2]}", p[3:]
            # revisions are quoted with safe="" by the client: take them from the raw (still quoted) segments
            raw_rest = [unquote(s) for s in self.raw_parts[4:]]
            if not rest and method == "GET":
                return self._info(repo_type, repo_id, "main", who)
            if rest[:1] == ["revision"] and len(rest) >= 2 and method == "GET":
                return self._info(repo_type, repo_id, "/".join(raw_rest[1:]), who)
            if rest[:1] == ["tree"] and len(rest) >= 2 and method == "GET":
                return self._tree(repo_type, repo_id, raw_rest[1], "/".join(raw_rest[2:]), who)
            if rest == ["refs"] and method == "GET":
                return self._refs(repo_type, repo_id, who)
            if rest[:1] == ["preupload"] and len(rest) >= 2 and method == "POST":
                return self._preupload(repo_type, repo_id, "/".join(raw_rest[1:]), json.loads(body), who)
            if rest[:1] == ["commit"] and len(rest) >= 2 and method == "POST":
                return self._commit(repo_type, repo_id, "/".join(raw_rest[1:]), body, who)
            if rest[:1] == ["branch"] and len(rest) >= 2 and method in ("POST", "DELETE"):
                return self._branch(method, repo_type, repo_id, "/".join(raw_rest[1:]), body, who)
            if rest[:1] == ["xet-write-token"] or rest[:1] == ["xet-read-token"]:
                raise HubError(501, "This local test Hub does not implement Xet storage: set HF_HUB_DISABLE_XET=1")
        raise HubError(404, f"No API route for {method} {self.path}")

    # endpoints ---------------------------------------------------------------------------------------------------
    def _create_repo(self, payload: dict, who: tuple[str, str] | None) -> None:
        repo_type = payload.get("type") or "model"
        namespace = payload.get("organization") or (who[0] if who else None)
        if namespace is None:
            raise HubError(401, "Invalid username or password.")
        repo_id = f"{namespace}/{payload['name']}"
        url = f"{self.hub.url}/{URL_PREFIX[repo_type]}{repo_id}"
        self.hub.check_write(namespace, who)
        if (repo_type, repo_id) in self.hub.repos:
            # `create_repo(exist_ok=True)` needs 409 *with* the url in the body
            return self._json({"error": "You already created this model repo", "url": url}, 409)
        private = payload.get("private")
        if payload.get("visibility") is not None:
            private = payload["visibility"] == "private"
        repo = Repo(repo_type, repo_id, bool(private))
        initial = repo.new_commit(None, "initial commit", {".gitattributes": Blob(GITATTRIBUTES, False)})
        repo.branches["main"] = initial.oid
        self.hub.repos[(repo_type, repo_id)] = repo
        self._json({"url": url, "name": repo_id, "id": repo_id})

    def _commit_of(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _info(self, repo_type: str, repo_id: str, revision: str, who: tuple[str, str] | None) -> None:
        repo = self.hub.readable(repo_type, repo_id, who)
        commit = self._commit_of(repo, revision)
        blobs = self.query.get("blobs", "").lower() == "true"
        siblings = []
        for path, blob in sorted(commit.files.items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update(size=len(blob.data), blobId=blob.sha1)
                if blob.lfs:
                    sibling["lfs"] = {"sha256": blob.sha256, "size": len(blob.data), "pointerSize": 134}
            siblings.append(sibling)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(commit.date))
        info = {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "modelId": repo_id,
            "author": repo_id.split("/")[0],
            "sha": commit.oid,
            "private": repo.private,
            "disabled": False,
            "gated": False,
            "tags": [],
            "downloads": 0,
            "likes": 0,
            "lastModified": stamp,
            "createdAt": stamp,
            "siblings": siblings,
        }
        self._json(info)

    def _tree(self, repo_type: str, repo_id: str, revision: str, folder: str, who: tuple[str, str] | None) -> None:
        repo = self.hub.readable(repo_type, repo_id, who)
        commit = self._commit_of(repo, revision)
        recursive = self.query.get("recursive", "").lower() == "true"
        prefix = folder.strip("/") + "/" if folder.strip("/") else ""
        if prefix and not any(path.startswith(prefix) for path in commit.files):
            raise HubError(404, f"{folder} does not exist on {revision}", "EntryNotFound")
        entries: list[dict[str, Any]] = []
        folders: set[str] = set()
        for path, blob in sorted(commit.files.items()):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix) :]
            parts = rest.split("/")
            for depth in range(1, len(parts)):
                sub = prefix + "/".join(parts[:depth])
                if (recursive or depth == 1) and sub not in folders:
                    folders.add(sub)
                    entries.append({"type": "directory", "path": sub, "size": 0, "oid": git_blob_sha1(sub.encode())})
            if recursive or len(parts) == 1:
                entries.append(blob.tree_entry(path))
        self._json(entries)

    def _refs(self, repo_type: str, repo_id: str, who: tuple[str, str] | None) -> None:
        repo = self.hub.readable(repo_type, repo_id, who)
        branches = [
            {"name": name, "ref": f"refs/heads/{name}", "targetCommit": oid} for name, oid in repo.branches.items()
        ]
        self._json({"branches": branches, "tags": [], "converts": []})

    def _branch(self, method: str, repo_type: str, repo_id: str, branch: str, body: bytes, who) -> None:
        repo = self.hub.writable(repo_type, repo_id, who)
        if method == "DELETE":
            if branch not in repo.branches or branch == "main":
                raise HubError(404 if branch not in repo.branches else 403, f"Cannot delete branch {branch}")
            del repo.branches[branch]
            return self._json({})
        if branch in repo.branches:
            return self._json({"error": f"Reference already exists: refs/heads/{branch}"}, 409)
        start = (json.loads(body or b"{}") or {}).get("startingPoint") or "main"
        repo.branches[branch] = self._commit_of(repo, start).oid
        self._json({})

    def _branch_for_write(self, repo: Repo, revision: str) -> Commit:
        if revision not in repo.branches:
            raise HubError(404, f"Invalid rev id: {revision} (commits go to a branch)", "RevisionNotFound")
        return repo.commits[repo.branches[revision]]

    def _preupload(self, repo_type: str, repo_id: str, revision: str, payload: dict, who) -> None:
        repo = self.hub.writable(repo_type, repo_id, who)
        head = self._branch_for_write(repo, revision)
        files = []
        for item in payload.get("files", []):
            path, size = item["path"], int(item.get("size", 0))
            mode = "lfs" if self.hub.is_lfs(path, size) and size > 0 else "regular"
            existing = head.files.get(path)
            oid = None if existing is None else (existing.sha256 if existing.lfs else existing.sha1)
            files.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        self._json({"files": files, "commitOid": head.oid})

    def _lfs_batch(self, repo_type: str, repo_id: str, payload: dict, who) -> None:
        self.hub.writable(repo_type, repo_id, who)
        if payload.get("operation") != "upload" or "basic" not in payload.get("transfers", ["basic"]):
            raise HubError(400, "Only the 'basic' upload transfer is implemented")
        objects = []
        git_path = f"{self.hub.url}/{URL_PREFIX[repo_type]}{repo_id}.git/info/lfs/objects/verify"
        for obj in payload.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            entry: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if oid not in self.hub.lfs_objects:  # already stored: no "actions" → the client skips the upload
                entry["actions"] = {
                    "upload": {"href": f"{self.hub.storage_url}/upload/{oid}", "header": {}},
                    "verify": {"href": git_path, "header": {}},
                }
            objects.append(entry)
        self._json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def _commit(self, repo_type: str, repo_id: str, revision: str, body: bytes, who) -> None:
        repo = self.hub.writable(repo_type, repo_id, who)
        if self.query.get("create_pr"):
            raise HubError(400, "Pull requests are not implemented by the local test Hub")
        head = self._branch_for_write(repo, revision)
        files = dict(head.files)
        title = "commit"
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                title = value.get("summary") or title
                parent = value.get("parentCommit")
                if parent is not None and parent != head.oid:
                    raise HubError(412, f"parentCommit {parent} is not the head of {revision} ({head.oid})")
            elif key == "file":
                data = base64.b64decode(value["content"]) if value.get("encoding") == "base64" else value["content"]
                files[value["path"]] = Blob(data.encode() if isinstance(data, str) else data, False)
            elif key == "lfsFile":
                data = self.hub.lfs_objects.get(value["oid"])
                if data is None:
                    raise HubError(422, f"LFS object {value['oid']} of {value['path']} was never uploaded")
                files[value["path"]] = Blob(data, True)
            elif key == "deletedFile":
                if value["path"] not in files:
                    raise HubError(404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound")
                del files[value["path"]]
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                for path in [p for p in files if p.startswith(prefix)]:
                    del files[path]
            else:
                raise HubError(400, f"Unknown commit operation {key!r}")
        commit = repo.new_commit(head, title, files)
        repo.branches[revision] = commit.oid
        url = f"{self.hub.url}/{URL_PREFIX[repo_type]}{repo_id}/commit/{commit.oid}"
        self._json({"commitUrl": url, "commitOid": commit.oid, "pullRequestUrl": None, "success": True})

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str, who) -> None:
        repo = self.hub.readable(repo_type, repo_id, who)
        commit = self._commit_of(repo, revision)
        blob = commit.files.get(path)
        if blob is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        headers = {"X-Repo-Commit": commit.oid, "Accept-Ranges": "bytes"}
        if blob.lfs:
            headers.update(
                {
                    "Location": f"{self.hub.storage_url}/lfs/{blob.sha256}",
                    "X-Linked-Etag": f'"{blob.sha256}"',
                    "X-Linked-Size": len(blob.data),
                    "ETag": f'"{blob.sha1}"',
                }
            )
            return self._send(302, b"", headers)
        headers["ETag"] = f'"{blob.sha1}"'
        self._send(200, blob.data, headers, "application/octet-stream")

    def _storage(self, method: str, body: bytes) -> None:
        p = self.parts
        if len(p) == 2 and p[0] == "upload" and method == "PUT":
            if hashlib.sha256(body).hexdigest() != p[1]:
                raise HubError(400, "Uploaded bytes do not match the announced sha256")
            self.hub.lfs_objects[p[1]] = body
            return self._send(200, b"", {"ETag": f'"{p[1]}"'})
        if len(p) == 2 and p[0] == "lfs" and method in ("GET", "HEAD"):
            data = self.hub.lfs_objects.get(p[1])
            if data is None:
                raise HubError(404, "No such object")
            return self._send(200, data, {"ETag": f'"{p[1]}"'}, "application/octet-stream")
        raise HubError(404, f"No storage route for {method} {self.path}")


WRITE_TOKEN, READ_TOKEN = "hf_write_token", "hf_read_token"


@contextlib.contextmanager
def serve_hub(monkeypatch: Any, hf_home: str | os.PathLike) -> Iterator[HubServer]:
    """A running `HubServer` with a write and a read token of user `tester`; the client points at it and `hf_home`."""
    with HubServer(tokens={WRITE_TOKEN: ("tester", "write"), READ_TOKEN: ("tester", "read")}) as server:
        server.patch_client(monkeypatch, hf_home)
        yield server
