"""Typed errors from the API's problem+json answers: one class per problem kind."""

from __future__ import annotations

from typing import Any


class OrchestratorError(Exception):
    """An answer the API gave as a problem: `kind`, HTTP `status`, `detail`, and for an invalid
    spec every located diagnostic in `errors` (line, column, field, message, hint)."""

    def __init__(self, status: int, kind: str, detail: str, errors: list[dict[str, Any]] | None = None):
        super().__init__(f"{kind} ({status}): {detail}")
        self.status = status
        self.kind = kind
        self.detail = detail
        self.errors = errors or []


class NotFound(OrchestratorError):
    pass


class Conflict(OrchestratorError):
    pass


class InvalidSpec(OrchestratorError):
    pass


class InvalidArgument(OrchestratorError):
    """A request the sandbox cannot act on as given (a directory read as a file, a bad path)."""


class Unauthorized(OrchestratorError):
    pass


class HostPathForbidden(OrchestratorError):
    pass


class TooManyRequests(OrchestratorError):
    pass


class SpawnFailed(OrchestratorError):
    pass


class Unavailable(OrchestratorError):
    """The host cannot run what was asked (isolation unavailable)."""


class Timeout(OrchestratorError):
    pass


KINDS: dict[str, type[OrchestratorError]] = {
    "not-found": NotFound,
    "conflict": Conflict,
    "not-running": Conflict,
    "invalid-spec": InvalidSpec,
    "image-unavailable": InvalidSpec,
    "invalid-argument": InvalidArgument,
    "bad-request": InvalidArgument,
    "unauthorized": Unauthorized,
    "host-path-forbidden": HostPathForbidden,
    "too-many-requests": TooManyRequests,
    "spawn-failed": SpawnFailed,
    "isolation-unavailable": Unavailable,
    "timeout": Timeout,
}


def from_problem(p: dict[str, Any]) -> OrchestratorError:
    """The error a problem object (as streams carry them) stands for."""
    kind = p.get("kind", "error")
    return KINDS.get(kind, OrchestratorError)(int(p.get("status", 500)), kind, p.get("detail", ""), p.get("errors", []))


def from_response(status: int, body: bytes) -> OrchestratorError:
    """The error a failed answer stands for."""
    import json

    try:
        p = json.loads(body)
        kind, detail, errors = p.get("kind", "error"), p.get("detail", ""), p.get("errors", [])
    except ValueError:
        kind, detail, errors = "error", body.decode("utf-8", "replace"), []
    return KINDS.get(kind, OrchestratorError)(status, kind, detail, errors)
