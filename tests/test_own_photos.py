"""Your own photos, end to end: class folders of real photos (five classes) to a shipped model.

prepare_data splits the folders, a short run trains (stopped, then ended early with its best
epoch), ship.py exports the int8 TFLite and ONNX files, checks their parity and writes a
card, classify --eval reports coverage, serve answers: all in the words of the photos' own
classes, with no cat or dog anywhere.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess

import pytest
from conftest import run_script
from test_train import start_and_wait_for_first_epoch

from edgeconv.benchmarks.server import Server
from edgeconv.runtime.metadata import read_metadata

PETS = re.compile(r"(?<![a-z])(cat|dog)s?(?![a-z])", re.IGNORECASE)
SPLIT = ["--train", "24", "--validation", "8", "--test", "8"]  # photos per class


@pytest.fixture(scope="module")
def prepared(class_folders, tmp_path_factory):
    """The class folders split by train/prepare_data.py, as a user would run it."""
    out = tmp_path_factory.mktemp("own") / class_folders.name
    result = run_script("train/prepare_data.py", "--source", class_folders, "--out", out, *SPLIT)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def messages(*results) -> str:
    return "\n".join(result.stdout + result.stderr for result in results)


@pytest.mark.slow
def test_class_folders_to_a_shipped_model_in_their_own_words(class_folders, prepared,
                                                               tmp_path):
    data, prepare = prepared
    classes = sorted(path.name for path in class_folders.iterdir() if path.is_dir())
    summary = json.loads((data / "prepare.json").read_text())
    assert list(summary["classes"]) == classes
    assert all(counts == {"train": 24, "validation": 8, "test": 8}
               for counts in summary["classes"].values())
    assert f"{len(classes)} classes" in prepare.stdout

    # A run stopped after its first epoch, then ended early by lowering --epochs on --resume.
    run = tmp_path / "run"
    first = start_and_wait_for_first_epoch(["--data", data, "--recipe", "baseline", "--epochs",
                                            "8", "--out", run])
    first.send_signal(signal.SIGINT)
    stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 130 and "expected: about" in stdout, stderr[-3000:]
    stopped = subprocess.CompletedProcess(first.args, 130, stdout, stderr)
    done = json.loads((run / "state.json").read_text())["epoch"]
    train = run_script("train/run.py", "--out", run, "--resume", "--epochs", "3")
    assert train.returncode == 0, train.stderr[-3000:]
    epochs = max(3, done)
    assert f"ending early: at epoch {epochs} of 8" in train.stdout
    scores = json.loads((run / "history.json").read_text())["val_accuracy"]
    best = scores.index(max(scores)) + 1
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == epochs == len(scores)
    assert metrics["ended_early"] == {"planned_epochs": 8, "weights_of_epoch": best}
    # The best epoch's weights, scored again by the inference model: within one photo, since
    # a barely trained model's classes are near-tied, and the two graphs' float noise
    # (oneDNN's kernels) can flip one.
    one_photo = 1 / sum(metrics["counts"]["validation"])
    assert metrics["val_accuracy"] == pytest.approx(scores[best - 1], abs=one_photo + 1e-6)
    assert not list(run.glob("checkpoint-*.keras"))
    assert metrics["classes"] == classes
    assert metrics["counts"]["test"] == [8] * len(classes)
    assert metrics["data_sha256"] == summary["data_sha256"]  # every photo used: the same

    models = tmp_path / "models"  # ship.py exports int8 TFLite + ONNX, checks parity, ships
    ship = run_script("export/ship.py", run, "--models", models)
    artifacts = [run / "model_int8.tflite", run / "model_int8.onnx"]
    for path in artifacts:
        metadata = read_metadata(path)
        assert metadata["labels"] == classes
        assert metadata["output"] == {"activation": "softmax", "threshold": None}
    rows = json.loads((run / "parity.json").read_text())["artifacts"]
    assert [row["artifact"] for row in rows] == [path.name for path in artifacts]
    assert all(row["threshold"] is None and row["images"] == 8 * len(classes) for row in rows)
    failing = [row["artifact"] for row in rows if not row["passed"]]
    if failing:  # a short run's int8 file may fail its gate: then nothing ships without asking
        assert ship.returncode == 1 and all(name in ship.stderr for name in failing)
        assert not models.exists()
        ship = run_script("export/ship.py", run, "--models", models, "--ship-failed")
    assert ship.returncode == 0, ship.stderr[-3000:]
    card = (models / "README.md").read_text()
    assert f"Classes ({len(classes)}): " + ", ".join(f"`{name}`" for name in classes) in card
    assert f"`{data.name}`, SHA-256 `{summary['data_sha256']}`" in card
    assert f"it knows {len(classes)} classes only" in card
    assert f"Ended early at epoch {epochs} of 8, with the weights of epoch {best}" in card
    assert f"python train/prepare_data.py --source {class_folders} --out DIR --train 24" in card
    for name in classes:
        assert f"{name} 24 / 8 / 8" in card

    classify = run_script("runtime/classify", artifacts[0], data / "test", "--eval", "--json",
                          "--min-score", "0.5")
    assert classify.returncode == 0, classify.stderr[-3000:]
    lines = [json.loads(line) for line in classify.stdout.splitlines()]
    assert all(set(line["scores"]) == set(classes) for line in lines)
    sure = [line for line in lines if line["label"] != "unsure"]
    assert all(line["label"] in classes for line in sure)
    right = sum(line["label"] == line["path"].split("/")[-2] for line in sure)
    coverage = f"answered {100 * len(sure) / len(lines):.1f}% at --min-score 0.50"
    assert coverage in classify.stderr
    if sure:
        assert f"{coverage}, {100 * right / len(sure):.1f}% of those right" in classify.stderr
    assert "| --min-score | answered | accuracy on answered |" in classify.stderr
    assert "| 0.00 | 100.0% |" in classify.stderr

    server = Server(artifacts[0])
    try:
        status, info = server.json("/api/info")
        assert status == 200 and info["metadata"]["labels"] == classes
        _, _, page = server.request("/")
        for name in classes:
            photo = next((data / "test" / name).iterdir())
            status, answer = server.json("/api/classify", data=photo.read_bytes())
            assert status == 200 and answer["label"] in classes
            assert set(answer["scores"]) == set(classes)
    finally:
        log = server.stop()

    everything = "\n".join([card, page.decode(), json.dumps(info), log, messages(
        prepare, stopped, train, ship, classify)])
    assert PETS.search(everything) is None, PETS.search(everything)
