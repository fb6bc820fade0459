"""A fix for anyio before 3.7 (Debian 12 ships 3.6.2), whose Unix-socket stream resends a write
from its start after the kernel took only part of it: a large request body over the server's
Unix socket reached it corrupted ("Invalid chunk body"). The asyncio client installs the
corrected `send` once, and only on those versions."""

from __future__ import annotations

import asyncio
import importlib.metadata

_done = False


def _version() -> tuple[int, int]:
    try:
        major, minor = importlib.metadata.version("anyio").split(".")[:2]
        return int(major), int(minor)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return (99, 0)


def install() -> None:
    global _done
    if _done or _version() >= (3, 7):
        return
    _done = True
    try:
        from anyio import BrokenResourceError, ClosedResourceError
        from anyio._backends import _asyncio as backend
    except ImportError:
        return
    stream = getattr(backend, "UNIXSocketStream", None)
    if stream is None:
        return

    async def send(self, item: bytes) -> None:
        loop = asyncio.get_running_loop()
        await backend.checkpoint()
        with self._send_guard:
            view = memoryview(item)
            while view:
                try:
                    sent = self._UNIXSocketStream__raw_socket.send(view)
                except BlockingIOError:
                    await self._wait_until_writable(loop)
                except OSError as exc:
                    if self._closing:
                        raise ClosedResourceError from None
                    raise BrokenResourceError from exc
                else:
                    view = view[sent:]

    stream.send = send
