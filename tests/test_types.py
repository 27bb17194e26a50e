"""Types: ``mypy --strict`` is clean over the package, over the README's
examples and over a user's script (tests/typing/user_script.py, whose
``assert_type`` calls pin what users see: a blocking ``read`` is ``bytes``,
``meta`` a TypedDict, ``probe`` yields ProbeResults), and it catches the
mistakes tests/typing/misuse.py makes. One mypy run checks them all."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import streamsock

ROOT = Path(__file__).resolve().parent.parent
TYPING = Path(__file__).resolve().parent / "typing"
README = ROOT / "README.md"

pytestmark = pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="needs mypy (the test extra)")

# What the README's fragments take as given: names a real program would have made.
PRELUDE = """\
from __future__ import annotations

import asyncio
import streamsock as ss
from streamsock.resume import RecordedTargets

lines: list[str] = []
targets: list[str] = []
mail_hosts: list[str] = []
ctx = ss.Context()
server_ctx = ss.Context()


class MyProtocol(asyncio.Protocol):
    pass
"""


def readme_examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def as_module(example: str) -> str:
    """The example after the prelude; one with ``await`` at its top level
    becomes the body of a coroutine, as it would be in a program."""
    if re.search(r"^(async with|async for|.*\bawait\b)", example, re.M) and not example.startswith("async def"):
        toplevel = [line for line in example.splitlines() if line and not line[0].isspace()]
        if any("await" in line or line.startswith("async with") for line in toplevel):
            return PRELUDE + "\n\nasync def example() -> None:\n" + textwrap.indent(example, "    ")
    return PRELUDE + "\n" + example


def expected_errors(path: Path) -> set[tuple[int, str]]:
    """(line, code) of every ``# E: code`` mark in ``path``."""
    marks = set()
    for number, line in enumerate(path.read_text().splitlines(), 1):
        found = re.search(r"# E: ([a-z-]+)\s*$", line)
        if found:
            marks.add((number, found.group(1)))
    return marks


@pytest.fixture(scope="module")
def mypy_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[int, str, str]]]:
    """One strict mypy run over the package, the README's examples and the
    user scripts: the errors of each file, as (line, code, message)."""
    examples_dir = tmp_path_factory.mktemp("readme_examples")
    examples = readme_examples()
    for index, example in enumerate(examples):
        (examples_dir / f"readme_example_{index}.py").write_text(as_module(example))
    package = Path(streamsock.__file__).resolve().parent
    scripts = [str(TYPING / "user_script.py"), str(TYPING / "misuse.py"),
               *(str(p) for p in sorted(examples_dir.glob("*.py")))]
    if package.parent.name in ("site-packages", "dist-packages"):
        # Installed (CI): the package as users' mypy finds it, through its py.typed,
        # from a directory of its own (site-packages' other modules are not ours);
        # mypy takes a package or files, so two runs.
        cwd = tmp_path_factory.mktemp("mypy_cwd")
        runs = [["-p", "streamsock"], scripts]
    else:
        cwd = package.parent  # the source tree (an editable install)
        runs = [[str(package), *scripts]]
    report: dict[str, list[tuple[int, str, str]]] = {}
    for targets in runs:
        result = subprocess.run(
            [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--show-error-codes",
             "--no-color-output", "--hide-error-context", "--no-error-summary", "--python-version", "3.11",
             "--python-executable", sys.executable, "--cache-dir", str(tmp_path_factory.mktemp("mypy_cache")),
             *targets],
            cwd=str(cwd), capture_output=True, text=True, timeout=600)
        assert result.returncode in (0, 1), result.stderr + result.stdout  # 2: mypy itself failed
        for line in result.stdout.splitlines():
            found = re.match(r"(.+?):(\d+): error: (.*)  \[([a-z-]+)\]$", line)
            if found:
                name = (cwd / found.group(1)).resolve()  # mypy names files relative to its directory
                report.setdefault(str(name), []).append((int(found.group(2)), found.group(4), found.group(3)))
            elif ": error:" in line:
                report.setdefault("<unparsed>", []).append((0, "", line))
    report["<examples>"] = [(0, "", str(examples_dir))]
    return report


def _errors_under(report: dict[str, list[tuple[int, str, str]]], prefix: Path) -> list[str]:
    return [f"{name}:{line}: {message} [{code}]" for name, errors in report.items()
            if name.startswith(str(prefix)) for line, code, message in errors]


def test_the_package_is_clean_under_strict(mypy_report):
    package = Path(streamsock.__file__).resolve().parent
    assert _errors_under(mypy_report, package) == []
    assert mypy_report.get("<unparsed>", []) == []
    examples_dir = mypy_report["<examples>"][0][2]
    known = (str(package), examples_dir, str(TYPING))
    assert [name for name in mypy_report if not name.startswith(("<", *known))] == []  # every error attributed


def test_the_readme_examples_are_clean_under_strict(mypy_report):
    assert len(readme_examples()) >= 8
    examples_dir = Path(mypy_report["<examples>"][0][2])
    assert _errors_under(mypy_report, examples_dir) == []


def test_a_users_script_sees_precise_types(mypy_report):
    assert _errors_under(mypy_report, TYPING / "user_script.py") == []


def test_strict_mypy_catches_a_users_mistakes(mypy_report):
    found = {(line, code) for line, code, _ in mypy_report.get(str(TYPING / "misuse.py"), [])}
    assert found == expected_errors(TYPING / "misuse.py")


def test_the_package_ships_its_types():
    package = Path(streamsock.__file__).resolve().parent
    assert (package / "py.typed").is_file()
    if streamsock.backend == "native":
        assert (package / "_native" / "_core.pyi").is_file()
