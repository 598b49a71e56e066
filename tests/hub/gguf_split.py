"""Split a GGUF file into ``NAME-0000K-of-0000N.gguf`` parts, as ``llama-gguf-split`` does.

Written with the ``gguf`` package's writer (its ``split_max_tensors``): each part is a GGUF file
of its own, the first one with every metadata key plus ``split.no``, ``split.count`` and
``split.tensors.count``, so llama-server loads the first part and finds the others beside it.
"""

from __future__ import annotations

from pathlib import Path


def split_gguf(source: str, out_dir: Path, stem: str, parts: int = 2) -> list[Path]:
    """Write ``out_dir/stem-0000K-of-0000N.gguf`` and return the parts in order."""
    import gguf

    reader = gguf.GGUFReader(source)
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    per_part = -(-len(reader.tensors) // parts)
    writer = gguf.GGUFWriter(out_dir / f"{stem}.gguf", arch, split_max_tensors=per_part)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # written by the writer itself
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), value_type, sub_type=sub_type)
    for tensor in reader.tensors:
        writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype,
                               tensor.data.nbytes, tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in reader.tensors:
        writer.write_tensor_data(tensor.data, tensor_endianess=reader.endianess)
    writer.close()
    return sorted(out_dir.glob(f"{stem}-*-of-*.gguf"))
