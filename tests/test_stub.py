"""The hand-kept _core.pyi must match the built module (names, signatures, defaults)."""

import subprocess
import sys

import pytest


def test_stub_matches_native_module(tmp_path):
    pytest.importorskip("mypy.stubtest")
    # mypy skips analysing the stub's imports (numpy's stubs: 25 of the test's 30 s); the native
    # functions carry no annotations at runtime, so stubtest compares names, kinds and defaults,
    # which it still does in full (a renamed parameter or a variable's type fails it)
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\nfollow_imports = skip\n")
    proc = subprocess.run([sys.executable, "-m", "mypy.stubtest", "--mypy-config-file", str(config), "madda_rs._core"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
