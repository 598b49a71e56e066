"""Our GGUF header reader against the ``gguf`` package's writer and reader, and on broken files.

``read_facts`` runs on every ``ctx_size: auto`` load, so it must agree with ``gguf.GGUFReader``
(the format's reference) while skipping what it does not need, and a corrupt header must end
in a ValueError (a 400-free, bounded failure), never a long loop or a crash.
"""

from __future__ import annotations

import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

from lemonade_jupyter.core.gguf_facts import read_facts
from lemonade_jupyter.core.gguf_header import read_header


def write_tiny(path: Path) -> Path:
    """A small GGUF: scalars, a per-layer array, a tokenizer's string array, two tensors."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(2)
    w.add_context_length(4096)
    w.add_embedding_length(64)
    w.add_head_count(4)
    w.add_array("llama.attention.head_count_kv", [1, 2])
    w.add_token_list(["a", "bb", "ccc"] * 1000)
    w.add_string("general.name", "tiny")
    w.add_tensor("a", np.zeros((4, 8), dtype=np.float32))
    w.add_tensor("b", np.zeros((3,), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_header_agrees_with_the_gguf_reader(tmp_path):
    path = write_tiny(tmp_path / "tiny.gguf")
    header = read_header(str(path))
    reference = gguf.GGUFReader(str(path))
    assert header.tensor_bytes == sum(int(t.n_bytes) for t in reference.tensors) == 4 * 8 * 4 + 6
    assert header.metadata["llama.context_length"] == 4096
    assert header.metadata["general.name"] == "tiny"
    assert header.metadata["llama.attention.head_count_kv"] == 2  # an array: its last number
    assert "tokenizer.ggml.tokens" not in header.metadata  # skipped, not kept
    facts = read_facts(str(path))
    assert (facts.context_length, facts.n_layer, facts.n_head_kv, facts.key_length) == (
        4096, 2, 2, 16)


def test_header_of_the_default_model(default_model_file):
    facts = read_facts(default_model_file)
    # SmolLM2-135M Q4_1: the figures llama.cpp itself reports for it (gguf_facts' docstring).
    assert facts.weights_bytes == 96576768 and facts.context_length == 8192
    assert (facts.n_layer, facts.n_head_kv, facts.key_length) == (30, 3, 64)


@pytest.mark.parametrize("damage", ["empty", "not_gguf", "version", "truncated", "huge_count",
                                    "huge_string", "cut_in_a_number"])
def test_a_broken_header_is_a_value_error(tmp_path, damage):
    good = write_tiny(tmp_path / "good.gguf").read_bytes()
    data = {
        "empty": b"",
        "not_gguf": b"GGML" + good[4:],
        "version": good[:4] + struct.pack("<I", 99) + good[8:],
        "truncated": good[:200],
        "huge_count": good[:16] + struct.pack("<Q", 1 << 40) + good[24:],
        # The first key's length: far more than the file holds.
        "huge_string": good[:24] + struct.pack("<Q", 1 << 50) + good[32:],
        # Ends three bytes into the length of the first value (general.architecture's).
        "cut_in_a_number": good[:24 + 8 + len("general.architecture") + 4 + 3],
    }[damage]
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(ValueError):
        read_header(str(path))
