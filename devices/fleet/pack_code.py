#!/usr/bin/env python3
"""Pack runtime/ and devices/ into one tar whose bytes depend only on what the files hold.

  python devices/fleet/pack_code.py REPO OUT.tar

Same code, same bytes, whatever the clone, the file times or the umask: the fleet playbook
copies the tar by checksum, so unchanged code is neither sent nor unpacked again.
"""

from __future__ import annotations

import os
import sys
import tarfile
from pathlib import Path

FOLDERS = ("runtime", "devices")


def code_files(repo: Path) -> list[Path]:
    found = []
    for folder in FOLDERS:
        for path in (repo / folder).rglob("*"):
            if "__pycache__" not in path.parts and path.is_file():
                found.append(path.relative_to(repo))
    return sorted(found)


def normalized(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # A fixed time is safe on the device: the playbook replaces runtime/ and devices/ whole,
    # stale bytecode included, so Python never compares these times with an old .pyc.
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o755 if info.mode & 0o100 or info.isdir() else 0o644
    return info


def pack(repo: Path, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    with tarfile.open(partial, "w", format=tarfile.USTAR_FORMAT) as tar:
        for path in code_files(repo):
            tar.add(repo / path, arcname=str(path), recursive=False, filter=normalized)
    os.replace(partial, out)  # a rollout running at the same time never reads half a file


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python devices/fleet/pack_code.py REPO OUT.tar")
    pack(Path(sys.argv[1]).resolve(), Path(sys.argv[2]))
