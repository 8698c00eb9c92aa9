"""benchmarks/cost.py, the source of BENCHMARKS.md's FLOP, byte and loop table, on
the tiny recipe (~40 s): the loops it reads from the optimised HLO are the ones the
config says the model runs, and the blocked NMS removes the long greedy loop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mrcli import config as config_lib

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_cost_of_the_tiny_programs(tmp_path):
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                if "xla_force_host_platform_device_count" not in f)  # fmt: skip
    out, md = tmp_path / "cost.json", tmp_path / "cost.md"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/cost.py"), "--tiny", "--json", str(out),
                           "--markdown", str(md)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {(r["program"], r["nms"]): r for r in json.loads(out.read_text())}
    m = config_lib.load_recipe("tiny").config.model

    # The greedy loop runs post_nms_topk steps (training, test) and detections_per_image
    # (the detections' per-class NMS): static trip counts, found in the HLO.
    train, detect = rows["train", "greedy"], rows["detect", "greedy"]
    assert max(train["trip_counts"]) == m.rpn.post_nms_topk.train
    assert sorted(detect["trip_counts"]) == sorted([m.rpn.post_nms_topk.test, m.inference.detections_per_image])
    assert any("ops/nms.py" in d["where"] for d in train["detail"])
    assert train["data_dependent"] == detect["data_dependent"] == 0
    assert train["sequential_iterations"] == sum(train["trip_counts"])
    # The blocked form: data-dependent loops instead, far fewer sequential steps.
    for program in ("train", "detect"):
        greedy, blocked = rows[program, "greedy"], rows[program, "blocked"]
        assert blocked["data_dependent"] >= 1
        assert blocked["sequential_iterations"] * 5 < greedy["sequential_iterations"]
        # NMS is a sliver of the FLOPs: either form costs the same to within 5 %.
        assert abs(blocked["flops"] / greedy["flops"] - 1) < 0.05
        assert greedy["flops"] > 1e9 and greedy["bytes"] > 1e7
    # Per image (the rows are): a training image costs more than an inference one
    # (the backward is ~2x the forward).
    assert train["flops"] > 1.5 * detect["flops"]
    table = md.read_text()
    assert "| H100 FLOP floor (ms / image) | H100 bandwidth time of those bytes (ms / image) |" in table
    assert table.count("| tiny |") == 4
