"""classify and the runtime on hostile names and files, and what a model tells the world: the
same generators as tests/reliability/hostile.py, with the lines they print checked here."""

import json
import shutil
import sys

import pytest
from conftest import MODELS, REPO, run_script

sys.path.insert(0, str(REPO / "tests" / "reliability"))

import hostile  # noqa: E402

from edgeconv.benchmarks.server import Server  # noqa: E402
from edgeconv.runtime.metadata import read_metadata  # noqa: E402
from edgeconv.runtime.text import display  # noqa: E402

PHOTO = REPO / "devices" / "selftest" / "cat.jpg"


@pytest.fixture(autouse=True)
def no_failures():
    hostile.FAILURES.clear()
    yield
    assert hostile.FAILURES == []


def test_display_escapes_every_control_character_and_keeps_the_rest():
    assert display("a\x1b[2K\x1b[1Ab\x1b]0;t\x07\x9b\u202e\u2028\n\r\t\x7f.jpg") == \
        "a\\x1b[2K\\x1b[1Ab\\x1b]0;t\\x07\\x9b\\u202e\\u2028\\n\\r\\t\\x7f.jpg"
    assert display("chat été 猫 🐱.jpg") == "chat été 猫 🐱.jpg"
    assert display(b"not-utf8-\xff.jpg".decode(errors="surrogateescape")) == \
        "not-utf8-\\udcff.jpg"


def test_hostile_names_in_text_and_json_and_a_huge_photo(shipped, tmp_path):
    rows = hostile.name_rows(shipped / "plus_int8.tflite", PHOTO, tmp_path)
    print("\n" + "\n".join(map(str, rows)))
    assert all(row[2:] == [0, 0, 0, 0] for row in rows)
    text = run_script("runtime/classify", shipped / "plus_int8.tflite", tmp_path / "names")
    assert "erase-\\x1b[2K\\x1b[1A.jpg  cats" in text.stdout and "\x1b" not in text.stdout
    print(f"text: {text.stdout.splitlines()[2]}")
    lines = run_script("runtime/classify", shipped / "plus_int8.tflite", tmp_path / "names",
                       "--json").stdout.splitlines()
    paths = {json.loads(line)["path"] for line in lines}  # valid JSON, names intact
    assert {str(tmp_path / "names" / name) for name in hostile.ESCAPE_NAMES} < paths


def test_a_huge_sparse_photo_is_refused_before_it_is_read(shipped, tmp_path):
    huge = tmp_path / "huge.jpg"
    with huge.open("wb") as file:
        file.truncate(hostile.HUGE_BYTES)
    outcome, stderr, stdout, rss_mb = hostile.classify_measured(shipped / "plus_int8.tflite",
                                                                huge)
    print(f"\n{stdout.splitlines()[0]} (peak RSS {rss_mb:.0f} MB)")
    assert outcome == "exit 1" and "1024 MiB, over the 256 MiB limit for a photo" in stdout
    assert rss_mb < hostile.RSS_LIMIT_MB


def test_hostile_model_files_are_one_line_and_exit_2(shipped, tmp_path):
    models = [shipped / "plus_int8.tflite", shipped / "plus_int8.onnx"]
    rows = hostile.model_file_rows(models, PHOTO, tmp_path)
    print("\n" + "\n".join(map(str, rows)))
    assert len(rows) == 7 and all(row[2:] == [0, 0, 0, 0] for row in rows)
    for name, expected in [("deep.onnx", "edgeconv metadata nested over 32 deep"),
                           ("zero.tflite", "not a regular file"),
                           ("fifo.tflite", "not a regular file"),
                           ("big.tflite", "600 MiB, over the 512 MiB limit for a model"),
                           ("labels.onnx", "labels with control characters: "
                                           "\\x1b]0;owned\\x07cats, dogs\\x1b[2K")]:
        result = run_script("runtime/classify", tmp_path / "model-files" / name, PHOTO,
                            timeout=60)
        print(f"{name}: exit {result.returncode}: {result.stderr.strip()}")
        assert result.returncode == 2 and result.stderr.count("\n") == 1
        assert expected in result.stderr


def test_models_and_the_api_show_no_path_of_the_machine_that_made_them(shipped, tmp_path):
    for model in ("plus_int8.tflite", "plus_int8.onnx", "augmented_int8.tflite"):
        metadata = read_metadata(MODELS / model)
        assert metadata["calibration"]["name"].startswith("cats_and_dogs_small/train")
        assert '"/' not in json.dumps(metadata), metadata  # no absolute path anywhere
    private = tmp_path / "home" / "someone" / "private"
    private.mkdir(parents=True)
    shutil.copy(shipped / "plus_int8.tflite", private / "plus_int8.tflite")
    server = Server(private / "plus_int8.tflite")
    try:
        status, _, body = server.request("/api/info")
    finally:
        server.stop()
    assert status == 200 and json.loads(body)["model"] == "plus_int8.tflite"
    assert b"someone" not in body and b'"/' not in body, body
