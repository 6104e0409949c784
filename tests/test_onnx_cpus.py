"""int8 ONNX files compute the same on every x86 CPU, AVX2 without VNNI included.

ONNX Runtime's int8-weight kernels saturate on AVX2 without VNNI; the exports store uint8
(export/onnx_uint8.py), which takes an exact path everywhere. To reach the AVX2-only path on
any machine, classify runs under qemu-x86_64 with a Haswell CPU model (QEMU 7.2 emulates AVX2
but no AVX-512): the same file must give the same scores there as natively.
"""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import MODELS, REPO

from edgeconv.export.onnx_uint8 import quantized_initializers, signed_tensors

# Photos whose label the int8-weight file flipped on an AVX2-only CPU, and a few others.
PHOTOS = ["cats/cat.1564.jpg", "cats/cat.1585.jpg", "cats/cat.1641.jpg", "cats/cat.1501.jpg",
          "dogs/dog.1546.jpg", "dogs/dog.1502.jpg", "dogs/dog.1709.jpg", "dogs/dog.1501.jpg"]


def scores(model, photos, *, haswell: bool) -> np.ndarray:
    """classify --json's scores for the photos, natively or on an emulated Haswell CPU."""
    command = [sys.executable, str(REPO / "runtime/classify"), str(model), *map(str, photos),
               "--json", "--engine", "onnxruntime"]
    if haswell:
        qemu = shutil.which("qemu-x86_64-static")
        if qemu is None:
            pytest.fail("qemu-x86_64-static missing: apt-get install qemu-user-static")
        command = [qemu, "-cpu", "Haswell", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [row["path"] for row in rows] == list(map(str, photos))
    return np.array([row["scores"]["dogs"] for row in rows])


def as_int8(model_path, out):
    """The file as exports were before: quantized tensors int8 (the exact inverse shift)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    targets = quantized_initializers(model.graph)
    for tensor in model.graph.initializer:
        values = numpy_helper.to_array(tensor)
        if tensor.name in targets and values.dtype == np.uint8:
            signed = (values.astype(np.int16) - 128).astype(np.int8)
            tensor.CopyFrom(numpy_helper.from_array(signed, tensor.name))
    onnx.save(model, str(out))
    return out


def test_shipped_onnx_files_hold_no_int8_weights():
    import onnx

    for path in sorted(MODELS.glob("*_int8.onnx")):
        model = onnx.load(str(path))
        assert quantized_initializers(model.graph), path
        assert signed_tensors(model) == 0, path


@pytest.mark.system
def test_uint8_file_scores_the_same_on_an_avx2_only_cpu(real_data, tmp_path):
    photos = [real_data / "test" / name for name in PHOTOS]
    shipped = MODELS / "plus_int8.onnx"
    native = scores(shipped, photos, haswell=False)
    haswell = scores(shipped, photos, haswell=True)
    np.testing.assert_allclose(haswell, native, atol=1e-6)

    # The int8-weight form of the same file saturates there: the check reaches that path.
    signed = scores(as_int8(shipped, tmp_path / "signed.onnx"), photos, haswell=True)
    assert np.abs(signed - native).max() > 0.01
