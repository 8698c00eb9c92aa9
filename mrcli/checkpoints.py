"""Model checkpoint directories: the model state (orbax) and a JSON record.

    DIR/
      state/       orbax PyTree checkpoint of the model state as a pure dict
                   (nested by module path; list indices as strings), float32 numpy
      mrcli.json   {"format", "config" (mrcli.config.to_dict), "categories",
                    "partial", "source"}

This is what `mrcli weights import` writes and what `--checkpoint DIR` and
`train --init-from DIR` read. `categories` is the dataset category map
(docs/design.md §4): [{"id": dataset id, "contiguous_id": 1..K, "name",
"supercategory"}], or null where the weights carry none (an ImageNet backbone).
`partial` marks a state that holds only some of the model's variables (a
backbone), to be merged into a fresh model with `restore(..., partial=True)`.

Writing is atomic (docs/design.md §7): everything goes to a temporary sibling
directory that is renamed into place; an existing checkpoint at DIR is
replaced only after the new one is complete.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from mrcli.config import Config, from_dict, to_dict
from mrcli.errors import UserError

FORMAT = "mrcli-model/1"
RECORD = "mrcli.json"
STATE = "state"


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    state: dict[str, Any]  # pure nested dict of numpy arrays (string keys)
    config: Config
    categories: list[dict[str, Any]] | None
    partial: bool
    source: dict[str, Any]
    path: Path


def _pure(tree: Any) -> Any:
    """nnx.State or nested dict -> nested dict with string keys and numpy leaves."""
    if hasattr(tree, "to_pure_dict"):
        tree = tree.to_pure_dict()
    if isinstance(tree, dict):
        return {str(k): _pure(v) for k, v in tree.items()}
    return np.asarray(tree)


def flatten(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], np.ndarray]:
    """Nested dict -> {("backbone", "res2", "0", "conv1", "kernel"): array}."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, prefix + (str(k),)))
        else:
            out[prefix + (str(k),)] = v
    return out


def unflatten(flat: dict[tuple[str, ...], Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, v in flat.items():
        node = tree
        for k in path[:-1]:
            node = node.setdefault(str(k), {})
        node[str(path[-1])] = v
    return tree


def save(
    directory: str | Path,
    state: Any,
    config: Config,
    categories: list[dict[str, Any]] | None = None,
    *,
    partial: bool = False,
    source: dict[str, Any] | None = None,
) -> Path:
    """Write a model checkpoint directory atomically; returns its path."""
    import orbax.checkpoint as ocp

    target = Path(directory).expanduser().resolve()
    if target.exists() and not (target / RECORD).is_file():
        if not target.is_dir() or any(target.iterdir()):
            raise UserError(
                f"{target} exists and is not an mrcli checkpoint; choose another --out or remove it"
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        with ocp.StandardCheckpointer() as ckpt:
            ckpt.save(tmp / STATE, _pure(state))
            ckpt.wait_until_finished()
        record = {
            "format": FORMAT,
            "config": to_dict(config),
            "categories": categories,
            "partial": bool(partial),
            "source": source or {},
        }
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        replace_dir(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def replace_dir(tmp: Path, target: Path) -> None:
    """Move the finished directory `tmp` to `target`; an old `target` is moved
    aside first and deleted only after, so a crash leaves one complete copy."""
    if target.exists():
        old = target.parent / f".{target.name}.old-{tmp.name.rsplit('-', 1)[-1]}"
        target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(target)


def read_record(directory: str | Path) -> dict[str, Any]:
    path = Path(directory).expanduser()
    record_path = path / RECORD
    if not record_path.is_file():
        raise UserError(
            f"{path} is not an mrcli checkpoint (no {RECORD}); pass a directory written by "
            "`mrcli train` or `mrcli weights import`"
        )
    try:
        record = json.loads(record_path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{record_path}: not valid JSON ({e}); the checkpoint is damaged") from e
    if record.get("format") != FORMAT:
        raise UserError(
            f"{record_path}: format {record.get('format')!r}, this mrcli reads {FORMAT!r}"
        )
    return record


def load(directory: str | Path) -> Checkpoint:
    """Read a checkpoint directory (state as numpy arrays)."""
    import orbax.checkpoint as ocp

    path = Path(directory).expanduser().resolve()
    record = read_record(path)
    with ocp.StandardCheckpointer() as ckpt:
        state = ckpt.restore(path / STATE)
    return Checkpoint(
        state=_pure(state),
        config=from_dict(record["config"]),
        categories=record.get("categories"),
        partial=bool(record.get("partial", False)),
        source=record.get("source", {}),
        path=path,
    )


def check(state: Any, pure: dict[str, Any], *, partial: bool = False, origin: str = "checkpoint") -> None:
    """Raise UserError unless `pure` fits the model whose (possibly abstract) state is
    `state`: every array has the shape of the model's variable, every variable is
    present unless `partial`, and no array is unknown to the model (a checkpoint of
    another architecture)."""
    from flax import nnx

    model_flat = {tuple(str(k) for k in path): v for path, v in nnx.to_flat_state(state)}
    ckpt_flat = flatten(pure)
    unknown = sorted(set(ckpt_flat) - set(model_flat))
    missing = sorted(set(model_flat) - set(ckpt_flat))
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} arrays the model lacks, e.g. {'.'.join(unknown[0])}")
    if missing and not partial:
        problems.append(f"{len(missing)} model variables missing, e.g. {'.'.join(missing[0])}")
    for path in sorted(set(ckpt_flat) & set(model_flat)):
        want = tuple(model_flat[path].shape)
        got = tuple(np.shape(ckpt_flat[path]))
        if want != got:
            problems.append(f"{'.'.join(path)} has shape {got}, the model expects {want}")
            break
    if problems:
        raise UserError(
            f"{origin} does not fit the model config: " + "; ".join(problems)
            + " (check model.backbone.depth, model.num_classes, model.masks, model.mask_head.kind)"
        )


def restore(state: Any, pure: dict[str, Any], *, partial: bool = False, origin: str = "checkpoint"):
    """`state` (the nnx.State of the model to fill; abstract unless `partial`) with
    the arrays of `pure`, cast to the variables' dtypes. `check` first."""
    import jax.numpy as jnp
    from flax import nnx

    check(state, pure, partial=partial, origin=origin)
    ckpt_flat = flatten(pure)
    updates = []
    for path, var in nnx.to_flat_state(state):
        key = tuple(str(k) for k in path)
        if key in ckpt_flat:
            var = var.replace(jnp.asarray(ckpt_flat[key], dtype=var.value.dtype))
        updates.append((path, var))
    return nnx.from_flat_state(updates)
