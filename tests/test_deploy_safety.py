"""deploy.py against a real OpenSSH server, as an attacker and a careless admin would use it:
hostile names run nothing on the device, and a code update that cannot finish leaves the old
code running."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import sshd
from conftest import run_script
from test_devices import CuttingRelay

USER = "edgeconv-deploy"
pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    with sshd.ssh_device(USER) as device:
        known_hosts = tmp_path_factory.mktemp("ssh") / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{device.port} {' '.join(device.host_key)}\n")
        yield device, known_hosts


def deploy(device, known_hosts: Path, model: Path, *extra, port: int | None = None):
    return run_script("devices/deploy.py", "--host", f"{USER}@127.0.0.1", "--port",
                      port or device.port, "--identity", device.identity, "--known-hosts",
                      known_hosts, "--model", model, "--no-rsync", *extra, timeout=1200)


def injected(device) -> list[str]:
    return sorted(str(p.relative_to(device.home)) for p in device.home.rglob("INJECTED*"))


def test_a_model_name_holding_shell_syntax_runs_nothing_on_the_device(device, shipped,
                                                                     tmp_path):
    device, known_hosts = device
    hostile = tmp_path / "plus_int8.tflite$(id>INJECTED)"
    shutil.copy(shipped / "plus_int8.tflite", hostile)
    result = deploy(device, known_hosts, hostile, "--profile", "linux-x86_64")
    print(f"\nthe hostile model name printed: {result.stderr.strip()}")
    assert injected(device) == []
    assert result.returncode == 2 and "a model is a .tflite or .onnx file" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_remote_dir_holding_shell_syntax_is_only_a_folder_name(device, shipped):
    device, known_hosts = device
    remote_dir = "edge conv;$(id>INJECTED2)`id>INJECTED3`&& x"
    # An unknown profile stops install.sh early: the code is copied by then, the model refused.
    result = deploy(device, known_hosts, shipped / "plus_int8.tflite", "--profile",
                    "no-such-profile", "--remote-dir", remote_dir)
    print(f"\nthe hostile --remote-dir printed: {result.stderr.strip()}")
    assert injected(device) == []
    assert result.returncode == 1 and "unknown profile 'no-such-profile'" in result.stdout
    folder = device.home / remote_dir
    assert (folder / "runtime" / "classify").is_file() and (folder / "devices").is_dir()
    assert list((folder / "models").iterdir()) == []  # install failed: the model never went live
    assert "the device keeps its previous model" in result.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["devices", "models", "runtime"]


def root_owned_bytecode(folder: Path) -> None:
    """What one `sudo runtime/classify` leaves: a root-owned __pycache__ the user cannot empty."""
    cache = folder / "runtime" / "__pycache__"
    cache.mkdir(exist_ok=True)
    os.chown(cache, 0, 0)
    os.chmod(cache, 0o755)
    (cache / "x.pyc").write_bytes(b"root's bytecode")


def check_code_works(device, folder: Path) -> None:
    """The device's own venv runs the device's classify on the self-test photo, as the user."""
    result = subprocess.run(["su", USER, "-c", f"cd {folder} && .venv/bin/python "
                             "runtime/classify models/current.tflite devices/selftest/cat.jpg"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and " cats " in result.stdout, result.stderr


def test_a_code_update_that_cannot_finish_leaves_the_old_code_running(device, shipped,
                                                                      tmp_path):
    device, known_hosts = device
    model = shipped / "plus_int8.tflite"
    folder = device.home / "edgeconv"
    first = deploy(device, known_hosts, model, "--profile", "linux-x86_64")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    root_owned_bytecode(folder)

    second = deploy(device, known_hosts, model, "--profile", "linux-x86_64")
    print(f"\nwith a root-owned runtime/__pycache__ the deploy printed: "
          f"{second.stderr.strip()[-600:]}")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "self-test passed: cats" in second.stdout
    assert "could not remove all of" in second.stderr  # reported, never fatal
    check_code_works(device, folder)
    assert not (folder / "runtime" / "__pycache__" / "x.pyc").exists()  # a fresh tree
    assert not [p for p in folder.iterdir() if p.name.startswith(".incoming-code")]
    old_trees = [p for p in folder.iterdir() if p.name.startswith(".old-")]
    assert [p.name.split(".")[1] for p in old_trees] == ["old-runtime"]
    left = {p.relative_to(old_trees[0]).parts[0] for p in old_trees[0].rglob("*")}
    assert left == {"__pycache__"}  # all the user could remove of the old tree is gone
    shutil.rmtree(old_trees[0])  # what `sudo rm -rf` of the reported leftover does

    # The link drops in the middle of the code upload: the old code keeps running, untouched.
    before = {p: p.read_bytes() for p in (folder / "runtime").rglob("*.py")}
    relay = CuttingRelay(device.port, limit=16_000)  # past ssh's handshake, inside the code
    relay_hosts = tmp_path / "known_hosts"
    relay_hosts.write_text(f"[127.0.0.1]:{relay.port} {' '.join(device.host_key)}\n")
    cut = deploy(device, relay_hosts, model, "--profile", "linux-x86_64", port=relay.port)
    relay.listener.close()
    print(f"the deploy cut during the code upload printed: {cut.stderr.strip()[-300:]}")
    assert relay.cuts >= 1 and cut.returncode == 1, cut.stdout + cut.stderr
    assert "copying the code failed" in cut.stderr and "Traceback" not in cut.stderr
    assert {p: p.read_bytes() for p in (folder / "runtime").rglob("*.py")} == before
    check_code_works(device, folder)

    again = deploy(device, known_hosts, model, "--profile", "linux-x86_64")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".")]
    assert leftovers == [".venv"], leftovers
