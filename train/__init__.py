"""edgeconv.train: the convnets, their recipes and training (TensorFlow or JAX via Keras)."""

import os

# TensorFlow's CPU tensors come from the C library's malloc unless this is set: glibc maps
# and unmaps every buffer over 32 MB, so each training step page-faults its activations in
# afresh. TensorFlow's own pooling allocator keeps them: 1.5x the images/s of a plus run on a
# 2-core AVX2 CPU (`python benchmarks/train.py --recipe plus`, its "system malloc" row), for
# about 20% more peak memory (docs/training.md); TF_CPU_ALLOCATOR_USE_BFC=false in the
# environment keeps malloc. Read when the first tensor is made, so it works here even after
# TensorFlow is imported. Where TensorFlow runs oneDNN (by default on CPUs with AVX512-VNNI),
# oneDNN's own allocator pools large buffers whatever this says.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
