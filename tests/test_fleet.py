"""devices/fleet/: the Ansible rollout to three real OpenSSH devices on loopback.

Each device is a throwaway user with its own home, host key and client key (tests/sshd.py).
Their pip installs from one wheel folder downloaded here, so three installs cost one download.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import sshd
from conftest import MODELS, REPO, impostor, run_script
from test_field import frames_of, post_label, scored, write_video
from test_field import metrics as field_metrics

from edgeconv.benchmarks.server import Server
from edgeconv.runtime.capture import dhash
from edgeconv.runtime.classifier import Classifier
from edgeconv.runtime.profiles import available, load_profile

ANSIBLE = Path(sys.executable).parent
PROFILE = "linux-x86_64"
PHOTO = REPO / "devices" / "selftest" / "cat.jpg"
PLUS = MODELS / "plus_int8.tflite"
AUGMENTED = MODELS / "augmented_int8.tflite"
RECAP = re.compile(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)",
                   re.MULTILINE)
REPORT = re.compile(r'^ok: \[(\S+)\] => \{\n\s+"msg": "(.*)"\n\}', re.MULTILINE)


def ansible(tool: str) -> Path:
    path = ANSIBLE / tool
    if not path.exists():
        pytest.fail(f"{tool} not found next to {sys.executable}: pip install -e '.[fleet]'")
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Run:
    returncode: int
    output: str
    seconds: float

    def recap(self) -> dict[str, dict[str, int]]:
        """Ansible's closing table: per host, changed, unreachable, failed."""
        return {host: {"changed": int(changed), "unreachable": int(unreachable),
                       "failed": int(failed)}
                for host, changed, unreachable, failed in RECAP.findall(self.output)}

    def reports(self) -> dict[str, str]:
        """The playbook's last line for each host that finished."""
        return dict(REPORT.findall(self.output))


@dataclass
class Fleet:
    devices: dict[str, sshd.SSHDevice]
    inventory: Path
    playbook: Path
    env: dict[str, str]

    @property
    def known_hosts(self) -> Path:
        return self.inventory.parent / "known_hosts"

    def run(self, *extra: str) -> Run:
        started = time.monotonic()
        result = subprocess.run([str(ansible("ansible-playbook")), "-i", str(self.inventory),
                                 str(self.playbook), *extra], capture_output=True, text=True,
                                cwd=REPO, env=self.env, timeout=600)
        return Run(result.returncode, result.stdout + result.stderr,
                   time.monotonic() - started)

    def rollout(self, model: Path, *extra: str) -> Run:
        return self.run("-e", f"model={model}", *extra)

    def models(self, host: str) -> Path:
        return self.devices[host].home / "edgeconv" / "models"

    def current(self) -> dict[str, str | None]:
        """The SHA-256 of the model each host's models/current.tflite points at."""
        links = {host: self.models(host) / "current.tflite" for host in self.devices}
        return {host: sha256(link.resolve()) if link.exists() else None
                for host, link in links.items()}

    def bring_to(self, model: Path) -> None:
        """Every host on `model`, as the earlier tests leave them: a test's starting point."""
        if set(self.current().values()) != {sha256(model)}:
            run = self.rollout(model, "-e", "batch_size=100%")
            assert run.returncode == 0, run.output[-3000:]


def snapshot(clone: Path) -> Path:
    """runtime/ and devices/ as they are now: a rollout sends the code when its bytes change,
    so the tests' runs must not see edits made to the working tree meanwhile."""
    for folder in ("runtime", "devices"):
        shutil.copytree(REPO / folder, clone / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return clone


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, shipped) -> Iterator[Fleet]:
    """Three devices in one inventory, profile linux-x86_64, no service (no systemd here)."""
    work = tmp_path_factory.mktemp("fleet")
    wheels = Path(tempfile.mkdtemp(prefix="edgeconv-wheels-", dir="/var/tmp"))
    try:
        os.chmod(wheels, 0o755)  # the devices' users read it
        download = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "-d",
                                   str(wheels), *load_profile(PROFILE)["pip"]],
                                  capture_output=True, text=True, timeout=600)
        assert download.returncode == 0, download.stderr[-2000:]
        with ExitStack() as stack:
            devices = {f"fleet-{n}": stack.enter_context(sshd.ssh_device(f"edgeconv-fleet-{n}"))
                       for n in (1, 2, 3)}
            hosts = {}
            for name, device in devices.items():
                device.write(".config/pip/pip.conf",
                             f"[global]\nno-index = true\nfind-links = {wheels}\n")
                hosts[name] = {"ansible_host": "127.0.0.1", "ansible_port": device.port,
                               "ansible_user": device.user,
                               "ansible_ssh_private_key_file": str(device.identity)}
            inventory = work / "inventory.yml"  # JSON is YAML
            inventory.write_text(json.dumps({"all": {"children": {"lab": {
                "hosts": hosts, "vars": {"edgeconv_profile": PROFILE}}}}}, indent=1))
            env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_HOME": str(work / "ansible"),
                   "XDG_CACHE_HOME": str(work / "cache")}
            yield Fleet(devices, inventory, snapshot(work / "clone") / "devices" / "fleet" /
                        "rollout.yml", env)
    finally:
        shutil.rmtree(wheels, ignore_errors=True)


@pytest.fixture(scope="module")
def fleet_on_plus(fleet) -> Run:
    """The first rollout: host keys accepted on first contact, the plus model everywhere."""
    run = fleet.rollout(PLUS, "-e", "accept_new_host_keys=true", "-e", "batch_size=100%")
    assert run.returncode == 0, run.output[-3000:]
    print(f"\nfirst rollout to {len(fleet.devices)} hosts (cold): {run.seconds:.1f} s")
    return run


@contextmanager
def read_only(folder: Path, owner: str) -> Iterator[None]:
    """The host's deployment folder made unwritable for its user, as a failing SD card is."""
    subprocess.run(["chown", "-R", "root:root", str(folder)], check=True)
    subprocess.run(["chmod", "-R", "a-w", str(folder)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chown", "-R", f"{owner}:", str(folder)], check=True)
        subprocess.run(["chmod", "-R", "u+w", str(folder)], check=True)


def test_the_example_inventory_gives_every_host_a_known_profile():
    result = subprocess.run([str(ansible("ansible-inventory")), "-i",
                             str(REPO / "devices" / "fleet" / "inventory.example.yml"), "--list"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    hosts = json.loads(result.stdout)["_meta"]["hostvars"]
    assert len(hosts) >= 2
    for host in hosts.values():
        assert host["edgeconv_profile"] in available()
        assert host["edgeconv_service"] in ("none", "camera", "serve")


def test_the_code_archive_depends_only_on_the_files_contents(tmp_path):
    def pack(clone: Path) -> bytes:
        result = run_script("devices/fleet/pack_code.py", clone, clone / "code.tar")
        assert result.returncode == 0, result.stderr
        return (clone / "code.tar").read_bytes()

    clones = [tmp_path / "a", tmp_path / "b"]
    for clone in clones:
        for folder in ("runtime", "devices"):
            shutil.copytree(REPO / folder, clone / folder,
                            ignore=shutil.ignore_patterns("__pycache__"))
    classify = clones[1] / "runtime" / "classify"
    os.utime(classify, (0, 1e9))  # another checkout time
    os.chmod(classify, stat.S_IMODE(classify.stat().st_mode) | 0o070)  # another umask
    (clones[1] / "runtime" / "__pycache__").mkdir()
    (clones[1] / "runtime" / "__pycache__" / "x.pyc").write_bytes(b"bytecode")
    assert pack(clones[0]) == pack(clones[1])
    classify.write_text("changed")
    assert pack(clones[0]) != pack(clones[1])


@pytest.mark.system
def test_devices_with_unknown_host_keys_are_refused(fleet, tmp_path):
    empty = tmp_path / "known_hosts"
    run = fleet.rollout(PLUS, "-e", f"edgeconv_known_hosts={empty}", "-e", "batch_size=100%")
    assert run.returncode != 0
    assert run.output.count("Host key verification failed") >= len(fleet.devices)
    recap = run.recap()
    assert all(recap[host]["unreachable"] == 1 for host in fleet.devices)
    assert not empty.exists() or empty.read_text() == ""


@pytest.mark.system
def test_a_rollout_reaches_every_host_and_a_second_run_changes_nothing(fleet, fleet_on_plus):
    known = fleet.known_hosts.read_text()
    assert all(device.host_key[1] in known for device in fleet.devices.values())
    expect = Classifier(PLUS).predict(PHOTO).label
    reports = fleet_on_plus.reports()
    for host in fleet.devices:
        assert fleet_on_plus.recap()[host]["failed"] == 0
        assert reports[host].startswith(f"switched to plus_int8-{sha256(PLUS)[:12]}.tflite")
        assert reports[host].endswith(f"self-test passed ({expect})")
    assert set(fleet.current().values()) == {sha256(PLUS)}

    again = fleet.rollout(PLUS, "-e", "batch_size=100%")
    print(f"\nsame model again (warm): {again.seconds:.1f} s")
    assert again.returncode == 0, again.output[-3000:]
    assert {host: counts["changed"] for host, counts in again.recap().items()} == {
        host: 0 for host in fleet.devices}, again.output
    assert all(report.endswith("; nothing changed") for report in again.reports().values())
    assert len(again.reports()) == len(fleet.devices)


@pytest.mark.system
def test_a_broken_host_fails_alone_and_later_batches_keep_their_model(fleet, fleet_on_plus):
    fleet.bring_to(PLUS)
    first, broken, last = fleet.devices
    untouched = sorted(fleet.models(last).iterdir())
    with read_only(fleet.devices[broken].home / "edgeconv", fleet.devices[broken].user):
        run = fleet.rollout(AUGMENTED, "-e", "batch_size=1", "-e", "max_fail_percent=0")
    print(f"\nbroken host: {run.seconds:.1f} s\n" + "\n".join(
        line for line in run.output.splitlines() if line.startswith("fatal:")))
    assert run.returncode != 0
    recap = run.recap()
    assert recap[first]["failed"] == 0 and recap[first]["changed"] > 0
    assert recap[broken]["failed"] == 1
    assert last not in recap  # its batch never started
    assert f"fatal: [{broken}]" in run.output
    current = fleet.current()
    assert current == {first: sha256(AUGMENTED), broken: sha256(PLUS), last: sha256(PLUS)}
    assert sorted(fleet.models(last).iterdir()) == untouched


@pytest.mark.system
def test_a_corrupted_model_is_refused_by_the_first_batch(fleet, fleet_on_plus, tmp_path):
    fleet.bring_to(PLUS)
    corrupt = tmp_path / "corrupt.tflite"
    corrupt.write_bytes(AUGMENTED.read_bytes()[:1_000_000])  # a cut-off upload
    here = fleet.rollout(corrupt)
    assert here.returncode != 0
    assert "cannot classify devices/selftest/cat.jpg with" in here.output
    assert "PLAY [Roll out edgeconv]" not in here.output  # refused before any host

    expect = Classifier(PLUS).predict(PHOTO).label
    run = fleet.rollout(corrupt, "-e", f"expect={expect}")  # default batches: one host first
    print(f"\ncorrupted model: {run.seconds:.1f} s\n" + "\n".join(
        line for line in run.output.splitlines() if line.startswith("fatal:")))
    assert run.returncode != 0
    first, *others = fleet.devices
    assert run.recap()[first]["failed"] == 1 and not set(others) & set(run.recap())
    assert f"self-test of corrupt-{sha256(corrupt)[:12]}.tflite failed, old model kept: " \
        "install: error: self-test could not classify: " in run.output
    assert "truncated or corrupt TFLite file" in run.output
    assert set(fleet.current().values()) == {sha256(PLUS)}
    for host in fleet.devices:
        assert not list(fleet.models(host).glob("corrupt-*"))


@pytest.mark.system
def test_a_model_whose_golden_outputs_differ_is_refused_by_the_first_batch(fleet, fleet_on_plus,
                                                                          tmp_path):
    fleet.bring_to(PLUS)
    fake = impostor(PLUS, AUGMENTED, tmp_path / "plus_int8.tflite")  # plus's metadata
    run = fleet.rollout(fake, "-e", "expect=cats")
    assert run.returncode != 0
    first, *others = fleet.devices
    assert run.recap()[first]["failed"] == 1 and not set(others) & set(run.recap())
    assert "install: error: self-test failed: golden self-test FAILED on litert" in run.output
    assert set(fleet.current().values()) == {sha256(PLUS)}


@pytest.mark.system
def test_a_service_without_systemd_is_refused_before_any_change(fleet, fleet_on_plus):
    fleet.bring_to(PLUS)
    before = {host: sorted(fleet.models(host).iterdir()) for host in fleet.devices}
    run = fleet.rollout(AUGMENTED, "-e", "edgeconv_service=camera")  # no systemd here
    assert run.returncode != 0
    assert "edgeconv_service=camera needs systemd, which this host does not run" in run.output
    assert {host: sorted(fleet.models(host).iterdir()) for host in fleet.devices} == before


@pytest.mark.system
def test_a_device_set_up_by_deploy_py_joins_the_fleet_keeping_its_model(fleet, fleet_on_plus):
    fleet.bring_to(PLUS)
    host = "fleet-3"
    device = fleet.devices[host]
    deployed = run_script("devices/deploy.py", "--host", f"{device.user}@127.0.0.1", "--port",
                          device.port, "--identity", device.identity, "--known-hosts",
                          fleet.known_hosts, "--model", AUGMENTED, "--profile", PROFILE)
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    current = fleet.models(host) / "current.tflite"
    assert not current.is_symlink() and sha256(current) == sha256(AUGMENTED)

    run = fleet.rollout(PLUS, "--limit", host)
    assert run.returncode == 0, run.output[-3000:]
    assert set(run.recap()) == {host}  # the other hosts are not contacted
    kept = f"deployed-{sha256(AUGMENTED)[:12]}.tflite"
    assert run.reports()[host].startswith(
        f"switched to plus_int8-{sha256(PLUS)[:12]}.tflite from {kept}, self-test passed")
    previous = fleet.models(host) / "previous.tflite"
    assert previous.resolve().name == kept and sha256(previous) == sha256(AUGMENTED)
    assert fleet.current()[host] == sha256(PLUS)


@pytest.mark.system
def test_rollback_puts_the_previous_model_back_everywhere(fleet, fleet_on_plus):
    fleet.bring_to(PLUS)
    forward = fleet.rollout(AUGMENTED, "-e", "batch_size=100%")
    assert forward.returncode == 0, forward.output[-3000:]
    assert set(fleet.current().values()) == {sha256(AUGMENTED)}

    back = fleet.run("-e", "rollback=true")
    print(f"\nrollback: {back.seconds:.1f} s")
    assert back.returncode == 0, back.output[-3000:]
    assert set(fleet.current().values()) == {sha256(PLUS)}
    assert set(back.reports().values()) == {f"rolled back to plus_int8-{sha256(PLUS)[:12]}.tflite"}

    again = fleet.run("-e", "rollback=true", "-e", "batch_size=100%")
    assert again.returncode == 0 and all(
        counts["changed"] == 0 for counts in again.recap().values())
    assert set(fleet.current().values()) == {sha256(PLUS)}


@pytest.mark.system
def test_a_code_update_over_root_owned_bytecode_keeps_the_host_working(fleet, fleet_on_plus):
    host = "fleet-1"
    folder = fleet.devices[host].home / "edgeconv"
    cache = folder / "runtime" / "__pycache__"  # what one `sudo runtime/classify` leaves
    cache.mkdir(exist_ok=True)
    (cache / "x.pyc").write_bytes(b"root's bytecode")
    os.chown(cache, 0, 0)
    (folder / ".code.tar").unlink()  # the code is sent and unpacked again
    run = fleet.rollout(PLUS, "-e", "batch_size=100%", "--limit", host)
    assert run.returncode == 0, run.output[-3000:]
    assert "self-test passed" in run.reports()[host]
    assert (folder / "runtime" / "classify").is_file() and (folder / "devices").is_dir()
    assert not (folder / "runtime" / "__pycache__" / "x.pyc").exists()
    leftovers = sorted(p.name.split(".")[1] for p in folder.iterdir()
                       if p.name.startswith((".old-", ".incoming-")))
    assert leftovers == ["old-runtime"]  # what its user could not remove; reported
    for old in folder.glob(".old-runtime.*"):
        shutil.rmtree(old)


def label_of(kept: dict, frames: list[np.ndarray], truths: list[str]) -> str:
    """The true class of a kept frame: that of the video frame nearest by dHash."""
    code = int(kept["dhash"], 16)
    distances = [bin(code ^ dhash(frame[:, :, ::-1].copy())).count("1") for frame in frames]
    return truths[int(np.argmin(distances))]


def agreement(first: Path, second: Path, frames: list[np.ndarray]) -> float:
    return float(np.mean([a.label == b.label for a, b in zip(scored(first, frames),
                                                              scored(second, frames))]))


@pytest.mark.slow
@pytest.mark.system
def test_the_field_loop_captures_labels_retrains_and_rolls_out_behind_a_canary(
        fleet, fleet_on_plus, real_data, few_photos, tiny_run, tmp_path):
    """serve keeps the frames plus is unsure of, a client labels them through the page's API,
    the tar trains a model that continues from plus, parity passes, and the fleet rolls it out
    behind a canary; a deliberately worse model is stopped at the canary and rolled back."""
    fleet.bring_to(PLUS)
    # 1. capture: a video of the test photos plus is least sure of, as serve's camera
    photos = [path for name in ("cats", "dogs") for path in
              sorted((real_data / "test" / name).iterdir())[100:300]]
    frames = frames_of(photos)
    predictions = scored(PLUS, frames)
    unsure = [i for i, p in enumerate(predictions) if p.score < 0.7 and p.label != "none"][:12]
    field_frames = [frames[i] for i in unsure]
    truths = [photos[i].parent.name for i in unsure]
    video = write_video(tmp_path / "field.avi", field_frames)
    kept = tmp_path / "kept"
    server = Server(PLUS, "--camera", video, "--capture", kept, "--capture-per-minute", "100")
    try:
        deadline = time.monotonic() + 60
        while field_metrics(server).get("edgeconv_capture_duplicates_total", 0) < len(unsure):
            assert time.monotonic() < deadline, server.log()[-2000:]
            time.sleep(0.3)
        # 2. label through the page's API, fetch the tar
        _, listing = server.json("/api/field")
        assert 8 <= len(listing["frames"]) <= len(unsure)
        for frame in listing["frames"]:
            info = json.loads((kept / f"{frame['id']}.json").read_text())
            assert post_label(server, frame["id"], label_of(info, field_frames, truths))[0] == 200
        status, _, tar = server.request("/api/field.tar")
        assert status == 200
    finally:
        assert "Traceback" not in server.stop()
    (tmp_path / "field.tar").write_bytes(tar)

    # 3. retrain from plus on them, export, parity on the test photos and the field frames
    run = tmp_path / "run"
    trained = run_script("train/run.py", "--data", real_data, "--recipe", "plus", "--limit", "20",
                         "--epochs", "1", "--set", "learning_rate=0.0002", "--init",
                         MODELS / "plus.keras", "--add", tmp_path / "field.tar", "--out", run)
    assert trained.returncode == 0, trained.stderr[-3000:]
    print(trained.stdout[-1500:])
    field = json.loads((run / "metrics.json").read_text())["field"]
    assert set(field["accuracy"]) == {"old", "new"} and "field" in field["accuracy"]["new"]
    assert sum(field["train"].values()) + sum(field["heldout"].values()) == len(
        listing["frames"])
    exported = run_script("export/all.py", run, "--formats", "tflite-int8")
    assert exported.returncode == 0, exported.stdout + exported.stderr[-2000:]
    new = run / "model_int8.tflite"
    parity = run_script("export/parity.py", new, "--reference", run / "model.keras", "--data",
                        few_photos, "--int8-agreement", "0.9", "--int8-max-drop", "0.1")
    assert parity.returncode == 0, parity.stdout + parity.stderr[-2000:]  # 20 photos: 5% each

    # 4. the fleet: the new model in shadow on the canaries' camera, then everywhere
    camera_folder = Path(tempfile.mkdtemp(prefix="edgeconv-canary-", dir="/var/tmp"))
    try:
        os.chmod(camera_folder, 0o755)
        everyday = [path for name in ("cats", "dogs") for path in
                    sorted((real_data / "test" / name).iterdir())[300:315]]
        camera = write_video(camera_folder / "door.avi", frames_of(everyday))
        os.chmod(camera, 0o644)
        bounds = ["-e", f"edgeconv_camera={camera}", "-e", "canary_frames=30", "-e",
                  "canary_hosts=2", "-e", "canary_min_agreement=0.85"]
        assert agreement(PLUS, new, frames_of(everyday)) >= 0.9  # the premise, here
        good = fleet.rollout(new, *bounds)
        print(f"\ncanary passed and rolled out: {good.seconds:.1f} s")
        assert good.returncode == 0, good.output[-3000:]
        assert good.output.count("canary passed: 30 frames") == 2
        assert set(fleet.current().values()) == {sha256(new)}

        worse = useless_model(tiny_run)
        assert agreement(new, worse, frames_of(everyday)) < 0.85  # the premise, here
        bad = fleet.rollout(worse, *bounds)
        print(f"\ncanary out of bounds: {bad.seconds:.1f} s\n" + "\n".join(
            line for line in bad.output.splitlines() if "canary" in line.lower()))
        assert bad.returncode != 0
        assert "canary failed, rolled back, current model kept, rollout stopped: " in bad.output
        assert "PLAY [Roll out edgeconv]" not in bad.output.split("canary failed")[1]
        first, second, third = fleet.devices
        assert third not in bad.recap()  # never reached
        assert set(fleet.current().values()) == {sha256(new)}
        for host in (first, second):
            assert not list(fleet.models(host).glob(f"model_int8-{sha256(worse)[:12]}*"))
    finally:
        shutil.rmtree(camera_folder, ignore_errors=True)


def useless_model(tiny_run: Path) -> Path:
    """The untrained tiny convnet, exported to int8: an honest file, a useless model."""
    result = run_script("export/all.py", tiny_run, "--formats", "tflite-int8")
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    return tiny_run / "model_int8.tflite"
