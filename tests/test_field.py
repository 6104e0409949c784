"""Learning from the field, on the device: serve and classify --camera keep the frames the
model is unsure of (--capture), the /label page and its API label them, and the tar of the
labelled frames carries a manifest. A video of real photos is the camera."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO, run_script

from edgeconv.benchmarks.server import Server
from edgeconv.runtime.capture import Capture, CaptureRules
from edgeconv.runtime.classifier import Classifier, Prediction

CLASSIFY = REPO / "runtime" / "classify"
SIZE = (320, 240)
UNSURE = Prediction("unsure", 0.55, {"cats": 0.55, "dogs": 0.45}, guess="cats")


def frames_of(photos: list[Path]) -> list[np.ndarray]:
    """Each photo as a video frame would be: 320x240, BGR."""
    return [cv2.resize(cv2.imread(str(photo)), SIZE) for photo in photos]


def write_video(path: Path, frames) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, SIZE)
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def scored(model: Path, frames: list[np.ndarray]) -> list[Prediction]:
    classifier = Classifier(model)
    return [classifier.predict(np.ascontiguousarray(frame[:, :, ::-1])) for frame in frames]


@pytest.fixture(scope="module")
def field_video(shipped, real_data, tmp_path_factory) -> tuple[Path, int]:
    """A video of 8 test photos the plus model is unsure of (calibrated score under 0.7, as
    frames of the video) and 8 it is sure of (over 0.95); (path, unsure frames)."""
    photos = [path for name in ("cats", "dogs") for path in
              sorted((real_data / "test" / name).iterdir())[:100]]
    frames = frames_of(photos)
    predictions = scored(shipped / "plus_int8.tflite", frames)
    unsure = [f for f, p in zip(frames, predictions) if p.score < 0.7 and p.label != "none"]
    sure = [f for f, p in zip(frames, predictions) if p.score > 0.95 and p.label != "none"]
    assert len(unsure) >= 8 and len(sure) >= 8, (len(unsure), len(sure))
    video = tmp_path_factory.mktemp("field-video") / "field.avi"
    return write_video(video, [f for pair in zip(unsure[:8], sure[:8]) for f in pair]), 8


def metrics(server: Server) -> dict[str, float]:
    _, _, body = server.request("/metrics")
    return {line.split()[0]: float(line.split()[1]) for line in body.decode().splitlines()
            if line.startswith("edgeconv_capture")}


def post_label(server: Server, frame: str, label, content_type="application/json"):
    return server.json(f"/api/field/{frame}", data=json.dumps({"label": label}).encode(),
                       headers={"Content-Type": content_type})


@pytest.fixture(scope="module")
def capturing(shipped, field_video, tmp_path_factory):
    """serve on the field video with --capture; its capture folder, once every unsure frame
    has been offered twice (the video loops)."""
    video, _ = field_video
    folder = tmp_path_factory.mktemp("field-capture") / "kept"
    model = tmp_path_factory.mktemp("field-model") / "current.tflite"
    shutil.copy(shipped / "plus_int8.tflite", model)
    server = Server(model, "--camera", video, "--capture", folder, "--capture-below", "0.8",
                    "--capture-per-minute", "100")
    server.folder, server.model = folder, model
    deadline = time.monotonic() + 60
    while metrics(server).get("edgeconv_capture_duplicates_total", 0) < 8:
        assert time.monotonic() < deadline, server.log()[-2000:]
        time.sleep(0.3)
    yield server
    log = server.stop()
    assert "Traceback" not in log, log


def test_serve_keeps_each_unsure_frame_once_and_shows_the_disk_used(capturing, field_video):
    _, unsure = field_video
    found = metrics(capturing)
    kept = sorted(capturing.folder.glob("*.jpg"))
    assert 6 <= found["edgeconv_capture_saved_total"] == len(kept) <= unsure  # dHash: once each
    assert found["edgeconv_capture_frames"] == len(kept)
    assert found["edgeconv_capture_bytes"] == sum(
        path.stat().st_size for path in capturing.folder.iterdir())
    assert found["edgeconv_capture_bytes_limit"] == 100 * 2**20
    model_sha256 = hashlib.sha256(capturing.model.read_bytes()).hexdigest()
    for jpeg in kept:
        info = json.loads(jpeg.with_suffix(".json").read_text())
        assert info["score"] < 0.8 or info["answer"] in ("none", "unsure")
        assert info["model"] == "current.tflite" and info["model_sha256"] == model_sha256
        assert info["label"] is None and set(info["scores"]) == {"cats", "dogs"}
    _, listing = capturing.json("/api/field")
    assert listing["labels"] == ["cats", "dogs", "none"]
    assert [frame["id"] for frame in listing["frames"]] == [path.stem for path in kept]


def test_frames_are_labelled_through_the_api_and_exported_as_a_tar(capturing):
    _, listing = capturing.json("/api/field")
    frames = [frame["id"] for frame in listing["frames"]]
    status, _, jpeg = capturing.request(f"/api/field/{frames[0]}.jpg")
    assert status == 200 and jpeg[:2] == b"\xff\xd8"
    assert post_label(capturing, frames[0], "cats") == (200, {"id": frames[0], "label": "cats"})
    assert post_label(capturing, frames[1], "dogs")[0] == 200
    assert post_label(capturing, frames[2], "none")[0] == 200
    assert post_label(capturing, frames[3], "dogs")[0] == 200
    assert post_label(capturing, frames[3], None)[0] == 200  # undo
    bad = post_label(capturing, frames[4], "horse")
    assert bad[0] == 400 and "not one of cats, dogs, none" in bad[1]["error"]
    assert post_label(capturing, "20990101T000000-000-0000000000000000", "cats")[0] == 404
    assert post_label(capturing, frames[4], "cats", "text/plain")[0] == 415
    assert capturing.request("/api/field/../../etc/passwd")[0] == 404

    assert capturing.request("/api/field.tar", method="HEAD")[0] == 200
    _, probed = capturing.json("/api/field")
    assert not any(frame["exported"] for frame in probed["frames"])  # a probe exports nothing
    status, headers, body = capturing.request("/api/field.tar")
    assert status == 200 and headers["Content-Type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        names = sorted(tar.getnames())
        manifest = json.loads(tar.extractfile("manifest.json").read())
        files = {name: tar.extractfile(name).read() for name in names if name.endswith(".jpg")}
    assert names == sorted(["manifest.json", f"cats/{frames[0]}.jpg", f"dogs/{frames[1]}.jpg",
                            f"none/{frames[2]}.jpg"])
    model_sha256 = hashlib.sha256(capturing.model.read_bytes()).hexdigest()
    for entry in manifest["frames"]:
        assert hashlib.sha256(files[entry["file"]]).hexdigest() == entry["sha256"]
        assert entry["label"] == entry["file"].split("/")[0]
        assert entry["model_sha256"] == model_sha256 and entry["device"] == manifest["device"]
        assert entry["time"] and entry["labelled"]
    # nothing is deleted by the export: the frames stay until their room is needed
    assert all((capturing.folder / f"{frame}.jpg").exists() for frame in frames)
    _, after = capturing.json("/api/field")
    assert [f["exported"] for f in after["frames"][:3]] == [True, True, True]


def test_capture_rules_rate_room_and_restart(tmp_path):
    rng = np.random.default_rng(0)
    distinct = [rng.integers(0, 255, (120, 160, 3), dtype=np.uint8) for _ in range(12)]
    model = Path("current.tflite")

    rated = Capture(CaptureRules(tmp_path / "rated", per_minute=3))
    kept = [rated.offer(frame, UNSURE, model, "0" * 64) for frame in distinct]
    assert sum(k is not None for k in kept) == 3 and rated.counts["rate"] == 9

    sure = Prediction("cats", 0.97, {"cats": 0.97, "dogs": 0.03}, guess="cats")
    assert rated.offer(distinct[5], sure, model, "0" * 64) is None  # not unsure: not offered

    folder = tmp_path / "room"
    room = Capture(CaptureRules(folder, per_minute=100, keep=3))
    first = [room.offer(frame, UNSURE, model, "0" * 64) for frame in distinct[:3]]
    noisy = np.clip(distinct[0].astype(int) + rng.integers(-3, 4, distinct[0].shape), 0, 255)
    assert room.offer(noisy.astype(np.uint8), UNSURE, model, "0" * 64) is None
    assert room.counts["duplicate"] == 1
    for frame_id in first:
        room.label(frame_id, "cats", ["cats", "dogs", "none"])
    assert room.offer(distinct[3], UNSURE, model, "0" * 64) is None  # labelled, not exported
    assert room.counts["full"] == 1 and sorted(room.frames) == sorted(first)
    room.export(io.BytesIO())
    newest = room.offer(distinct[4], UNSURE, model, "0" * 64)
    assert newest is not None and first[0] not in room.frames  # the oldest exported went

    (folder / f".{newest}.jpg.partial").write_bytes(b"half")  # a stopped process's leftovers
    (folder / f"{newest}.json").unlink()
    again = Capture(CaptureRules(folder, keep=3))
    assert sorted(again.frames) == sorted(first[1:])
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"{frame}{suffix}" for frame in first[1:] for suffix in (".jpg", ".json"))
    assert again.frames[first[1]].label == "cats" and again.frames[first[1]].exported


@pytest.fixture(scope="module")
def untrained_tflite(tiny_run, tmp_path_factory) -> Path:
    """The tiny untrained convnet as float32 TFLite: unsure of every frame, and 10,000 frames
    of it cost seconds where the plus model costs over a minute."""
    model = tmp_path_factory.mktemp("untrained") / "model.tflite"
    result = run_script("export/to_tflite.py", tiny_run, "--out", model)
    assert result.returncode == 0, result.stderr[-2000:]
    return model


@pytest.mark.slow
def test_ten_thousand_near_identical_unsure_frames_stay_within_the_bounds(untrained_tflite,
                                                                        real_data, tmp_path):
    photos = sorted((real_data / "test" / "cats").iterdir())[:1]
    base = cv2.resize(frames_of(photos)[0], (96, 72))
    assert scored(untrained_tflite, [base])[0].score < 0.9  # every frame an unsure one
    rng = np.random.default_rng(1)
    writer = cv2.VideoWriter(str(tmp_path / "same.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 30,
                             (96, 72))
    for _ in range(10_000):  # the same scene, sensor noise in every frame
        writer.write(np.clip(base + rng.integers(-2, 3, base.shape), 0, 255).astype(np.uint8))
    writer.release()
    folder = tmp_path / "kept"
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(CLASSIFY), untrained_tflite,
                             "--camera", tmp_path / "same.avi", "--no-display", "--json",
                             "--capture", folder, "--capture-per-minute", "1000",
                             "--capture-keep", "5", "--capture-mb", "0.05",
                             "--capture-below", "0.9"],
                            capture_output=True, text=True, timeout=600)
    print(f"\n10,000 frames with --capture: {time.monotonic() - started:.1f} s")
    assert result.returncode == 0, result.stderr[-2000:]
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(answers) == 10_000
    files = list(folder.iterdir())
    assert 2 <= len(files) <= 2 * 5
    assert sum(path.stat().st_size for path in files) <= 0.05 * 2**20
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"capture {folder}: kept ") and " near-duplicates" in line
    skipped = int(line.split("skipped ")[1].split()[0])
    assert skipped >= 9_900


def test_capture_flags_are_checked_in_one_line(shipped, tmp_path):
    model = shipped / "plus_int8.tflite"
    for args, message in [
            ([REPO / "devices/selftest/cat.jpg", "--capture", tmp_path], "needs --camera"),
            (["--camera", "x.avi", "--capture", tmp_path, "--capture-below", "2"],
             "--capture-below must be between 0 and 1"),
            (["--camera", "x.avi", "--capture", model], "exists and is not a folder")]:
        result = subprocess.run([sys.executable, str(CLASSIFY), model, *map(str, args)],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


@pytest.mark.system
def test_chromium_labels_three_frames_with_the_keyboard(capturing):
    from browser import Browser

    _, listing = capturing.json("/api/field")
    waiting = [frame["id"] for frame in listing["frames"] if frame["label"] is None]
    assert len(waiting) >= 4
    browser = Browser(capturing.url + "/label")

    def press(key: str) -> None:
        shown = browser.evaluate("document.getElementById('frame') && "
                                 "document.getElementById('frame').dataset.id")
        browser.call("Input.dispatchKeyEvent", browser.session, type="keyDown", key=key)
        browser.call("Input.dispatchKeyEvent", browser.session, type="keyUp", key=key)
        browser.wait_for(f"document.getElementById('frame') === null || "
                         f"document.getElementById('frame').dataset.id !== {json.dumps(shown)}")

    try:
        assert browser.wait_for("document.getElementById('frame') && "
                                "document.getElementById('frame').complete && "
                                "document.getElementById('frame').naturalWidth") == 320
        assert browser.evaluate("document.getElementById('frame').dataset.id") == waiting[0]
        keys = browser.evaluate("document.getElementById('keys').textContent")
        assert "1 cats" in keys and "2 dogs" in keys and "n none" in keys
        press("2")  # dogs
        press("s")  # skip
        press("n")  # none
        press("u")  # undo the none
        assert browser.evaluate("document.getElementById('frame').dataset.id") == waiting[2]
        press("1")  # cats
        press("1")  # cats
    finally:
        browser.close()
    _, after = capturing.json("/api/field")
    labels = {frame["id"]: frame["label"] for frame in after["frames"]}
    assert [labels[frame] for frame in waiting[:4]] == ["dogs", None, "cats", "cats"]


def field_tar(path: Path, frames: list[tuple[str, bytes]], damage: bool = False) -> Path:
    """A tar as serve's /api/field.tar writes it: LABEL/ID.jpg and manifest.json."""
    entries = []
    with tarfile.open(path, "w") as tar:
        for index, (label, data) in enumerate(frames):
            name = f"{label}/frame{index}.jpg"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            entries.append({"file": name, "label": label, "device": "door",
                            "sha256": hashlib.sha256(data + b"x" * damage).hexdigest()})
        manifest = json.dumps({"device": "door", "frames": entries}).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
    return path


def test_field_frames_join_the_training_split_and_a_held_out_field_split(real_data, tmp_path):
    from edgeconv.train.dataset import DataError, find_dataset
    from edgeconv.train.field import add_field

    dataset = find_dataset(real_data, limit=3)
    photos = sorted((real_data / "validation" / "cats").iterdir())[:6] + sorted(
        (real_data / "validation" / "dogs").iterdir())[:4]
    frames = [(photo.parent.name, photo.read_bytes()) for photo in photos]
    first = field_tar(tmp_path / "a.tar", frames[:7] + [("none", frames[0][1][:-1])])
    second = field_tar(tmp_path / "b.tar", frames[5:])  # two frames in both tars
    merged, field = add_field(dataset, [first, second], tmp_path / "run")
    assert sum(map(len, field.train.values())) + sum(map(len, field.heldout.values())) == 10
    assert {name: len(paths) for name, paths in field.heldout.items()} == {"cats": 1, "dogs": 1}
    assert field.none == 1
    assert len(merged.splits["train"]) == 6 + 8 and len(merged.splits["field"]) == 2
    assert merged.splits["validation"] == dataset.splits["validation"]
    assert merged.splits["test"] == dataset.splits["test"]
    held = {path for path, _ in merged.splits["field"]}
    assert not held & {path for path, _ in merged.splits["train"]}
    again, _ = add_field(dataset, [second, first], tmp_path / "run")  # the same split
    assert {path for path, _ in again.splits["field"]} == held

    for tar, message in [
            (field_tar(tmp_path / "bad.tar", frames[:2], damage=True), "differs from its manifest"),
            (field_tar(tmp_path / "horse.tar", [("horses", frames[0][1])]), "labelled 'horses'"),
            (tmp_path / "missing.tar", "not found"),
            (photos[0], "not a field tar")]:
        with pytest.raises(DataError, match=message):
            add_field(dataset, [tar], tmp_path / "other")


def test_a_shadow_model_classifies_every_frame_and_only_the_current_one_answers(
        shipped, field_video):
    video, _ = field_video
    current, other = shipped / "plus_int8.tflite", shipped / "augmented_int8.tflite"

    def shadow(candidate: Path, *bounds: str) -> tuple[subprocess.CompletedProcess, dict]:
        result = subprocess.run([sys.executable, str(CLASSIFY), current, "--camera", video,
                                 "--shadow", candidate, "--json", "--no-display", *bounds],
                                capture_output=True, text=True, timeout=300)
        lines = [json.loads(line) for line in result.stdout.splitlines()]
        assert all("label" in line for line in lines[:-1]), result.stderr[-2000:]
        return result, lines[-1]["shadow"]

    same, figures = shadow(current)
    assert same.returncode == 0 and figures["passed"] and figures["agreement"] == 1.0
    assert figures["frames"] == 16 and figures["current"] == figures["candidate"]
    answered = [json.loads(line)["label"] for line in same.stdout.splitlines()[:-1]]
    alone = subprocess.run([sys.executable, str(CLASSIFY), current, "--camera", video, "--json",
                            "--no-display"], capture_output=True, text=True, timeout=300)
    assert answered == [json.loads(line)["label"] for line in alone.stdout.splitlines()]

    worse, figures = shadow(other, "--shadow-min-agreement", "0.99")
    assert worse.returncode == 3 and not figures["passed"]
    assert figures["agreement"] < 0.99 and figures["failed"][0].startswith("agreement ")
    assert "OUT OF BOUNDS: agreement" in worse.stderr.strip().splitlines()[-1]
