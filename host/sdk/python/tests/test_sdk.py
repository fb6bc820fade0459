"""The SDK against a real `orchestrator serve` (tests/api.rs starts it and runs this file):
ORCHESTRATOR_API_SOCKET, ORCHESTRATOR_API_TOKEN and ORCHESTRATOR_TEST_IMAGE say where and
what."""

import asyncio
import io
import os
import uuid

import pytest

import orchestrator_sdk as o

IMAGE = os.environ["ORCHESTRATOR_TEST_IMAGE"]


def name(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def client():
    with o.Client() as c:
        yield c


def test_a_sandbox_runs_commands_and_keeps_files_and_is_removed_by_its_context(client):
    assert client.health()
    n = name("py")
    with client.create(n, image=IMAGE, isolation="namespace", env={"GREETING": "hi"}) as sb:
        assert sb.view()["status"] == "Running"
        r = sb.shell("echo $GREETING; echo oops >&2; exit 3")
        assert (r.exit_code, r.stdout, r.stderr, r.ok) == (3, "hi\n", "oops\n", False)
        assert sb.exec("cat", stdin="to stdin").stdout == "to stdin"
        assert sb.exec("pwd", cwd="/tmp").stdout == "/tmp\n"
        assert sb.exec("sh", "-c", "printf '\\377'").stdout_bytes == b"\xff"
        slow = sb.exec("sleep", "30", timeout=0.3)
        assert slow.timed_out and slow.code == 137
        events = list(sb.exec_stream("sh", "-c", "echo one; echo two >&2"))
        assert [e.type for e in events][0] == "started" and events[-1].type == "exited"
        assert b"".join(e.data for e in events if e.type == "stdout") == b"one\n"
        assert b"".join(e.data for e in events if e.type == "stderr") == b"two\n"

        sb.fs.write("/tmp/data.bin", bytes(range(256)), mode=0o600)
        assert sb.fs.read("/tmp/data.bin") == bytes(range(256))
        assert sb.fs.stat("/tmp/data.bin")["size"] == 256
        assert "data.bin" in [e["name"] for e in sb.fs.list("/tmp")]
        sb.fs.remove("/tmp/data.bin")
        assert not sb.fs.exists("/tmp/data.bin")

        sb.stop()
        assert client.get(n).view()["status"] == "Stopped"
        sb.start()
        assert sb.shell("echo back").stdout == "back\n"
    with pytest.raises(o.NotFound):
        client.get(n)


def test_problems_become_typed_errors(client):
    with pytest.raises(o.NotFound):
        client.get("no-such-sandbox")
    with pytest.raises(o.InvalidSpec) as bad:
        client.create("Bad_Name", image=IMAGE, cpus=-1)
    assert {"metadata.name", "spec.cpus"} <= {e["field"] for e in bad.value.errors}
    with pytest.raises(o.HostPathForbidden):
        client.create(name("root"), image="dir:/")
    n = name("dup")
    with client.create(n, image=IMAGE, isolation="namespace") as sb:
        with pytest.raises(o.Conflict):
            client.create(n, image=IMAGE)
        with pytest.raises(o.SpawnFailed):
            sb.exec("/no/such/program")
    with pytest.raises(o.Unauthorized):
        with o.Client(token="not-the-token-0123456789") as wrong:
            wrong.sandboxes()


def test_files_stream_both_ways_and_the_server_lists_images_and_plugins(client, tmp_path):
    n = name("stream")
    big = bytes(i % 251 for i in range(3 << 20))
    with client.create(n, image=IMAGE, isolation="namespace") as sb:
        src = tmp_path / "big.bin"
        src.write_bytes(big)
        with open(src, "rb") as f:
            sb.fs.upload("/tmp/big.bin", f, mode=0o640)
        sb.fs.upload("/tmp/chunks.txt", (part.encode() for part in ["one ", "two ", "three"]))
        dest = tmp_path / "back.bin"
        with open(dest, "wb") as f:
            assert sb.fs.download("/tmp/big.bin", f) == len(big)
        assert dest.read_bytes() == big
        assert sb.fs.read_text("/tmp/chunks.txt") == "one two three"
        assert sb.fs.stat("/tmp/big.bin")["mode"] & 0o777 == 0o640
        with pytest.raises(o.InvalidArgument):
            sb.fs.read("/tmp")
    assert isinstance(client.images(), list)
    assert client.plugins() == []
    with pytest.raises(o.NotFound):
        client.eval_plugin("no-such-plugin", connect="192.0.2.1:443")
    with pytest.raises(o.HostPathForbidden):
        client.pull("oci-layout:/etc")


def test_the_async_client_does_the_same():
    async def main():
        async with o.AsyncClient() as client:
            n = name("aio")
            async with await client.create(n, image=IMAGE, isolation="namespace") as sb:
                r = await sb.shell("echo async")
                assert r.stdout == "async\n"
                await sb.fs.write("/tmp/a.txt", "x")
                assert await sb.fs.read("/tmp/a.txt") == b"x"
                types = [e.type async for e in sb.exec_stream("echo", "streamed")]
                assert types[0] == "started" and types[-1] == "exited" and "stdout" in types

                async def parts():
                    for p in (b"a" * 700_000, b"b" * 700_000):
                        yield p

                await sb.fs.upload("/tmp/parts.bin", parts())
                out = io.BytesIO()
                assert await sb.fs.download("/tmp/parts.bin", out) == 1_400_000
                assert out.getvalue() == b"a" * 700_000 + b"b" * 700_000
                assert isinstance(await client.images(), list)
            assert n not in [s["name"] for s in await client.sandboxes()]

    asyncio.run(main())


def test_a_named_volume_keeps_data_between_sandboxes(client):
    v = name("vol")
    made = client.create_volume(v, size="32Mi")
    assert made["size"] == 32 << 20 and not made["shared"]
    with pytest.raises(o.Conflict):
        client.create_volume(v)
    mounts = [{"name": v, "mountPath": "/data"}, {"tmpfs": "/fast", "size": "4Mi"}]
    with client.create(name("w"), image=IMAGE, isolation="namespace", volumes=mounts) as sb:
        assert sb.exec("sh", "-c", "echo kept > /data/f").exit_code == 0
        assert [u for vol in client.volumes() if vol["name"] == v for u in vol["users"]]
        with pytest.raises(o.Conflict):
            client.delete_volume(v)
    reader = [{"name": v, "mountPath": "/data", "readOnly": True}]
    with client.create(name("r"), image=IMAGE, isolation="namespace", volumes=reader) as sb:
        assert sb.exec("cat", "/data/f").stdout == "kept\n"
        assert sb.exec("touch", "/data/g").exit_code != 0
    client.delete_volume(v)
    assert v not in [vol["name"] for vol in client.volumes()]
