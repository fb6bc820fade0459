"""The asyncio client, method for method the synchronous one (`orchestrator_sdk.client`)."""

from __future__ import annotations

import json
from typing import Any, AsyncIterable, AsyncIterator, BinaryIO, Callable

import httpx

from . import _anyio_fix, errors
from ._common import UPLOAD_CHUNK, ExecEvent, ExecResult, SandboxSpec, eval_body, exec_body, pull_events, resolve, volume_body


class AsyncClient:
    def __init__(self, url: str | None = None, *, token: str | None = None, socket: str | None = None, timeout: float = 600.0):
        base, uds, token = resolve(url, socket, token)
        if uds:
            _anyio_fix.install()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        transport = httpx.AsyncHTTPTransport(uds=uds) if uds else None
        self._http = httpx.AsyncClient(base_url=base, headers=headers, transport=transport, timeout=timeout)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        r = await self._http.request(method, path, **kw)
        if r.status_code >= 400:
            raise errors.from_response(r.status_code, r.content)
        return r

    async def sandboxes(self) -> list[dict[str, Any]]:
        return (await self.request("GET", "/v1/sandboxes")).json()

    async def create(self, name: str, image: str, **spec: Any) -> "AsyncSandbox":
        manifest = SandboxSpec(image=image, **spec).manifest(name)
        await self.request("POST", "/v1/sandboxes", content=json.dumps(manifest))
        return AsyncSandbox(self, name)

    async def get(self, name: str) -> "AsyncSandbox":
        await self.request("GET", f"/v1/sandboxes/{name}")
        return AsyncSandbox(self, name)

    async def images(self) -> list[dict[str, Any]]:
        return (await self.request("GET", "/v1/images")).json()

    async def pull(self, reference: str, progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        body = json.dumps({"reference": reference})
        async with self._http.stream("POST", "/v1/images/pull", content=body, headers={"Accept": "application/x-ndjson"}) as r:
            if r.status_code >= 400:
                raise errors.from_response(r.status_code, await r.aread())
            return pull_events([line async for line in r.aiter_lines()], progress)

    async def volumes(self) -> list[dict[str, Any]]:
        return (await self.request("GET", "/v1/volumes")).json()

    async def create_volume(self, name: str, size: str | None = None, shared: bool = False) -> dict[str, Any]:
        return (await self.request("POST", "/v1/volumes", content=json.dumps(volume_body(name, size, shared)))).json()

    async def delete_volume(self, name: str, force: bool = False) -> None:
        await self.request("DELETE", f"/v1/volumes/{name}", params={"force": "true"} if force else None)

    async def plugins(self) -> list[dict[str, Any]]:
        return (await self.request("GET", "/v1/plugins")).json()

    async def eval_plugin(self, name: str, *, connect: str | None = None, domain: str | None = None, protocol: str | None = None, dns: str | None = None, record_type: str | None = None, sandbox: str | None = None) -> dict[str, Any]:
        body = eval_body(connect, domain, protocol, dns, record_type, sandbox)
        return (await self.request("POST", f"/v1/plugins/{name}/eval", content=json.dumps(body))).json()


class AsyncFiles:
    def __init__(self, sandbox: "AsyncSandbox"):
        self._s = sandbox

    def _path(self, suffix: str = "") -> str:
        return f"/v1/sandboxes/{self._s.name}/files{suffix}"

    async def read(self, path: str) -> bytes:
        return (await self._s.client.request("GET", self._path(), params={"path": path})).content

    async def write(self, path: str, data: bytes | str, mode: int | None = None) -> None:
        params = {"path": path}
        if mode is not None:
            params["mode"] = format(mode, "o")
        await self._s.client.request("PUT", self._path(), params=params, content=data.encode() if isinstance(data, str) else data)

    async def download(self, path: str, dest: BinaryIO) -> int:
        async with self._s.client._http.stream("GET", self._path(), params={"path": path}) as r:
            if r.status_code >= 400:
                raise errors.from_response(r.status_code, await r.aread())
            n = 0
            async for chunk in r.aiter_bytes():
                dest.write(chunk)
                n += len(chunk)
            return n

    async def upload(self, path: str, source: BinaryIO | AsyncIterable[bytes], mode: int | None = None) -> None:
        params = {"path": path}
        if mode is not None:
            params["mode"] = format(mode, "o")

        async def chunks() -> AsyncIterator[bytes]:
            if hasattr(source, "read"):
                while chunk := source.read(UPLOAD_CHUNK):
                    yield chunk
            else:
                async for chunk in source:
                    yield chunk

        await self._s.client.request("PUT", self._path(), params=params, content=chunks())

    async def list(self, path: str) -> list[dict[str, Any]]:
        return (await self._s.client.request("GET", self._path("/list"), params={"path": path})).json()

    async def stat(self, path: str) -> dict[str, Any]:
        return (await self._s.client.request("GET", self._path("/stat"), params={"path": path})).json()

    async def remove(self, path: str, recursive: bool = False) -> None:
        await self._s.client.request("DELETE", self._path(), params={"path": path, "recursive": "true" if recursive else "false"})


class AsyncSandbox:
    def __init__(self, client: AsyncClient, name: str):
        self.client = client
        self.name = name
        self.fs = AsyncFiles(self)

    async def __aenter__(self) -> "AsyncSandbox":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.remove()

    async def view(self) -> dict[str, Any]:
        return (await self.client.request("GET", f"/v1/sandboxes/{self.name}")).json()

    async def exec(self, command: str, *args: str, env: dict[str, str] | None = None, cwd: str | None = None, user: str | None = None, timeout: float | None = None, stdin: bytes | str | None = None) -> ExecResult:
        body = exec_body([command, *args], env, cwd, user, timeout, stdin)
        return ExecResult.from_json((await self.client.request("POST", f"/v1/sandboxes/{self.name}/exec", content=json.dumps(body))).json())

    async def shell(self, script: str, **kw: Any) -> ExecResult:
        return await self.exec("sh", "-c", script, **kw)

    async def exec_stream(self, command: str, *args: str, env: dict[str, str] | None = None, cwd: str | None = None, user: str | None = None, timeout: float | None = None, stdin: bytes | str | None = None) -> AsyncIterator[ExecEvent]:
        body = exec_body([command, *args], env, cwd, user, timeout, stdin)
        async with self.client._http.stream("POST", f"/v1/sandboxes/{self.name}/exec", content=json.dumps(body), headers={"Accept": "application/x-ndjson"}) as r:
            if r.status_code >= 400:
                raise errors.from_response(r.status_code, await r.aread())
            async for line in r.aiter_lines():
                if line.strip():
                    yield ExecEvent.from_json(json.loads(line))

    async def stop(self) -> None:
        await self.client.request("POST", f"/v1/sandboxes/{self.name}/stop")

    async def start(self) -> None:
        await self.client.request("POST", f"/v1/sandboxes/{self.name}/start")

    async def remove(self) -> None:
        try:
            await self.client.request("DELETE", f"/v1/sandboxes/{self.name}")
        except errors.NotFound:
            pass
