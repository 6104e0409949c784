"""One front door: `edgeconv COMMAND [ARGS]` runs the project's script for COMMAND.

Each command is the same program as its script (same flags, same exit codes): `edgeconv
classify ...` is `runtime/classify ...`, `edgeconv train ...` is `python train/run.py ...`.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import runpy
import shutil
import sys
from pathlib import Path

# command -> the module it runs (a file of runtime/ for the two device scripts without .py)
COMMANDS = {
    "classify": "edgeconv.runtime:classify",
    "serve": "edgeconv.runtime:serve",
    "prepare": "edgeconv.train.prepare_data",
    "train": "edgeconv.train.run",
    "evaluate": "edgeconv.train.evaluate",
    "export": "edgeconv.export.all",
    "tflite": "edgeconv.export.to_tflite",
    "onnx": "edgeconv.export.to_onnx",
    "parity": "edgeconv.export.parity",
    "layers": "edgeconv.export.layers",
    "benchmark": "edgeconv.benchmarks.formats",
    "ship": "edgeconv.export.ship",
    "reproduce": "edgeconv.export.reproduce",
    "benchmark-train": "edgeconv.benchmarks.train",
    "benchmark-memory": "edgeconv.benchmarks.memory",
    "benchmark-photos": "edgeconv.benchmarks.photos",
    "benchmark-serve": "edgeconv.benchmarks.serve",
    "benchmark-field": "edgeconv.benchmarks.field",
    "deploy": "edgeconv.devices.deploy",
    "fleet": "ansible-playbook:fleet/rollout.yml",
}


def source(target: str) -> Path:
    """The file a command runs, found without importing it (no TensorFlow for --help)."""
    if target.startswith("ansible-playbook:"):
        spec = importlib.util.find_spec("edgeconv.devices")
        return Path(spec.submodule_search_locations[0]) / target.split(":", 1)[1]
    if ":" in target:
        package, name = target.split(":")
        spec = importlib.util.find_spec(package)
        return Path(spec.submodule_search_locations[0]) / name
    return Path(importlib.util.find_spec(target).origin)


def summary(target: str) -> str:
    """The first line of the command's docstring (or of the playbook's header comment)."""
    path = source(target)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".yml":
        return text.splitlines()[0].lstrip("# ")
    doc = ast.get_docstring(ast.parse(text)) or ""
    first = " ".join(doc.split("\n\n")[0].split()).split(". ")[0].rstrip(".")
    return first if len(first) <= 90 else first[:first.rfind(" ", 0, 87)] + " ..."


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {summary(target)}" for name, target in COMMANDS.items()]
    return ("usage: edgeconv COMMAND [ARGS]   (edgeconv COMMAND --help for its options)\n\n"
            "commands:\n" + "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    name, args = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    target = COMMANDS[name]
    if target.startswith("ansible-playbook:"):
        if shutil.which("ansible-playbook") is None:
            print("error: ansible-playbook not found (pip install -e '.[fleet]')",
                  file=sys.stderr)
            return 2
        os.execvp("ansible-playbook", ["ansible-playbook", str(source(target)), *args])
    sys.argv = [f"edgeconv {name}", *args]  # the script's sys.exit stands
    # The script's --help names the command typed, not its file (runtime/text.command_name).
    typed = {"EDGECONV_COMMAND": f"edgeconv {name}"}
    if ":" in target:
        runpy.run_path(str(source(target)), init_globals=typed, run_name="__main__")
    else:
        runpy.run_module(target, init_globals=typed, run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
