"""devices/: profiles, install.sh in a clean folder, the systemd unit, deploy over real SSH."""

import contextlib
import hashlib
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import sshd
from conftest import MODELS, REPO, free_port, impostor, run_script

from edgeconv.runtime.classifier import Classifier
from edgeconv.runtime.metadata import read_metadata
from edgeconv.runtime.profiles import ProfileError, available, detect, load_profile

PHOTO = REPO / "devices" / "selftest" / "cat.jpg"
USER = "edgeconv-deploy"


def test_every_profile_names_an_engine_threads_camera_and_packages():
    assert set(available()) == {"raspberry-pi-5", "raspberry-pi-4", "raspberry-pi-32bit",
                                "linux-x86_64"}
    for name in available():
        profile = load_profile(name)
        assert profile["engine"] in ("litert", "tflite-runtime")
        assert profile["engine"] in profile["engines"]
        assert {"engines", "threads", "camera", "width", "height", "every", "pip"} <= set(profile)
    assert "numpy<2" in load_profile("raspberry-pi-32bit")["pip"]
    here = load_profile("auto")  # the profile for this machine's architecture
    assert here["name"] == detect() and platform.machine() in here["arch"]


def test_the_profiles_themselves_say_which_board_they_fit():
    assert detect("aarch64", "Raspberry Pi 5 Model B Rev 1.0") == "raspberry-pi-5"
    assert detect("aarch64", "Raspberry Pi 4 Model B Rev 1.4") == "raspberry-pi-4"
    assert detect("aarch64", "") == "raspberry-pi-4"  # no device tree: the arch's default
    assert detect("armv7l", "Raspberry Pi 3 Model B Plus Rev 1.3") == "raspberry-pi-32bit"
    assert detect("x86_64", "") == "linux-x86_64"
    with pytest.raises(ProfileError, match="no profile .* fits this riscv64 machine"):
        detect("riscv64", "")


def bare_python(folder: Path) -> Path:
    """A folder whose python3 is a bare interpreter: the standard library and nothing else,
    as on a fresh Raspberry Pi OS."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    no_pillow = subprocess.run([str(folder / "bin" / "python3"), "-c", "import PIL"],
                               capture_output=True)
    assert no_pillow.returncode != 0
    return folder / "bin"


def test_install_sh_detects_the_profile_on_a_python_without_pillow(shipped, tmp_path):
    root = clean_copy(tmp_path)
    path = f"{bare_python(tmp_path / 'bare')}:{os.environ['PATH']}"
    result = subprocess.run(["bash", str(root / "devices" / "install.sh"), "--model",
                             str(shipped / "plus_int8.tflite"), "--render-unit",
                             str(tmp_path / "unit.service"), "--no-apt"],
                            capture_output=True, text=True, timeout=300, env={**os.environ,
                                                                              "PATH": path})
    print(f"\ninstall.sh with no profile on a bare Python printed: {result.stdout}{result.stderr}")
    assert result.returncode == 0, result.stderr
    assert f"; profile {detect()}" in result.stdout and "Traceback" not in result.stderr
    assert f"--profile {detect()} " in (tmp_path / "unit.service").read_text()


def exec_start(unit: Path) -> list[str]:
    """ExecStart's words read back: shlex for the quotes, then systemd's %% and $$ (the
    program's path takes no variables, so its $ stays single)."""
    line = next(line for line in unit.read_text().splitlines() if line.startswith("ExecStart="))
    words = shlex.split(line.removeprefix("ExecStart="))
    return [word.replace("%%", "%") if i == 0 else word.replace("%%", "%").replace("$$", "$")
            for i, word in enumerate(words)]


def test_the_unit_keeps_a_hostile_path_one_argument(shipped, tmp_path):
    root = clean_copy(tmp_path / "R&D |100% $HOME; x")
    model = root / "models" / "it's a|b&c %n $USER \\ \"q\".tflite"
    model.parent.mkdir()
    shutil.copy(shipped / "plus_int8.tflite", model)
    bare_python(root / ".venv")  # systemd-analyze checks that the program exists
    install = ["bash", str(root / "devices" / "install.sh"), "--profile", "linux-x86_64",
               "--model", str(model), "--no-apt", "--render-unit"]
    for kind, extra, tail in [("camera", [], ["--camera", "--no-display"]),
                              ("serve", ["--service", "serve", "--listen", "0.0.0.0:8081"],
                               ["--camera", "--host", "0.0.0.0", "--port", "8081"])]:
        unit = tmp_path / f"edgeconv-{kind}.service"
        result = subprocess.run([*install, str(unit), *extra], capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr
        program = "classify" if kind == "camera" else "serve"
        assert exec_start(unit) == [str(root / ".venv" / "bin" / "python"),
                                    str(root / "runtime" / program), str(model), "--profile",
                                    "linux-x86_64", *tail]
        assert f"WorkingDirectory={root}".replace("%", "%%") in unit.read_text()
        verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                                text=True)
        assert verify.returncode == 0, verify.stderr
    print(f"\nthe rendered line: {unit.read_text().split('ExecStart=')[1].splitlines()[0]}")

    quoted = clean_copy(tmp_path / 'a "quoted" folder')
    refused = subprocess.run(["bash", str(quoted / "devices" / "install.sh"), "--profile",
                              "linux-x86_64", "--model", str(model), "--no-apt",
                              "--render-unit", str(tmp_path / "refused.service")],
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1
    assert "systemd cannot run a program whose path holds a quote" in refused.stderr


def test_classify_applies_a_profile_and_flags_override_it(shipped):
    model = shipped / "plus_int8.tflite"
    result = run_script("runtime/classify", model, PHOTO, "--profile", "raspberry-pi-32bit",
                        "--engine", "litert", "--threads", "1")
    assert result.returncode == 0, result.stderr
    assert "(litert, 1 interpreter x 1 thread)" in result.stdout


def clean_copy(tmp_path: Path) -> Path:
    """runtime/ and devices/ alone, as deploy puts them on a device (in tmp_path/device)."""
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
    assert "golden self-test passed on litert" in first.stdout

    # Another network under this model's metadata: its golden outputs refuse it.
    fake = impostor(model, MODELS / "plus_int8.tflite", tmp_path / "impostor.tflite")
    refused = subprocess.run(command[:-5] + ["--model", str(fake), "--no-apt"],
                             capture_output=True, text=True, timeout=900)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith(
        "install: error: self-test failed: golden self-test FAILED on litert")

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


class CuttingRelay:
    """A TCP relay to `port` that drops any connection once more than `limit` bytes went
    upstream through it, as a Wi-Fi link lost in the middle of an upload would."""

    def __init__(self, port: int, limit: int):
        self.target, self.limit, self.cuts = port, limit, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for source, sink, counted in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self.pump, args=(source, sink, counted),
                                 daemon=True).start()

    def pump(self, source: socket.socket, sink: socket.socket, counted: bool) -> None:
        sent = 0
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sent += len(data)
                if counted and sent > self.limit:
                    self.cuts += 1
                    break
                sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()


@pytest.mark.system
def test_an_upload_cut_midway_keeps_the_old_model_and_the_next_deploy_succeeds(ssh_device,
                                                                              shipped, tmp_path):
    old, new = shipped / "plus_int8.tflite", shipped / "augmented_int8.tflite"
    first = deploy(ssh_device, old, "--accept-new-host-key")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    remote_model = ssh_device["home"] / "edgeconv" / "models" / "current.tflite"
    # Past the code (rsync sends only what changed) but inside the 3.5 MB model upload.
    relay = CuttingRelay(ssh_device["port"], limit=new.stat().st_size // 2)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{relay.port} {' '.join(ssh_device['host_key'])}\n")
    cut = deploy({**ssh_device, "port": relay.port, "known_hosts": known_hosts}, new)
    relay.listener.close()
    assert relay.cuts == 1
    assert cut.returncode == 1 and "copying the model failed" in cut.stderr, cut.stderr
    assert "Traceback" not in cut.stderr
    assert remote_model.read_bytes() == old.read_bytes()

    again = deploy(ssh_device, new)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert remote_model.read_bytes() == new.read_bytes()
    assert "self-test passed: cats" in again.stdout
    print(f"\nthe cut deploy printed: {cut.stderr.strip()}")

    # Another network under the plus model's metadata: its golden outputs refuse it there.
    fake = impostor(old, new, tmp_path / "plus_int8.tflite")
    refused = deploy(ssh_device, fake)
    print(f"the impostor's deploy printed: {refused.stderr.strip()}")
    assert refused.returncode == 1, refused.stdout[-3000:]
    assert "install: error: self-test failed: golden self-test FAILED on litert" in refused.stdout
    assert "the device keeps its previous model" in refused.stderr
    assert remote_model.read_bytes() == new.read_bytes()
    assert sorted(p.name for p in remote_model.parent.iterdir()) == ["current.tflite"]


def test_deploy_to_a_closed_port_fails_with_a_clear_message(exported, tmp_path):
    result = run_script("devices/deploy.py", "--host", f"{USER}@127.0.0.1", "--port",
                        free_port(), "--model", exported / "model_int8.tflite",
                        "--known-hosts", tmp_path / "kh", "--timeout", "5")
    assert result.returncode == 1
    assert "connecting failed" in result.stderr and "Connection refused" in result.stderr
    assert "Traceback" not in result.stderr
