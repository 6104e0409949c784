"""The kinds of model file a device runs, in one table: suffix, magic bytes, engines, packages.

metadata.py reads each kind's metadata (READERS), engines.py opens it in the first of its
engines that is installed, options.py keeps a profile's engine only for a kind it runs, and
install.sh asks which packages a model needs on a profile:

  python3 -I runtime/kinds.py MODEL PROFILE.json    prints the pip packages to add, or fails

Standard library only (a device's bare Python 3 runs it before any package is installed).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelKind:
    name: str  # "tflite": also the name of its exporter (export/to_tflite.py)
    suffix: str
    magic_offset: int
    magic: bytes  # the file's bytes at magic_offset
    engines: tuple[str, ...]  # in order of preference

    def matches(self, data: bytes) -> bool:
        return data[self.magic_offset:self.magic_offset + len(self.magic)] == self.magic


# A FlatBuffer's file identifier sits at bytes 4-8; an ONNX ModelProto starts with its
# ir_version (field 1, varint: tag 0x08), too weak alone, so the suffix decides first.
KINDS = (
    ModelKind("tflite", ".tflite", 4, b"TFL3", ("litert", "tflite-runtime")),
    ModelKind("onnx", ".onnx", 0, b"\x08", ("onnxruntime",)),
)
PACKAGES = {"litert": "ai-edge-litert", "tflite-runtime": "tflite-runtime",
            "onnxruntime": "onnxruntime"}
SUFFIXES = tuple(kind.suffix for kind in KINDS)


def by_suffix(path: Path) -> ModelKind | None:
    return next((kind for kind in KINDS if kind.suffix == path.suffix.lower()), None)


def kind_of(path: Path, data: bytes) -> ModelKind | None:
    """The kind of a model file from its first bytes: the magic where it is strong (TFLite's
    identifier wins over any suffix), else the suffix where the magic agrees."""
    strong = [kind for kind in KINDS if len(kind.magic) >= 4 and kind.matches(data)]
    if strong:
        return strong[0]
    named = by_suffix(path)
    if named is not None and (named.matches(data) or len(named.magic) < 4):
        return named
    return next((kind for kind in KINDS if kind.matches(data)), None)


def install_hint(kind: ModelKind) -> str:
    packages = " or ".join(PACKAGES[engine] for engine in kind.engines)
    return f"pip install {packages}" + (" (tflite-runtime on 32-bit Raspberry Pi OS)"
                                        if kind.name == "tflite" else "")


def packages_for(model: Path, profile: dict) -> list[str]:
    """The pip packages a profile's venv needs beyond its own list to run `model`; ValueError
    when none of the profile's engines runs that kind of model."""
    kind = by_suffix(model)
    if kind is None:
        raise ValueError(f"{model.name}: a model is a {' or '.join(SUFFIXES)} file")
    offered = [engine for engine in kind.engines if engine in profile.get("engines", [])]
    if not offered:
        raise ValueError(f"profile {profile.get('name')} offers no engine for {kind.name} "
                         f"models ({', '.join(kind.engines)}; no wheels for "
                         f"{', '.join(profile.get('arch', []))}): use a "
                         f"{' or '.join(k.suffix for k in KINDS if k is not kind)} model")
    if any(PACKAGES[engine] in profile.get("pip", []) for engine in offered):
        return []
    return [PACKAGES[offered[0]]]


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python3 -I runtime/kinds.py MODEL PROFILE.json")
    try:
        print(" ".join(packages_for(Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text()))))
    except (OSError, ValueError) as error:
        sys.exit(f"error: {error}")
