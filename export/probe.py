#!/usr/bin/env python
"""Measure one model in a fresh process, as a device would load it; prints one JSON line.

  python export/probe.py MODEL --threads N --repeat K [--batches 1,8,32] [--started T]

.tflite / .onnx go through runtime/ only (no TensorFlow is imported, so memory is honest);
.keras goes through Keras. --started is the caller's wall-clock time just before it started
this process, so cold start counts interpreter start, imports, model load and a first call.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path


def load(model: Path, threads: int):
    """Return (run(uint8 batch) -> outputs, input size)."""
    if model.suffix == ".keras":
        from edgeconv.train.backend import import_keras

        import_keras()
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        import keras

        network = keras.saving.load_model(model)
        return (lambda x: network(x.astype("float32"), training=False)), network.input_shape[1:3]
    from edgeconv.runtime.classifier import Classifier

    classifier = Classifier(model, threads=threads)
    return classifier.engine.run, classifier.size


def timings(run, images, repeat: int) -> list[float]:
    for _ in range(3):
        run(images)
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        run(images)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux's VmHWM starts afresh at exec; ru_maxrss
    would include the parent's peak from before the fork."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--batches", default="", help="also measure throughput at these sizes")
    parser.add_argument("--started", type=float, default=time.time())
    args = parser.parse_args()
    run, size = load(args.model, args.threads)
    image = (__import__("numpy").random.default_rng(0).integers(0, 256, (1, *size, 3))
             .astype("uint8"))
    run(image)
    cold_start = time.time() - args.started
    single = timings(run, image, args.repeat)
    throughput = {}
    for batch in filter(None, args.batches.split(",")):
        images = image.repeat(int(batch), axis=0)
        median = statistics.median(timings(run, images, max(3, args.repeat // int(batch))))
        throughput[batch] = int(batch) / (median / 1000)
    print(json.dumps({
        "threads": args.threads,
        "cold_start_s": cold_start,
        "ms_p50": statistics.median(single), "ms_min": min(single), "ms_max": max(single),
        "images_per_second": throughput,
        "peak_rss_mb": peak_rss_mb(),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
