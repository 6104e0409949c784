"""Give a device's venv the import name `edgeconv` for a copied code tree, without pip.

  VENV/bin/python -I devices/link_package.py ROOT

A device gets runtime/ and devices/ (no pip install of edgeconv): this writes
VENV's site-packages/edgeconv/ holding an __init__.py and two links, runtime -> ROOT/runtime and
devices -> ROOT/devices, so `from edgeconv.runtime.classifier import Classifier` works there
as it does in a clone. The links name the folders, not what is in them: the code swap that
renames a new runtime/ into place (swap_code.sh) and its rollback need no new links. Standard
library only; safe to re-run.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

FOLDERS = ("runtime", "devices")
INIT = '"""edgeconv on a device: runtime/ and devices/ of {root} (devices/link_package.py)."""\n'


def link_package(root: Path, site: Path) -> Path:
    package = site / "edgeconv"
    package.mkdir(parents=True, exist_ok=True)
    init = package / "__init__.py"
    partial = package / ".__init__.py.partial"
    partial.write_text(INIT.format(root=root))
    os.replace(partial, init)
    for folder in FOLDERS:
        link, partial_link = package / folder, package / f".{folder}.partial"
        partial_link.unlink(missing_ok=True)
        partial_link.symlink_to(root / folder, target_is_directory=True)
        os.replace(partial_link, link)  # a link replaced atomically, never missing
    return package


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: VENV/bin/python -I devices/link_package.py ROOT")
    link_package(Path(sys.argv[1]).resolve(), Path(sysconfig.get_paths()["purelib"]))
