"""Prepared datasets on disk: TFDS ArrayRecord shards written without TensorFlow.

Layout (one directory per dataset in the data directory)::

    DATA_DIR/NAME/1.0.0/
        dataset_info.json, features.json     TFDS metadata
        metadata.json                        the mrcli record (below), as TFDS metadata
        NAME-train.array_record-00000-of-0000N, ...
        mrcli_index.npz                      per split: image_id, height, width, num_instances,
                                             class_ids + class_offsets (the classes of each image),
                                             num_keypoints (labelled keypoints of each image)

How: tensorflow-datasets 4.9.10 writes ArrayRecord shards and its metadata
without TensorFlow through a `GeneratorBasedBuilder` with
`file_format="array_record"`, as long as the features avoid the ones that
encode with TensorFlow (`tfds.features.Image` needs it). So images are stored
as their encoded bytes (`Tensor(shape=(), dtype=object)`) and decoded by the
input pipeline with PIL, masks as pycocotools compressed RLE bytes; a
keypoint dataset adds `keypoints` [n, K, 3] (its categories carry the names,
skeleton, flip pairs and OKS sigmas: mrcli.keypoint_sets). Reading
needs no TensorFlow either: `tfds.builder_from_directory(path)` or
`tfds.data_source(NAME, data_dir=DATA_DIR)` give random-access
`ArrayRecordDataSource`s. (`tfds.data_source("coco", ...)` would resolve to
TFDS's own registered `coco` builder, so mrcli always opens by directory.)

Shuffling at write time is disabled: record k of a split is the k-th image in
the order mrcli generated it, which lets `mrcli_index.npz` list the image
sizes the input pipeline needs for its bucket plan without reading images.

Every write goes to a hidden temporary directory next to the target and is
renamed into place at the end, so an interrupted `mrcli prepare` never leaves
a dataset that looks complete.

The record (`Dataset.record`, TFDS `info.metadata`)::

    {"mrcli_format": 1, "name": ..., "source": {...},
     "categories": [{"id": 18, "contiguous_id": 1, "name": "dog", "supercategory": ...}, ...],
     "splits": {"train": {"images": n, "instances": m, "crowd": c, "empty_images": e,
                          "per_class": {"dog": k, ...}, "min_size": [h, w], "max_size": [h, w]}},
     "fingerprint": "sha256 hex (first 16)", "problems": {kind: count}, "skipped": {...}}
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from mrcli.errors import UserError
from mrcli.keypoint_sets import KeypointSet

VERSION = "1.0.0"
FORMAT = 1
INDEX_FILE = "mrcli_index.npz"
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


# --- where datasets live ------------------------------------------------------------


def default_data_dir() -> Path:
    """`$MRCLI_DATA`, else `~/mrcli_data`."""
    env = os.environ.get("MRCLI_DATA")
    return Path(env).expanduser() if env else Path.home() / "mrcli_data"


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    return Path(data_dir).expanduser() if data_dir else default_data_dir()


def check_name(name: str) -> str:
    if not _NAME_RE.match(name or ""):
        raise UserError(
            f"dataset name {name!r}: use lower-case letters, digits and underscores, "
            "starting with a letter (e.g. --name my_parts)"
        )
    return name


def dataset_path(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    return resolve_data_dir(data_dir) / name / VERSION


def list_datasets(data_dir: str | os.PathLike | None = None) -> list[str]:
    """Names of the complete prepared datasets in the data directory."""
    root = resolve_data_dir(data_dir)
    if not root.is_dir():
        return []
    names = []
    for child in sorted(root.iterdir()):
        if child.name.startswith("."):
            continue
        meta = child / VERSION / "metadata.json"
        if meta.is_file() and (child / VERSION / INDEX_FILE).is_file():
            names.append(child.name)
    return names


def describe_datasets(data_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """What `mrcli datasets` lists of each prepared dataset: name, classes, and
    images and instances per split, read from the records (no images)."""
    rows = []
    for name in list_datasets(data_dir):
        ds = Dataset(dataset_path(name, data_dir))
        splits = ds.record.get("splits", {})
        rows.append({
            "name": name, "classes": ds.num_classes, "source": ds.record.get("source", {}).get("kind"),
            "splits": {s: {"images": int(v.get("images", 0)), "instances": int(v.get("instances", 0))}
                       for s, v in splits.items()},
            "path": str(ds.path),
        })  # fmt: skip
    return rows


def find_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Open the prepared dataset `name`; a UserError lists what exists."""
    root = resolve_data_dir(data_dir)
    path = root / name / VERSION
    if not (path / "metadata.json").is_file() or not (path / INDEX_FILE).is_file():
        have = list_datasets(root)
        listing = ", ".join(have) if have else "none"
        hint = (
            "prepare it with `mrcli prepare shapes|coco|coco-json|cityscapes|yolo|labelme`"
            if not have
            else "pick one of those, or prepare it with `mrcli prepare ...`"
        )
        raise UserError(
            f"no prepared dataset {name!r} in {root} (datasets there: {listing}); "
            f"{hint}, or point --data-dir / $MRCLI_DATA at the right directory"
        )
    return Dataset(path)


# --- reading ------------------------------------------------------------------------


class Dataset:
    """A prepared dataset: its record, category map, index and data sources."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.name = self.path.parent.name
        with open(self.path / "metadata.json") as f:
            self.record: dict[str, Any] = json.load(f)
        if self.record.get("mrcli_format") != FORMAT:
            raise UserError(
                f"{self.path}: not an mrcli dataset of format {FORMAT} "
                f"(found {self.record.get('mrcli_format')!r}); prepare it again"
            )
        with np.load(self.path / INDEX_FILE) as z:
            self._index = {k: z[k] for k in z.files}
        self._sources: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"Dataset({self.name!r}, splits={self.splits}, path={str(self.path)!r})"

    @property
    def categories(self) -> list[dict[str, Any]]:
        """[{"id": dataset id, "contiguous_id": 1..K, "name": ...}, ...] sorted by contiguous id."""
        return self.record["categories"]

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    @property
    def class_names(self) -> list[str]:
        """Names indexed by contiguous id (index 0 = "background")."""
        return ["background"] + [c["name"] for c in self.categories]

    @property
    def keypoint_set(self) -> KeypointSet | None:
        """The dataset's keypoints (names, skeleton, flip pairs, sigmas), or None."""
        return KeypointSet.of(self.categories)

    def check_num_keypoints(self, num_keypoints: int) -> None:
        """A UserError when a keypoint model's K is not this dataset's, or it has none."""
        kset = self.keypoint_set
        if kset is None:
            raise UserError(f"dataset {self.name!r} has no keypoints (no category lists 'keypoints'); "
                            "train a keypoint model (model.keypoints=true) on a keypoint dataset, "
                            "e.g. `mrcli prepare coco --keypoints` or `mrcli prepare figures`")  # fmt: skip
        if kset.num_keypoints != num_keypoints:
            raise UserError(f"model.keypoint_head.num_keypoints is {num_keypoints} but dataset "
                            f"{self.name!r} has {kset.num_keypoints} keypoints; use --set "
                            f"model.keypoint_head.num_keypoints={kset.num_keypoints}")  # fmt: skip

    def keypoint_counts(self, split: str) -> np.ndarray:
        """[N] labelled keypoints of each record's targets, in storage order."""
        self.check_split(split)
        counts = self._index.get(f"{split}/num_keypoints")
        if counts is not None:
            return counts
        return np.zeros(self.num_examples(split), np.int32)  # prepared before keypoints: none

    @property
    def fingerprint(self) -> str:
        return self.record["fingerprint"]

    @property
    def splits(self) -> list[str]:
        return list(self.record["splits"])

    def check_split(self, split: str) -> str:
        if split not in self.record["splits"]:
            raise UserError(
                f"dataset {self.name!r} has no split {split!r}; its splits are "
                f"{', '.join(self.splits)}"
            )
        return split

    def index(self, split: str) -> dict[str, np.ndarray]:
        """Per-record arrays in storage order: image_id, height, width, num_instances."""
        self.check_split(split)
        return {
            k: self._index[f"{split}/{k}"]
            for k in ("image_id", "height", "width", "num_instances")
        }

    def num_examples(self, split: str) -> int:
        return int(self.index(split)["image_id"].shape[0])

    def image_classes(self, split: str) -> list[np.ndarray]:
        """The contiguous class ids each record holds (crowd regions not
        counted), in storage order: from the index where it has them (datasets
        prepared by this release), else read from the records."""
        self.check_split(split)
        ids, offsets = self._index.get(f"{split}/class_ids"), self._index.get(f"{split}/class_offsets")
        if ids is not None and offsets is not None:
            return [ids[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
        source = self.source(split)
        return [np.unique(np.asarray(r["classes"], np.int32)[~np.asarray(r["crowd"], bool)])
                for r in (source[i] for i in range(len(source)))]  # fmt: skip

    def source(self, split: str):
        """Random-access `ArrayRecordDataSource` over the split (picklable)."""
        import tensorflow_datasets as tfds

        self.check_split(split)
        if split not in self._sources:
            self._sources[split] = tfds.builder_from_directory(str(self.path)).as_data_source(split=split)
        return self._sources[split]

    def check_num_classes(self, num_classes: int) -> None:
        """A UserError when a model's class count is not this dataset's."""
        if num_classes != self.num_classes:
            raise UserError(
                f"model.num_classes is {num_classes} but dataset {self.name!r} has "
                f"{self.num_classes} categories ({', '.join(self.class_names[1:6])}"
                f"{', ...' if self.num_classes > 5 else ''}); use --set model.num_classes="
                f"{self.num_classes}"
            )

    def file_name(self, split: str, index: int) -> str:
        """The file name of stored record `index` of `split` (as prepared)."""
        return _text(self.source(split)[index]["file_name"])

    def file_names(self, split: str) -> dict[int, str]:
        """image id -> file name (as prepared: relative to the source's images folder)."""
        src = self.source(split)
        return {int(src[k]["image_id"]): _text(src[k]["file_name"]) for k in range(len(src))}

    def coco_ground_truth(self, split: str) -> dict[str, Any]:
        """The split as a COCO-format dict (images, annotations with RLE
        segmentations, categories with the dataset's own ids), for
        pycocotools' COCO/COCOeval: the exact ground truth that was prepared."""
        src = self.source(split)
        contiguous_to_id = {c["contiguous_id"]: c["id"] for c in self.categories}
        keypoints = self.keypoint_set is not None
        images, anns = [], []
        for k in range(len(src)):
            ex = src[k]
            h, w = int(ex["height"]), int(ex["width"])
            images.append(
                {"id": int(ex["image_id"]), "height": h, "width": w,
                 "file_name": _text(ex["file_name"])}
            )
            for j in range(len(ex["ann_ids"])):
                x1, y1, x2, y2 = (float(v) for v in ex["boxes"][j])
                anns.append(
                    {
                        "id": int(ex["ann_ids"][j]),
                        "image_id": int(ex["image_id"]),
                        "category_id": contiguous_to_id[int(ex["classes"][j])],
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": float(ex["areas"][j]),
                        "iscrowd": int(bool(ex["crowd"][j])),
                        "segmentation": {"size": [h, w], "counts": _text(ex["rles"][j])},
                    }
                )
                if keypoints:
                    kp = np.asarray(ex["keypoints"][j], np.float32)  # [K, 3]
                    anns[-1]["keypoints"] = [round(float(v), 3) for v in kp.reshape(-1)]
                    anns[-1]["num_keypoints"] = int((kp[:, 2] > 0).sum())
        cats = [
            {"id": c["id"], "name": c["name"], "supercategory": c.get("supercategory", ""),
             **({"keypoints": c["keypoints"], "skeleton": c.get("skeleton", [])} if c.get("keypoints") else {})}
            for c in self.categories
        ]  # fmt: skip
        return {"images": images, "annotations": anns, "categories": cats}


def _text(v: Any) -> str:
    return v.decode("utf-8") if isinstance(v, (bytes, bytearray)) else str(v)


# --- writing ------------------------------------------------------------------------


@dataclass
class Example:
    """One image and its checked annotations, ready to store.

    Boxes are xyxy in the (upright) image's pixels; classes contiguous 1..K;
    masks pycocotools compressed RLE counts at (height, width)."""

    image_id: int
    file_name: str
    height: int
    width: int
    load: Callable[[], bytes]  # the bytes to store (upright 8-bit RGB JPEG/PNG)
    ann_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    classes: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int32))
    crowd: np.ndarray = field(default_factory=lambda: np.zeros((0,), bool))
    areas: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    rles: list[bytes] = field(default_factory=list)
    # [n, K, 3] float32 x, y (image pixels, as annotated), visibility 0/1/2 for a
    # dataset with keypoints (zeros for instances of categories without); else None.
    keypoints: np.ndarray | None = None
    image_sha256: str = ""  # of the source file (for the fingerprint)

    def features(self, data: bytes) -> dict[str, Any]:
        out = self._features(data)
        if self.keypoints is not None:
            out["keypoints"] = np.asarray(self.keypoints, np.float32)  # [n, K, 3]
        return out

    def num_labelled_keypoints(self) -> int:
        """Labelled keypoints (v > 0) of the instances that are targets (not crowd)."""
        if self.keypoints is None or not len(self.ann_ids):
            return 0
        kp = np.asarray(self.keypoints)  # [n, K, 3]
        return int((kp[~np.asarray(self.crowd, bool), :, 2] > 0).sum())

    def _features(self, data: bytes) -> dict[str, Any]:
        return {
            "image": data,
            "image_id": int(self.image_id),
            "file_name": self.file_name,
            "height": int(self.height),
            "width": int(self.width),
            "ann_ids": np.asarray(self.ann_ids, np.int64).reshape(-1),
            "boxes": np.asarray(self.boxes, np.float32).reshape(-1, 4),
            "classes": np.asarray(self.classes, np.int32).reshape(-1),
            "crowd": np.asarray(self.crowd, bool).reshape(-1),
            "areas": np.asarray(self.areas, np.float32).reshape(-1),
            "rles": np.array(list(self.rles), dtype=object).reshape(-1),
        }

    def digest(self) -> bytes:
        """A hash of everything stored for this example except the image bytes
        (those enter as `image_sha256`)."""
        h = hashlib.sha256()
        h.update(f"{self.image_id}|{self.file_name}|{self.height}|{self.width}|".encode())
        h.update(self.image_sha256.encode())
        for arr, dt in (
            (self.ann_ids, np.int64), (self.boxes, np.float32), (self.classes, np.int32),
            (self.crowd, np.bool_), (self.areas, np.float32),
        ):
            h.update(np.ascontiguousarray(arr, dtype=dt).tobytes())
        for r in self.rles:
            h.update(len(r).to_bytes(8, "little"))
            h.update(r)
        if self.keypoints is not None:  # datasets without keypoints hash as before
            h.update(b"keypoints")
            h.update(np.ascontiguousarray(self.keypoints, dtype=np.float32).tobytes())
        return h.digest()


def fingerprint(categories: list[dict[str, Any]], splits: dict[str, list[Example]]) -> str:
    """Content hash of a dataset: categories, and every split's examples in order."""
    h = hashlib.sha256()
    h.update(json.dumps(categories, sort_keys=True).encode())
    for split in sorted(splits):
        h.update(f"split:{split}:{len(splits[split])}".encode())
        for ex in splits[split]:
            h.update(ex.digest())
    return h.hexdigest()[:16]


def _features(num_keypoints: int = 0):
    """The stored features; `keypoints` only for a dataset with a keypoint set of
    `num_keypoints` (datasets without keep the features of earlier releases)."""
    import tensorflow_datasets as tfds

    obj = np.object_
    extra = {}
    if num_keypoints:
        # Per instance: K x (x, y, visibility), image pixels as annotated (COCO keypoints).
        extra["keypoints"] = tfds.features.Tensor(shape=(None, num_keypoints, 3), dtype=np.float32)
    return tfds.features.FeaturesDict(
        {
            **extra,
            # Encoded upright 8-bit RGB JPEG or PNG bytes.
            "image": tfds.features.Tensor(shape=(), dtype=obj),
            # The dataset's own image id.
            "image_id": np.int64,
            "file_name": tfds.features.Text(),
            "height": np.int32,
            "width": np.int32,
            # Per instance (n = number of annotations, crowd regions included):
            "ann_ids": tfds.features.Tensor(shape=(None,), dtype=np.int64),
            # xyxy in image pixels, clipped to the image.
            "boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
            # Contiguous class ids 1..K.
            "classes": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "crowd": tfds.features.Tensor(shape=(None,), dtype=np.bool_),
            # COCO `area` (the mask's area for polygons).
            "areas": tfds.features.Tensor(shape=(None,), dtype=np.float32),
            # pycocotools compressed RLE counts, size (height, width).
            "rles": tfds.features.Tensor(shape=(None,), dtype=obj),
        }
    )


def _num_keypoints(categories: list[dict[str, Any]] | None) -> int:
    kset = KeypointSet.of(categories)
    return kset.num_keypoints if kset is not None else 0


def _builder_class(name: str, record: dict[str, Any], splits: dict[str, list[Example]],
                   on_example: Callable[[str], None] | None):
    import tensorflow_datasets as tfds

    class MrcliDataset(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version(VERSION)

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description=f"mrcli dataset {name!r} ({record.get('source', {}).get('kind', '')})",
                features=_features(_num_keypoints(record.get("categories"))),
                metadata=tfds.core.MetadataDict(record),
                disable_shuffling=True,
            )

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(split) for split in splits}

        def _generate_examples(self, split):
            for k, ex in enumerate(splits[split]):
                yield f"{k:010d}", ex.features(ex.load())
                if on_example is not None:
                    on_example(split)

        # TFDS prints these to stdout, where mrcli's --json output goes.
        def _log_download_bytes(self):
            pass

        def _log_download_done(self):
            pass

    MrcliDataset.name = name
    return MrcliDataset


def write_dataset(
    name: str,
    data_dir: str | os.PathLike | None,
    splits: dict[str, list[Example]],
    record: dict[str, Any],
    *,
    overwrite: bool = False,
    on_example: Callable[[str], None] | None = None,
    extra_files: dict[str, bytes] | None = None,
) -> Path:
    """Write the splits as a TFDS ArrayRecord dataset, atomically.

    Everything goes to DATA_DIR/.NAME.incomplete-XXXX first and is renamed to
    DATA_DIR/NAME at the end; an exception (or a kill) leaves the previous
    dataset, if any, untouched. `extra_files` (name -> bytes) are written
    beside the shards. Returns the dataset's version directory."""
    import tensorflow_datasets as tfds

    check_name(name)
    root = resolve_data_dir(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    target = root / name
    if target.exists() and not overwrite:
        raise UserError(
            f"{target} already exists; pass --overwrite to replace it or --name to pick another name"
        )
    tmp = root / f".{name}.incomplete-{uuid.uuid4().hex[:8]}"
    record = dict(record, mrcli_format=FORMAT, name=name)
    try:
        tmp.mkdir()
        builder = _builder_class(name, record, splits, on_example)(
            data_dir=str(tmp), file_format="array_record"
        )
        tfds.disable_progress_bar()
        builder.download_and_prepare(download_dir=str(tmp / "downloads"))
        out = tmp / name / VERSION
        index = {}
        for split, examples in splits.items():
            index[f"{split}/image_id"] = np.array([e.image_id for e in examples], np.int64)
            index[f"{split}/height"] = np.array([e.height for e in examples], np.int32)
            index[f"{split}/width"] = np.array([e.width for e in examples], np.int32)
            index[f"{split}/num_instances"] = np.array(
                [len(e.ann_ids) for e in examples], np.int32
            )
            # The classes each image holds (not counting crowd regions), for
            # repeat-factor sampling: concatenated, with offsets [N + 1].
            present = [np.unique(np.asarray(e.classes)[~np.asarray(e.crowd, bool)]) for e in examples]
            index[f"{split}/class_ids"] = np.concatenate(present or [np.zeros(0)]).astype(np.int32)
            index[f"{split}/class_offsets"] = np.cumsum([0] + [len(p) for p in present]).astype(np.int64)
            # Labelled keypoints of each image's targets (data.min_keypoints_per_image).
            index[f"{split}/num_keypoints"] = np.array([e.num_labelled_keypoints() for e in examples],
                                                       np.int32)  # fmt: skip
        np.savez(out / INDEX_FILE, **index)
        for fname, content in (extra_files or {}).items():
            (out / fname).write_bytes(content)
        # metadata.json is written by TFDS; check that it is the record we gave.
        with open(out / "metadata.json") as f:
            if json.load(f).get("fingerprint") != record.get("fingerprint"):
                raise RuntimeError("TFDS did not write the mrcli record to metadata.json")
        old = None
        if target.exists():
            old = root / f".{name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(target, old)
        os.rename(tmp / name, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target / VERSION


def iter_examples(ds: Dataset, split: str) -> Iterator[dict[str, Any]]:
    src = ds.source(split)
    for k in range(len(src)):
        yield src[k]


def record_summary(
    categories: list[dict[str, Any]], splits: dict[str, Iterable[Example]]
) -> dict[str, dict[str, Any]]:
    """Per split: images, instances, crowd regions, empty images, per-class
    counts (non-crowd), image size range; with keypoints, the labelled keypoints
    and the instances that have any."""
    names = {c["contiguous_id"]: c["name"] for c in categories}
    out = {}
    for split, examples in splits.items():
        n_img = n_inst = n_crowd = n_empty = n_kp = n_kp_inst = 0
        with_keypoints = False
        per_class = {c["name"]: 0 for c in categories}
        hs, ws = [], []
        for ex in examples:
            n_img += 1
            crowd = np.asarray(ex.crowd, bool)
            n_crowd += int(crowd.sum())
            n_inst += int((~crowd).sum())
            n_empty += int(len(ex.ann_ids) == 0)
            for c, is_crowd in zip(np.asarray(ex.classes).tolist(), crowd.tolist()):
                if not is_crowd:
                    per_class[names[c]] += 1
            hs.append(ex.height)
            ws.append(ex.width)
            if ex.keypoints is not None:
                with_keypoints = True
                kp = np.asarray(ex.keypoints)[~crowd]  # [n, K, 3]
                n_kp += int((kp[..., 2] > 0).sum())
                n_kp_inst += int((kp[..., 2] > 0).any(axis=1).sum())
        out[split] = {
            "images": n_img,
            "instances": n_inst,
            "crowd": n_crowd,
            "empty_images": n_empty,
            "per_class": per_class,
            "min_size": [int(min(hs)), int(min(ws))] if hs else [0, 0],
            "max_size": [int(max(hs)), int(max(ws))] if hs else [0, 0],
        }
        if with_keypoints:
            out[split]["keypoints"] = n_kp  # labelled (v > 0), of non-crowd instances
            out[split]["keypoint_instances"] = n_kp_inst  # instances with any labelled
    return out

