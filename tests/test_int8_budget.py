"""int8 within a budget: the per-layer report, the budget search and the golden self-test."""

import json
import os
import shutil

import numpy as np
import pytest
from conftest import MODELS, impostor, run_script
from PIL import Image

from edgeconv.runtime.metadata import read_metadata


def export(run_dir, script, *args):
    result = run_script(script, run_dir, "--quantize", "int8", *args)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
@pytest.mark.slow
def test_layer_report_ranks_every_layer_worst_first(tiny_run, tmp_path, fmt):
    report = tmp_path / "layers.md"
    result = run_script("export/layers.py", tiny_run, "--format", fmt, "--images", "8",
                        "--report", report, "--json", tmp_path / "layers.json")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads((tmp_path / "layers.json").read_text())["layers"]
    ops = {row["op"] for row in rows}
    assert {"CONV_2D", "Relu"} & ops and {"FULLY_CONNECTED", "MatMul"} & ops
    values = [row["sqnr_db"] for row in rows]
    assert values == sorted(values) and np.isfinite(values).all() and 0 < values[0] < 80
    assert "| 1 |" in report.read_text() and (tmp_path / "layers.png").stat().st_size > 5000


@pytest.fixture(scope="module")
def tiny_int8(tiny_run, tmp_path_factory):
    """The tiny convnet exported to int8 TFLite and ONNX, golden outputs inside."""
    out = tmp_path_factory.mktemp("tiny-int8")
    export(tiny_run, "export/to_tflite.py", "--out", out / "tiny.tflite")
    export(tiny_run, "export/to_onnx.py", "--out", out / "tiny.onnx")
    return out


@pytest.mark.parametrize("suffix", [".tflite", ".onnx"])
@pytest.mark.slow
def test_golden_self_test_passes_here_and_refuses_another_models_weights(tiny_int8, shipped,
                                                                         tmp_path, suffix):
    own = tiny_int8 / f"tiny{suffix}"
    metadata = read_metadata(own)
    assert len(metadata["golden"]["inputs"]) == 4 and len(json.dumps(metadata["golden"])) < 20000

    passed = run_script("runtime/classify", own, "--self-test")
    assert passed.returncode == 0 and "golden self-test passed" in passed.stderr

    # The plus model's weights under the tiny model's metadata: the device computes otherwise.
    fake = impostor(own, shipped / f"plus_int8{suffix}", tmp_path / f"impostor{suffix}")
    refused = run_script("runtime/classify", fake, "--self-test",
                         shipped.parent / "devices/selftest/cat.jpg")
    assert refused.returncode == 1, refused.stderr
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith("golden self-test FAILED") and "largest difference" in line
    assert refused.stdout == ""  # nothing classified with a model that computes otherwise


def test_hot_swap_refuses_a_model_whose_golden_outputs_differ(tiny_int8, shipped, tmp_path):
    from edgeconv.runtime.classifier import Classifier
    from edgeconv.runtime.hotswap import HotModel

    live = tmp_path / "current.tflite"
    shutil.copy(tiny_int8 / "tiny.tflite", live)
    logged = []
    model = HotModel(live, Classifier, log=logged.append)
    fake = impostor(live, shipped / "plus_int8.tflite", tmp_path / "incoming.tflite")
    os.replace(fake, live)  # as deploy renames a new model into place
    assert model.poll(force=True) is False and model.refused == 1 and model.swaps == 0
    assert "golden self-test FAILED on litert" in logged[-1]
    assert model.classifier.predict(shipped.parent / "devices/selftest/cat.jpg").label


@pytest.mark.slow
@pytest.mark.parametrize("script", ["export/to_tflite.py", "export/to_onnx.py"])
def test_damaged_calibration_fails_the_budget_and_the_search_repairs_it(real_data, tmp_path,
                                                                        script):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "model.keras").symlink_to(MODELS / "plus.keras")
    (run_dir / "run.json").write_text(json.dumps({"classes": ["cats", "dogs"],
                                                  "recipe": "plus", "data": str(real_data)}))
    black = tmp_path / "black"
    black.mkdir()
    for index in range(4):
        Image.new("RGB", (150, 150)).save(black / f"black{index}.png")
    budget_photos = tmp_path / "budget"
    for name in ("cats", "dogs"):
        (budget_photos / name).mkdir(parents=True)
        for photo in sorted((real_data / "validation" / name).iterdir())[:40]:
            (budget_photos / name / photo.name).symlink_to(photo)
    out = tmp_path / ("model" + (".tflite" if "tflite" in script else ".onnx"))

    result = export(run_dir, script, "--calibration", black, "--budget", "0.95",
                    "--budget-data", budget_photos, "--out", out)
    tries = [line for line in result.stderr.splitlines() if line.startswith("try ")]
    assert "of black" in tries[0] and float(tries[0].split("agreement")[1].split("%")[0]) < 95
    assert "1000 calibration images of train" in tries[-1]
    assert float(tries[-1].split("agreement")[1].split("%")[0]) >= 95
    recipe = read_metadata(out)["int8_recipe"]
    assert recipe.pop("agreement") >= 0.95
    assert recipe == {"calibration_folder": "train", "calibration_images": 1000,
                      "method": "minmax", "float_layers": [], "budget": 0.95,
                      "budget_photos": "budget"}
    assert read_metadata(out)["calibration"]["images"] == 1000
