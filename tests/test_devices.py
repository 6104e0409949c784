"""devices/: profiles, install.sh in a clean folder, the systemd unit, deploy over real SSH."""

import hashlib
import platform
import shutil
import subprocess
from pathlib import Path

import pytest
import sshd
from conftest import REPO, free_port, run_script

from runtime.classifier import Classifier
from runtime.metadata import read_metadata
from runtime.profiles import available, detect, load_profile

PHOTO = REPO / "devices" / "selftest" / "cat.jpg"
USER = "edgeconv-deploy"


def test_every_profile_names_an_engine_threads_camera_and_packages():
    assert set(available()) == {"raspberry-pi-5", "raspberry-pi-4", "raspberry-pi-32bit",
                                "linux-x86_64"}
    for name in available():
        profile = load_profile(name)
        assert profile["engine"] in ("litert", "tflite-runtime")
        assert {"threads", "camera", "width", "height", "every", "pip"} <= set(profile)
    assert "numpy<2" in load_profile("raspberry-pi-32bit")["pip"]
    here = load_profile("auto")  # the profile for this machine's architecture
    assert here["name"] == detect() and platform.machine() in here["arch"]


def test_classify_applies_a_profile_and_flags_override_it(shipped):
    model = shipped / "plus_int8.tflite"
    result = run_script("runtime/classify", model, PHOTO, "--profile", "raspberry-pi-32bit",
                        "--engine", "litert", "--threads", "1")
    assert result.returncode == 0, result.stderr
    assert "(litert, 1 threads)" in result.stdout


def clean_copy(tmp_path: Path) -> Path:
    """runtime/ and devices/ alone, as deploy puts them on a device."""
    root = tmp_path / "device"
    for folder in ("runtime", "devices"):
        shutil.copytree(REPO / folder, root / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return root


@pytest.mark.system
def test_install_sh_in_a_clean_folder_then_again(exported, tmp_path):
    root = clean_copy(tmp_path)
    model = exported / "model_int8.tflite"
    expect = Classifier(model).predict(PHOTO).label
    command = ["bash", str(root / "devices" / "install.sh"), "--profile", "linux-x86_64",
               "--model", str(model), "--expect", expect, "--no-apt"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"self-test passed: {expect}" in first.stdout
    venv_python = root / ".venv" / "bin" / "python"
    no_tf = subprocess.run([str(venv_python), "-c", "import tensorflow"], capture_output=True)
    assert no_tf.returncode != 0
    again = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "(reused)" in again.stdout
    wrong = "dogs" if expect == "cats" else "cats"
    failed = subprocess.run(command[:-3] + ["--expect", wrong, "--no-apt"],
                            capture_output=True, text=True, timeout=900)
    assert failed.returncode == 1 and "self-test failed" in failed.stderr

    unit = tmp_path / "edgeconv-camera.service"
    render = subprocess.run(command + ["--render-unit", str(unit)], capture_output=True,
                            text=True, timeout=900)
    assert render.returncode == 0, render.stderr
    text = unit.read_text()
    assert "@ROOT@" not in text and "@MODEL@" not in text and "@USER@" not in text
    assert f"ExecStart={root}/.venv/bin/python {root}/runtime/classify {model}" in text
    assert "Restart=on-failure" in text and "User=" in text
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True)
    assert verify.returncode == 0, verify.stderr

    serve_unit = tmp_path / "edgeconv-serve.service"
    render = subprocess.run(command + ["--service", "serve", "--listen", "0.0.0.0:8081",
                                       "--render-unit", str(serve_unit)],
                            capture_output=True, text=True, timeout=900)
    assert render.returncode == 0, render.stderr
    text = serve_unit.read_text()
    assert f"{root}/runtime/serve {model} --profile linux-x86_64 --camera --host 0.0.0.0 " \
        "--port 8081" in text and "@" not in text.split("[Unit]")[1]
    verify = subprocess.run(["systemd-analyze", "verify", str(serve_unit)],
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr


@pytest.fixture(scope="module")
def ssh_device(tmp_path_factory):
    """A real OpenSSH server on 127.0.0.1 with a throwaway host key, user and client key."""
    with sshd.ssh_device(USER) as device:
        yield {"port": device.port, "identity": device.identity, "home": device.home,
               "host_key": list(device.host_key),
               "known_hosts": tmp_path_factory.mktemp("ssh") / "known_hosts"}


def deploy(device, model, *extra):
    return run_script("devices/deploy.py", "--host", f"{USER}@127.0.0.1", "--port",
                      device["port"], "--identity", device["identity"], "--known-hosts",
                      device["known_hosts"], "--model", model, "--profile", "linux-x86_64",
                      *extra, timeout=1200)


@pytest.mark.system
def test_deploy_over_ssh_checks_host_keys_then_installs_and_replaces_the_model(ssh_device,
                                                                               exported):
    first_model = exported / "model_int8.tflite"
    refused = deploy(ssh_device, first_model)  # an unknown host key is not trusted silently
    assert refused.returncode == 1
    assert "Host key verification failed" in refused.stderr

    first = deploy(ssh_device, first_model, "--accept-new-host-key")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    expect = Classifier(first_model).predict(PHOTO).label
    assert f"self-test passed: {expect}" in first.stdout
    known = ssh_device["known_hosts"].read_text()
    assert ssh_device["host_key"][1] in known
    remote_model = ssh_device["home"] / "edgeconv" / "models" / "current.tflite"
    assert remote_model.read_bytes() == first_model.read_bytes()

    second_model = exported / "model_float16.tflite"
    second = deploy(ssh_device, second_model, "--no-rsync")  # key now known; tar transport
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "(reused)" in second.stdout
    digest = hashlib.sha256(remote_model.read_bytes()).hexdigest()
    assert digest == hashlib.sha256(second_model.read_bytes()).hexdigest()
    leftovers = [p.name for p in remote_model.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    assert read_metadata(remote_model)["quantization"] == "float16"


def test_deploy_to_a_closed_port_fails_with_a_clear_message(exported, tmp_path):
    result = run_script("devices/deploy.py", "--host", f"{USER}@127.0.0.1", "--port",
                        free_port(), "--model", exported / "model_int8.tflite",
                        "--known-hosts", tmp_path / "kh", "--timeout", "5")
    assert result.returncode == 1
    assert "connecting failed" in result.stderr and "Connection refused" in result.stderr
    assert "Traceback" not in result.stderr
