"""The export formats' names and files: the registry's data, read by the exporters, the
registry (formats.py, which adds each one's exporter) and ship.py. One file name per format,
model_<quantize>.<kind>, written nowhere else."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Artifact:
    kind: str  # "tflite" or "onnx": runtime/kinds.py's name, the file's suffix
    quantize: str

    @property
    def name(self) -> str:
        """"TFLite int8", "ONNX float32": what tables and --formats show."""
        return f"{'TFLite' if self.kind == 'tflite' else 'ONNX'} {self.quantize}"

    @property
    def file_name(self) -> str:
        return f"model_{self.quantize}.{self.kind}"


TFLITE_QUANTIZATIONS = ("float32", "float16", "dynamic", "int8")
ONNX_QUANTIZATIONS = ("float32", "int8")
ARTIFACTS = (*(Artifact("tflite", q) for q in TFLITE_QUANTIZATIONS),
             *(Artifact("onnx", q) for q in ONNX_QUANTIZATIONS))


def file_name(kind: str, quantize: str) -> str:
    """The file an export of `kind` quantized as `quantize` writes beside its model."""
    artifact = Artifact(kind, quantize)
    if artifact not in ARTIFACTS:
        raise ValueError(f"no {kind} export quantized as {quantize}")
    return artifact.file_name
