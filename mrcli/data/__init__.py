"""Data: `mrcli prepare` (COCO, any COCO-format dataset, Cityscapes, YOLO,
labelme, the built-in shapes) with its checker, the on-disk TFDS format, the
input pipeline, `mrcli show`.

    store     prepared datasets on disk; find_dataset(name, data_dir) -> Dataset
    check     reading and checking COCO-format annotations and image files
    prepare   prepare_coco / prepare_coco_json / prepare_cityscapes / prepare_yolo /
              prepare_labelme / prepare_shapes
    cityscapes, yolo, labelme   those formats read into COCO-style dicts for check
    split     --val-fraction: a val split held out by image, stratified by class
    shapes    the synthetic shapes generator
    pipeline  grain input pipeline -> fixed-shape batches (the batch contract)
    show      overlay PNGs
"""

from mrcli.data.store import Dataset, default_data_dir, find_dataset, list_datasets

__all__ = ["Dataset", "default_data_dir", "find_dataset", "list_datasets"]
