"""The stages import only downhill: runtime <- train <- export; devices <- runtime."""

import ast
from pathlib import Path

from conftest import REPO

ALLOWED = {
    "runtime": {"runtime"},
    "train": {"runtime", "train"},
    "export": {"runtime", "train", "export"},
    "devices": {"runtime", "devices"},
    "benchmarks": {"runtime", "train", "export", "devices", "benchmarks"},
}


def imported_stages(path: Path) -> set[str]:
    """The top-level project folders a file imports from (anywhere in it, lazily included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        found.update(name.removeprefix("edgeconv.").split(".")[0] for name in names
                     if name.startswith("edgeconv."))
    return found & set(ALLOWED)


def test_no_stage_imports_a_later_one():
    offences = []
    for stage, allowed in ALLOWED.items():
        files = [*(REPO / stage).rglob("*.py"), *((REPO / stage / "classify",)
                                                  if stage == "runtime" else ())]
        assert files, stage
        for path in files:
            wrong = imported_stages(path) - allowed
            if wrong:
                offences.append(f"{path.relative_to(REPO)} imports {sorted(wrong)}")
    assert offences == []


def test_runtime_never_imports_tensorflow_or_keras():
    for path in [*(REPO / "runtime").rglob("*.py"), REPO / "runtime" / "classify"]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [
                    node.module or ""]
                assert not any(n.split(".")[0] in ("tensorflow", "keras") for n in names), path


def test_the_check_sees_a_backward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from edgeconv.export.parity import check\n")
    assert imported_stages(bad) == {"export"}
