"""Faults during long work: training killed at random moments, a disk that fills up.

Each fault is real: SIGKILL to the training process (including while it writes a checkpoint),
and a small tmpfs mounted for the run and filled while it works.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REPO

EPOCHS = 8  # room for four kills, each within the next two epochs
LIMIT = 16  # photos per class and split: two steps an epoch, seconds per epoch


def start_training(real_data: Path, out: Path, log: Path, resume: bool) -> subprocess.Popen:
    command = [sys.executable, str(REPO / "train" / "run.py"), "--data", str(real_data),
               "--recipe", "baseline", "--epochs", str(EPOCHS), "--limit", str(LIMIT),
               "--out", str(out)]
    with log.open("w") as output:
        return subprocess.Popen(command + (["--resume"] if resume else []), cwd=REPO,
                                stdout=output, stderr=subprocess.STDOUT)


def wait_until(process: subprocess.Popen, ready: Callable[[], bool], seconds: float) -> bool:
    """True as soon as `ready()` or the process has ended, False after `seconds`. Polled every
    5 ms: a checkpoint's temporary file exists for a fraction of a second."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None or ready():
            return True
        time.sleep(0.005)
    return False


def epochs_printed(log: Path) -> int:
    """Epochs whose results Keras printed: it prints them after the checkpoint is saved."""
    return sum(" - val_loss: " in line for line in log.read_text().splitlines())


def saved_state(out: Path) -> dict:
    """state.json and the checkpoint it names, which must be whole."""
    state = json.loads((out / "state.json").read_text())
    checkpoint = out / state["checkpoint"]
    with zipfile.ZipFile(checkpoint) as archive:
        assert archive.testzip() is None, f"{checkpoint} is damaged"
    return state


@pytest.mark.slow
def test_training_killed_at_random_moments_resumes_and_keeps_every_epoch_once(real_data,
                                                                             tmp_path):
    rng = random.Random(0)
    out, log = tmp_path / "run", tmp_path / "train.log"
    kills, saved = [], 0
    for moment in ("checkpoint write", "random", "checkpoint write", "random"):
        process = start_training(real_data, out, log, resume=(out / "run.json").exists())
        if moment == "random":  # somewhere in a random epoch still to train
            announced = f"Epoch {rng.randint(saved + 1, saved + 2)}/{EPOCHS}"
            assert wait_until(process, lambda text=announced: text in log.read_text(), 300), \
                log.read_text()[-2000:]
            time.sleep(rng.uniform(0, 1.5))
        else:
            assert wait_until(process, lambda: any(out.glob(".checkpoint-*.keras")), 300), \
                log.read_text()[-2000:]
        if process.poll() is not None:
            break  # it finished before this moment came
        process.send_signal(signal.SIGKILL)
        process.wait()
        done = epochs_printed(log)  # by this process, after the `saved` it resumed from
        if (out / "state.json").exists():
            # Never behind what was saved before; loses at most the epoch it was in.
            saved = saved_state(out)["epoch"]
        assert saved >= (kills[-1][2] if kills else 0) + done, log.read_text()[-2000:]
        kills.append((moment, done, saved))
    assert len(kills) == 4, f"the run finished before the kills: {kills}"

    final = start_training(real_data, out, log, resume=True)
    assert final.wait(timeout=900) == 0, log.read_text()[-3000:]
    if saved:
        assert f"resuming {out} after epoch {saved} of {EPOCHS}" in log.read_text()
    history = json.loads((out / "history.json").read_text())
    assert len(history["loss"]) == len(history["val_loss"]) == EPOCHS
    steps = -(-2 * LIMIT // 20)  # the baseline recipe's batch is 20
    assert len(history["step_loss"]) == EPOCHS * steps
    assert not list(out.glob(".*")), "temporary files left behind"
    print(f"\nkills (moment, epochs printed, epochs saved): {kills}")


@pytest.fixture
def small_disk(tmp_path) -> Path:
    """A 128 MB tmpfs, mounted for one test."""
    if os.geteuid() != 0:
        pytest.fail("mounting a small filesystem needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128m", "tmpfs", str(disk)], check=True)
    yield disk
    subprocess.run(["umount", "--lazy", str(disk)], check=True)


def fill(disk: Path, leave: int = 256 * 1024) -> Path:
    """A file taking all of the disk's free space but `leave` bytes."""
    filler = disk / "filler"
    stat = os.statvfs(disk)
    with filler.open("wb") as out:
        out.write(b"\xff" * max(stat.f_bavail * stat.f_frsize - leave, 0))
    return filler


def one_line_error(output: str) -> str:
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output[-3000:]
    return errors[0]


@pytest.mark.slow
@pytest.mark.system
def test_a_disk_full_during_a_checkpoint_stops_training_cleanly(real_data, small_disk):
    out, log = small_disk / "run", small_disk.parent / "train.log"
    process = start_training(real_data, out, log, resume=False)
    assert wait_until(process, (out / "state.json").exists, 600), log.read_text()[-2000:]
    filler = fill(small_disk)
    assert process.wait(timeout=600) == 1, log.read_text()[-3000:]
    error = one_line_error(log.read_text())
    assert "No space left on device" in error and str(out) in error, error
    state = saved_state(out)  # the last checkpoint before the disk filled is whole
    assert not list(out.glob(".*")), "a partial file was left behind"

    filler.unlink()
    again = start_training(real_data, out, log, resume=True)
    assert again.wait(timeout=900) == 0, log.read_text()[-3000:]
    assert f"after epoch {state['epoch']} of {EPOCHS}" in log.read_text()
    assert (out / "model.keras").is_file()
    print(f"\n{error}")


@pytest.mark.slow
@pytest.mark.system
def test_a_disk_full_during_an_export_keeps_the_exports_already_made(trained_run, small_disk):
    run_dir, _ = trained_run
    run = small_disk / "run"
    run.mkdir()
    for name in ("model.keras", "run.json"):
        shutil.copy(run_dir / name, run / name)
    first = subprocess.run([sys.executable, str(REPO / "export" / "to_tflite.py"), str(run),
                            "--quantize", "float16"], capture_output=True, text=True, cwd=REPO)
    assert first.returncode == 0, first.stderr[-3000:]
    made = {path.name: path.read_bytes() for path in run.glob("model_*")}
    assert list(made) == ["model_float16.tflite"]

    fill(small_disk)
    full = subprocess.run([sys.executable, str(REPO / "export" / "all.py"), str(run)],
                          capture_output=True, text=True, cwd=REPO)
    assert full.returncode != 0
    assert "Traceback" not in full.stdout + full.stderr, full.stderr[-3000:]
    failed = [line for line in full.stdout.splitlines() if "No space left on device" in line]
    assert failed, full.stdout + full.stderr[-2000:]
    assert {path.name: path.read_bytes() for path in run.glob("model_*")} == made
    assert not list(run.glob(".*")), "a partial file was left behind"
    print("\n" + "\n".join(failed))
