"""The README and docs/ as a newcomer uses them: every link resolves, every command runs.

The command test copies the working tree to a fresh folder and runs README's `bash` blocks
there, in order, as one bash script (`set -e`, so each command must exit 0), as written: the
only change is the main job's training, shortened to `--epochs 1 --limit 40`. `sh` blocks
are not run (they run this test suite). The data is `$EDGECONV_DATA`, which the README's
command reads; pip installs from its cache, so the venv costs what the cache allows.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "models" / "README.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")
TRAINING = "--recipe augmented --out runs/augmented"
SHORT = f"{TRAINING} --epochs 1 --limit 40"


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


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_commands_are_shortened_only_in_training():
    script = "\n".join(bash_blocks((REPO / "README.md").read_text()))
    assert script.count(TRAINING) == 1  # the one substitution the command test makes
    assert "edgeconv classify" in script


@pytest.mark.slow
def test_every_readme_command_runs_in_a_fresh_venv(real_data, tmp_path):
    clone = tmp_path / "edgeconv"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, clone / name)
    script = "\n".join(bash_blocks((REPO / "README.md").read_text())).replace(TRAINING, SHORT)
    env = {key: value for key, value in os.environ.items()
           if key not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep)
                                  if not p.endswith(("/.venv/bin", "/venv/bin")))
    env["EDGECONV_DATA"] = str(real_data)
    result = subprocess.run(["bash", "-e", "-x", "-c", script], cwd=clone, env=env,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "cats" in result.stdout
    # The installed import name is edgeconv, and only it: train/, export/... clash with nothing.
    python = str(clone / ".venv" / "bin" / "python")
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
