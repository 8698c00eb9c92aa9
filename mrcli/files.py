"""Atomic file writes (docs/design.md §7): a temporary sibling, then a rename, so an
interrupted command leaves either the old file or the new one, never half."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """`data` as indented JSON with a final newline."""
    write_bytes_atomic(path, (json.dumps(data, indent=2) + "\n").encode())
