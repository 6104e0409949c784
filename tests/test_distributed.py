"""Data-parallel training on two logical CPU devices, and in two processes on loopback: it
follows a one-device run step by step, resumes after SIGKILL, and refuses a batch that does
not split."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, free_port, run_script
from test_train import start_and_wait_for_first_epoch

from edgeconv.runtime.text import plural

# Deterministic (no augmentation, no dropout), so two runs can be compared step by step.
SHORT = ["--recipe", "baseline", "--limit", "20", "--epochs", "2", "--batch-size", "10"]
# Float32 sums in another order, an error that grows step by step: the first update's loss
# (the second step's) differed by at most 5e-5 and any step's by 1.4e-3 (AVX512, oneDNN;
# 1e-4 on an AVX2 CPU).
FIRST_UPDATE_TOLERANCE = 2e-4
STEP_TOLERANCE = 5e-3


def train(real_data, out, devices: str, backend: str) -> dict:
    result = run_script("train/run.py", "--data", real_data, *SHORT, "--devices", devices,
                        "--out", out, env={"KERAS_BACKEND": backend})
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"backend {backend}, {plural(int(devices), 'device')}" in result.stdout
    return json.loads((out / "history.json").read_text())


@pytest.fixture(scope="module")
def one_device(real_data, tmp_path_factory):
    """backend -> the history of a one-device run, trained once per backend for the module."""
    runs = {}

    def history(backend: str) -> dict:
        if backend not in runs:
            runs[backend] = train(real_data, tmp_path_factory.mktemp("one") / backend, "1",
                                  backend)
        return runs[backend]

    return history


def step_differences(one: dict, other: dict) -> np.ndarray:
    assert len(one["step_loss"]) == len(other["step_loss"]) == 2 * 4  # 40 photos, batch 10
    return np.abs(np.subtract(one["step_loss"], other["step_loss"]))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_two_devices_follow_one_device_step_by_step(real_data, tmp_path, one_device, backend):
    one = one_device(backend)
    two = train(real_data, tmp_path / "two", "2", backend)
    differences = step_differences(one, two)
    print(f"{backend}: per-step loss, 1 device against 2: first update {differences[1]:.2e}, "
          f"max difference {differences.max():.2e}")
    assert differences[1] < FIRST_UPDATE_TOLERANCE and differences.max() < STEP_TOLERANCE
    # The loss, not the accuracy: a barely trained model's photos sit at 0.5, where float
    # noise flips one.
    assert np.allclose(one["val_loss"], two["val_loss"], rtol=0, atol=STEP_TOLERANCE)
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["devices"] == 2 and metrics["batch_size"] == 10
    assert metrics["params"] == 3_453_121 and (tmp_path / "two" / "model.keras").exists()


@pytest.mark.slow
def test_two_devices_resume_after_sigkill(real_data, tmp_path):
    out = tmp_path / "killed"
    args = ["--data", real_data, "--recipe", "augmented", "--limit", "20", "--epochs", "3",
            "--batch-size", "8", "--devices", "2", "--out", out]
    process = start_and_wait_for_first_epoch(args)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate()
    before = json.loads((out / "state.json").read_text())
    assert before["epoch"] in (1, 2) and (out / before["checkpoint"]).exists()

    resumed = run_script("train/run.py", "--out", out, "--resume", "--devices", "2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {out} after epoch {before['epoch']} of 3" in resumed.stdout
    assert "2 devices" in resumed.stdout
    history = json.loads((out / "history.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(history["loss"]) == 3 and metrics["devices"] == 2
    assert len(history["step_loss"]) == 3 * metrics["steps_per_epoch"]
    assert history["step_loss"][:len(before["history"]["step_loss"])] == \
        before["history"]["step_loss"]


@pytest.mark.slow
def test_two_processes_on_loopback_follow_one_device(real_data, tmp_path, one_device):
    coordinator = f"127.0.0.1:{free_port()}"

    def start(index: int) -> subprocess.Popen:
        with open(tmp_path / f"process-{index}.log", "w") as log:  # the child keeps its copy
            return subprocess.Popen(
                [sys.executable, str(REPO / "train/run.py"), "--data", str(real_data), *SHORT,
                 "--processes", "2", "--process-id", str(index), "--coordinator", coordinator,
                 "--out", str(tmp_path / f"process-{index}")],
                cwd=REPO, env={**os.environ, "KERAS_BACKEND": "jax"}, stdout=log,
                stderr=subprocess.STDOUT)

    processes = [start(index) for index in range(2)]
    try:
        for index, process in enumerate(processes):
            log = (tmp_path / f"process-{index}.log").read_text
            assert process.wait(timeout=300) == 0, log()[-3000:]
            assert "backend jax, 2 devices" in log()
    finally:
        for process in processes:  # one failed: the other would wait for it
            process.kill()
    for index in range(2):
        out = tmp_path / f"process-{index}"
        differences = step_differences(
            one_device("jax"), json.loads((out / "history.json").read_text()))
        print(f"process {index} of 2: per-step loss against 1 device: first update "
              f"{differences[1]:.2e}, max difference {differences.max():.2e}")
        assert differences[1] < FIRST_UPDATE_TOLERANCE and differences.max() < STEP_TOLERANCE
        assert json.loads((out / "metrics.json").read_text())["devices"] == 2


@pytest.mark.parametrize("args, message", [
    (["--devices", "0"], "--devices 0: expected all or a number of at least 1"),
    (["--devices", "3", "--batch-size", "10"], "batch 10 does not split evenly over 3 devices"),
])
def test_device_errors_are_one_line_with_exit_2(real_data, tmp_path, args, message):
    result = run_script("train/run.py", "--data", real_data, "--limit", "5", *args,
                        "--out", tmp_path / "run")
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_memory_benchmark_prints_peak_rss_for_every_cache_mode(real_data, tmp_path):
    result = run_script("benchmarks/memory.py", "--data", real_data, "--sizes", "40",
                        "--steps", "1", "--json", tmp_path / "memory.json")
    assert result.returncode == 0, result.stderr[-3000:]
    row = json.loads((tmp_path / "memory.json").read_text())["peak_rss_mb"]["40"]
    assert list(row) == ["first", "cached", "in memory"] and min(row.values()) > 0
    printed = " | ".join(f"{row[mode]:.0f}" for mode in row)
    assert f"| 40 | {printed} | 1.00x | 1.00x | 1.00x |" in result.stdout
