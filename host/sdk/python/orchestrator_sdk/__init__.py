"""Python client of the orchestrator's HTTP API (`orchestrator serve`).

    from orchestrator_sdk import Client

    with Client() as client:                      # DATA/api.sock and DATA/api.token
        with client.create("demo", image="127.0.0.1:5000/demo/busybox:1") as sandbox:
            print(sandbox.shell("echo hello from $(hostname)").stdout)
            sandbox.fs.write("/tmp/note.txt", "kept")
            print(sandbox.fs.read_text("/tmp/note.txt"))
"""

from .aio import AsyncClient, AsyncSandbox
from .client import Client, Files, Sandbox
from ._common import ExecEvent, ExecResult
from .errors import (
    Conflict,
    HostPathForbidden,
    InvalidArgument,
    InvalidSpec,
    NotFound,
    OrchestratorError,
    SpawnFailed,
    Timeout,
    TooManyRequests,
    Unauthorized,
    Unavailable,
)

__all__ = [
    "AsyncClient",
    "AsyncSandbox",
    "Client",
    "Conflict",
    "ExecEvent",
    "ExecResult",
    "Files",
    "HostPathForbidden",
    "InvalidArgument",
    "InvalidSpec",
    "NotFound",
    "OrchestratorError",
    "Sandbox",
    "SpawnFailed",
    "Timeout",
    "TooManyRequests",
    "Unauthorized",
    "Unavailable",
]
