"""The README and docs/ as a newcomer uses them: every link resolves, every command runs
(tests/readme_commands.py runs README's commands in a fresh clone and venv)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from conftest import REPO
from readme_commands import SHORT, TRAINING, bash_blocks, newcomer_env

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "models" / "README.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def relative_links(page: Path) -> list[str]:
    return [link for link in LINK.findall(page.read_text())
            if not re.match(r"[a-z]+:", link) and not link.startswith("#")]


def test_every_relative_link_resolves():
    broken = []
    for page in DOCS:
        for link in relative_links(page):
            path = (page.parent / link.split("#")[0]).resolve()
            if not path.exists():
                broken.append(f"{page.relative_to(REPO)}: {link}")
    assert broken == []


def test_the_link_check_sees_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("[ok](https://example.org) [top](#top) [gone](docs/gone.md)")
    assert relative_links(page) == ["docs/gone.md"]


def test_readme_commands_are_shortened_only_in_training():
    script = "\n".join(bash_blocks((REPO / "README.md").read_text()))
    assert script.count(TRAINING) == 1  # the one substitution the command test makes
    assert "edgeconv classify" in script


@pytest.mark.slow
def test_every_readme_command_runs_in_a_fresh_venv(readme_run, real_data, tmp_path):
    clone, commands = readme_run
    result = commands.result()
    assert result.returncode == 0, result.stderr[-4000:]
    assert SHORT in result.stderr  # bash -x echoed the one shortened command
    assert "cats" in result.stdout
    # The installed import name is edgeconv, and only it: train/, export/... clash with nothing.
    python = str(clone / ".venv" / "bin" / "python")
    env = newcomer_env(real_data)
    for name, fails in (("edgeconv.runtime", False), ("train", True), ("export", True),
                        ("runtime", True), ("devices", True)):
        probe = subprocess.run([python, "-c", f"import {name}"], cwd=tmp_path, env=env,
                               capture_output=True, text=True)
        assert (probe.returncode != 0) == fails, (name, probe.stderr[-500:])


def test_ci_runs_the_readme_s_test_command_as_written():
    block = re.findall(r"^```sh\n(.*?)^```", (REPO / "README.md").read_text(), re.S | re.M)[0]
    command = block.splitlines()[0]
    assert "pytest" in command
    assert command in (REPO / ".ci" / "run").read_text().splitlines()
