"""What a whisper.cpp model file says about the memory its engine needs, before the first start.

Admission by fit needs a figure before a model has ever run; after a first load the router
uses the measured one (the engine process's RSS, :mod:`.memory_sources`), as for GGUF models
(:mod:`.gguf_facts`, whose rule this is not: a whisper model has no KV cache sized by a context
option, and its file is not GGUF).

**The rule**: file size + a compute buffer fixed per model size + 64 MiB for the process.

* The file is whisper.cpp's weights as they sit in memory (whisper.cpp reads them whole, f16
  or quantized as stored), so its size is the weights' share.
* The rest is whisper.cpp's working memory: the encoder's and decoder's compute buffers and
  the cross-attention and self-attention caches. They depend on the model's shape, not on the
  audio (every chunk is padded to 30 s, ``n_audio_ctx`` = 1500 frames), so they are a constant
  per model size. The figures below are whisper.cpp's own memory table (its README: total
  memory minus file size, tiny ~273 MB - 75 MiB, base ~388 MB - 142 MiB, small ~852 MB - 466
  MiB, medium ~2.1 GB - 1.5 GiB, large ~3.9 GB - 2.9 GiB), rounded up. The size is read from
  the header's encoder width (``n_audio_state``: 384, 512, 768, 1024, 1280), which every
  variant of a size shares (``.en``, quantized, ``-turbo``).
* A width not in the table (a test's synthetic model) takes the buffer of the next larger
  size, else the largest: the estimate errs on the side of making room, never of admitting a
  model that does not fit.
* 64 MiB covers the engine process itself (whisper-server, or the Python wrapper around
  pywhispercpp), like the fixed margin of a GGUF estimate.

Reading the header is 48 bytes; the caller still runs it off the loop (it is file I/O).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from .whisper_models import MAGIC

MIB = 1024 * 1024
#: Compute buffers and caches by encoder width (n_audio_state), in bytes.
COMPUTE_BYTES_BY_WIDTH = {
    384: 192 * MIB,  # tiny
    512: 256 * MIB,  # base
    768: 384 * MIB,  # small
    1024: 576 * MIB,  # medium
    1280: 896 * MIB,  # large-v1/v2/v3, large-v3-turbo
}
#: The engine process itself.
PROCESS_BYTES = 64 * MIB
#: ``n_vocab, n_audio_ctx, n_audio_state, n_audio_head, n_audio_layer, n_text_ctx, ...``
_HPARAMS = struct.Struct("<I11i")


@dataclass(frozen=True)
class WhisperFacts:
    """The header fields that size a whisper.cpp model in memory, and its file's size."""

    file_bytes: int
    n_audio_state: int
    n_audio_layer: int
    n_text_layer: int

    @property
    def compute_bytes(self) -> int:
        """The fixed working memory of this model size (see the module's rule)."""
        widths = sorted(COMPUTE_BYTES_BY_WIDTH)
        width = next((w for w in widths if w >= self.n_audio_state), widths[-1])
        return COMPUTE_BYTES_BY_WIDTH[width]

    def estimate_bytes(self) -> int:
        """File + compute buffer + process: what a start of this model holds, at most."""
        return self.file_bytes + self.compute_bytes + PROCESS_BYTES


def read_facts(path: str) -> WhisperFacts:
    """The facts of the whisper.cpp model at ``path`` (blocking: run it in a worker thread).

    Raises ValueError when the file is not a whisper.cpp model (no ``ggml`` magic, a header
    cut short, a width that is not positive), OSError when it cannot be read."""
    with open(path, "rb") as fh:
        head = fh.read(_HPARAMS.size)
        size = os.fstat(fh.fileno()).st_size
    if len(head) < _HPARAMS.size:
        raise ValueError(f"{path}: too short for a whisper.cpp model header")
    magic, _vocab, _audio_ctx, audio_state, _audio_head, audio_layer, _text_ctx, \
        _text_state, _text_head, text_layer, _mels, _ftype = _HPARAMS.unpack(head)
    if magic != MAGIC:
        raise ValueError(f"{path}: not a whisper.cpp model (no ggml magic)")
    if audio_state <= 0:
        raise ValueError(f"{path}: the header's encoder width is {audio_state}")
    return WhisperFacts(size, audio_state, audio_layer, text_layer)


def estimate_bytes(path: str) -> int:
    """What a start of the whisper.cpp model at ``path`` needs (blocking; see the rule)."""
    return read_facts(path).estimate_bytes()
