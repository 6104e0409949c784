"""The bottom floor (edgeconv.common): helpers train/, export/ and benchmarks/ share.

Atomic file writes (files.py) and what machine this is (system.py). Nothing here imports the
stages; runtime/ and devices/ never import it, so a device, which gets only runtime/ and
devices/, never needs it.
"""
