"""The encryption package's modules: the KMS provider, and botocore's client code with it, loads only
for a deployment whose key URL names KMS."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PROBE = """
import sys
from radstack.security.crypto import open_key_provider
provider = open_key_provider({url!r})
print(type(provider).__name__, "radstack.security.crypto.kms" in sys.modules)
"""


def _run(url: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(url=url)], capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout.strip()


def test_local_keys_do_not_load_the_kms_provider(tmp_path: Path) -> None:
    assert _run(f"file://{tmp_path / 'keys'}") == "LocalKeyProvider False"
    assert (tmp_path / "keys" / "kek-000001.key").stat().st_mode & 0o077 == 0


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_kms_module_imports_boto() -> None:
    package = Path(__file__).parents[2] / "src" / "radstack" / "security" / "crypto"
    modules = {path.name: _imports(path) for path in package.glob("*.py")}
    assert len(modules) > 4
    assert sorted(name for name, imports in modules.items() if imports & {"boto3", "botocore"}) == ["kms.py"]
