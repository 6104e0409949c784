"""Raspberry Pi OS Bookworm, emulated (devices/emulate.sh): arm64 and 32-bit armhf.

Inside each: install.sh for the Pi's profile, then classify 200 test photos with every engine
the profile offers (a float32 model on 20); labels must equal x86's, int8 scores within one
output step, float32 within 1e-5. Then deploy.py from x86 into an OpenSSH server running in
the arm64 userland. A failure's first line names the architecture and the step.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, free_port, run_script

pytestmark = pytest.mark.system

EMULATE = REPO / "devices" / "emulate.sh"
PROFILES = {"arm64": "raspberry-pi-4", "armhf": "raspberry-pi-32bit"}
PHOTOS_PER_CLASS = 100
FLOAT_PHOTOS_PER_CLASS = 10  # float32 convolutions are slow to emulate (minutes per 100)
FLOAT_TOLERANCE = 1e-5
GUEST_CLONE = "/root/edgeconv"  # where a Pi user would have cloned the repository


def pi_cache() -> Path:
    """Outside the test's private cache: root filesystems are worth keeping between runs."""
    return Path(os.environ.get("EDGECONV_PI_CACHE", Path.home() / ".cache" / "edgeconv" / "pi"))


def step_failed(arch: str, step: str, result: subprocess.CompletedProcess) -> None:
    output = (result.stdout or "") + (result.stderr or "")
    last = next((line for line in reversed(output.splitlines()) if line.strip()), "no output")
    pytest.fail(f"emulated {arch}: {step} failed (exit {result.returncode}): {last}\n"
                f"{output[-3000:]}", pytrace=False)


@dataclass
class EmulatedPi:
    arch: str
    root: Path

    @property
    def profile(self) -> dict:
        return json.loads((self.root / GUEST_CLONE[1:] / "devices" / PROFILES[self.arch] /
                           "profile.json").read_text())

    def emulate(self, step: str, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
        started = time.monotonic()
        result = subprocess.run(["bash", str(EMULATE), *args], capture_output=True, text=True,
                                timeout=timeout, env={**os.environ,
                                                      "EDGECONV_PI_CACHE": str(pi_cache())})
        if result.returncode != 0:
            step_failed(self.arch, step, result)
        print(f"emulated {self.arch}: {step}: {time.monotonic() - started:.0f} s", flush=True)
        return result

    def run(self, step: str, command: str, timeout: float = 1800) -> str:
        """`command` in the guest, from the clone; its stdout."""
        return self.emulate(step, "run", self.arch, f"cd {GUEST_CLONE} && {command}",
                            timeout=timeout).stdout


@pytest.fixture(scope="module", params=sorted(PROFILES))
def pi(request, real_data) -> EmulatedPi:
    """A clean Bookworm root filesystem holding a clone's runtime/, devices/, models/ and
    200 test photos."""
    arch = request.param
    for tool in ("debootstrap", f"qemu-{'aarch64' if arch == 'arm64' else 'arm'}-static"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} missing (.ci/run installs debootstrap and qemu-user-static)")
    if os.geteuid() != 0:
        pytest.fail("the emulated Pi needs root (chroot, mounts)")
    pi = EmulatedPi(arch, Path())
    pi.emulate("clean", "clean", arch)
    pi.emulate("build (debootstrap, or unpack the cache)", "build", arch, timeout=3600)
    pi.root = Path(pi.emulate("path", "path", arch).stdout.strip())
    clone = pi.root / GUEST_CLONE[1:]
    for folder in ("runtime", "devices", "models"):
        shutil.copytree(REPO / folder, clone / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.keras"))
    for name in ("cats", "dogs"):
        photos = sorted((real_data / "test" / name).iterdir())
        for folder, count in (("photos", PHOTOS_PER_CLASS), ("few", FLOAT_PHOTOS_PER_CLASS)):
            (clone / folder / name).mkdir(parents=True)
            for photo in photos[:count]:
                shutil.copy(photo, clone / folder / name / photo.name)
    return pi


def int8_tolerance(model: Path) -> float:
    """One quantization step of the model's output. TFLite's int8 sigmoid maps int8 to int8,
    so that is the output's scale; ONNX Runtime runs the sigmoid in float between the logit's
    and the output's int8 tensors, so one step of the logit (at most a quarter of it through
    the sigmoid) adds to the output's step."""
    if model.suffix == ".tflite":
        from runtime.engines import open_engine

        return open_engine(model).output["quantization"][0] + 1e-6
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(model)).graph
    scales = {item.name: numpy_helper.to_array(item).max() for item in graph.initializer}
    sigmoid = next(node for node in graph.node if node.op_type == "Sigmoid")
    logit = next(node for node in graph.node if node.output[0] == sigmoid.input[0])
    output = next(node for node in reversed(graph.node) if node.op_type == "DequantizeLinear")
    return float(scales[logit.input[1]] / 4 + scales[output.input[1]]) + 1e-6


def classify_rows(output: str) -> dict[str, dict]:
    """classify --json lines, keyed by the photo's class folder and name."""
    rows = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return {"/".join(Path(row["path"]).parts[-2:]): row for row in rows}


def compare(arch: str, engine: str, model: str, guest: dict, host: dict,
            tolerance: float) -> float:
    """The largest score difference; fails on any label or photo that differs."""
    assert len(guest) >= 2 * FLOAT_PHOTOS_PER_CLASS
    assert guest.keys() == host.keys(), f"emulated {arch}, {engine}, {model}: photos differ"
    errors = [name for name, row in guest.items() if "error" in row]
    assert not errors, f"emulated {arch}, {engine}, {model}: errors on {errors[:3]}"
    flips = [name for name in guest if guest[name]["label"] != host[name]["label"]]
    assert not flips, f"emulated {arch}, {engine}, {model}: labels differ from x86 on {flips}"
    worst = max(abs(guest[name]["score"] - host[name]["score"]) for name in guest)
    assert worst <= tolerance, (f"emulated {arch}, {engine}, {model}: scores differ from x86 "
                                f"by up to {worst:.6f} (> {tolerance:.6f})")
    return worst


def test_install_then_classify_like_x86_with_every_engine(pi, exported, tmp_path):
    clone = pi.root / GUEST_CLONE[1:]
    shutil.copy(exported / "model_float32.tflite", clone / "models" / "test_float32.tflite")
    shutil.copy(exported / "model_float.onnx", clone / "models" / "test_float32.onnx")
    profile = pi.profile
    cases = [("litert" if engine == "onnxruntime" else engine, engine)
             for engine in profile["engines"]]
    worst = {}
    for _, engine in cases:
        suffix = ".onnx" if engine == "onnxruntime" else ".tflite"
        shipped = f"models/plus_int8{suffix}"
        installed = pi.run(f"install.sh --profile {profile['name']} --model {shipped}",
                           f"bash devices/install.sh --profile {profile['name']} --model "
                           f"{shipped} --expect cats --no-apt")
        assert "self-test passed: cats" in installed
        for model, photos, tolerance in (
                (shipped, "photos", int8_tolerance(clone / shipped)),
                (f"models/test_float32{suffix}", "few", FLOAT_TOLERANCE)):
            command = f"runtime/classify {model} {photos} --engine {engine} --json"
            guest = classify_rows(pi.run(f"classify {model} with {engine}",
                                         f".venv/bin/python {command}"))
            host_engine = "litert" if engine == "tflite-runtime" else engine
            host = run_script("runtime/classify", clone / model, clone / photos, "--engine",
                              host_engine, "--json")
            assert host.returncode == 0, host.stderr
            worst[f"{engine} {model}"] = compare(pi.arch, engine, model, guest,
                                                 classify_rows(host.stdout), tolerance)
    versions = pi.run("pip list", ".venv/bin/python -m pip list --format=freeze")
    print(f"\nemulated {pi.arch}: largest score difference from x86: {worst}\n"
          + " ".join(line for line in versions.split() if line.split("==")[0].lower() in
                     ("numpy", "pillow", "ai-edge-litert", "tflite-runtime", "onnxruntime")))


@pytest.fixture
def guest_sshd(pi, tmp_path):
    """OpenSSH inside the emulated Pi, on a loopback port, for a user `pi` with a throwaway
    client key; its host key is written to a known_hosts file (host-key checking stays on)."""
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / key)],
                       check=True)
    pi.run("add the user pi", "id pi >/dev/null 2>&1 || useradd --create-home --shell "
           "/bin/bash pi; usermod --password '*' pi; rm -rf /home/pi/edgeconv")
    ssh_dir = pi.root / "home" / "pi" / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text((tmp_path / "client_key.pub").read_text())
    pi.run("own pi's keys", "chown -R pi:pi /home/pi/.ssh && chmod 600 "
           "/home/pi/.ssh/authorized_keys")
    shutil.copy(tmp_path / "host_key", pi.root / "etc" / "ssh" / "edgeconv_test_host_key")
    port = free_port()
    # A login shell gets a clean environment: the emulator's CPU model and the proxy's CA
    # bundle must reach it through sshd.
    (pi.root / "etc" / "ssh" / "sshd_edgeconv_test").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey /etc/ssh/edgeconv_test_host_key\n"
        "PidFile /run/sshd-edgeconv-test.pid\nUsePAM no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin no\nAllowUsers pi\n"
        "SetEnv QEMU_CPU=cortex-a72 PIP_CERT=/etc/ssl/certs/ca-certificates.crt "
        "PIP_DEFAULT_TIMEOUT=180 PIP_DISABLE_PIP_VERSION_CHECK=1\n")
    log = tmp_path / "sshd.log"
    with log.open("w") as sshd_log:
        server = subprocess.Popen(
            ["bash", str(EMULATE), "run", "arm64", "mkdir -p /run/sshd && "
             "/usr/sbin/sshd -D -e -f /etc/ssh/sshd_edgeconv_test"],
            env={**os.environ, "EDGECONV_PI_CACHE": str(pi_cache())}, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=sshd_log)
    try:
        wait_for_port(port, server, log)
        host_key = " ".join((tmp_path / "host_key.pub").read_text().split()[:2])
        (tmp_path / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key}\n")
        yield {"port": port, "identity": tmp_path / "client_key",
               "known_hosts": tmp_path / "known_hosts", "home": pi.root / "home" / "pi"}
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # sshd, then emulate.sh unmounts the guest
        server.wait(timeout=30)


def wait_for_port(port: int, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and server.poll() is None:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    pytest.fail(f"emulated arm64: sshd did not start: {log.read_text()[-2000:]}", pytrace=False)


def deploy(sshd: dict, model: Path) -> subprocess.CompletedProcess:
    return run_script("devices/deploy.py", "--host", "pi@127.0.0.1", "--port", sshd["port"],
                      "--identity", sshd["identity"], "--known-hosts", sshd["known_hosts"],
                      "--model", model, "--profile", "raspberry-pi-4", "--timeout", "30",
                      timeout=1800)


@pytest.mark.parametrize("pi", ["arm64"], indirect=True)
def test_deploy_over_ssh_into_the_emulated_arm64_pi_then_swap_the_model(pi, guest_sshd,
                                                                        shipped):
    remote_model = guest_sshd["home"] / "edgeconv" / "models" / "current.tflite"
    for model in (shipped / "plus_int8.tflite", shipped / "augmented_int8.tflite"):
        result = deploy(guest_sshd, model)
        if result.returncode != 0:
            step_failed("arm64", f"deploy.py {model.name}", result)
        assert "self-test passed: cats (expected cats)" in result.stdout
        assert remote_model.read_bytes() == model.read_bytes()
    assert "(reused)" in result.stdout  # the second deploy kept the device's environment
