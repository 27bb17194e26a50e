"""Backend selection: STREAMSOCK_BACKEND, the default, and what each reports."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import streamsock as ss
from conftest import BACKENDS


def _run(code: str, backend: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "STREAMSOCK_BACKEND"}
    if backend is not None:
        env["STREAMSOCK_BACKEND"] = backend
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name", ["pure", "native"])
def test_environment_variable_selects_the_backend(name):
    if name not in BACKENDS:
        pytest.skip("the native backend is not built")
    result = _run("import streamsock; print(streamsock.backend)", name)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == name


def test_default_is_native_when_built():
    result = _run("import streamsock; print(streamsock.backend)", None)
    assert result.stdout.strip() == BACKENDS[0]


def test_unknown_backend_name_is_an_error():
    result = _run("import streamsock", "fast")
    assert result.returncode != 0
    assert "unknown streamsock backend 'fast'" in result.stderr


def test_requested_native_without_the_core_is_an_error_not_a_fallback():
    # Hide the compiled core from the import system in a child process.
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'streamsock._native._core': raise ImportError('blocked for the test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import streamsock\n"
    )
    result = _run(code, "native")
    assert result.returncode != 0
    assert "native streamsock backend is not available" in result.stderr
    fallback = _run(code + "print(streamsock.backend)", None)
    assert fallback.returncode == 0, fallback.stderr
    assert fallback.stdout.strip() == "pure"


def test_backends_report_their_openssl(backend):
    assert backend.openssl_version().startswith("OpenSSL ")
    available = backend.available_transports()
    assert {"tcp", "udp", "ssl", "tls", "tlsv1.2", "unix", "udg"} <= set(available)
    assert "sslv2" not in available  # removed from OpenSSL in 1.1.0


def test_get_backend_rejects_unknown_names():
    with pytest.raises(ValueError, match="choose one of native, pure"):
        ss.get_backend("turbo")
