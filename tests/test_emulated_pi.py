"""Raspberry Pi OS Bookworm, emulated (tests/emulated_pi.py runs the jobs): arm64 and armhf.

After install.sh in each, every engine the profile offers classifies 60 test photos with the
shipped int8 model and a float32 one: labels must equal x86's, int8 scores within one
quantization step, float32 within 1e-5 (wider on 32-bit Arm: see ARMV7_INT8_STEPS and
ARMV7_FLOAT_TOLERANCE). deploy.py puts two models in turn on a third emulated Pi over SSH,
then the fleet's rollout puts the first back.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO, run_script
from emulated_pi import (
    ARMV7_FLOAT_TOLERANCE,
    ARMV7_INT8_STEPS,
    FLOAT_TOLERANCE,
    GUEST_CLONE,
    PHOTOS_PER_CLASS,
    PROFILES,
    classify_rows,
    engine_cases,
)

from edgeconv.runtime.profiles import load_profile

pytestmark = pytest.mark.system


ONNX_ARM_LOGIT_STEPS = 4


def int8_tolerance(model: Path) -> float:
    """One quantization step of the model's output, as its score shows it. TFLite's int8
    sigmoid maps int8 to int8, so that is the output's scale; ONNX Runtime runs the sigmoid in
    float between the logit's and the output's int8 tensors, so one step of the logit (at most a
    quarter of it through the sigmoid) adds to the output's step. A calibrated model's
    temperature T < 1 sharpens the score: near 0.5 a step becomes 1/T steps."""
    from edgeconv.runtime.classifier import Classifier

    sharpened = 1 / min(1.0, Classifier(model).confidence.temperature)
    if model.suffix == ".tflite":
        from edgeconv.runtime.engines import open_engine

        return open_engine(model).output["quantization"][0] * sharpened + 1e-6
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(model)).graph
    scales = {item.name: numpy_helper.to_array(item).max() for item in graph.initializer}
    sigmoid = next(node for node in graph.node if node.op_type == "Sigmoid")
    logit = next(node for node in graph.node if node.output[0] == sigmoid.input[0])
    output = next(node for node in reversed(graph.node) if node.op_type == "DequantizeLinear")
    # ONNX Runtime's Arm int8 kernels requantize with other rounding than x86's: the shipped
    # plus model (percentile calibration, uint8) differed by up to 3 logit steps on arm64.
    return float(ONNX_ARM_LOGIT_STEPS * scales[logit.input[1]] / 4 + scales[output.input[1]]
                 ) * sharpened + 1e-6


def largest_difference(what: str, guest: dict, host: dict, tolerance: float) -> float:
    """The largest difference of any class's score; fails on a photo or error that differs,
    and on a label that differs where x86's score is farther than `tolerance` from the
    threshold (nearer, that difference may cross it)."""
    assert len(guest) == 2 * PHOTOS_PER_CLASS, f"{what}: {len(guest)} photos classified"
    assert guest.keys() == host.keys(), f"{what}: photos differ from x86"
    errors = [name for name, row in guest.items() if "error" in row]
    assert not errors, f"{what}: errors on {errors[:3]}"
    flips = [name for name in guest if guest[name]["label"] != host[name]["label"]
             and host[name]["score"] - 0.5 > tolerance]
    assert not flips, f"{what}: labels differ from x86 on {flips}"
    worst = max(abs(guest[name]["scores"][label] - score) for name in guest
                for label, score in host[name]["scores"].items())
    assert worst <= tolerance, f"{what}: scores differ from x86 by {worst:.6f} > {tolerance:.6f}"
    return worst


@pytest.mark.parametrize("arch", sorted(PROFILES))
def test_install_then_classify_like_x86_with_every_engine(emulated, arch):
    result = emulated[arch].result()
    clone = result.pi.root / GUEST_CLONE[1:]
    worst = {}
    for key, guest in result.rows.items():
        engine, model = key.split()
        host_engine = "litert" if engine == "tflite-runtime" else engine
        host = run_script("runtime/classify", clone / model, clone / "photos", "--engine",
                          host_engine, "--json")
        assert host.returncode == 0, host.stderr
        if "int8" in model:
            tolerance = int8_tolerance(clone / model) * (ARMV7_INT8_STEPS if arch == "armhf"
                                                         else 1)
        else:
            tolerance = ARMV7_FLOAT_TOLERANCE if arch == "armhf" else FLOAT_TOLERANCE
        worst[key] = largest_difference(f"emulated {arch}, {key}", guest,
                                        classify_rows(host.stdout), tolerance)
    assert len(worst) == 2 * len(engine_cases(load_profile(PROFILES[arch])))
    host = run_script("tests/serve_check.py", clone / "models" / "plus_int8.tflite",
                      REPO / "devices" / "selftest" / "cat.jpg")
    assert host.returncode == 0, host.stderr
    x86 = json.loads(host.stdout.strip().splitlines()[-1])
    assert result.served["label"] == x86["label"], (result.served, x86)
    print(f"\nemulated {arch}: {' '.join(result.versions)}\n  seconds: {result.pi.seconds}\n"
          f"  largest score difference from x86: {worst}\n  serve: {result.served['label']} "
          f"{result.served['score']} (x86: {x86['label']} {x86['score']})")


def test_deploy_over_ssh_into_the_emulated_arm64_pi_then_swap_the_model(emulated, shipped):
    pi, held = emulated["deploy"].result()
    assert held == [(shipped / name).read_bytes()
                    for name in ("plus_int8.tflite", "augmented_int8.tflite", "plus_int8.tflite")]
    print(f"\nemulated arm64 deploy, seconds: {pi.seconds}")
