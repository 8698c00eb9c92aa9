"""Fixtures for the data tests: small prepared datasets and COCO-format data
(see data_helpers.py), made once per session."""

from __future__ import annotations

import pytest
from data_helpers import build_coco_fixture


@pytest.fixture(scope="session")
def coco_fixture(tmp_path_factory) -> dict:
    return build_coco_fixture(tmp_path_factory.mktemp("coco_src"))


@pytest.fixture(scope="session")
def coco_prepared(coco_fixture, tmp_path_factory):
    """The fixture prepared with `prepare_coco_json` (train + val)."""
    from mrcli.data.prepare import prepare_coco_json
    from mrcli.data.store import find_dataset

    data_dir = tmp_path_factory.mktemp("coco_data")
    result = prepare_coco_json(annotations=coco_fixture["train"], images=coco_fixture["images"],
                               val_annotations=coco_fixture["val"], name="parts", data_dir=data_dir)
    return result, find_dataset("parts", data_dir)


@pytest.fixture(scope="session")
def shapes_dataset(tmp_path_factory):
    """A small shapes dataset (long side 64) shared by the pipeline tests."""
    from mrcli.data.prepare import prepare_shapes
    from mrcli.data.store import find_dataset

    data_dir = tmp_path_factory.mktemp("shapes_data")
    prepare_shapes(data_dir=data_dir, num_train=40, num_val=11, size=64, seed=0)
    return find_dataset("shapes", data_dir)
