"""runtime/classify on real photos and planted bad files."""

import io
import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO, as_from_a_terminal, onnx_with_output, run_script
from PIL import Image

from edgeconv.runtime import Classifier, ImageError


def test_folder_with_bad_files_classifies_the_good_ones_and_exits_1(shipped, real_data,
                                                                    tmp_path):
    folder = tmp_path / "photos" / "dogs"
    folder.mkdir(parents=True)
    for number in range(1501, 1506):
        shutil.copy(real_data / "test" / "dogs" / f"dog.{number}.jpg", folder)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("not a photo")
    whole = (folder / "dog.1501.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    bomb = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(bomb, "PNG")  # 144 MP behind a small file
    (folder / "bomb.png").write_bytes(bomb.getvalue())
    result = run_script("runtime/classify", shipped / "plus_int8.tflite", tmp_path / "photos",
                        "--json", "--eval")
    assert result.returncode == 1
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 9
    errors = {line["path"].rsplit("/", 1)[-1]: line["error"] for line in lines if "error" in line}
    assert set(errors) == {"empty.jpg", "notes.jpg", "truncated.jpg", "bomb.png"}
    assert "MP limit" in errors["bomb.png"]
    good = [line for line in lines if "label" in line]
    reference = Classifier(shipped / "plus_int8.tflite")
    assert [line["label"] for line in good] == [reference.predict(line["path"]).label
                                                for line in good]
    assert all(line["ms"] > 0 for line in good)
    assert "5 images" in result.stderr and "4 failed" in result.stderr


def test_all_good_inputs_exit_0_and_a_bad_model_exits_2(shipped, real_data, tmp_path):
    photo = real_data / "test" / "cats" / "cat.1501.jpg"
    result = run_script("runtime/classify", shipped / "plus_int8.onnx", photo)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{photo}  ")
    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"nope")
    result = run_script("runtime/classify", bad, photo)
    assert result.returncode == 2 and result.stderr.startswith("error: ")


def test_python_api_takes_paths_pil_images_and_arrays(shipped, real_data):
    classifier = Classifier(shipped / "plus_int8.tflite")
    path = real_data / "test" / "cats" / "cat.1502.jpg"
    from_path = classifier.predict(path)
    assert from_path.label == max(from_path.scores, key=from_path.scores.get)
    assert from_path.ms > 0
    assert set(from_path.scores) == {"cats", "dogs"}
    assert abs(sum(from_path.scores.values()) - 1) < 1e-6
    assert classifier.predict(Image.open(path)).scores == from_path.scores
    assert classifier.predict(np.asarray(Image.open(path))).scores == from_path.scores
    batch = classifier.predict_batch([path, path])
    assert [p.label for p in batch] == [from_path.label] * 2


def test_predict_each_keeps_order_reports_errors_in_place_and_reads_lazily(shipped,
                                                                         real_data, tmp_path):
    classifier = Classifier(shipped / "plus_int8.tflite")
    photos = [real_data / "test" / name for name in
              ("cats/cat.1501.jpg", "dogs/dog.1501.jpg", "cats/cat.1502.jpg")]
    classifier.split()  # as many workers as interpreters
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(photos[0].read_bytes()[:500])
    sources = [photos[0], broken, photos[1], photos[2]] * 5
    taken = []

    def stream():
        for source in sources:
            taken.append(source)
            yield source

    results = classifier.predict_each(stream(), ahead=2)
    first_source, first = next(results)
    # the workers' images (one per interpreter), two ahead, and one being read
    assert len(taken) <= classifier.plan.interpreters + 3
    rest = list(results)
    assert [first_source] + [source for source, _ in rest] == sources
    outcomes = [first] + [outcome for _, outcome in rest]
    for source, outcome in zip(sources, outcomes):
        if source == broken:
            assert isinstance(outcome, ImageError) and "broken.jpg" in str(outcome)
        else:
            assert outcome.scores == classifier.predict(source).scores and outcome.ms > 0


def test_ctrl_c_on_a_folder_prints_the_summary_so_far_and_exits_130(shipped, real_data):
    process = subprocess.Popen(
        [sys.executable, str(REPO / "runtime/classify"), str(shipped / "plus_int8.tflite"),
         str(real_data / "test"), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        preexec_fn=as_from_a_terminal)
    first = json.loads(process.stdout.readline())
    assert first["label"] == Classifier(shipped / "plus_int8.tflite").predict(first["path"]).label
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    assert "interrupted after" in stderr and "of 1000" in stderr and "Traceback" not in stderr
    assert all(json.loads(line)["label"] for line in stdout.splitlines())


def test_ctrl_c_ends_a_camera_run_within_a_second_with_a_summary(shipped, real_data,
                                                                 tmp_path):
    import cv2

    video = tmp_path / "long.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30, (160, 120))
    frame = cv2.resize(cv2.imread(str(real_data / "test/cats/cat.1501.jpg")), (160, 120))
    for _ in range(3000):
        writer.write(frame)
    writer.release()
    process = subprocess.Popen(
        [sys.executable, str(REPO / "runtime/classify"), str(shipped / "plus_int8.onnx"),
         "--camera", str(video), "--no-display"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        preexec_fn=as_from_a_terminal)
    assert process.stdout.readline().strip()  # classifying
    process.send_signal(signal.SIGINT)
    sent = time.monotonic()
    _, stderr = process.communicate(timeout=30)
    assert time.monotonic() - sent < 1.5
    assert process.returncode == 0 and " frame" in stderr and "Traceback" not in stderr


def test_min_score_answers_unsure_and_keeps_the_scores(shipped, real_data, tmp_path):
    photos = sorted((real_data / "test" / "cats").iterdir())[:40]
    classifier = Classifier(shipped / "plus_int8.tflite")
    scores = {path: classifier.predict(path).score for path in photos}
    cut = sorted(scores.values())[len(scores) // 2]  # about half fall under it
    unsure = Classifier(shipped / "plus_int8.tflite", min_score=cut)
    for path, score in scores.items():
        prediction = unsure.predict(path)
        assert (prediction.label == "unsure") == (score < cut)
        assert prediction.score == score and set(prediction.scores) == {"cats", "dogs"}
    folder = tmp_path / "cats"
    folder.mkdir()
    for path in photos:
        (folder / path.name).symlink_to(path)
    result = run_script("runtime/classify", shipped / "plus_int8.tflite", tmp_path, "--json",
                        "--eval", "--min-score", str(cut))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    expected_unsure = sum(score < cut for score in scores.values())
    assert sum(line["label"] == "unsure" for line in lines) == expected_unsure > 0
    assert all("scores" in line for line in lines)
    correct = sum(line["label"] == "cats" for line in lines)
    assert f"accuracy {correct / len(lines):.4f} on {len(lines)} images" in result.stderr
    assert f"({expected_unsure} unsure, counted wrong)" in result.stderr
    bad = run_script("runtime/classify", shipped / "plus_int8.tflite", photos[0],
                     "--min-score", "1.5")
    assert bad.returncode == 2 and "--min-score must be between 0 and 1" in bad.stderr


def test_a_models_own_min_score_is_its_default(shipped, tmp_path):
    strict = onnx_with_output(shipped / "plus_int8.onnx", tmp_path / "strict.onnx",
                              min_score=0.999)
    photo = REPO / "devices" / "selftest" / "cat.jpg"
    assert Classifier(strict).predict(photo).label == "unsure"
    assert Classifier(strict, min_score=0).predict(photo).label == \
        Classifier(shipped / "plus_int8.onnx").predict(photo).label


@pytest.mark.slow
def test_eval_prints_accuracy_and_confusion_that_match_the_lines(shipped, real_data):
    result = run_script("runtime/classify", shipped / "plus_int8.tflite", real_data / "test",
                        "--eval", "--json")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    labels = ["cats", "dogs"]
    confusion = [[sum(1 for line in lines if f"/{truth}/" in line["path"]
                      and line["label"] == predicted) for predicted in labels]
                 for truth in labels]
    correct = confusion[0][0] + confusion[1][1]
    assert f"accuracy {correct / 1000:.4f} on 1000 images" in result.stderr
    assert f"{'cats':<6}{confusion[0][0]:>6}{confusion[0][1]:>6}" in result.stderr
    assert f"{'dogs':<6}{confusion[1][0]:>6}{confusion[1][1]:>6}" in result.stderr


def test_large_photos_get_the_same_label_with_the_fast_decode(shipped, real_data, tmp_path):
    photos = sorted((real_data / "test" / "dogs").iterdir())[:6] + sorted(
        (real_data / "test" / "cats").iterdir())[:6]
    for photo in photos:
        Image.open(photo).convert("RGB").resize((3000, 2250)).save(tmp_path / photo.name,
                                                                  "JPEG", quality=90)
    fast = run_script("runtime/classify", shipped / "plus_int8.tflite", tmp_path, "--json")
    full = run_script("runtime/classify", shipped / "plus_int8.tflite", tmp_path, "--json",
                      "--full-decode")
    assert fast.returncode == full.returncode == 0, fast.stderr + full.stderr
    fast_lines = [json.loads(line) for line in fast.stdout.splitlines()]
    full_lines = [json.loads(line) for line in full.stdout.splitlines()]
    # A photo scored near 0.5 may flip with any change of decoding: those are left out.
    clear = [i for i, line in enumerate(full_lines) if line["score"] >= 0.6]
    assert len(clear) >= 9
    assert [fast_lines[i]["label"] for i in clear] == [full_lines[i]["label"] for i in clear]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(fast_lines, full_lines)) < 0.2
