"""Backend selection: STREAMSOCK_BACKEND, the default, and what each reports."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

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


def test_an_install_without_the_c_core_says_why(tmp_path):
    # The package as the pure wheel installs it: no _core, and the reason
    # CMake gave in _native_skipped.py (.ci/run builds and checks the real one).
    package = Path(ss.__file__).parent
    shutil.copytree(package, tmp_path / "streamsock",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__", "_native_skipped.py"))
    reason = "no C compiler was found at CC=/nonexistent"
    (tmp_path / "streamsock" / "_native_skipped.py").write_text(f'REASON = "{reason}"\n')
    # -S: only this copy of streamsock, not an installed or editable one.
    code = (f"import sys; sys.path.insert(0, {str(tmp_path)!r}); "
            "from streamsock.cli import main; sys.exit(main(['--version']))")
    env = {k: v for k, v in os.environ.items() if k != "STREAMSOCK_BACKEND"}
    version = subprocess.run([sys.executable, "-S", "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert version.returncode == 0, version.stderr
    assert f"pure backend (native core not built: {reason}), OpenSSL" in version.stdout
    native = subprocess.run([sys.executable, "-S", "-c", code], env={**env, "STREAMSOCK_BACKEND": "native"},
                            capture_output=True, text=True, timeout=60)
    assert native.returncode != 0
    message = native.stderr.strip().splitlines()[-1]
    assert f"installed without its C core ({reason})" in message
    assert "apt-get install gcc libssl-dev" in message and "--no-cache-dir" in message
