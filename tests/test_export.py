"""export/: all six artifacts from a model trained on real photos, metadata, parity, errors."""

import hashlib
import json
import subprocess
import sys

import pytest
from conftest import ARTIFACTS, REPO, onnx_with_output, run_script

from edgeconv.export import parity
from edgeconv.runtime.classifier import Classifier
from edgeconv.runtime.evaluate import decide, labelled_images
from edgeconv.runtime.metadata import ModelFileError, read_metadata


def test_six_artifacts_with_the_expected_sizes(exported):
    sizes = {name: (exported / name).stat().st_size / 1e6 for name in ARTIFACTS}
    assert 13.5 < sizes["model_float32.tflite"] < 14.5  # 3.45 M float32 weights
    assert 6.5 < sizes["model_float16.tflite"] < 7.5
    for name in ("model_dynamic.tflite", "model_int8.tflite", "model_int8.onnx"):
        assert 3.2 < sizes[name] < 4.0, name
    assert 13.5 < sizes["model_float32.onnx"] < 14.5
    assert not list(exported.glob(".*")), "temporary files left behind"


def test_metadata_reads_back_and_classifies_without_tensorflow(exported, real_data):
    script = f"""
import json, sys
sys.modules["tensorflow"] = None  # any import of TensorFlow now fails
sys.modules["keras"] = None
from edgeconv.runtime.classifier import Classifier
out = {{}}
for name in {ARTIFACTS!r}:
    classifier = Classifier({str(exported)!r} + "/" + name)
    prediction = classifier.predict({str(real_data / "test/dogs/dog.1501.jpg")!r})
    out[name] = {{"metadata": classifier.metadata, "label": prediction.label}}
print(json.dumps(out))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    model_sha = hashlib.sha256((exported / "model.keras").read_bytes()).hexdigest()
    for name, entry in found.items():
        metadata = entry["metadata"]
        assert metadata["labels"] == ["cats", "dogs"], name
        assert metadata["input"]["shape"] == [1, 150, 150, 3]
        assert metadata["preprocessing"]["resize"] == "bilinear"
        assert metadata["output"] == {"activation": "sigmoid", "threshold": 0.5}
        assert metadata["source_model"]["sha256"] == model_sha
        assert "keras" in metadata["tools"]
    labels = {entry["label"] for entry in found.values()}
    assert labels == {Classifier(exported / "model_float32.tflite").predict(
        real_data / "test/dogs/dog.1501.jpg").label}  # every format, the same label
    int8 = found["model_int8.tflite"]["metadata"]
    assert int8["input"]["dtype"] == "uint8" and int8["input"]["quantization"] == [1.0, 0.0]
    assert int8["calibration"]["images"] == 300
    assert found["model_int8.onnx"]["metadata"]["calibration"]["images"] == 300
    assert found["model_float32.tflite"]["metadata"]["calibration"] is None


def test_parity_gates_pass_on_real_photos(exported, real_data, tmp_path):
    artifacts = [exported / name for name in ARTIFACTS]
    result = run_script("export/parity.py", "--reference", exported / "model.keras",
                        "--data", real_data / "test", *artifacts, "--json",
                        tmp_path / "parity.json", "--report", tmp_path / "parity.md")
    report = json.loads((tmp_path / "parity.json").read_text())
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    rows = {row["artifact"]: row for row in report["artifacts"]}
    assert set(rows) == set(ARTIFACTS)
    assert all(row["images"] == 1000 and row["passed"] for row in rows.values())
    for name in ("model_float32.tflite", "model_float32.onnx"):
        assert rows[name]["agreement"] == 1.0 and rows[name]["max_abs_dp"] <= 1e-4
    assert (tmp_path / "parity_model_int8_tflite.png").read_bytes()[:4] == b"\x89PNG"

    # The device's classify gives, file by file, the labels the parity check scored.
    artifact = exported / "model_int8.tflite"
    device = run_script("runtime/classify", artifact, real_data / "test", "--json")
    device_labels = {line["path"]: line["label"]
                     for line in map(json.loads, device.stdout.splitlines())}
    classifier = Classifier(artifact)
    files, _ = labelled_images(real_data / "test", classifier.labels)
    outputs, _ = parity.model_outputs(files, classifier.size, classifier.engine.run, 1, "")
    parity_labels = [classifier.labels[i] for i in decide(outputs, classifier.threshold)]
    assert [device_labels[str(path)] for path in files] == parity_labels
    correct = sum(label == path.parent.name for path, label in zip(files, parity_labels))
    assert correct / len(files) == rows["model_int8.tflite"]["artifact_accuracy"]
    assert "| model_int8.onnx | int8 |" in (tmp_path / "parity.md").read_text()


def test_a_failed_gate_exits_1_and_names_the_failure(exported, real_data, tmp_path):
    result = run_script("export/parity.py", "--reference", exported / "model.keras",
                        "--data", real_data / "test" / "cats", exported / "model_int8.tflite",
                        "--int8-agreement", "1.01")
    assert result.returncode == 1
    assert "FAIL: agreement" in result.stdout


def test_export_errors_are_one_line_and_leave_no_file(exported, tmp_path):
    fake = tmp_path / "model.keras"
    fake.write_text("not a model")
    cases = [
        (["export/to_tflite.py", fake], "not a Keras model"),
        (["export/to_onnx.py", fake], "not a Keras model"),
        (["export/to_tflite.py", exported, "--quantize", "int8", "--calibration", tmp_path],
         "no images"),
        (["export/to_tflite.py", exported, "--out", tmp_path / "missing" / "m.tflite"],
         "does not exist"),
    ]
    for args, message in cases:
        result = run_script(*args)
        assert result.returncode == 2, (args, result.stderr[-1000:])
        assert message in result.stderr and "Traceback" not in result.stderr, args
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]


def test_truncated_or_foreign_artifacts_are_refused(exported, tmp_path):
    whole = (exported / "model_int8.tflite").read_bytes()
    truncated = tmp_path / "cut.tflite"
    truncated.write_bytes(whole[: len(whole) // 3])
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        read_metadata(truncated)
    onnx_cut = tmp_path / "cut.onnx"
    onnx_cut.write_bytes((exported / "model_int8.onnx").read_bytes()[:5000])
    with pytest.raises(ModelFileError):
        read_metadata(onnx_cut)
    text = tmp_path / "notes.tflite"
    text.write_text("hello")
    with pytest.raises(ModelFileError, match="not a TFLite or ONNX model"):
        read_metadata(text)
    result = run_script("export/parity.py", "--reference", exported / "model.keras",
                        "--data", tmp_path, truncated)
    assert result.returncode == 2 and "truncated or corrupt" in result.stderr


@pytest.mark.slow
def test_all_exports_what_is_missing_then_nothing(tiny_run, few_photos, tmp_path):
    wanted = "TFLite float32,TFLite int8,ONNX float32,ONNX int8"
    first = run_script("export/all.py", tiny_run, "--formats", wanted)
    assert first.returncode == 0, first.stdout + first.stderr[-2000:]
    assert first.stdout.count(" exported ") == 4
    again = run_script("export/all.py", tiny_run, "--formats", "tflite INT8")
    assert again.returncode == 0 and again.stdout.count(" exists ") == 1
    assert " exported " not in again.stdout
    unknown = run_script("export/all.py", tiny_run, "--formats", "tflite int4")
    assert unknown.returncode == 2 and "unknown format 'tflite int4'" in unknown.stderr

    files = [tiny_run / name for name in ("model_float32.tflite", "model_int8.tflite",
                                          "model_float32.onnx", "model_int8.onnx")]
    for path in files:
        metadata = read_metadata(path)
        assert metadata["source_model"]["recipe"] == "tiny"
        assert metadata["labels"] == ["cats", "dogs"]
    result = run_script("export/parity.py", "--reference", tiny_run / "model.keras",
                        "--data", few_photos, *files[::2], "--json", tmp_path / "p.json")
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    rows = json.loads((tmp_path / "p.json").read_text())["artifacts"]
    assert [row["images"] for row in rows] == [20, 20]
    assert all(row["agreement"] == 1.0 and row["max_abs_dp"] < 1e-4 for row in rows)


def test_parity_check_uses_the_threshold_in_the_models_metadata(shipped, few_photos, tmp_path):
    from edgeconv.export.parity import check
    from edgeconv.export.source import Source

    strict = onnx_with_output(shipped / "plus_int8.onnx", tmp_path / "strict.onnx",
                              threshold=0.9)  # "dogs" only when P(dogs) >= 0.9
    found = check(Source(shipped / "plus.keras"), [shipped / "plus_int8.onnx", strict],
                  few_photos)
    truth = [path.parent.name for path in found.files]
    for row, model in zip(found.rows, (shipped / "plus_int8.onnx", strict)):
        classifier = Classifier(model)
        assert row["threshold"] == classifier.threshold
        device = [classifier.predict(path).label for path in found.files]
        assert row["artifact_accuracy"] == sum(map(str.__eq__, device, truth)) / len(truth)
        keras_dogs = found.reference[:, 0] >= classifier.threshold
        keras_labels = ["dogs" if dog else "cats" for dog in keras_dogs]
        assert row["reference_accuracy"] == sum(map(str.__eq__, keras_labels, truth)) / 20
    assert found.rows[1]["threshold"] == 0.9 and row["images"] == 20


def test_calibration_is_described_by_name_count_and_digest_never_a_path(shipped, real_data,
                                                                        tmp_path):
    from edgeconv.export.source import Source, calibration_set

    photos = sorted((real_data / "train" / "cats").glob("*.jpg"))[:4]
    described = []
    for place in ("one/machine", "another/place"):
        folder = tmp_path / place / "cats_and_dogs_small" / "train"
        folder.mkdir(parents=True)
        for photo in photos:
            (folder / photo.name).write_bytes(photo.read_bytes())
        described.append(calibration_set(Source(shipped / "plus.keras"), folder, 3)[1])
    assert described[0] == described[1]  # the same photos anywhere: the same description
    assert described[0]["name"] == "cats_and_dogs_small/train"
    assert described[0]["images"] == 3 and len(described[0]["sha256"]) == 64
    assert str(tmp_path) not in json.dumps(described[0]) and "folder" not in described[0]
