"""Test plugin (world `secret-provider-plugin`): secrets read from files.

Built by plugins/build.sh into test-secrets-py.wasm. The host grants the component a read-only
directory mounted at /secrets in its WASI filesystem; the secret `KEY` is the file /secrets/KEY,
without its trailing newline. The value is never logged.
"""

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host
from wit_world.imports.types import SandboxInfo

SECRETS_DIR = "/secrets"


class SecretProvider(exports.SecretProvider):
    def resolve(self, sandbox: SandboxInfo, key: str) -> str:
        if key == "" or "/" in key or ".." in key or "\0" in key:
            raise Err("invalid key")
        host.log(host.Level.INFO, f"resolving {key} for {sandbox.name}")
        try:
            with open(f"{SECRETS_DIR}/{key}", encoding="utf-8") as f:
                value = f.read()
        except FileNotFoundError:
            raise Err(f"no secret named {key}")
        except OSError as e:
            # Not the value: only the kind of failure.
            raise Err(f"cannot read secret {key}: {e.strerror or type(e).__name__}")
        return value[:-1] if value.endswith("\n") else value
