"""Inference engines behind one interface: LiteRT, tflite-runtime and ONNX Runtime.

An engine takes uint8 RGB batches [N, h, w, 3] (raw 0..255 pixels, as load_image returns)
and gives float model outputs [N, k]; quantized inputs and outputs are converted with the
model's own scale and zero point.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgeconv.runtime.kinds import KINDS, install_hint
from edgeconv.runtime.metadata import ModelFileError, model_kind
from edgeconv.runtime.quiet import native_stderr_silenced, one_line

ENGINES = tuple(engine for kind in KINDS for engine in kind.engines)


class EngineError(RuntimeError):
    """No engine for this model, or the engine refused it."""


def default_threads() -> int:
    return os.cpu_count() or 1


class TFLiteEngine:
    """A .tflite model in LiteRT (ai_edge_litert) or the older tflite-runtime package."""

    def __init__(self, path: Path, threads: int, name: str):
        if name == "litert":
            from ai_edge_litert.interpreter import Interpreter
        else:
            from tflite_runtime.interpreter import Interpreter
        self.name, self.threads = name, threads
        try:
            with native_stderr_silenced():  # XNNPACK's "INFO: Created ..." and its complaints
                self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
                self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as error:
            raise EngineError(f"{path}: {name} cannot load it ({one_line(error)})") from None
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.batch = int(self.input["shape"][0])
        self.image_shape = tuple(int(n) for n in self.input["shape"][1:])  # (h, w, 3)

    def run(self, images: np.ndarray) -> np.ndarray:
        if len(images) != self.batch:
            self.interpreter.resize_tensor_input(self.input["index"], [len(images),
                                                 *self.input["shape"][1:]])
            self.interpreter.allocate_tensors()
            self.input = self.interpreter.get_input_details()[0]
            self.output = self.interpreter.get_output_details()[0]
            self.batch = len(images)
        self.interpreter.set_tensor(self.input["index"], quantize(images, self.input))
        self.interpreter.invoke()
        return dequantize(self.interpreter.get_tensor(self.output["index"]), self.output)


class OnnxEngine:
    """An .onnx model in ONNX Runtime on the CPU."""

    name = "onnxruntime"

    def __init__(self, path: Path, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as error:  # ORT raises its own exception types for bad files
            raise EngineError(f"{path}: onnxruntime cannot load it ({one_line(error)})") from None
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        self.image_shape = tuple(n if isinstance(n, int) else -1 for n in first.shape[1:])

    def run(self, images: np.ndarray) -> np.ndarray:
        feed = {self.input_name: np.asarray(images, dtype=np.float32)}
        return np.asarray(self.session.run(None, feed)[0], dtype=np.float32)


def quantize(images: np.ndarray, detail: dict) -> np.ndarray:
    dtype = detail["dtype"]
    if np.issubdtype(dtype, np.floating):
        return images.astype(dtype)
    scale, zero_point = detail["quantization"]
    if images.dtype == dtype and scale == 1.0 and zero_point == 0:
        return images  # uint8 pixels into a uint8 input of scale 1: nothing to do
    info = np.iinfo(dtype)
    values = np.round(images.astype(np.float32) / scale + zero_point)
    return np.clip(values, info.min, info.max).astype(dtype)


def dequantize(values: np.ndarray, detail: dict) -> np.ndarray:
    if np.issubdtype(values.dtype, np.floating):
        return values.astype(np.float32)
    scale, zero_point = detail["quantization"]
    return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)


def open_engine(path: str | os.PathLike, engine: str = "auto", threads: int | None = None):
    """Load `path` in the requested engine, or the first installed one that fits its format."""
    path = Path(path)
    threads = threads or default_threads()
    try:
        head = path.open("rb").read(8)
    except OSError as error:
        raise ModelFileError(f"{path}: cannot read ({error.strerror or error})") from None
    kind = model_kind(path, head)
    candidates = kind.engines
    if engine != "auto":
        if engine not in candidates:
            raise EngineError(f"{path}: {engine} does not run {kind.name} models")
        candidates = (engine,)
    for name in candidates:
        try:
            if name == "onnxruntime":
                return OnnxEngine(path, threads)
            return TFLiteEngine(path, threads, name)
        except ImportError:
            continue
    raise EngineError(f"no engine installed for {path.name} ({' or '.join(candidates)}): "
                      f"{install_hint(kind)}")
