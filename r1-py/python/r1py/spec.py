"""A model's description that travels to workers: :class:`ModelSpec`.

An :class:`r1py.Model` holds its weights in native memory and cannot be pickled. A worker (a Ray
actor, a process of a pool) gets a :class:`ModelSpec` instead, a few strings, and loads the model
from it where it runs. The spec carries the SHA-256 of the weights, checked at load, so that every
node runs the same model even when each has its own copy of the files.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from ._errors import InvalidArgument, ModelNotFound

if TYPE_CHECKING:
    from . import Model

#: Bytes read at a time while hashing.
_CHUNK = 8 << 20


def file_digest(path: str) -> str:
    """The SHA-256 of a model: of the file for a GGUF or ``.safetensors`` file; for a
    checkpoint folder, of the list of its files (sorted by name, each ``name``, a NUL, its own
    SHA-256 and a newline), so that any changed, added or removed file changes it."""
    if os.path.isdir(path):
        outer = hashlib.sha256()
        for name in sorted(os.listdir(path)):
            full = os.path.join(path, name)
            if os.path.isfile(full):
                outer.update(f"{name}\0{file_digest(full)}\n".encode())
        return outer.hexdigest()
    if not os.path.isfile(path):
        raise ModelNotFound(f"{path}: no such model file or folder")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(_CHUNK)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelSpec:
    """Where a model is and how to load it: ``path`` (a GGUF file, a ``.safetensors`` file or a
    checkpoint folder, at the same path on every node), ``sha256`` (the weights' digest, see
    :func:`file_digest`; checked at load when set), and the load options of
    :class:`r1py.Model` (``dtype``, ``quantize``, ``threads``, ``cache``).

    ``ModelSpec.of(path)`` computes the digest from the files where it is called."""

    path: str
    sha256: Optional[str] = None
    dtype: Optional[str] = None
    quantize: Optional[str] = None
    threads: Optional[int] = None
    cache: Optional[str] = None

    @classmethod
    def of(cls, path: "os.PathLike[str] | str", **options: object) -> "ModelSpec":
        """A spec of the model at ``path`` with its digest computed now."""
        path = os.fspath(path)
        return cls(path=path, sha256=file_digest(path), **options)  # type: ignore[arg-type]

    def load(self, *, threads: Optional[int] = None) -> "Model":
        """Loads the model after checking its digest (``threads`` overrides the spec's)."""
        from . import Model

        if self.sha256 is not None:
            found = file_digest(self.path)
            if found != self.sha256.lower():
                raise InvalidArgument(
                    f"{self.path}: the weights' SHA-256 is {found}, but the spec says {self.sha256}: "
                    "this node has other files than the ones the spec was made from"
                )
        return Model(
            self.path, dtype=self.dtype, threads=threads or self.threads, quantize=self.quantize, cache=self.cache
        )
