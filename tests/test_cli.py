"""The edgeconv command: one front door to the scripts, the same programs with the same exits."""

import subprocess
import sys

from conftest import MODELS, REPO

from edgeconv.cli import COMMANDS, summary


def edgeconv(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeconv.cli", *args], cwd=REPO.parent,
                          capture_output=True, text=True, timeout=300)


def test_help_lists_every_command_with_one_line():
    result = edgeconv("--help")
    assert result.returncode == 0
    for name in COMMANDS:
        assert f"  {name} " in result.stdout, name
        assert summary(COMMANDS[name]), name
    assert "Label images, folders or a live camera" in result.stdout


def test_classify_is_runtime_classify():
    photo = REPO / "devices" / "selftest" / "cat.jpg"
    result = edgeconv("classify", str(MODELS / "plus_int8.tflite"), str(photo), "--json")
    script = subprocess.run([sys.executable, str(REPO / "runtime" / "classify"),
                             str(MODELS / "plus_int8.tflite"), str(photo), "--json"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == script.returncode == 0
    assert '"label": "cats"' in result.stdout
    strip = lambda out: out.split('"ms"')[0]  # noqa: E731  timings differ
    assert strip(result.stdout) == strip(script.stdout)


def test_exit_codes_pass_through():
    assert edgeconv("classify", "missing.tflite", "x.jpg").returncode == 2
    assert edgeconv("serve", str(MODELS / "plus_int8.tflite"), "--every", "0").returncode == 2
    unknown = edgeconv("nope")
    assert unknown.returncode == 2 and "unknown command 'nope'" in unknown.stderr


def test_each_command_s_help_names_the_command_typed():
    """`edgeconv train --help` shows `edgeconv train`, never the file it runs; the script run
    by its path keeps its own name."""
    for name in ("train", "tflite", "classify", "benchmark-photos", "deploy"):
        result = edgeconv(name, "--help")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"usage: edgeconv {name} "), result.stdout[:200]
        assert "python " not in result.stdout and ".py" not in result.stdout.split("\n")[0]
    script = subprocess.run([sys.executable, str(REPO / "train" / "run.py"), "--help"],
                            capture_output=True, text=True, timeout=300)
    assert script.stdout.startswith("usage: train/run.py ")
    assert "Example: python train/run.py " in " ".join(script.stdout.split())
