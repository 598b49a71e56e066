"""Write a llama-architecture GGUF with random F16 weights, of about a chosen size.

For the GPU check on a machine that cannot download a model: the tokenizer is copied from any
GGUF that has one (a vocab-only GGUF from llama.cpp's ``models/`` folder, or a real model), the
weights are random (the output is noise; memory, speed and placement are what is measured).

    python scripts/synthetic_gguf.py VOCAB.gguf OUT.gguf --mib 1024 [--layers 16]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def copy_tokenizer(reader, writer) -> int:
    """Copy every ``tokenizer.*`` field; return the vocabulary size."""
    import gguf

    vocab = 0
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            sub = field.types[1]
            if sub == gguf.GGUFValueType.STRING:
                values = [bytes(field.parts[i]).decode("utf-8", "replace") for i in field.data]
            else:
                values = [field.parts[i].tolist()[0] for i in field.data]
            writer.add_array(key, values)
            if key == "tokenizer.ggml.tokens":
                vocab = len(values)
        elif kind == gguf.GGUFValueType.STRING:
            writer.add_string(key, bytes(field.parts[-1]).decode("utf-8", "replace"))
        elif kind == gguf.GGUFValueType.BOOL:
            writer.add_bool(key, bool(field.parts[-1][0]))
        else:
            writer.add_uint32(key, int(field.parts[-1][0]))
    if not vocab:
        raise SystemExit("the vocabulary GGUF has no tokenizer.ggml.tokens")
    return vocab


def dims_for(target_bytes: int, vocab: int, layers: int) -> tuple[int, int]:
    """(n_embd, n_ff) so that the F16 weights come to about ``target_bytes``."""
    best = 128
    for n_embd in range(128, 16384, 128):
        n_ff = 4 * n_embd
        params = 2 * vocab * n_embd + layers * (4 * n_embd * n_embd + 3 * n_embd * n_ff)
        if params * 2 > target_bytes:
            break
        best = n_embd
    return best, 4 * best


def write(vocab_path: str, out_path: str, mib: int, layers: int, ctx: int = 4096) -> None:
    import gguf

    reader = gguf.GGUFReader(vocab_path)
    writer = gguf.GGUFWriter(out_path, "llama")
    vocab = copy_tokenizer(reader, writer)
    n_embd, n_ff = dims_for(mib * 1024 * 1024, vocab, layers)
    n_head = max(1, n_embd // 64)
    writer.add_name(f"synthetic-{mib}MiB")
    writer.add_context_length(ctx)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    rng = np.random.default_rng(0)

    def add(name: str, *shape: int) -> None:
        if len(shape) == 1:  # norms stay F32, at 1.0
            writer.add_tensor(name, np.ones(shape, dtype=np.float32))
        else:
            writer.add_tensor(name, (rng.standard_normal(shape, dtype=np.float32) * 0.02)
                              .astype(np.float16))

    add("token_embd.weight", vocab, n_embd)
    for i in range(layers):
        add(f"blk.{i}.attn_norm.weight", n_embd)
        add(f"blk.{i}.attn_q.weight", n_embd, n_embd)
        add(f"blk.{i}.attn_k.weight", n_embd, n_embd)
        add(f"blk.{i}.attn_v.weight", n_embd, n_embd)
        add(f"blk.{i}.attn_output.weight", n_embd, n_embd)
        add(f"blk.{i}.ffn_norm.weight", n_embd)
        add(f"blk.{i}.ffn_gate.weight", n_ff, n_embd)
        add(f"blk.{i}.ffn_up.weight", n_ff, n_embd)
        add(f"blk.{i}.ffn_down.weight", n_embd, n_ff)
    add("output_norm.weight", n_embd)
    add("output.weight", vocab, n_embd)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("vocab")
    parser.add_argument("out")
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=16)
    args = parser.parse_args(argv)
    write(args.vocab, args.out, args.mib, args.layers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
