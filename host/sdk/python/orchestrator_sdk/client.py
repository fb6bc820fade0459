"""The synchronous client: `Client` for the server, `Sandbox` for one sandbox, `Files` for its
filesystem. Mirrors the Rust library: create, get, exec, exec_stream, shell, fs (with streamed
upload and download), stop, start, remove; images and plugins; a sandbox used as a context
manager is removed on exit."""

from __future__ import annotations

import json
from typing import Any, BinaryIO, Callable, Iterable, Iterator

import httpx

from . import errors
from ._common import UPLOAD_CHUNK, ExecEvent, ExecResult, SandboxSpec, eval_body, exec_body, pull_events, resolve, volume_body


class Client:
    """The API of one server: over its Unix socket by default (DATA/api.sock), or a URL."""

    def __init__(self, url: str | None = None, *, token: str | None = None, socket: str | None = None, timeout: float = 600.0):
        base, uds, token = resolve(url, socket, token)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        transport = httpx.HTTPTransport(uds=uds) if uds else None
        self._http = httpx.Client(base_url=base, headers=headers, transport=transport, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        r = self._http.request(method, path, **kw)
        if r.status_code >= 400:
            raise errors.from_response(r.status_code, r.content)
        return r

    def health(self) -> bool:
        return self._http.get("/health").text == "OK"

    def sandboxes(self) -> list[dict[str, Any]]:
        """Every sandbox, as `get -o json` shows it."""
        return self.request("GET", "/v1/sandboxes").json()

    def create(self, name: str, image: str, **spec: Any) -> "Sandbox":
        """Creates and starts a sandbox (cpus, memory, env, isolation, command, workdir,
        network, labels, secrets, volumes as keywords)."""
        manifest = SandboxSpec(image=image, **spec).manifest(name)
        self.request("POST", "/v1/sandboxes", content=json.dumps(manifest))
        return Sandbox(self, name)

    def get(self, name: str) -> "Sandbox":
        """A handle on an existing sandbox (NotFound when there is none)."""
        self.request("GET", f"/v1/sandboxes/{name}")
        return Sandbox(self, name)

    def images(self) -> list[dict[str, Any]]:
        """The local images: reference, digest, layers, size, pulledAt."""
        return self.request("GET", "/v1/images").json()

    def pull(self, reference: str, progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Fetches an image into the server's store and returns it; `progress` receives each
        layer's progress (`layer`, `done`, `total` bytes) as the server reports it."""
        body = json.dumps({"reference": reference})
        with self._http.stream("POST", "/v1/images/pull", content=body, headers={"Accept": "application/x-ndjson"}) as r:
            if r.status_code >= 400:
                raise errors.from_response(r.status_code, r.read())
            return pull_events(r.iter_lines(), progress)

    def volumes(self) -> list[dict[str, Any]]:
        """The named volumes: name, size, allocated, mounted, shared, users, source."""
        return self.request("GET", "/v1/volumes").json()

    def create_volume(self, name: str, size: str | None = None, shared: bool = False) -> dict[str, Any]:
        """Creates a named volume (size such as "1Gi", the default; its quota) and returns it."""
        return self.request("POST", "/v1/volumes", content=json.dumps(volume_body(name, size, shared))).json()

    def delete_volume(self, name: str, force: bool = False) -> None:
        """Deletes a volume and its data (Conflict while sandboxes mount it, unless force)."""
        self.request("DELETE", f"/v1/volumes/{name}", params={"force": "true"} if force else None)

    def plugins(self) -> list[dict[str, Any]]:
        """The applied plugins and what each implements."""
        return self.request("GET", "/v1/plugins").json()

    def eval_plugin(self, name: str, *, connect: str | None = None, domain: str | None = None, protocol: str | None = None, dns: str | None = None, record_type: str | None = None, sandbox: str | None = None) -> dict[str, Any]:
        """A network-policy plugin's decision about a flow to `connect` ("IP:PORT") or a DNS
        query for `dns`: allowed, action, reason, decidedBy, summary."""
        body = eval_body(connect, domain, protocol, dns, record_type, sandbox)
        return self.request("POST", f"/v1/plugins/{name}/eval", content=json.dumps(body)).json()


class Files:
    """A sandbox's filesystem, paths absolute inside it."""

    def __init__(self, sandbox: "Sandbox"):
        self._s = sandbox

    def _path(self, suffix: str = "") -> str:
        return f"/v1/sandboxes/{self._s.name}/files{suffix}"

    def read(self, path: str) -> bytes:
        return self._s.client.request("GET", self._path(), params={"path": path}).content

    def read_text(self, path: str) -> str:
        return self.read(path).decode()

    def write(self, path: str, data: bytes | str, mode: int | None = None) -> None:
        params = {"path": path}
        if mode is not None:
            params["mode"] = format(mode, "o")
        self._s.client.request("PUT", self._path(), params=params, content=data.encode() if isinstance(data, str) else data)

    def download(self, path: str, dest: BinaryIO) -> int:
        """Streams the file at `path` into the open binary file `dest` (nothing is held whole);
        returns the bytes written."""
        with self._s.client._http.stream("GET", self._path(), params={"path": path}) as r:
            if r.status_code >= 400:
                raise errors.from_response(r.status_code, r.read())
            n = 0
            for chunk in r.iter_bytes():
                dest.write(chunk)
                n += len(chunk)
            return n

    def upload(self, path: str, source: BinaryIO | Iterable[bytes], mode: int | None = None) -> None:
        """Streams an open binary file (or an iterable of byte chunks) into the file at `path`."""
        params = {"path": path}
        if mode is not None:
            params["mode"] = format(mode, "o")
        content = iter(lambda: source.read(UPLOAD_CHUNK), b"") if hasattr(source, "read") else source
        self._s.client.request("PUT", self._path(), params=params, content=content)

    def list(self, path: str) -> list[dict[str, Any]]:
        return self._s.client.request("GET", self._path("/list"), params={"path": path}).json()

    def stat(self, path: str) -> dict[str, Any]:
        return self._s.client.request("GET", self._path("/stat"), params={"path": path}).json()

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
            return True
        except errors.NotFound:
            return False

    def remove(self, path: str, recursive: bool = False) -> None:
        self._s.client.request("DELETE", self._path(), params={"path": path, "recursive": "true" if recursive else "false"})


class Sandbox:
    """One sandbox."""

    def __init__(self, client: Client, name: str):
        self.client = client
        self.name = name
        self.fs = Files(self)

    def __repr__(self) -> str:
        return f"Sandbox({self.name!r})"

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def view(self) -> dict[str, Any]:
        return self.client.request("GET", f"/v1/sandboxes/{self.name}").json()

    def exec(self, command: str, *args: str, env: dict[str, str] | None = None, cwd: str | None = None, user: str | None = None, timeout: float | None = None, stdin: bytes | str | None = None) -> ExecResult:
        """Runs `command` with `args` (no shell) and returns its output and status."""
        body = exec_body([command, *args], env, cwd, user, timeout, stdin)
        return ExecResult.from_json(self.client.request("POST", f"/v1/sandboxes/{self.name}/exec", content=json.dumps(body)).json())

    def shell(self, script: str, **kw: Any) -> ExecResult:
        """Runs a `sh -c` script."""
        return self.exec("sh", "-c", script, **kw)

    def exec_stream(self, command: str, *args: str, env: dict[str, str] | None = None, cwd: str | None = None, user: str | None = None, timeout: float | None = None, stdin: bytes | str | None = None) -> Iterator[ExecEvent]:
        """The command's events as it runs: started, stdout/stderr chunks, exited (last)."""
        body = exec_body([command, *args], env, cwd, user, timeout, stdin)
        with self.client._http.stream("POST", f"/v1/sandboxes/{self.name}/exec", content=json.dumps(body), headers={"Accept": "application/x-ndjson"}) as r:
            if r.status_code >= 400:
                raise errors.from_response(r.status_code, r.read())
            for line in r.iter_lines():
                if line.strip():
                    yield ExecEvent.from_json(json.loads(line))

    def logs(self) -> bytes:
        return self.client.request("GET", f"/v1/sandboxes/{self.name}/logs").content

    def stop(self) -> None:
        self.client.request("POST", f"/v1/sandboxes/{self.name}/stop")

    def start(self) -> None:
        self.client.request("POST", f"/v1/sandboxes/{self.name}/start")

    def remove(self) -> None:
        try:
            self.client.request("DELETE", f"/v1/sandboxes/{self.name}")
        except errors.NotFound:
            pass
