"""A whisper.cpp model file with tiny dimensions and random weights, for tests and benchmarks.

There is no hub here, and whisper.cpp's smallest real model (tiny, 75 MB) is far too big for
the repository. This writes a valid ``ggml-*.bin`` in whisper.cpp's own layout (read by
``whisper_model_load`` in whisper.cpp's ``src/whisper.cpp``):

1. the magic 0x67676d6c ("ggml", little-endian) and eleven int32 hyperparameters
   (``n_vocab, n_audio_ctx, n_audio_state, n_audio_head, n_audio_layer, n_text_ctx,
   n_text_state, n_text_head, n_text_layer, n_mels, ftype``);
2. the mel filters and the vocabulary, taken as they are from whisper.cpp's own
   ``models/for-tests-ggml-tiny.bin`` (copied to ``tests/data/``; whisper.cpp, MIT licence),
   which holds those and no weights;
3. every tensor the loader expects, each as ``n_dims, name length, type, ne[0..n_dims)``, the
   name, then the data (f32 for biases, norms and positional embeddings; f16 for the
   matrices and convolutions, ``ftype`` 1).

The dimensions are whisper's but for the width (16) and the depth (one layer each side), so
the file is about 2.3 MB and a transcription of ``jfk.wav`` takes a fraction of a second on
one thread. The weights are seeded noise: the text is noise too, while the engine, its
protocol and its lifecycle are real.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent.parent / "data"
VOCAB_SOURCE = DATA / "for-tests-ggml-tiny.bin"
JFK_WAV = DATA / "jfk.wav"
MAGIC = 0x67676D6C
HEADER = struct.Struct("<I11i")

N_VOCAB = 51865  # multilingual: the special tokens' ids depend on it
N_AUDIO_CTX = 1500  # 30 s windows: whisper.cpp pads every window to this
N_TEXT_CTX = 448
N_MELS = 80
STATE = 16
HEADS = 2
LAYERS = 1
F32, F16 = 0, 1


def _tensors(state: int = STATE, layers: int = LAYERS) -> Iterator[tuple[str, tuple[int, ...], int]]:
    """Every tensor ``(name, ne, type)`` the loader creates for these dimensions, ``ne`` in
    ggml's order (innermost first)."""
    yield "encoder.positional_embedding", (state, N_AUDIO_CTX), F32
    yield "encoder.conv1.weight", (3, N_MELS, state), F16
    yield "encoder.conv1.bias", (1, state), F32
    yield "encoder.conv2.weight", (3, state, state), F16
    yield "encoder.conv2.bias", (1, state), F32
    yield "encoder.ln_post.weight", (state,), F32
    yield "encoder.ln_post.bias", (state,), F32
    for side in ("encoder", "decoder"):
        if side == "decoder":
            yield "decoder.positional_embedding", (state, N_TEXT_CTX), F32
            yield "decoder.token_embedding.weight", (state, N_VOCAB), F16
            yield "decoder.ln.weight", (state,), F32
            yield "decoder.ln.bias", (state,), F32
        for i in range(layers):
            attns = ("attn", "cross_attn") if side == "decoder" else ("attn",)
            p = f"{side}.blocks.{i}"
            yield f"{p}.mlp_ln.weight", (state,), F32
            yield f"{p}.mlp_ln.bias", (state,), F32
            yield f"{p}.mlp.0.weight", (state, 4 * state), F16
            yield f"{p}.mlp.0.bias", (4 * state,), F32
            yield f"{p}.mlp.2.weight", (4 * state, state), F16
            yield f"{p}.mlp.2.bias", (state,), F32
            for a in attns:
                yield f"{p}.{a}_ln.weight", (state,), F32
                yield f"{p}.{a}_ln.bias", (state,), F32
                yield f"{p}.{a}.query.weight", (state, state), F16
                yield f"{p}.{a}.query.bias", (state,), F32
                yield f"{p}.{a}.key.weight", (state, state), F16
                yield f"{p}.{a}.value.weight", (state, state), F16
                yield f"{p}.{a}.value.bias", (state,), F32
                yield f"{p}.{a}.out.weight", (state, state), F16
                yield f"{p}.{a}.out.bias", (state,), F32


def tensor_names() -> list[str]:
    return [name for name, _ne, _t in _tensors()]


def _values(name: str, ne: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    shape = tuple(reversed(ne))
    if name.endswith("ln.weight") or name.endswith("ln_post.weight"):
        return np.ones(shape, dtype=np.float32)
    if name.endswith(".bias"):
        return np.zeros(shape, dtype=np.float32)
    return (rng.standard_normal(shape) * 0.2).astype(np.float32)


def write_synthetic_whisper(path: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """Write the model to ``path`` (atomically) and return it."""
    path = Path(path)
    blob = VOCAB_SOURCE.read_bytes()[HEADER.size:]  # mel filters + vocabulary, as they are
    rng = np.random.default_rng(seed)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(HEADER.pack(MAGIC, N_VOCAB, N_AUDIO_CTX, STATE, HEADS, LAYERS, N_TEXT_CTX,
                             STATE, HEADS, LAYERS, N_MELS, F16))
        fh.write(blob)
        for name, ne, ttype in _tensors():
            raw = name.encode()
            fh.write(struct.pack(f"<3i{len(ne)}i", len(ne), len(raw), ttype, *ne))
            fh.write(raw)
            data = _values(name, ne, rng)
            fh.write(data.astype("<f2" if ttype == F16 else "<f4").tobytes())
    os.replace(tmp, path)
    return path


def read_header(path: str | os.PathLike[str]) -> tuple[int, ...]:
    """``(magic, n_vocab, ..., ftype)`` of a whisper.cpp model file."""
    with open(path, "rb") as fh:
        return HEADER.unpack(fh.read(HEADER.size))
