#!/usr/bin/env python
"""Make an int8 ONNX file compute the same on every CPU: signed int8 tensors become uint8.

  python export/onnx_uint8.py MODEL_int8.onnx [-o OUT.onnx]   (default: rewrite in place)

ONNX Runtime multiplies uint8 activations by int8 weights with VPMADDUBSW on x86 CPUs that
have AVX2 but no VNNI, and that instruction saturates its 16-bit pair sums: the same file
gives other scores there than on a VNNI machine or an Arm board. With uint8 weights it takes
a path without saturation on every CPU. The rewrite is exact: each int8 value v with zero
point z becomes v + 128 with zero point z + 128, which dequantizes to the same real number.
to_onnx.py applies it to every int8 export; run this on an int8 file exported before that.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from edgeconv.common.files import atomic_path

QDQ = ("QuantizeLinear", "DequantizeLinear")


def quantized_initializers(graph) -> set[str]:
    """Names of the initializers that hold quantized values or their zero points: a
    DequantizeLinear's data (weights) and every Q/DQ zero point."""
    initializers = {tensor.name for tensor in graph.initializer}
    found = set()
    for node in graph.node:
        if node.op_type not in QDQ:
            continue
        if node.op_type == "DequantizeLinear" and node.input[0] in initializers:
            found.add(node.input[0])
        if len(node.input) > 2 and node.input[2] in initializers:
            found.add(node.input[2])
    return found


def to_uint8(model) -> int:
    """Rewrite the model's int8 quantized tensors as uint8, in place; returns how many."""
    from onnx import numpy_helper

    targets = quantized_initializers(model.graph)
    changed = 0
    for tensor in model.graph.initializer:
        if tensor.name not in targets:
            continue
        values = numpy_helper.to_array(tensor)
        if values.dtype == np.int8:  # int32 biases and their zero points stay as they are
            shifted = (values.astype(np.int16) + 128).astype(np.uint8)
            tensor.CopyFrom(numpy_helper.from_array(shifted, tensor.name))
            changed += 1
    return changed


def signed_tensors(model) -> int:
    """How many int8 quantized tensors the model still has (0 after `to_uint8`)."""
    from onnx import numpy_helper

    targets = quantized_initializers(model.graph)
    return sum(numpy_helper.to_array(tensor).dtype == np.int8
               for tensor in model.graph.initializer if tensor.name in targets)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="export/onnx_uint8.py", description=__doc__.split("\n\n")[0].strip(),
        epilog="Example: python export/onnx_uint8.py runs/plus/model_int8.onnx")
    parser.add_argument("model", type=Path, help="an int8 ONNX file (QDQ)")
    parser.add_argument("-o", "--out", type=Path, help="where to write (default: in place)")
    args = parser.parse_args(argv)
    import onnx

    try:
        model = onnx.load(str(args.model))
    except Exception as error:  # protobuf raises several types for a file it cannot parse
        print(f"error: {args.model}: not an ONNX model ({type(error).__name__})", file=sys.stderr)
        return 2
    changed = to_uint8(model)
    out = args.out or args.model
    if changed or args.out:
        with atomic_path(out) as tmp:
            onnx.save(model, str(tmp))
    print(f"{out}: {changed} int8 tensors made uint8" if changed
          else f"{out}: no int8 tensors (already uint8, or not quantized): values unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
