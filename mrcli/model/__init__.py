"""Mask R-CNN in Flax NNX: layers hold parameters, everything else is pure jnp.

See mask_rcnn.py for the entry points (`create`, `Model.loss`, `Model.detect`).
"""

from mrcli.model.mask_rcnn import (
    MaskRCNN,
    Model,
    abstract,
    check_config,
    count_parameters,
    create,
    merge_params,
    split_params,
)

__all__ = [
    "MaskRCNN",
    "Model",
    "abstract",
    "check_config",
    "count_parameters",
    "create",
    "merge_params",
    "split_params",
]
