"""Test plugin (world `http-secret-provider`, see wit/world.wit): secrets fetched over wasi:http.

Built by plugins/build.sh into test-http-secrets-py.wasm. It exports the orchestrator's
secret-provider interface and imports wasi:http/outgoing-handler, which the host grants only for
the hosts in the Plugin resource's `grants.httpHosts` (others fail with HTTP-request-denied).

Configuration (spec.config, read on the first call):
  authority    host:port of the secret server, e.g. 127.0.0.1:18080 (required).
  path-prefix  prepended to the key (default /secrets/).
The secret `KEY` is the body of GET http://AUTHORITY + PATH-PREFIX + KEY (a 2xx answer, at most
64 KiB of UTF-8) without one trailing newline. The value is never logged.

Everything is synchronous: the blocking wasi:io calls (pollable.block, input-stream.blocking-read)
inside `resolve`, no asyncio event loop.
"""

import re

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host, outgoing_handler, streams
from wit_world.imports import wasi_http_types as http
from wit_world.imports.orchestrator_plugin_types import SandboxInfo

MAX_BODY = 64 * 1024
KEY = re.compile(r"[A-Za-z0-9_-]+")

# Read on the first call, not at import: the module's top level runs at build time
# (componentize-py pre-initialises it), where there is no host to ask.
_config = None


def config():
    global _config
    if _config is None:
        values = dict(host.config())
        _config = (values.get("authority", ""), values.get("path-prefix", "/secrets/"))
    return _config


# Python names of wasi:http error-code cases lose the WIT spelling (HttpRequestDenied for
# HTTP-request-denied); these words are upper case in WIT.
_ACRONYMS = {"dns": "DNS", "ip": "IP", "tls": "TLS", "http": "HTTP", "uri": "URI"}


def describe(code):
    """An error-code as its WIT case name, e.g. `HTTP-request-denied`, with its payload if any."""
    words = re.findall(r"[A-Z][a-z0-9]*", type(code).__name__.removeprefix("ErrorCode_"))
    name = "-".join(_ACRONYMS.get(w.lower(), w.lower()) for w in words)
    value = getattr(code, "value", None)
    if value is None:
        return name
    if isinstance(value, str):
        return f"{name}: {value}"
    return f"{name} ({value})"


def stream_failure(err):
    """Why a body read failed: the HTTP error code when the host gives one."""
    with err:
        code = http.http_error_code(err)
        return describe(code) if code is not None else err.to_debug_string()


def fetch(authority, path):
    """The body of GET http://authority/path, or raises Err with a message without the body."""
    url = f"http://{authority}{path}"
    request = http.OutgoingRequest(http.Fields())
    try:
        request.set_method(http.Method_Get())
        request.set_scheme(http.Scheme_Http())
        request.set_authority(authority)
    except Err:
        raise Err(f"fetching {url}: invalid authority")
    try:
        request.set_path_with_query(path)
    except Err:
        raise Err(f"fetching {url}: invalid path")
    try:
        future = outgoing_handler.handle(request, None)
    except Err as e:
        raise Err(f"fetching {url}: {describe(e.value)}")
    # Children before parents: the pollable before the future, the stream before the body,
    # the body before the response (the host refuses to drop a resource that has children).
    with future:
        with future.subscribe() as ready:
            ready.block()
        outcome = future.get()
    if outcome is None:
        raise Err(f"fetching {url}: no response after waiting for it")
    if isinstance(outcome, Err):
        raise Err(f"fetching {url}: response already taken")
    result = outcome.value  # Ok(incoming-response) or Err(error-code)
    if isinstance(result, Err):
        raise Err(f"fetching {url}: {describe(result.value)}")
    with result.value as response:
        status = response.status()
        if not 200 <= status <= 299:
            raise Err(f"HTTP {status} for {url}")
        try:
            body = response.consume()
        except Err:
            raise Err(f"fetching {url}: response body already taken")
        with body:
            with body.stream() as stream:
                data = bytearray()
                while True:
                    try:
                        # One byte more than the cap, to tell "exactly 64 KiB" from "more".
                        data += stream.blocking_read(MAX_BODY + 1 - len(data))
                    except Err as e:
                        if isinstance(e.value, streams.StreamError_Closed):
                            break
                        raise Err(f"reading {url}: {stream_failure(e.value.value)}")
                    if len(data) > MAX_BODY:
                        raise Err(f"response of {url} is larger than {MAX_BODY // 1024} KiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise Err(f"response of {url} is not UTF-8")


class SecretProvider(exports.SecretProvider):
    def resolve(self, sandbox: SandboxInfo, key: str) -> str:
        if KEY.fullmatch(key) is None:
            raise Err("invalid key")
        authority, prefix = config()
        if authority == "":
            raise Err("config: authority is not set")
        host.log(host.Level.INFO, f"fetching {key} for {sandbox.name}")
        value = fetch(authority, prefix + key)
        return value[:-1] if value.endswith("\n") else value
