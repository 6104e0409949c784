"""The stages import only downhill: runtime <- train <- export; devices <- runtime; the
bottom floor, common, serves train, export and benchmarks, never runtime or devices."""

import ast
from pathlib import Path

from conftest import REPO

ALLOWED = {
    "common": {"common"},  # the bottom floor: train, export and benchmarks stand on it
    "runtime": {"runtime"},  # a device gets runtime/ and devices/ only: never common
    "train": {"common", "runtime", "train"},
    "export": {"common", "runtime", "train", "export"},
    "devices": {"runtime", "devices"},
    "benchmarks": {"common", "runtime", "train", "export", "benchmarks"},
    "edgeconv": {"edgeconv"},  # the front door runs the others by name, never imports them
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


SCRIPTS = [REPO / "runtime" / "classify", REPO / "runtime" / "serve"]  # Python without .py


def stage_files(stage: str) -> list[Path]:
    return [*(REPO / stage).rglob("*.py"), *(p for p in SCRIPTS if p.parent.name == stage)]


def test_no_stage_imports_a_later_one():
    offences = []
    for stage, allowed in ALLOWED.items():
        files = stage_files(stage)
        assert files, stage
        for path in files:
            wrong = imported_stages(path) - allowed
            if wrong:
                offences.append(f"{path.relative_to(REPO)} imports {sorted(wrong)}")
    assert offences == []


def test_runtime_never_imports_tensorflow_or_keras():
    for path in stage_files("runtime"):
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


def test_the_device_scripts_are_checked():
    assert set(SCRIPTS) <= set(stage_files("runtime"))
    for script in SCRIPTS:
        assert "runtime" in imported_stages(script), script


def test_one_import_name_is_installed():
    """pyproject.toml maps each stage folder under edgeconv: no top-level train, export..."""
    import tomllib

    setup = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert {name.split(".")[0] for name in setup["packages"]} == {"edgeconv"}
    assert set(setup["package-dir"].values()) == set(ALLOWED) - {"edgeconv"}
