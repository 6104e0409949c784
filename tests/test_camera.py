"""runtime/classify --camera on a video file written by the test, and stream recovery."""

import json

import cv2
import numpy as np
import pytest
from conftest import run_script

from edgeconv.runtime import camera
from edgeconv.runtime.classifier import Classifier


@pytest.fixture(scope="module")
def video(real_data, tmp_path_factory):
    """12 frames at 320x240 alternating real cat and dog photos (MJPG in AVI)."""
    path = tmp_path_factory.mktemp("video") / "pets.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    for index in range(12):
        kind = "cats/cat" if index % 2 == 0 else "dogs/dog"
        frame = cv2.imread(str(real_data / "test" / f"{kind}.{1501 + index}.jpg"))
        writer.write(cv2.resize(frame, (320, 240)))
    writer.release()
    assert path.stat().st_size > 10_000
    return path


def read_frames(path):
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(frame[:, :, ::-1])


def test_camera_frames_get_the_same_labels_as_the_python_api(shipped, video):
    model = shipped / "plus_int8.tflite"
    result = run_script("runtime/classify", model, "--camera", video, "--max-frames", "5",
                        "--json", "--no-display")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["frame"] for line in lines] == [0, 1, 2, 3, 4]
    classifier = Classifier(model)
    for line, frame in zip(lines, read_frames(video)):
        expected = classifier.predict(frame)
        assert line["label"] == expected.label
        assert line["score"] == pytest.approx(expected.score, abs=1e-6)
    assert "5 frames" in result.stderr


def test_a_stream_that_ends_early_stops_cleanly_with_a_summary(shipped, video):
    result = run_script("runtime/classify", shipped / "plus_int8.onnx", "--camera", video,
                        "--every", "3", "--max-frames", "100", "--no-display")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 4  # frames 0, 3, 6, 9 of 12
    assert all(" ms  " in line and ("cats" in line and "dogs" in line) for line in lines)
    assert "4 frames" in result.stderr and "FPS" in result.stderr
    assert "ms from capture to answer" in result.stderr


def test_frames_overlapped_on_split_interpreters_come_in_order_with_their_latency(shipped,
                                                                                 video):
    classifier = Classifier(shipped / "plus_int8.tflite", threads=2)
    classifier.split()
    got = list(camera.classified_frames(classifier, str(video), every=2))
    assert [index for index, *_ in got] == [0, 2, 4, 6, 8, 10]
    one_at_a_time = Classifier(shipped / "plus_int8.tflite")
    for (_, frame, prediction, latency_ms), expected in zip(got, read_frames(video)[::2]):
        assert np.array_equal(frame, expected)
        assert prediction.scores == one_at_a_time.predict(expected).scores
        assert latency_ms >= prediction.ms > 0  # capture to answer holds decode + inference


def test_a_camera_that_cannot_be_opened_is_a_usage_error(shipped, tmp_path):
    result = run_script("runtime/classify", shipped / "plus_int8.tflite", "--camera",
                        "rtsp://127.0.0.1:9/none", "--no-display", timeout=120)
    assert result.returncode == 2
    assert "cannot open" in result.stderr and "Traceback" not in result.stderr


def test_a_dropped_live_stream_is_reopened_with_backoff(monkeypatch):
    frame = np.zeros((4, 4, 3), np.uint8)
    sessions = iter([[frame, None], [None], [frame, frame, None]])
    opened = []

    def fake_open(source, width, height):
        reads = iter(next(sessions, [None]))
        opened.append(source)
        return (lambda: next(reads, None)), (lambda: None)

    delays = []
    monkeypatch.setattr(camera, "open_capture", fake_open)
    monkeypatch.setattr(camera.time, "sleep", delays.append)
    messages = []
    got = list(camera.frames("0", None, None, retries=4,
                             log=lambda *a, **k: messages.append(a[0])))
    assert len(got) == 3
    assert delays[:3] == [0.5, 1.0, 0.5]  # backoff grows, and resets after a good frame
    assert "dropped; retry 1/4" in messages[0]
    assert "gave up after 4 retries" in messages[-1]
