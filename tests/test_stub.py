"""The hand-kept _core.pyi must match the built module (names, signatures, defaults)."""

import subprocess
import sys

import pytest


def test_stub_matches_native_module():
    pytest.importorskip("mypy.stubtest")
    proc = subprocess.run([sys.executable, "-m", "mypy.stubtest", "madda_rs._core"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
