"""Detection ops: pure jnp functions written for one image, jit-able and vmappable.

Each module states its array shapes with this dimension key:
  B batch, N gt boxes, A anchors, R rois, D detections, K classes, M mask side,
  L levels, H/W height/width, C channels.
Boxes are xyxy in absolute pixels of the model input unless a name says otherwise.
"""
