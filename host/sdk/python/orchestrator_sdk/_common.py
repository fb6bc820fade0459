"""What the sync and async clients share: where the server is, the token, request bodies and
answers as values."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable


def default_data_dir() -> Path:
    if d := os.environ.get("ORCHESTRATOR_DATA_DIR"):
        return Path(d)
    if os.geteuid() == 0:
        return Path("/var/lib/orchestrator")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "orchestrator"


def resolve(url: str | None, socket: str | None, token: str | None) -> tuple[str, str | None, str | None]:
    """(base URL, Unix socket or None, token or None): a URL when given, else the data
    directory's socket; the token given, else ORCHESTRATOR_API_TOKEN, else DATA/api.token."""
    data = default_data_dir()
    if url is None:
        socket = socket or os.environ.get("ORCHESTRATOR_API_SOCKET") or str(data / "api.sock")
        url = "http://orchestrator"
    if token is None:
        token = os.environ.get("ORCHESTRATOR_API_TOKEN")
    if token is None:
        try:
            token = (data / "api.token").read_text().strip()
        except OSError:
            token = None
    return url.rstrip("/"), socket, token


@dataclass
class ExecResult:
    """A finished command."""

    exit_code: int | None
    signal: int | None
    timed_out: bool
    stdout_bytes: bytes
    stderr_bytes: bytes
    truncated: bool = False

    @property
    def stdout(self) -> str:
        return self.stdout_bytes.decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return self.stderr_bytes.decode("utf-8", "replace")

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def code(self) -> int:
        """Shell style: 128 + N for signal N."""
        if self.exit_code is not None:
            return self.exit_code
        return 128 + (self.signal or 0)

    @staticmethod
    def from_json(v: dict[str, Any]) -> "ExecResult":
        def data(key: str) -> bytes:
            text = v.get(key, "")
            return base64.b64decode(text) if v.get(f"{key}Encoding") == "base64" else text.encode()

        return ExecResult(v.get("exitCode"), v.get("signal"), bool(v.get("timedOut")), data("stdout"), data("stderr"), bool(v.get("truncated")))


@dataclass
class ExecEvent:
    """One event of a streamed command: `started` (pid), `stdout`/`stderr` (data), `exited`."""

    type: str
    data: bytes = b""
    pid: int | None = None
    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False

    @staticmethod
    def from_json(v: dict[str, Any]) -> "ExecEvent":
        data = base64.b64decode(v["dataBase64"]) if "dataBase64" in v else v.get("data", "").encode()
        return ExecEvent(v["type"], data, v.get("pid"), v.get("exitCode"), v.get("signal"), bool(v.get("timedOut")))


@dataclass
class SandboxSpec:
    """What `create` asks for; None leaves a field to the server's defaults."""

    image: str
    cpus: float | None = None
    memory: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    isolation: str | None = None
    command: list[str] | None = None
    workdir: str | None = None
    network: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    # Secrets as the API takes them: {"env", "value", "allowHosts"} (the value goes to the
    # sandbox's shim only), or {"env", "provider", "key", "allowHosts"}. See docs/tls.md.
    secrets: list[dict[str, Any]] = field(default_factory=list)
    # Mounts as the API takes them: {"name": VOLUME, "mountPath", "readOnly"}, {"tmpfs": PATH,
    # "size": "64Mi"}; host paths only on a server started with --allow-host-paths. See
    # docs/volumes.md.
    volumes: list[dict[str, Any]] = field(default_factory=list)

    def manifest(self, name: str) -> dict[str, Any]:
        spec: dict[str, Any] = {"image": self.image}
        for key, value in (("cpus", self.cpus), ("memory", self.memory), ("isolation", self.isolation), ("command", self.command), ("workdir", self.workdir)):
            if value is not None:
                spec[key] = value
        if self.env:
            spec["env"] = self.env
        if self.network is not None:
            spec["network"] = {"policy": self.network}
        if self.secrets:
            spec["secrets"] = [dict(s) for s in self.secrets]
        if self.volumes:
            spec["volumes"] = [dict(v) for v in self.volumes]
        metadata: dict[str, Any] = {"name": name}
        if self.labels:
            metadata["labels"] = self.labels
        return {"apiVersion": "orchestrator/v1", "kind": "Sandbox", "metadata": metadata, "spec": spec}


def volume_body(name: str, size: str | None, shared: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "shared": shared}
    if size is not None:
        body["size"] = size
    return body


def exec_body(command: list[str], env: dict[str, str] | None, cwd: str | None, user: str | None, timeout: float | None, stdin: bytes | str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"command": list(command)}
    if env:
        body["env"] = env
    if cwd is not None:
        body["cwd"] = cwd
    if user is not None:
        body["user"] = user
    if timeout is not None:
        body["timeoutMs"] = int(timeout * 1000)
    if isinstance(stdin, str):
        body["stdin"] = stdin
    elif stdin is not None:
        body["stdinBase64"] = base64.b64encode(stdin).decode()
    return body


# Bytes per chunk a streamed upload reads from a file.
UPLOAD_CHUNK = 256 * 1024


def pull_events(lines: Iterable[str], progress: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    """The image a pull's NDJSON events end with; progress events go to `progress`, an error
    event is raised as the problem it carries."""
    from . import errors

    for line in lines:
        if not line.strip():
            continue
        event = json.loads(line)
        kind = event.get("type")
        if kind == "progress" and progress is not None:
            progress(event)
        elif kind == "pulled":
            return event["image"]
        elif kind == "error":
            raise errors.from_problem(event)
    raise errors.OrchestratorError(502, "protocol", "the pull's stream ended without a result")


def eval_body(connect: str | None, domain: str | None, protocol: str | None, dns: str | None, record_type: str | None, sandbox: str | None) -> dict[str, Any]:
    body = {"connect": connect, "domain": domain, "protocol": protocol, "dns": dns, "type": record_type, "sandbox": sandbox}
    return {k: v for k, v in body.items() if v is not None}
