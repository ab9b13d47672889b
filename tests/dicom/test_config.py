"""pydicom's settings change at start-up only, never when a module of ours is imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_PROBE = """
import pydicom.config as c
before = c.settings.reading_validation_mode
import radstack.cli, radstack.ingest.pipeline, radstack.ingest.pool, radstack.web.app, radstack.dimse.scp
print(before, c.settings.reading_validation_mode, c.IGNORE)
"""


def test_importing_radstack_leaves_pydicom_settings_alone() -> None:
    """A library user who imports radstack's pipeline keeps pydicom's own validation."""
    done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True)
    before, after, ignore = done.stdout.split()
    assert after == before != ignore


def test_opening_the_platform_turns_off_value_validation(tmp_path: Path) -> None:
    """Once radstack starts, pydicom no longer warns with (possibly identifying) values."""
    probe = f"""
import pydicom.config as c
from radstack.config import Settings
from radstack.platform import Platform
platform = Platform.open(Settings(data_dir={str(tmp_path)!r}))
print(c.settings.reading_validation_mode == c.IGNORE)
platform.close()
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.split()[-1] == "True"
