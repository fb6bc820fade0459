"""Drives the orchestrator's MCP server with the official Python MCP client, as an agent
would: list the tools, create a sandbox, run a command and code, write, read and list files,
delete the sandbox. Exits non-zero (with the reason) on any surprise.

    client.py stdio BINARY [ARGS...]       (env: ORCHESTRATOR_DATA_DIR for the server)
    client.py http URL TOKEN
"""

import asyncio
import json
import os
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamablehttp_client


def text(result):
    assert not result.isError, f"tool failed: {result.content}"
    return result.content[0].text


async def drive(session, tag):
    await session.initialize()
    tools = {t.name: t for t in (await session.list_tools()).tools}
    expected = {"create_sandbox", "run_command", "run_code", "read_file", "write_file", "list_files", "list_sandboxes", "delete_sandbox"}
    assert expected <= set(tools), sorted(tools)
    assert "command" in tools["run_command"].inputSchema["properties"], tools["run_command"].inputSchema

    name = f"mcp-{tag}"
    made = json.loads(text(await session.call_tool("create_sandbox", {"name": name, "isolation": "namespace", "env": {"WHO": "agent"}})))
    assert made["name"] == name, made
    out = json.loads(text(await session.call_tool("run_command", {"sandbox": name, "command": ["sh", "-c", "echo hi $WHO; exit 3"]})))
    assert (out["exit_code"], out["stdout"]) == (3, "hi agent\n"), out
    out = json.loads(text(await session.call_tool("run_code", {"sandbox": name, "language": "sh", "code": "for i in 1 2 3; do printf $i; done"})))
    assert out["stdout"] == "123", out
    assert "wrote 5 bytes" in text(await session.call_tool("write_file", {"sandbox": name, "path": "/work/notes.txt", "content": "notes"}))
    assert text(await session.call_tool("read_file", {"sandbox": name, "path": "/work/notes.txt"})) == "notes"
    listing = json.loads(text(await session.call_tool("list_files", {"sandbox": name, "path": "/work"})))
    assert listing == [{"name": "notes.txt", "kind": "file", "size": 5}], listing
    assert name in text(await session.call_tool("list_sandboxes", {}))

    # What an agent must not get: a host path as its root, a relative path, another's sandbox.
    bad = await session.call_tool("create_sandbox", {"name": f"{name}-root", "image": "dir:/"})
    assert bad.isError and "host" in bad.content[0].text, bad
    bad = await session.call_tool("create_sandbox", {"name": f"{name}-wide", "network": "allow-all"})
    assert bad.isError and "allow-client-network" in bad.content[0].text, bad
    bad = await session.call_tool("read_file", {"sandbox": name, "path": "etc/passwd"})
    assert bad.isError, bad
    bad = await session.call_tool("run_command", {"sandbox": "no-such-sandbox", "command": ["true"]})
    assert bad.isError and "no-such-sandbox" in bad.content[0].text, bad

    assert "deleted" in text(await session.call_tool("delete_sandbox", {"sandbox": name}))
    assert name not in text(await session.call_tool("list_sandboxes", {}))


async def main():
    mode = sys.argv[1]
    if mode == "stdio":
        # The server needs the test's data directory; the client passes only what it is given.
        params = StdioServerParameters(command=sys.argv[2], args=sys.argv[3:], env=dict(os.environ))
        async with stdio_client(params) as (r, w):
            async with ClientSession(r, w) as session:
                await drive(session, "stdio")
    else:
        url, token = sys.argv[2], sys.argv[3]
        async with streamablehttp_client(url, headers={"Authorization": f"Bearer {token}"}) as (r, w, _):
            async with ClientSession(r, w) as session:
                await drive(session, "http")
    print("mcp client: ok")


asyncio.run(main())
