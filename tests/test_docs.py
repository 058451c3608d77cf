"""The reference documentation (docs/reference) builds from the docstrings without a warning, and documents every
public name of the SDK and the core API and every CLI subcommand.

Sphinx imports ``ntt``, ``ntt.fo`` (so fiftyone, which connects to no database on import) and ``ntt.cli``; it
runs in its own process with the tests' environment (offline, no tracking).
"""

from __future__ import annotations

import argparse
import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "reference"

if not os.environ.get("CI"):  # scripts/setup.sh installs Sphinx (the `docs` extra); in CI it must be there
    pytest.importorskip("sphinx", reason="Sphinx is not installed (pip install -e .[docs])")
    pytest.importorskip("sphinxarg", reason="sphinx-argparse is not installed (pip install -e .[docs])")


def _ids(page: Path) -> set[str]:
    return set(re.findall(r'id="([^"]+)"', page.read_text(encoding="utf-8")))


def _text(page: Path) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", page.read_text(encoding="utf-8"))).split())


def _commands(parser: argparse.ArgumentParser, prefix: str = "ntt"):
    """Every subcommand ``ntt --help`` lists, at every level (hidden old names have no help, so no entry)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                yield f"{prefix} {choice.dest}"
                yield from _commands(action._name_parser_map[choice.dest], f"{prefix} {choice.dest}")


def test_reference_docs_build_without_warnings(tmp_path):
    out = tmp_path / "html"
    env = {**os.environ, "FIFTYONE_DO_NOT_TRACK": "true"}
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", "-q", str(DOCS), str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = proc.stdout + proc.stderr
    # -W makes Sphinx's warnings errors; docutils' own messages on CLI help texts (":1: (WARNING/2) ...") do
    # not change its exit code, so any warning printed fails too.
    problems = [line for line in output.splitlines() if re.search(r"WARNING|ERROR|SEVERE|CRITICAL", line)]
    assert proc.returncode == 0 and not problems, f"sphinx-build exit {proc.returncode}:\n{output}"

    for page in ("index", "sdk", "core", "cli", *(f"workflows/{w}" for w in ("prelabel", "review", "gpus", "paper"))):
        assert (out / f"{page}.html").is_file(), f"{page}.html was not built"

    from ntt.cli import build_parser

    cli = _text(out / "cli.html")
    commands = list(_commands(build_parser()))
    assert {"ntt bank build", "ntt segment", "ntt evaluate", "ntt worker"} <= set(commands)
    missing = [command for command in commands if f"{command} [-h]" not in cli]
    assert not missing, f"subcommands not documented in cli.html: {missing}"

    import ntt
    import ntt.fo

    sdk = _ids(out / "sdk.html")
    missing = [name for name in ntt.fo.__all__ if f"ntt.fo.{name}" not in sdk]
    assert not missing, f"public names of ntt.fo not documented in sdk.html: {missing}"
    core = _ids(out / "core.html")
    missing = [name for name in ntt.__all__ if f"ntt.{name}" not in core]
    assert not missing, f"public names of ntt not documented in core.html: {missing}"
