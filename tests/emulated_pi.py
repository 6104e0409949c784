"""The emulated Raspberry Pis' jobs (devices/emulate.sh): arm64 and 32-bit armhf.

Each arch's job: install.sh for the Pi's profile (on arm64 with no --profile: detected by a
system Python without Pillow), then classify test photos with every engine the profile
offers, with the shipped int8 model and a float32 one. The deploy job: deploy.py from x86
into an OpenSSH server in a second arm64 userland, twice, and the fleet's Ansible rollout
into it. The three jobs run at once (QEMU runs each guest process on one core), in the
background from the session's start (conftest.background); tests/test_emulated_pi.py checks
their results. A failure's first line names the architecture and the step.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sshd
from conftest import REPO, free_port, run_script

from edgeconv.runtime.profiles import load_profile

EMULATE = REPO / "devices" / "emulate.sh"
PROFILES = {"arm64": "raspberry-pi-4", "armhf": "raspberry-pi-32bit"}
AUTO_PROFILE = {"arm64"}  # install.sh and deploy.py detect it there (no device tree: the default)
PHOTOS_PER_CLASS = 30  # under QEMU a photo costs 0.3-1.5 s of CPU per engine
FLOAT_TOLERANCE = 1e-5
# 32-bit Arm sums float32 products in another order (4-wide NEON, no x86 FMA): 1.3e-5 seen.
ARMV7_FLOAT_TOLERANCE = 5e-5
# tflite-runtime's 32-bit Arm int8 kernels round requantized values differently from x86's
# (the first convolution already differs by one step in 78 of 180,000 values); through the
# plus model's 30 layers that adds up to 37 raw output steps on the first 200 test photos (dog.1570:
# 0.487 on armhf, 0.675 on x86, after the temperature; 24 steps from x86's tflite-runtime 2.14).
ARMV7_INT8_STEPS = 40
# A step's limit: at nice 15 beside a busy suite a step may wait long for a core (CI's own
# 90 min bound the whole run).
STEP_S = 3600
GUEST_CLONE = "/root/edgeconv"  # where a Pi user would have cloned the repository
VERSIONS = ("numpy", "pillow", "ai-edge-litert", "tflite-runtime", "onnxruntime", "uvicorn",
            "h11", "starlette", "python-multipart")


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
    """One root filesystem of `arch`, kept under `name`, and the time each step took."""

    arch: str
    name: str
    root: Path = Path()
    seconds: dict[str, float] = field(default_factory=dict)

    def environment(self) -> dict:
        return {**os.environ, "EDGECONV_PI_CACHE": str(pi_cache()), "EDGECONV_PI_NAME": self.name}

    def emulate(self, step: str, *args: str, timeout: float = STEP_S) -> str:
        started = time.monotonic()
        result = subprocess.run(["bash", str(EMULATE), *args], capture_output=True, text=True,
                                timeout=timeout, env=self.environment())
        if result.returncode != 0:
            step_failed(self.arch, step, result)
        self.seconds[step] = round(time.monotonic() - started, 1)
        return result.stdout

    def fresh(self) -> EmulatedPi:
        """A clean root filesystem: debootstrapped, or unpacked from the cache."""
        self.emulate("clean", "clean", self.arch)
        self.emulate("build", "build", self.arch, timeout=2 * STEP_S)
        self.root = Path(self.emulate("path", "path", self.arch).strip())
        return self

    def shell(self, step: str, command: str) -> str:
        """`command` in the guest; its stdout."""
        return self.emulate(step, "run", self.arch, command)

    def run(self, step: str, command: str) -> str:
        """`command` in the guest, from the clone; its stdout."""
        return self.shell(step, f"cd {GUEST_CLONE} && {command}")


@dataclass
class Classified:
    pi: EmulatedPi
    rows: dict[str, dict]  # "engine model" -> classify --json rows
    versions: list[str]
    served: dict  # runtime/serve's answer to POST /api/classify of the selftest photo


def classify_rows(output: str) -> dict[str, dict]:
    """classify --json lines, keyed by the photo's class folder and name."""
    rows = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return {"/".join(Path(row["path"]).parts[-2:]): row for row in rows}


def engine_cases(profile: dict) -> list[tuple[str, str]]:
    """(engine, model file suffix) for every engine the profile offers."""
    return [(engine, ".onnx" if engine == "onnxruntime" else ".tflite")
            for engine in profile["engines"]]


def install_and_classify(arch: str, real_data: Path, float_models: dict[str, Path]
                         ) -> Classified:
    """What a Pi user runs in a clone: install.sh (per engine's model), then classify."""
    pi = EmulatedPi(arch, arch).fresh()
    clone = pi.root / GUEST_CLONE[1:]
    for folder in ("runtime", "devices", "models"):
        shutil.copytree(REPO / folder, clone / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.keras"))
    for suffix, model in float_models.items():
        shutil.copy(model, clone / "models" / f"test_float32{suffix}")
    for name in ("cats", "dogs"):
        (clone / "photos" / name).mkdir(parents=True)
        for photo in sorted((real_data / "test" / name).iterdir())[:PHOTOS_PER_CLASS]:
            shutil.copy(photo, clone / "photos" / name / photo.name)
    profile = load_profile(PROFILES[arch])
    # arm64 as a new user runs it: no --profile (auto), on a system Python without Pillow.
    choose = "" if arch in AUTO_PROFILE else f"--profile {profile['name']} "
    if arch in AUTO_PROFILE:
        assert "no Pillow" in pi.shell("system Python", "python3 -c 'import PIL' 2>/dev/null "
                                       "&& echo Pillow || echo no Pillow")
    rows = {}
    for engine, suffix in engine_cases(profile):
        shipped = f"models/plus_int8{suffix}"
        installed = pi.run(f"install.sh {choose}--model {shipped}",
                           f"bash devices/install.sh {choose}--model {shipped} --expect cats "
                           "--no-apt")
        assert "self-test passed: cats" in installed, f"emulated {arch}: {installed}"
        assert f"; profile {profile['name']}" in installed, f"emulated {arch}: {installed}"
        for model in (shipped, f"models/test_float32{suffix}"):
            rows[f"{engine} {model}"] = classify_rows(pi.run(
                f"classify {model} with {engine}",
                f".venv/bin/python runtime/classify {model} photos --engine {engine} --json"))
    versions = pi.run("pip list", ".venv/bin/python -m pip list --format=freeze").split()
    shutil.copy(REPO / "tests" / "serve_check.py", clone / "serve_check.py")
    served = json.loads(pi.run("serve, then POST /api/classify", ".venv/bin/python "
                               "serve_check.py models/plus_int8.tflite devices/selftest/cat.jpg"
                               ).strip().splitlines()[-1])
    return Classified(pi, rows, [line for line in versions
                                 if line.split("==")[0].lower() in VERSIONS], served)


def start_guest_sshd(pi: EmulatedPi, keys: Path, log: Path) -> tuple[subprocess.Popen, int]:
    """OpenSSH in the guest on a loopback port, for a user `pi` with the client key in `keys`.
    A session gets a clean environment, so the emulator's CPU model and the CA bundle of this
    machine's proxy reach it through sshd."""
    pi.shell("add the user pi", "id pi >/dev/null 2>&1 || useradd --create-home --shell "
           "/bin/bash pi; usermod --password '*' pi")
    ssh_dir = pi.root / "home" / "pi" / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text((keys / "client_key.pub").read_text())
    pi.shell("own pi's keys", "chown -R pi:pi /home/pi/.ssh && chmod 600 "
           "/home/pi/.ssh/authorized_keys")
    shutil.copy(keys / "host_key", pi.root / "etc" / "ssh" / "edgeconv_test_host_key")
    port = free_port()
    (pi.root / "etc" / "ssh" / "sshd_edgeconv_test").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey /etc/ssh/edgeconv_test_host_key\n"
        "PidFile /run/sshd-edgeconv-test.pid\nUsePAM no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin no\nAllowUsers pi\n"
        "SetEnv QEMU_CPU=cortex-a72 PIP_CERT=/etc/ssl/certs/ca-certificates.crt "
        "PIP_DEFAULT_TIMEOUT=180 PIP_DISABLE_PIP_VERSION_CHECK=1\n")
    with log.open("w") as sshd_log:
        server = subprocess.Popen(
            ["bash", str(EMULATE), "run", pi.arch, "mkdir -p /run/sshd && "
             "/usr/sbin/sshd -D -e -f /etc/ssh/sshd_edgeconv_test"],
            env=pi.environment(), start_new_session=True, stdout=subprocess.DEVNULL,
            stderr=sshd_log)
    try:
        sshd.wait_for_port(port, server, log, seconds=120)
    except BaseException:  # pytest's failure too: the emulator must not outlive the test
        os.killpg(server.pid, signal.SIGKILL)
        raise
    return server, port


def fleet_rollout(work: Path, port: int, model: Path) -> subprocess.CompletedProcess:
    """devices/fleet/rollout.yml with the guest as a one-host fleet (known_hosts beside the
    inventory, as the fleet expects)."""
    inventory = work / "inventory.yml"  # JSON is YAML
    inventory.write_text(json.dumps({"all": {"hosts": {"emulated-pi": {
        "ansible_host": "127.0.0.1", "ansible_port": port, "ansible_user": "pi",
        "ansible_ssh_private_key_file": str(work / "client_key"),
        "edgeconv_profile": "raspberry-pi-4"}}}}))
    playbook = REPO / "devices" / "fleet" / "rollout.yml"
    return subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i",
                           str(inventory), str(playbook), "-e", f"model={model}"],
                          capture_output=True, text=True, cwd=REPO, timeout=STEP_S,
                          env={**os.environ, "ANSIBLE_NOCOLOR": "1",
                               "ANSIBLE_HOME": str(work / "ansible")})


def deploy_twice(models: list[Path], work: Path) -> tuple[EmulatedPi, list[bytes]]:
    """deploy.py from here into a fresh arm64 guest, once per model, host keys checked, then
    the fleet's rollout of the first model again; the model file the guest holds after each."""
    pi = EmulatedPi("arm64", "arm64-ssh").fresh()
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / key)],
                       check=True)
    server, port = start_guest_sshd(pi, work, work / "sshd.log")
    host_key = " ".join((work / "host_key.pub").read_text().split()[:2])
    (work / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key}\n")
    held = []
    try:
        for model in models:
            started = time.monotonic()
            result = run_script("devices/deploy.py", "--host", "pi@127.0.0.1", "--port", port,
                                "--identity", work / "client_key", "--known-hosts",
                                work / "known_hosts", "--model", model, "--timeout", "60",
                                timeout=STEP_S)  # --profile auto: detected on the device
            if result.returncode != 0:
                step_failed("arm64", f"deploy.py --model {model.name}", result)
            assert "self-test passed: cats (expected cats)" in result.stdout, result.stdout
            assert "; profile raspberry-pi-4" in result.stdout, result.stdout
            pi.seconds[f"deploy {model.name}"] = round(time.monotonic() - started, 1)
            held.append((pi.root / "home/pi/edgeconv/models/current.tflite").read_bytes())
        reused = "(reused)" in result.stdout
        started = time.monotonic()
        rollout = fleet_rollout(work, port, models[0])
        pi.seconds[f"fleet rollout {models[0].name}"] = round(time.monotonic() - started, 1)
        if rollout.returncode != 0:
            step_failed("arm64", "the fleet's rollout.yml", rollout)
        held.append((pi.root / "home/pi/edgeconv/models/current.tflite").read_bytes())
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # sshd, then emulate.sh unmounts the guest
        server.wait(timeout=60)
    assert reused, "the second deploy rebuilt the device's environment"
    return pi, held


def export_float_models(tiny_run: Path, folder: Path) -> dict[str, Path]:
    """A small float32 convnet as .tflite and .onnx (float32 convolutions emulate slowly)."""
    run = folder / "run"
    shutil.copytree(tiny_run, run)
    result = run_script("export/all.py", run, "--formats", "TFLite float32,ONNX float32")
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    return {".tflite": run / "model_float32.tflite", ".onnx": run / "model_float32.onnx"}


def can_emulate() -> None:
    for tool in ("debootstrap", "qemu-aarch64-static", "qemu-arm-static"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} missing (.ci/run installs debootstrap and qemu-user-static)")
    if os.geteuid() != 0:
        pytest.fail("the emulated Pi needs root (chroot, mounts)")


@pytest.fixture(scope="session")
def emulated(background, real_data, tiny_run, shipped, tmp_path_factory) -> dict[str, Future]:
    """The three emulated jobs, started in the background; each test takes its job's
    result (a job's failure is raised there)."""
    floats = background.submit(export_float_models, tiny_run, tmp_path_factory.mktemp("float"))

    def classify_on(arch: str) -> Classified:
        can_emulate()
        return install_and_classify(arch, real_data, floats.result())

    def deploy() -> tuple[EmulatedPi, list[bytes]]:
        can_emulate()
        return deploy_twice([shipped / "plus_int8.tflite", shipped / "augmented_int8.tflite"],
                            tmp_path_factory.mktemp("deploy"))

    jobs = {arch: background.submit(classify_on, arch) for arch in PROFILES}
    jobs["deploy"] = background.submit(deploy)
    return jobs
