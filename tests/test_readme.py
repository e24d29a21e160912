"""The README's console blocks are run and their printed output compared, so they cannot drift.

Regenerate the outputs after a deliberate change with:  python tests/test_readme.py --update
"""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(r"```console\n(.*?)```", re.S)


def console_blocks(text: str) -> list[tuple[tuple[int, int], str, str]]:
    """(span of the block body, command, expected output) for every ```console block."""
    found = []
    for m in BLOCK.finditer(text):
        first, _, rest = m.group(1).partition("\n")
        assert first.startswith("$ "), f"a console block must start with '$ ': {first!r}"
        found.append((m.span(1), first[2:], rest))
    return found


def run_command(command: str) -> str:
    args = shlex.split(command)
    assert args[0] == "joulecut", f"README commands run joulecut, got {command!r}"
    proc = subprocess.run([sys.executable, "-m", "joulecut", *args[1:]], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{command}\n{proc.stderr}"
    return proc.stdout


def normalise(text: str) -> list[str]:
    return [line.rstrip() for line in text.strip("\n").splitlines()]


BLOCKS = console_blocks(README.read_text())


@pytest.mark.parametrize("command,expected", [(c, e) for _, c, e in BLOCKS], ids=[c[:60] for _, c, _ in BLOCKS])
def test_readme_command_prints_what_the_readme_shows(command, expected):
    assert normalise(run_command(command)) == normalise(expected)


def shell_commands(text: str) -> list[str]:
    """joulecut command lines in ```sh blocks: too slow to run in the tests, but they must parse."""
    found = []
    for m in re.finditer(r"```sh\n(.*?)```", text, re.S):
        found += [line.split("#")[0].strip() for line in m.group(1).splitlines() if line.startswith("joulecut ")]
    return found


@pytest.mark.parametrize("command", shell_commands(README.read_text()))
def test_readme_shell_commands_parse(command):
    sys.path.insert(0, str(ROOT))
    import joulecut

    args = joulecut.build_parser().parse_args(shlex.split(command)[1:])
    assert callable(args.func)


def test_make_demo_runs_the_command_the_readme_names():
    makefile = (ROOT / "Makefile").read_text()
    demo = re.search(r"^demo:.*\n\t(.*)$", makefile, re.M).group(1).replace("$(VENV)/bin/", "")
    text = README.read_text()
    assert f"`make demo` runs `{demo}`" in " ".join(text.split())
    test_readme_shell_commands_parse(demo)  # and it is a valid command line
    assert "make test" in text and re.search(r"^test:", makefile, re.M)


def update() -> None:
    text = README.read_text()
    for (start, end), command, _ in reversed(console_blocks(text)):
        text = text[:start] + f"$ {command}\n" + run_command(command).rstrip("\n") + "\n" + text[end:]
    README.write_text(text)


if __name__ == "__main__" and "--update" in sys.argv:
    update()
