"""export/reproduce.py end to end in quick mode: runs, export, parity, docs; then resumes."""

import json

import pytest
from conftest import run_script

pytestmark = pytest.mark.slow


def test_reproduce_writes_results_and_skips_finished_runs(real_data, tmp_path):
    args = ["export/reproduce.py", "--data", real_data, "--out", tmp_path / "results",
            "--recipes", "baseline,augmented", "--seeds", "0,1", "--epochs", "1",
            "--limit", "20", "--docs",
            tmp_path / "docs" / "results.md", "--models", tmp_path / "models"]
    first = run_script(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    docs = tmp_path / "docs"
    numbers = json.loads((docs / "results.json").read_text())
    for recipe in ("baseline", "augmented"):
        stats = numbers["recipes"][recipe]["test_accuracy"]
        assert stats["n"] == 2 and stats["min"] <= stats["mean"] <= stats["max"]
        assert numbers["recipes"][recipe]["seeds"] == [0, 1]
    assert list(numbers["exported"]) == ["augmented"]  # the baseline is not deployed
    parity = numbers["exported"]["augmented"]["parity"]
    assert {row["artifact"] for row in parity} == {"model_int8.tflite", "model_int8.onnx"}
    assert all(row["images"] == 2 * 20 for row in parity)  # --limit holds for the test split too
    text = (docs / "results.md").read_text()
    assert "| baseline | 1 |" in text and "| augmented | 1 |" in text
    assert "--recipes baseline,augmented --seeds 0,1 --epochs 1 --limit 20" in text
    assert "| model_int8.tflite |" in text
    assert (docs / "results_curves.png").read_bytes()[:4] == b"\x89PNG"
    shipped = json.loads((tmp_path / "models" / "models.json").read_text())
    assert list(shipped) == ["augmented"]  # the exported run, its int8 files, no Keras file
    assert [f["file"] for f in shipped["augmented"]["files"]] == [
        "augmented_int8.tflite", "augmented_int8.onnx"]
    card = (tmp_path / "models" / "README.md").read_text()
    assert "## augmented (`augmented-seed" in card and "--epochs 1 --limit 20" in card

    again = run_script(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "== " not in again.stdout  # every run was already finished: nothing retrained

    report_only = run_script(*[a if a != "baseline,augmented" else "baseline,augmented,plus"
                               for a in args], "--no-train")
    assert report_only.returncode == 0, report_only.stderr[-3000:]
    assert "-- plus, seed 0: not finished, left out" in report_only.stdout
    assert "== " not in report_only.stdout
    assert list(json.loads((docs / "results.json").read_text())["recipes"]) == ["baseline",
                                                                                "augmented"]
