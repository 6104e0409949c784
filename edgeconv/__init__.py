"""edgeconv: train a small convnet, export it to TFLite and ONNX, run it on the edge.

One import name for the project's folders, which stay where they are: edgeconv.runtime is
runtime/, edgeconv.train train/, edgeconv.export export/, edgeconv.devices devices/
(pyproject.toml maps them for pip; a device's venv gets them from devices/link_package.py).
The `edgeconv` command is edgeconv.cli.
"""

from pathlib import Path as _Path

# In a clone, the stages are this folder's siblings: found here first, so a checkout on
# PYTHONPATH (or the current folder) runs its own code, never another checkout's install.
_CLONE = _Path(__file__).resolve().parents[1]
if (_CLONE / "runtime" / "classifier.py").is_file():
    __path__.append(str(_CLONE))  # noqa: F821  (a package's __path__)
