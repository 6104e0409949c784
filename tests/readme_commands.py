"""README's `bash` blocks as a newcomer runs them: in a fresh copy of the working tree, with
a fresh venv, in order, as one bash script (`set -e`: each command must exit 0), as written
but for the main job's training, shortened to `--epochs 1 --limit 40`. `sh` blocks are not run
(they run this test suite). The data is `$EDGECONV_DATA`, which the README's command reads;
pip installs from its cache. A background job (conftest.background): it is mostly pip."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from concurrent.futures import Future
from pathlib import Path

import pytest
from conftest import REPO

TRAINING = "--recipe augmented --out runs/augmented"
SHORT = f"{TRAINING} --epochs 1 --limit 40"


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)


def newcomer_env(data: Path) -> dict[str, str]:
    """This environment without this suite's venv, and with the photos where README reads
    them."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep)
                                  if not p.endswith(("/.venv/bin", "/venv/bin")))
    env["EDGECONV_DATA"] = str(data)
    return env


def copy_working_tree(clone: Path) -> None:
    """The files git would commit now (tracked, and new ones not ignored), as a clone has them."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, clone / name)


def run_blocks(clone: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    script = "\n".join(bash_blocks((clone / "README.md").read_text())).replace(TRAINING, SHORT)
    return subprocess.run(["bash", "-e", "-x", "-c", script], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=3600)  # at nice 15


@pytest.fixture(scope="session")
def readme_run(background, real_data, tmp_path_factory) -> tuple[Path, Future]:
    """(the fresh clone, the future of README's commands run in it)."""
    clone = tmp_path_factory.mktemp("readme") / "edgeconv"
    copy_working_tree(clone)  # now: the tree as the session found it
    return clone, background.submit(run_blocks, clone, newcomer_env(real_data))
