"""Shared fixtures: the real photos, a private decode cache, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "cats_and_dogs_small"


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


def run_script(script: str, *args: str, env: dict | None = None, timeout: float = 600,
               cwd: Path = REPO, **kwargs) -> subprocess.CompletedProcess:
    """Run one of the repo's scripts the way a user would, capturing its output."""
    return subprocess.run(
        [sys.executable, str(REPO / script), *map(str, args)],
        capture_output=True, text=True, timeout=timeout, cwd=cwd,
        env={**os.environ, **(env or {})}, **kwargs,
    )


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


TFLITE = ("float32", "float16", "dynamic", "int8")
ARTIFACTS = [f"model_{q}.tflite" for q in TFLITE] + ["model_float.onnx", "model_int8.onnx"]


@pytest.fixture(scope="session")
def exported(trained_run):
    run_dir, _ = trained_run
    for quantize in TFLITE:
        result = run_script("export/to_tflite.py", run_dir, "--quantize", quantize)
        assert result.returncode == 0, result.stderr[-2000:]
        assert f"model_{quantize}.tflite" in result.stdout
    for extra in ([], ["--quantize", "int8"]):
        result = run_script("export/to_onnx.py", run_dir, *extra)
        assert result.returncode == 0, result.stderr[-2000:]
    return run_dir


def confident_photos(run_dir: Path, folder: Path, count: int, margin: float = 0.15) -> list[Path]:
    """The first `count` photos in `folder` that run_dir's Keras model scores at least `margin`
    away from 0.5. A short test run puts some photos near 0.5, where int8 rounding may flip a
    label; a check of the benchmark's mechanics on ten photos must not depend on those."""
    import keras

    from runtime.preprocess import load_image

    model = keras.saving.load_model(run_dir / "model.keras")
    photos = sorted(folder.iterdir())
    scores = model.predict(np.stack([load_image(photo) for photo in photos]), verbose=0)[:, 0]
    confident = [photo for photo, score in zip(photos, scores) if abs(score - 0.5) >= margin]
    assert len(confident) >= count, f"only {len(confident)} confident photos in {folder}"
    return confident[:count]
