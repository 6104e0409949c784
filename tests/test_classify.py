"""runtime/classify on real photos and planted bad files."""

import json
import shutil

from conftest import run_script


def test_folder_with_bad_files_classifies_the_good_ones_and_exits_1(exported, real_data,
                                                                    tmp_path):
    folder = tmp_path / "photos" / "dogs"
    folder.mkdir(parents=True)
    for number in range(1501, 1506):
        shutil.copy(real_data / "test" / "dogs" / f"dog.{number}.jpg", folder)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("not a photo")
    result = run_script("runtime/classify", exported / "model_int8.tflite", tmp_path / "photos",
                        "--json", "--eval")
    assert result.returncode == 1
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 7
    errors = {line["path"].rsplit("/", 1)[-1]: line["error"] for line in lines if "error" in line}
    assert set(errors) == {"empty.jpg", "notes.jpg"}
    good = [line for line in lines if "label" in line]
    assert all(line["label"] in ("cats", "dogs") and line["ms"] > 0 for line in good)
    assert "5 images" in result.stderr and "2 failed" in result.stderr


def test_all_good_inputs_exit_0_and_a_bad_model_exits_2(exported, real_data, tmp_path):
    photo = real_data / "test" / "cats" / "cat.1501.jpg"
    result = run_script("runtime/classify", exported / "model_float.onnx", photo)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{photo}  ")
    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"nope")
    result = run_script("runtime/classify", bad, photo)
    assert result.returncode == 2 and result.stderr.startswith("error: ")
