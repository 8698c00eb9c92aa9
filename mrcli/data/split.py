"""`--val-fraction`: hold out a val split from a dataset that has none.

By image (an image and all its instances go to one side), deterministic (the
same images for the same data, whatever order the files were listed in: images
are ordered by a hash of their file name), and stratified by class as far as
it goes: each image is counted under the rarest class it shows (or "no
instances"), and each such stratum gives its share of the val images, the
shares rounded by largest remainder so that the val split has exactly
round(fraction * images) images (at least one). A class seen in a single
image stays in train.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter

import numpy as np

from mrcli.data.store import Example
from mrcli.errors import UserError


def _order_key(ex: Example) -> str:
    return hashlib.sha256(f"{ex.file_name}|{ex.image_id}".encode()).hexdigest()


def _classes(ex: Example) -> set[int]:
    """Contiguous classes of the image's instances (crowd regions left out)."""
    crowd = np.asarray(ex.crowd, bool)
    return set(np.asarray(ex.classes)[~crowd].tolist())


def hold_out(examples: list[Example], fraction: float) -> tuple[list[Example], list[Example]]:
    """-> (train, val), each in the order of `examples`."""
    if not (isinstance(fraction, (int, float)) and 0 < fraction < 1):
        raise UserError(f"--val-fraction {fraction}: expected a number between 0 and 1, e.g. 0.1")
    n = len(examples)
    n_val = max(1, round(fraction * n))
    if n_val >= n:
        raise UserError(
            f"--val-fraction {fraction}: {n} image(s) cannot make both a train and a val split; "
            "use a smaller fraction or add images"
        )
    images_per_class = Counter(c for ex in examples for c in _classes(ex))
    strata: dict[int, list[int]] = {}  # rarest class (0: no instances) -> indices of examples
    for k, ex in enumerate(examples):
        classes = _classes(ex)
        rarest = min(classes, key=lambda c: (images_per_class[c], c)) if classes else 0
        strata.setdefault(rarest, []).append(k)
    quotas = {s: fraction * len(idx) for s, idx in strata.items()}
    take = {s: math.floor(q) for s, q in quotas.items()}
    # Largest remainder first (ties: the stratum of the rarer class, then its id).
    by_remainder = sorted(strata, key=lambda s: (-(quotas[s] - take[s]), images_per_class[s], s))
    short = n_val - sum(take.values())
    for s in by_remainder:
        if short <= 0:
            break
        if take[s] < len(strata[s]):
            take[s] += 1
            short -= 1
    val_index: set[int] = set()
    for s, idx in strata.items():
        ordered = sorted(idx, key=lambda k: _order_key(examples[k]))
        val_index.update(ordered[: take[s]])
    train = [ex for k, ex in enumerate(examples) if k not in val_index]
    val = [ex for k, ex in enumerate(examples) if k in val_index]
    return train, val
