"""models/: the shipped files match their cards, and classify reproduces the cards' accuracy."""

import hashlib
import json
import re

import pytest
from conftest import MODELS, run_script

from edgeconv.runtime.metadata import read_metadata
from edgeconv.runtime.tables import percent


def index() -> dict:
    return json.loads((MODELS / "models.json").read_text())


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def int8_files(shipped):
    return [(model, file) for model in index().values() for file in model["files"]
            if "test_accuracy" in file]


def test_every_shipped_file_matches_its_card_and_its_keras_model(shipped):
    card = (shipped / "README.md").read_text()
    for model in index().values():
        for file in model["files"]:
            path = shipped / file["file"]
            assert sha256(path) == file["sha256"] and path.stat().st_size == file["bytes"]
            assert file["sha256"][:16] in card and f"`{file['file']}`" in card
        int8 = [file for file in model["files"] if "test_accuracy" in file]
        assert len(int8) == 2
        for file in int8:
            metadata = read_metadata(shipped / file["file"])
            assert metadata["labels"] == file["labels"] == ["cats", "dogs"]
            assert metadata["input"] == file["input"]
            assert metadata["source_model"]["sha256"] == file["source_sha256"] \
                == model["keras_sha256"]
            assert metadata["quantization"] == "int8"
            assert percent(file["test_accuracy"]) in card
        assert model["keras_sha256"] in card
    plus = index()["plus"]
    assert sha256(shipped / "plus.keras") == plus["keras_sha256"]  # the Keras file shipped
    assert (shipped / "plus_int8.tflite").stat().st_size < 1_200_000


@pytest.mark.slow
def test_classify_eval_gives_exactly_the_accuracy_on_each_card(shipped, real_data):
    files = int8_files(shipped)
    assert {file["file"] for _, file in files} >= {"plus_int8.tflite", "plus_int8.onnx"}
    for model, file in files:
        result = run_script("runtime/classify", shipped / file["file"], real_data / "test",
                            "--eval")
        assert result.returncode == 0, result.stderr[-2000:]
        # A model with a none head: its class guesses, its none answers aside.
        found = re.search(r"class guesses (\d\.\d{4}) right", result.stdout) or \
            re.search(r"accuracy (\d\.\d{4}) on 1000 images", result.stdout)
        assert found, result.stdout[-500:]
        assert found.group(1) == f"{file['test_accuracy']:.4f}", (model["recipe"], file)


@pytest.mark.slow
def test_shipped_plus_model_passes_the_int8_gates_against_its_keras_model(shipped, real_data):
    from edgeconv.export.parity import check
    from edgeconv.export.source import Source

    found = check(Source(shipped / "plus.keras"),
                  [shipped / "plus_int8.tflite", shipped / "plus_int8.onnx"], real_data / "test")
    assert [row["passed"] for row in found.rows] == [True, True], found.rows
    cards = {file["file"]: file for _, file in int8_files(shipped)}
    for row in found.rows:
        assert row["artifact_accuracy"] == cards[row["artifact"]]["test_accuracy"]
        assert row["agreement"] == cards[row["artifact"]]["agreement"]


def test_every_teacher_is_on_its_page_and_teaches_a_distilled_run():
    # models/teachers: runs kept for distillation; the page names each file and its hash,
    # and each is a run's cats-vs-dogs model that --set teachers=[...] accepts.
    import numpy as np

    from edgeconv.train.distill import Teachers
    from edgeconv.train.recipes import RECIPES, with_settings

    teachers = sorted((MODELS / "teachers").glob("*.keras"))
    page = (MODELS / "teachers" / "README.md").read_text()
    assert teachers
    for path in teachers:
        assert f"`{path.name}`" in page and sha256(path)[:16] in page
    recipe = with_settings(RECIPES["plus"], {"teachers": [str(p) for p in teachers]})
    layer = Teachers(recipe.teachers, num_classes=2)
    photos = np.random.default_rng(0).integers(0, 256, (2, 150, 150, 3)).astype("float32")
    answer = np.asarray(layer(photos))
    assert answer.shape == (2, 1) and ((answer >= 0) & (answer <= 1)).all()
    assert len(layer.models) == len(teachers)
