"""What a GGUF file says about the memory its model needs, read with the ``gguf`` package.

Admission by fit needs an estimate before the first start of a model: its weights (the tensor
sizes in the header), its KV cache for the context it will run with (from the layer count, the
KV heads and the head sizes), and a margin for llama.cpp's compute and output buffers and the
process itself. After a first load the router uses the measured figure instead
(:mod:`.memory_sources`).

Measured on the default model (SmolLM2-135M Q4_1, ``-c 2048``, one thread, CPU build):
llama-server's own report was 92.10 MiB of weights, 45.00 MiB of KV cache, 15.51 MiB of compute
buffer and 0.75 MiB of output buffer; the process RSS after loading was 171.5 MiB (329.3 MiB
with ``-c 8192``, its trained context and the default since ``ctx_size: auto``, estimated at
341 MiB). Weights and
KV cache computed here from the header match llama.cpp's figures to the byte; the margin below
(64 MiB + 5 % of the weights) puts the estimate at 205.7 MiB, 20 % above the RSS: an estimate
that errs on the side of making room (``tests/core/test_fit.py`` checks the bound with a real
backend).

The header is read by :mod:`.gguf_header` (tens of milliseconds; ``gguf.GGUFReader`` took
seconds, its tokenizer arrays included), cached per file (path, size, mtime) and read off the
event loop by the caller.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from .gguf_header import read_header

MIB = 1024 * 1024
#: Fixed part of the margin: compute and output buffers of small models, the process itself.
MARGIN_FIXED_BYTES = 64 * MIB
#: Proportional part: compute buffers grow with the model's width.
MARGIN_FRACTION = 0.05
F16_BYTES = 2


@dataclass(frozen=True)
class GgufFacts:
    """The header fields that size a model in memory."""

    architecture: str
    weights_bytes: int
    n_layer: int
    n_head_kv: int
    key_length: int
    value_length: int
    context_length: int

    def kv_cache_bytes(self, ctx_size: int) -> int:
        """K and V in f16 for ``ctx_size`` cells of every layer (llama.cpp's default cache)."""
        per_cell = self.n_layer * self.n_head_kv * (self.key_length + self.value_length)
        return per_cell * ctx_size * F16_BYTES

    def estimate_bytes(self, ctx_size: int) -> int:
        """Weights + KV cache + margin: what a start of this model will hold, at most."""
        margin = MARGIN_FIXED_BYTES + int(self.weights_bytes * MARGIN_FRACTION)
        return self.weights_bytes + self.kv_cache_bytes(ctx_size) + margin


def read_facts(path: str) -> GgufFacts:
    """The facts of the GGUF at ``path`` (blocking: run it in a worker thread).

    Raises ValueError when the file is not a GGUF llama.cpp can size (no architecture, no
    block count).
    """
    st = os.stat(path)
    return _read_cached(path, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _read_cached(path: str, _size: int, _mtime_ns: int) -> GgufFacts:
    header = read_header(path)  # our own walk of the header: gguf's reader takes seconds

    def field(key: str, default: int | None = None) -> int:
        value = header.metadata.get(key)
        if value is None:
            if default is None:
                raise ValueError(f"{path}: the GGUF header has no {key}")
            return default
        if isinstance(value, str):
            raise ValueError(f"{path}: the GGUF header's {key} is not a number")
        return int(value)

    arch = header.metadata.get("general.architecture")
    if not isinstance(arch, str):
        raise ValueError(f"{path}: the GGUF header names no architecture")
    n_embd = field(f"{arch}.embedding_length")
    n_head = field(f"{arch}.attention.head_count")
    head_dim = n_embd // max(n_head, 1)
    return GgufFacts(
        architecture=arch,
        weights_bytes=header.tensor_bytes,
        n_layer=field(f"{arch}.block_count"),
        n_head_kv=field(f"{arch}.attention.head_count_kv", n_head),
        key_length=field(f"{arch}.attention.key_length", head_dim),
        value_length=field(f"{arch}.attention.value_length", head_dim),
        context_length=field(f"{arch}.context_length", 0),
    )
