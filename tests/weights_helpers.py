"""Weights files made in the tests, in the publishers' formats, from mrcli's own
initial weights (the inverse of mrcli.weights.importers), and a local HTTP
server that serves them the way a publisher's host does (Range requests),
or cuts a transfer short."""

from __future__ import annotations

import http.server
import pickle
import threading
from pathlib import Path

import numpy as np

from mrcli import checkpoints
from mrcli import model as model_lib
from mrcli.config import Config, ModelConfig, override
from mrcli.model.backbone import BLOCKS

BN_EPS = 1e-5


def model_config(**fields) -> ModelConfig:
    """The default model config with `fields` (keys below `model.`, dots as __) set."""
    return override(Config(), {f"model.{k.replace('__', '.')}": v for k, v in fields.items()}).model


def initial_arrays(cfg: ModelConfig, seed: int = 0) -> dict[tuple[str, ...], np.ndarray]:
    """mrcli's freshly initialised weights of `cfg`, flat."""
    _, state = model_lib.create(cfg, seed=seed)
    return {k: np.asarray(v) for k, v in checkpoints.flatten(state.to_pure_dict()).items()}


def tamed(flat: dict[tuple[str, ...], np.ndarray], pixel_std: float = 58.0) -> dict:
    """`flat` with frozen BatchNorm constants that keep random weights' activations
    bounded, as trained BatchNorm statistics do: the stem's scaled by 1 / pixel_std
    (Detectron2's profile leaves the input unscaled) and every block's last norm
    zero, so each residual block starts as the identity ("zero-init residual",
    Goyal et al. 2017 §5.1)."""
    out = dict(flat)
    out[("backbone", "stem_norm", "scale")] = flat[("backbone", "stem_norm", "scale")] / pixel_std
    for k in flat:
        if k[0] == "backbone" and k[-2] == "norm3" and k[-1] == "scale":
            out[k] = np.zeros_like(flat[k])
    return out


def _oihw(kernel: np.ndarray) -> np.ndarray:  # HWIO -> OIHW
    return np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))


def _bn(out: dict, prefix: str, scale: np.ndarray, bias: np.ndarray) -> None:
    """A BatchNorm whose folding (w / sqrt(var + eps), b - mean * scale) gives back scale, bias."""
    out[prefix + "weight"] = scale * np.sqrt(np.float32(1.0 + BN_EPS))
    out[prefix + "bias"] = bias
    out[prefix + "running_mean"] = np.zeros_like(scale)
    out[prefix + "running_var"] = np.ones_like(scale)


def torchvision_state(flat: dict, depth: int, detector: bool = True) -> dict[str, np.ndarray]:
    """mrcli arrays under torchvision's names: maskrcnn_resnet50_fpn's (detector)
    or a plain ResNet's with an ImageNet classifier."""
    out: dict[str, np.ndarray] = {}
    body = "backbone.body." if detector else ""
    g = lambda *p: flat[tuple(p)]  # noqa: E731
    out[body + "conv1.weight"] = _oihw(g("backbone", "stem", "kernel"))
    _bn(out, body + "bn1.", g("backbone", "stem_norm", "scale"), g("backbone", "stem_norm", "bias"))
    for s, n in enumerate(BLOCKS[depth]):
        for j in range(n):
            src, dst = ("backbone", f"res{s + 2}", str(j)), f"{body}layer{s + 1}.{j}."
            for i in (1, 2, 3):
                out[f"{dst}conv{i}.weight"] = _oihw(g(*src, f"conv{i}", "kernel"))
                _bn(out, f"{dst}bn{i}.", g(*src, f"norm{i}", "scale"), g(*src, f"norm{i}", "bias"))
            if (*src, "shortcut", "kernel") in flat:
                out[f"{dst}downsample.0.weight"] = _oihw(g(*src, "shortcut", "kernel"))
                _bn(out, f"{dst}downsample.1.", g(*src, "shortcut_norm", "scale"),
                    g(*src, "shortcut_norm", "bias"))  # fmt: skip
    if not detector:
        channels = out["layer4.0.conv3.weight"].shape[0]
        out["fc.weight"] = np.zeros((1000, channels), np.float32)
        out["fc.bias"] = np.zeros((1000,), np.float32)
        return out

    def conv(dst: str, *src: str) -> None:
        out[dst + "weight"] = _oihw(g(*src, "kernel"))
        out[dst + "bias"] = g(*src, "bias")

    def linear(dst: str, *src: str) -> None:
        out[dst + "weight"] = np.ascontiguousarray(g(*src, "kernel").T)
        out[dst + "bias"] = g(*src, "bias")

    for i in range(4):
        conv(f"backbone.fpn.inner_blocks.{i}.0.", "fpn", "lateral", str(i))
        conv(f"backbone.fpn.layer_blocks.{i}.0.", "fpn", "output", str(i))
    conv("rpn.head.conv.0.0.", "rpn", "conv")
    conv("rpn.head.cls_logits.", "rpn", "objectness")
    conv("rpn.head.bbox_pred.", "rpn", "deltas")
    fc6 = g("box_head", "fc6", "kernel")  # [P*P*C, D], (y, x, C) rows
    c = out["backbone.fpn.inner_blocks.0.0.weight"].shape[0]
    p = int(round((fc6.shape[0] // c) ** 0.5))
    out["roi_heads.box_head.fc6.weight"] = np.ascontiguousarray(
        fc6.T.reshape(-1, p, p, c).transpose(0, 3, 1, 2).reshape(fc6.shape[1], -1))
    out["roi_heads.box_head.fc6.bias"] = g("box_head", "fc6", "bias")
    linear("roi_heads.box_head.fc7.", "box_head", "fc7")
    linear("roi_heads.box_predictor.cls_score.", "box_head", "cls")
    linear("roi_heads.box_predictor.bbox_pred.", "box_head", "deltas")
    k = 0
    while ("mask_head", "convs", str(k), "kernel") in flat:
        conv(f"roi_heads.mask_head.{k}.0.", "mask_head", "convs", str(k))
        k += 1
    if k:
        out["roi_heads.mask_predictor.conv5_mask.weight"] = np.ascontiguousarray(
            g("mask_head", "deconv", "kernel").transpose(2, 3, 0, 1))
        out["roi_heads.mask_predictor.conv5_mask.bias"] = g("mask_head", "deconv", "bias")
        conv("roi_heads.mask_predictor.mask_fcn_logits.", "mask_head", "predictor")
    return out


def detectron2_names(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A torchvision detector's weights under Detectron2's names and class layout
    (background last; class-specific box and mask outputs without background)."""
    out = {}
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            continue
        n = k
        n = n.replace("backbone.body.conv1.", "backbone.bottom_up.stem.conv1.")
        n = n.replace("backbone.body.bn1.", "backbone.bottom_up.stem.conv1.norm.")
        for s in range(4):
            n = n.replace(f"backbone.body.layer{s + 1}.", f"backbone.bottom_up.res{s + 2}.")
        for i in (1, 2, 3):
            n = n.replace(f".bn{i}.", f".conv{i}.norm.")
        n = n.replace(".downsample.0.", ".shortcut.").replace(".downsample.1.", ".shortcut.norm.")
        for i in range(4):
            n = n.replace(f"backbone.fpn.inner_blocks.{i}.0.", f"backbone.fpn_lateral{i + 2}.")
            n = n.replace(f"backbone.fpn.layer_blocks.{i}.0.", f"backbone.fpn_output{i + 2}.")
            n = n.replace(f"roi_heads.mask_head.{i}.0.", f"roi_heads.mask_head.mask_fcn{i + 1}.")
        n = n.replace("rpn.head.conv.0.0.", "proposal_generator.rpn_head.conv.")
        n = n.replace("rpn.head.cls_logits.", "proposal_generator.rpn_head.objectness_logits.")
        n = n.replace("rpn.head.bbox_pred.", "proposal_generator.rpn_head.anchor_deltas.")
        n = n.replace("box_head.fc6.", "box_head.fc1.").replace("box_head.fc7.", "box_head.fc2.")
        n = n.replace("mask_predictor.conv5_mask.", "mask_head.deconv.")
        n = n.replace("mask_predictor.mask_fcn_logits.", "mask_head.predictor.")
        if "cls_score" in n:
            v = np.concatenate([v[1:], v[:1]])  # background last
        elif "bbox_pred" in n and "roi_heads" in n:
            v = v[4:]
        elif n.startswith("roi_heads.mask_head.predictor."):
            v = v[1:]
        out[n] = v
    return out


def detectron2_file(path: Path, sd: dict[str, np.ndarray]) -> bytes:
    """A Detectron2 model-zoo .pkl of a torchvision-named detector; returns its bytes."""
    data = pickle.dumps({"model": detectron2_names(sd), "__author__": "test"}, protocol=2)
    path.write_bytes(data)
    return data


def msra_blobs(flat: dict, depth: int) -> dict[str, np.ndarray]:
    """A ResNet's arrays in MSRA's Caffe2 names (Detectron2's ImageNetPretrained/MSRA
    R-50.pkl): the frozen BatchNorm as scale and bias, an ImageNet classifier."""
    blobs: dict[str, np.ndarray] = {}

    def put(c2: str, *ours: str, norm: tuple[str, ...]) -> None:
        blobs[c2 + "_w"] = _oihw(flat[(*ours, "kernel")])
        blobs[c2 + "_bn_s"] = flat[(*norm, "scale")]
        blobs[c2 + "_bn_b"] = flat[(*norm, "bias")]

    blobs["conv1_w"] = _oihw(flat[("backbone", "stem", "kernel")])
    blobs["res_conv1_bn_s"] = flat[("backbone", "stem_norm", "scale")]
    blobs["res_conv1_bn_b"] = flat[("backbone", "stem_norm", "bias")]
    for s, n in enumerate(BLOCKS[depth]):
        for j in range(n):
            src, c2 = ("backbone", f"res{s + 2}", str(j)), f"res{s + 2}_{j}_"
            for i, branch in ((1, "branch2a"), (2, "branch2b"), (3, "branch2c")):
                put(c2 + branch, *src, f"conv{i}", norm=(*src, f"norm{i}"))
            if (*src, "shortcut", "kernel") in flat:
                put(c2 + "branch1", *src, "shortcut", norm=(*src, "shortcut_norm"))
                blobs[c2 + "branch1_w_momentum"] = np.zeros(1, np.float32)  # Caffe2 files have these
    last = blobs["res5_0_branch2c_w"].shape[0]
    blobs["fc1000_w"] = np.zeros((1000, last), np.float32)
    blobs["fc1000_b"] = np.zeros((1000,), np.float32)
    return blobs


def msra_file(path: Path, cfg: ModelConfig, seed: int = 0) -> tuple[bytes, dict]:
    """An MSRA ImageNet .pkl of `cfg`'s ResNet from mrcli's initial weights;
    returns (its bytes, the flat arrays it holds)."""
    flat = initial_arrays(cfg, seed)
    data = pickle.dumps(msra_blobs(flat, cfg.backbone.depth), protocol=2)
    path.write_bytes(data)
    return data, flat


class Host:
    """A publisher's host on 127.0.0.1: serves `files` {name: bytes} with HTTP
    Range support. `cut_after` bytes: the next GET sends that many bytes of the
    body and drops the connection. `requests` records (path, Range header)."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.cut_after: int | None = None
        self.requests: list[tuple[str, str | None]] = []
        host = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def do_GET(self):  # noqa: N802 - the http.server API
                name = self.path.lstrip("/")
                host.requests.append((name, self.headers.get("Range")))
                data = host.files.get(name)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if host.cut_after is not None:
                    body, host.cut_after = body[: host.cut_after], None
                    self.wfile.write(body)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Host:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
