"""A fast reader of the GGUF header fields that size a model: its numbers and its tensors' sizes.

Why our own: ``gguf.GGUFReader`` turns every metadata value into numpy views, the
tokenizer's ~100k strings included, which takes 2 to 4 seconds for the default model on this
kind of machine. With ``ctx_size: auto`` as the default every first load reads the trained
context, so that cost would land on every load. This reader walks the same header but only
keeps scalar numbers and strings; arrays are skipped (their strings by their lengths) except
for their last number, and the tensor infos give each tensor's size from its type's block size
(``gguf.GGML_QUANT_SIZES``, the format's own table). Tens of milliseconds for the same file.

The header layout (GGUF v2 and v3, little-endian): magic, version, tensor count, metadata
count; metadata as (key, type, value); tensor infos as (name, dims, type, offset). Every count
read from the file is bounded by what the file can hold, so a corrupt header ends in a
ValueError, never a long loop.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass

#: Value types of the metadata: scalar type id -> struct format.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING = 8
_ARRAY = 9
#: More metadata entries or tensors than any model has: a header claiming more is corrupt.
_MAX_COUNT = 1 << 24
_MAX_DIMS = 8


@dataclass(frozen=True)
class GgufHeader:
    """The scalar metadata (an array counts as its last number) and the tensors' total size."""

    metadata: dict[str, int | float | str]
    tensor_bytes: int


class _Cursor:
    """Reads little-endian values off a buffer; running past its end is a ValueError."""

    def __init__(self, buf: mmap.mmap | bytes) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, fmt: str) -> int | float:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise ValueError("the GGUF header ends early")
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value  # type: ignore[no-any-return]

    def count(self, per_item: int = 1) -> int:
        """A u64 count, bounded by what is left of the file (``per_item`` bytes each)."""
        n = int(self.take("<Q"))
        if n > _MAX_COUNT * 16 or n * per_item > len(self.buf) - self.pos:
            raise ValueError("the GGUF header has an impossible count")
        return n

    def string(self) -> str:
        n = self.count()
        raw = self.buf[self.pos:self.pos + n]
        self.pos += n
        return bytes(raw).decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        n = self.count()  # before the addition: count() moves pos itself
        self.pos += n

    def value(self, kind: int) -> int | float | str | None:
        """One metadata value; an array gives its last number (None for other arrays)."""
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind != _ARRAY:
            raise ValueError(f"the GGUF header has an unknown value type {kind}")
        item = int(self.take("<I"))
        n = self.count()
        if item == _STRING:
            for _ in range(n):
                self.skip_string()
            return None
        if item not in _SCALARS:
            raise ValueError(f"the GGUF header has an array of type {item}")
        size = struct.calcsize(_SCALARS[item])
        if n * size > len(self.buf) - self.pos:
            raise ValueError("the GGUF header has an impossible count")
        last = None
        if n:
            (last,) = struct.unpack_from(_SCALARS[item], self.buf, self.pos + (n - 1) * size)
        self.pos += n * size
        return last


def read_header(path: str) -> GgufHeader:
    """The header of the GGUF file at ``path`` (blocking: the caller runs it off the loop).

    Raises ValueError when the file is not a GGUF this reader knows, OSError when it cannot
    be read."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType  # the format's block sizes

    with open(path, "rb") as f:
        try:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError as exc:  # an empty file cannot be mapped
            raise ValueError(f"{path}: not a GGUF file") from exc
    with buf:
        cur = _Cursor(buf)
        if bytes(buf[:4]) != b"GGUF":
            raise ValueError(f"{path}: not a GGUF file")
        cur.pos = 4
        version = int(cur.take("<I"))
        if version not in (2, 3):
            raise ValueError(f"{path}: GGUF version {version} is not supported")
        n_tensors = int(cur.take("<Q"))
        n_kv = int(cur.take("<Q"))
        if n_tensors > _MAX_COUNT or n_kv > _MAX_COUNT:
            raise ValueError(f"{path}: the GGUF header has an impossible count")
        metadata: dict[str, int | float | str] = {}
        for _ in range(n_kv):
            key = cur.string()
            found = cur.value(int(cur.take("<I")))
            if found is not None:
                metadata[key] = found
        total = 0
        for _ in range(n_tensors):
            cur.skip_string()
            n_dims = int(cur.take("<I"))
            if n_dims > _MAX_DIMS:
                raise ValueError(f"{path}: a tensor has {n_dims} dimensions")
            elements = 1
            for _ in range(n_dims):
                elements *= int(cur.take("<Q"))
            kind = int(cur.take("<I"))
            cur.take("<Q")  # offset in the data section
            try:
                block, size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
            except (ValueError, KeyError) as exc:
                raise ValueError(f"{path}: a tensor has an unknown type {kind}") from exc
            total += elements // block * size
    return GgufHeader(metadata, total)
