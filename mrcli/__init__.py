"""mrcli: Mask R-CNN on JAX/Flax, from annotated images to an exported model."""

__version__ = "0.1.0.dev0"
