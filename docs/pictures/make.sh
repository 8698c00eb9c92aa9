#!/bin/sh
# Makes the pictures of README.md's "Pictures" section (docs/pictures/*.png) on
# the built-in shapes data, in a scratch folder (default: a new temporary one):
# two 1000-step runs of the tiny recipe, about 35 minutes on a 2-core CPU.
#
#     sh docs/pictures/make.sh [SCRATCH_DIR]
set -e
here=$(cd "$(dirname "$0")" && pwd)
work=${1:-$(mktemp -d)}
mkdir -p "$work" && cd "$work"
export MRCLI_DATA="$work/data"

mrcli prepare shapes
mrcli train --recipe tiny --data shapes --workdir runs/tiny --set train.eval_every=100
mrcli eval --workdir runs/tiny
mrcli show shapes --stats --recipe tiny --out stats/
mrcli train --recipe tiny --data shapes --workdir runs/tiny_sgd --set train.optimizer=sgd \
    --set train.base_lr=0.02 --set train.eval_every=100
mrcli compare runs/tiny runs/tiny_sgd

# Shrunk to 900 px wide (the gallery, a tall one, to 720) and to a 256-colour
# palette, to keep the repository small.
python - "$here" runs/tiny/plots/curves.png runs/tiny/eval/plots/pr_segm.png \
    runs/tiny/eval/plots/confusion_matrix.png runs/tiny/eval/plots/ap_by_size_segm.png \
    runs/tiny/eval/plots/worst_images.png stats/object_sizes.png compare/compare.png <<'PY'
import sys
from pathlib import Path
from PIL import Image

out = Path(sys.argv[1])
for name in sys.argv[2:]:
    im = Image.open(name).convert("RGB")
    width = 720 if Path(name).name == "worst_images.png" else 900
    if im.width > width:
        im = im.resize((width, round(im.height * width / im.width)), Image.LANCZOS)
    im.quantize(256, method=Image.Quantize.MEDIANCUT).save(out / Path(name).name, optimize=True)
    print(out / Path(name).name, im.size)
PY
