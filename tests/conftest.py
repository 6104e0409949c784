"""Shared fixtures: the real photos, the shipped models, a private decode cache, a CLI runner.

Markers: `slow` (trains or exports for real: every test that uses `trained_run` or `exported`
gets it here) and `system` (needs root, sshd, package downloads or emulation). The dev loop
is `pytest -m "not slow and not system"`; CI runs everything.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "cats_and_dogs_small"
DEFAULT_CLASS_FOLDERS = REPO.parent / "shared" / "datasets" / "recycling"
DEFAULT_NEGATIVES = REPO.parent / "shared" / "datasets" / "negatives"
MODELS = REPO / "models"
SLOW_FIXTURES = {"trained_run", "exported", "quick_run"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    items.sort(key=uses_background)  # last: their jobs have had the whole suite to run


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Decoded-image caches go to a temporary folder, shared by the whole session."""
    os.environ["EDGECONV_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real photos; missing data fails the test (CI must not pass by skipping)."""
    data = Path(os.environ.get("EDGECONV_TEST_DATA", DEFAULT_DATA))
    if not (data / "train").is_dir():
        pytest.fail(f"real photos not found at {data}; set EDGECONV_TEST_DATA")
    return data


@pytest.fixture(scope="session")
def negatives() -> Path:
    """Real photos of neither cats nor dogs, one folder per source (EDGECONV_TEST_NEGATIVES
    points elsewhere). Missing photos fail the test."""
    data = Path(os.environ.get("EDGECONV_TEST_NEGATIVES", DEFAULT_NEGATIVES))
    if not data.is_dir():
        pytest.fail(f"negative photos not found at {data}; set EDGECONV_TEST_NEGATIVES")
    return data


@pytest.fixture(scope="session")
def class_folders() -> Path:
    """Real photos of more than two classes in class folders, with no split (a user's own
    photos); EDGECONV_TEST_CLASS_FOLDERS points elsewhere. Missing photos fail the test."""
    data = Path(os.environ.get("EDGECONV_TEST_CLASS_FOLDERS", DEFAULT_CLASS_FOLDERS))
    if not data.is_dir() or sum(path.is_dir() for path in data.iterdir()) < 3:
        pytest.fail(f"class folders of real photos not found at {data}; "
                    "set EDGECONV_TEST_CLASS_FOLDERS")
    return data


def free_port() -> int:
    """A loopback TCP port nothing listens on now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_script(script: str, *args: str, env: dict | None = None, timeout: float = 600,
               cwd: Path = REPO, **kwargs) -> subprocess.CompletedProcess:
    """Run one of the repo's scripts the way a user would, capturing its output."""
    return subprocess.run(
        [sys.executable, str(REPO / script), *map(str, args)],
        capture_output=True, text=True, timeout=timeout, cwd=cwd,
        env={**os.environ, **(env or {})}, **kwargs,
    )


def as_from_a_terminal() -> None:
    """preexec_fn for a process a test will Ctrl-C: SIGINT back to its default action. A shell
    starts background jobs with SIGINT ignored and children inherit that, so a suite run with
    `&` would otherwise start commands that no Ctrl-C reaches."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="session")
def trained_run(real_data, tmp_path_factory):
    """A short baseline run on 150 real photos per class, trained once for the session.

    Ten epochs leave the model confident enough that quantization parity is meaningful.
    """
    out = tmp_path_factory.mktemp("runs") / "baseline"
    result = run_script("train/run.py", "--data", real_data, "--recipe", "baseline",
                        "--limit", "150", "--epochs", "10", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


ARTIFACTS = [f"model_{q}.tflite" for q in ("float32", "float16", "dynamic", "int8")] + [
    "model_float32.onnx", "model_int8.onnx"]


@pytest.fixture(scope="session")
def exported(trained_run):
    """The short run exported to all six formats by export/all.py."""
    run_dir, _ = trained_run
    result = run_script("export/all.py", run_dir)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert result.stdout.count(" exported ") == len(ARTIFACTS)
    return run_dir


@pytest.fixture(scope="session")
def shipped() -> Path:
    """models/: the trained models the repository ships (no training needed to use them)."""
    for name in ("plus_int8.tflite", "plus_int8.onnx", "plus.keras"):
        if not (MODELS / name).is_file():
            pytest.fail(f"shipped model {MODELS / name} missing (export/reproduce.py --models)")
    return MODELS


def confident_photos(run_dir: Path, folder: Path, count: int, margin: float = 0.15) -> list[Path]:
    """The first `count` photos in `folder` that run_dir's Keras model scores at least `margin`
    away from 0.5. A short test run puts some photos near 0.5, where int8 rounding may flip a
    label; a check of the benchmark's mechanics on ten photos must not depend on those."""
    import keras

    from edgeconv.runtime.preprocess import load_image

    model = keras.saving.load_model(run_dir / "model.keras")
    photos = sorted(folder.iterdir())
    scores = model.predict(np.stack([load_image(photo) for photo in photos]), verbose=0)[:, 0]
    confident = [photo for photo, score in zip(photos, scores) if abs(score - 0.5) >= margin]
    assert len(confident) >= count, f"only {len(confident)} confident photos in {folder}"
    return confident[:count]


@pytest.fixture(scope="session")
def tiny_run(real_data, tmp_path_factory) -> Path:
    """A run folder holding a tiny untrained convnet (seconds to export, for the dev loop)."""
    import json

    import keras

    out = tmp_path_factory.mktemp("tiny") / "run"
    out.mkdir()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((150, 150, 3)), keras.layers.Rescaling(1 / 255),
        keras.layers.Conv2D(4, 3, strides=4, activation="relu"),
        keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(1, activation="sigmoid")])
    model.save(out / "model.keras")
    (out / "run.json").write_text(json.dumps({"classes": ["cats", "dogs"], "recipe": "tiny",
                                              "data": str(real_data)}))
    return out


@pytest.fixture(scope="session")
def few_photos(real_data, tmp_path_factory) -> Path:
    """Ten test photos per class, in class folders."""
    root = tmp_path_factory.mktemp("few")
    for name in ("cats", "dogs"):
        (root / name).mkdir()
        for photo in sorted((real_data / "test" / name).iterdir())[:10]:
            (root / name / photo.name).symlink_to(photo)
    return root


def onnx_with_output(source: Path, out: Path, **output) -> Path:
    """A copy of an edgeconv ONNX model whose metadata's "output" entry has `output` set."""
    import json

    import onnx

    from edgeconv.runtime.metadata import METADATA_KEY

    model = onnx.load(str(source))
    entry = next(p for p in model.metadata_props if p.key == METADATA_KEY)
    metadata = json.loads(entry.value)
    metadata["output"].update(output)
    entry.value = json.dumps(metadata)
    onnx.save(model, str(out))
    return out


def impostor(model: Path, weights: Path, out: Path) -> Path:
    """`weights`' network under `model`'s metadata (golden outputs included): a device that
    runs it computes something other than the export recorded, and must refuse it."""
    from edgeconv.runtime.metadata import read_metadata

    metadata = read_metadata(model)
    assert metadata.get("golden"), f"{model} carries no golden outputs"
    if model.suffix == ".tflite":
        from edgeconv.export.to_tflite import add_metadata

        out.write_bytes(add_metadata(weights.read_bytes(), json.dumps(metadata).encode()))
    else:
        from edgeconv.export.to_onnx import embed_metadata

        out.write_bytes(weights.read_bytes())
        embed_metadata(out, metadata)
    return out


# Long jobs that mostly wait on other programs (QEMU guests, pip into a fresh venv) start with
# the session, when a selected test needs them, and run beside the rest of the suite; the
# tests that check them run last.
BACKGROUND_FIXTURES = ("emulated", "readme_run")


def _lower_priority() -> None:
    """Nice 15 for a background thread and the processes it starts (Linux: per thread, and
    inherited): they take the CPU the rest of the suite leaves idle, and slow it little."""
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 15)


def uses_background(item: pytest.Item) -> bool:
    return any(name in getattr(item, "fixturenames", ()) for name in BACKGROUND_FIXTURES)


@pytest.fixture(scope="session")
def background() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(6, thread_name_prefix="background", initializer=_lower_priority)
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="session", autouse=True)
def start_background_jobs(request, private_cache) -> None:
    for name in BACKGROUND_FIXTURES:
        if any(name in getattr(item, "fixturenames", ()) for item in request.session.items):
            request.getfixturevalue(name)


from emulated_pi import emulated  # noqa: E402, F401  (fixtures other modules' tests use)
from readme_commands import readme_run  # noqa: E402, F401
