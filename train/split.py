"""Split each class's photos into train / validation / test: stratified, seeded, repeatable.

A split size is a count of photos per class (an int) or a fraction of each class (a float).
The same photos, seed and sizes always give the same split, whatever order they were listed in.
"""

from __future__ import annotations

import random

from edgeconv.train.dataset import SPLITS

Amount = int | float


class SplitError(Exception):
    """A split the photos cannot fill, reported as one line."""


def parse_amount(text: str) -> Amount:
    """'150' -> 150 photos per class; '0.7' -> 70% of each class."""
    try:
        value: Amount = float(text) if "." in text else int(text)
    except ValueError:
        raise ValueError(f"{text!r}: expected a count (150) or a fraction (0.7)") from None
    if value < 0 or (isinstance(value, float) and value > 1):
        raise ValueError(f"{text!r}: a count is 0 or more, a fraction 0.0 to 1.0")
    return value


def split_sizes(available: int, sizes: dict[str, Amount]) -> dict[str, int]:
    """Photos per split for a class of `available` photos. Fractions round to the nearest
    photo, and train takes what rounding leaves when the fractions add up to 1."""
    counts = {split: amount if isinstance(amount, int) else round(amount * available)
              for split, amount in sizes.items()}
    if all(isinstance(amount, float) for amount in sizes.values()) \
            and abs(sum(sizes.values()) - 1) < 1e-9:
        counts["train"] = available - counts["validation"] - counts["test"]
    return counts


def assign(photos: dict[str, list[str]], sizes: dict[str, Amount], seed: int
           ) -> dict[str, dict[str, list[str]]]:
    """class -> split -> photos (keys such as content digests). Each class is shuffled on its
    own by `seed` and the class name, so one class's photos never move another's."""
    chosen: dict[str, dict[str, list[str]]] = {}
    for name, keys in sorted(photos.items()):
        counts = split_sizes(len(keys), sizes)
        short = [split for split in SPLITS if sizes[split] and counts[split] < 1]
        if sum(counts.values()) > len(keys) or short:
            wanted = ", ".join(f"{split} {sizes[split]}" for split in SPLITS)
            raise SplitError(f"class {name!r} has {len(keys)} usable photos, too few for "
                             f"{wanted}; add photos or lower --train/--validation/--test")
        order = sorted(keys)
        random.Random(f"{seed}/{name}").shuffle(order)
        chosen[name], start = {}, 0
        for split in SPLITS:
            chosen[name][split] = sorted(order[start:start + counts[split]])
            start += counts[split]
    return chosen
