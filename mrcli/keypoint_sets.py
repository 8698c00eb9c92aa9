"""Keypoint sets: the names, skeleton, flip pairs and OKS sigmas of a dataset's keypoints.

A COCO keypoint dataset gives each keypoint category its `keypoints` (names)
and `skeleton` (1-based index pairs). mrcli keeps them in the category map
(docs/design.md §4), with two more fields a COCO file may give and mrcli
otherwise chooses (`complete`):

    "flip_pairs"       1-based index pairs swapped by a horizontal flip: given, or
                       from the names ("left_X" <-> "right_X", `pairs_from_names`)
    "keypoint_sigmas"  the per-keypoint OKS sigmas of COCO's keypoint eval: given,
                       COCO's for COCO's 17 person keypoints, or else `DEFAULT_SIGMA`
                       for every keypoint (`sigmas_rule` says which, for messages)

All keypoint categories of a dataset share one set (Keypoint R-CNN predicts K
heatmaps whatever the class); `KeypointSet.of(categories)` is that set, or None.

Numbers: COCO's person keypoints, skeleton and sigmas as in
person_keypoints_val2017.json and pycocotools' COCOeval Params
(Ronchi & Perona 2017: the sigmas are the standard deviations of human
annotators' placements, as a fraction of the object's scale).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

COCO_PERSON_KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
    "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
# 1-based pairs, as in COCO's person_keypoints_*.json.
COCO_PERSON_SKELETON = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9),
    (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)  # fmt: skip
# pycocotools COCOeval Params.kpt_oks_sigmas.
COCO_PERSON_SIGMAS = (
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107,
    0.087, 0.087, 0.089, 0.089,
)  # fmt: skip
# A keypoint set that gives no sigmas and is not COCO's person set: every keypoint
# gets the mean of COCO's 17 (0.0669...), a human annotator's typical spread.
DEFAULT_SIGMA = round(sum(COCO_PERSON_SIGMAS) / len(COCO_PERSON_SIGMAS), 4)

_SIDE = re.compile(r"(left|right)", re.IGNORECASE)


def _mirror_name(name: str) -> str | None:
    """'left_wrist' -> 'right_wrist', 'Right Hand' -> 'Left Hand'; None without a side."""
    if not _SIDE.search(name):
        return None

    def swap(m: re.Match) -> str:
        word = m.group(0)
        other = "right" if word.lower() == "left" else "left"
        if word.isupper():
            return other.upper()
        return other.capitalize() if word[0].isupper() else other

    return _SIDE.sub(swap, name)


def pairs_from_names(names: Sequence[str]) -> list[tuple[int, int]]:
    """1-based (left, right) pairs of keypoints whose names differ only by
    left/right (any case), each pair once, in order of the first."""
    index = {n: i for i, n in enumerate(names)}
    pairs = []
    for i, n in enumerate(names):
        other = _mirror_name(n)
        j = index.get(other) if other is not None else None
        if j is not None and i < j:
            pairs.append((i + 1, j + 1))
    return pairs


def flip_permutation(num_keypoints: int, pairs: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """1-based pairs -> perm with perm[k] the 0-based keypoint that k becomes under
    a horizontal flip (its pair partner; itself for a centre keypoint)."""
    perm = list(range(num_keypoints))
    for a, b in pairs:
        perm[a - 1], perm[b - 1] = b - 1, a - 1
    return tuple(perm)


def sigmas_rule(names: Sequence[str], given: Sequence[float] | None) -> tuple[tuple[float, ...], str]:
    """The OKS sigmas of a keypoint set and where they come from (for messages)."""
    if given is not None:
        return tuple(float(s) for s in given), "given with the dataset"
    if tuple(names) == COCO_PERSON_KEYPOINTS:
        return COCO_PERSON_SIGMAS, "COCO's person sigmas (pycocotools)"
    return (DEFAULT_SIGMA,) * len(names), (f"none given: {DEFAULT_SIGMA} for every keypoint (the mean "
                                           "of COCO's 17); give a category 'keypoint_sigmas' list to set them")  # fmt: skip


@dataclass(frozen=True)
class KeypointSet:
    """The keypoints of a dataset: shared by every category that has keypoints."""

    names: tuple[str, ...]
    skeleton: tuple[tuple[int, int], ...]  # 1-based
    flip_pairs: tuple[tuple[int, int], ...]  # 1-based
    sigmas: tuple[float, ...]
    category_ids: tuple[int, ...]  # dataset ids of the categories with keypoints

    @property
    def num_keypoints(self) -> int:
        return len(self.names)

    @property
    def flip(self) -> tuple[int, ...]:
        """perm[k]: the 0-based keypoint k becomes under a horizontal flip."""
        return flip_permutation(len(self.names), self.flip_pairs)

    @classmethod
    def of(cls, categories: Sequence[dict[str, Any]] | None) -> KeypointSet | None:
        """The keypoint set of a category map (mrcli's, completed by `complete`),
        None where no category has keypoints."""
        with_kp = [c for c in categories or () if c.get("keypoints")]
        if not with_kp:
            return None
        first = with_kp[0]
        names = tuple(first["keypoints"])
        sigmas = first.get("keypoint_sigmas") or sigmas_rule(names, None)[0]
        pairs = first.get("flip_pairs")
        return cls(
            names=names,
            skeleton=tuple(tuple(int(v) for v in p) for p in first.get("skeleton", ())),
            flip_pairs=tuple(tuple(int(v) for v in p) for p in (pairs if pairs is not None else pairs_from_names(names))),
            sigmas=tuple(float(s) for s in sigmas),
            category_ids=tuple(int(c["id"]) for c in with_kp),
        )  # fmt: skip


def complete(category: dict[str, Any], given_sigmas: Sequence[float] | None,
             given_pairs: Sequence[Sequence[int]] | None) -> tuple[dict[str, Any], str]:
    """A keypoint category of the category map with its flip pairs and sigmas
    filled in (given, else chosen by rule); and the sigmas' rule, for messages."""
    names = list(category["keypoints"])
    sigmas, rule = sigmas_rule(names, given_sigmas)
    pairs = [list(p) for p in given_pairs] if given_pairs is not None else [list(p) for p in pairs_from_names(names)]
    return {**category, "flip_pairs": pairs, "keypoint_sigmas": list(sigmas)}, rule


__all__ = [
    "COCO_PERSON_KEYPOINTS", "COCO_PERSON_SIGMAS", "COCO_PERSON_SKELETON", "DEFAULT_SIGMA",
    "KeypointSet", "complete", "flip_permutation", "pairs_from_names", "sigmas_rule",
]
