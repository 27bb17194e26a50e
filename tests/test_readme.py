"""The README's connection examples run as they are, on both backends."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _examples() -> list[str]:
    text = README.read_text()
    section = text[text.index("### Connections") : text.index("The rest of the API")]
    return re.findall(r"```python\n(.*?)```", section, re.S)


EXAMPLES = _examples()


def test_the_readme_has_the_examples():
    joined = "\n".join(EXAMPLES)
    assert len(EXAMPLES) == 4
    for needle in ("tls://", "enable_crypto", "udp://", "unix://"):
        assert needle in joined


@pytest.mark.parametrize("index", range(len(EXAMPLES)), ids=["https", "starttls", "udp", "unix"])
def test_example_runs(backend, index):
    env = {**os.environ, "STREAMSOCK_BACKEND": backend.name}
    result = subprocess.run([sys.executable, "-c", EXAMPLES[index]], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
