"""Pretrained weights: imported from PyTorch files without running code, and
known by name (a catalogue), downloaded, verified and cached.

    importers.py     torchvision / Detectron2 / MSRA files -> mrcli checkpoint directories
    catalogue.toml   the weights known by name; catalogue.py reads and checks it
    cache.py         download (resumable, verified, mirrors), import once, resolve names
"""

from mrcli.weights.cache import cache_dir, download, fetch, is_cached, listing, resolve
from mrcli.weights.catalogue import Entry, entries
from mrcli.weights.importers import (
    BACKBONE_PROFILE,
    COCO_CATEGORIES,
    UnsafeCheckpoint,
    coco_categories,
    convert,
    import_weights,
    load_file,
)

__all__ = [
    "BACKBONE_PROFILE",
    "COCO_CATEGORIES",
    "Entry",
    "UnsafeCheckpoint",
    "cache_dir",
    "coco_categories",
    "convert",
    "download",
    "entries",
    "fetch",
    "import_weights",
    "is_cached",
    "listing",
    "load_file",
    "resolve",
]
