"""The llama-server command line and environment are pure data (no spawn)."""

from __future__ import annotations

import pytest

from lemonade_jupyter.core.catalog import ModelSpec
from lemonade_jupyter.core.engines.llamacpp import (
    DEFAULT_CTX_SIZE,
    LlamaCppEngine,
    find_llama_server,
)
from lemonade_jupyter.core.options import LoadOptions
from lemonade_jupyter.errors import EngineMissingError


def test_argv_llm_and_embedding():
    engine = LlamaCppEngine("/bin/llama-server", threads=2)
    llm = ModelSpec(name="user.a", checkpoint="/m.gguf")
    argv = engine.argv(llm, LoadOptions(), port=1234)
    assert argv == ["/bin/llama-server", "--model", "/m.gguf", "--port", "1234", "--host",
                    "127.0.0.1", "--ctx-size", str(DEFAULT_CTX_SIZE), "--no-webui",
                    "--threads", "2"]
    emb = ModelSpec(name="user.e", checkpoint="/e.gguf", labels=("embeddings",))
    argv = engine.argv(emb, LoadOptions(ctx_size=512, llamacpp_args="--flash-attn 'on'"),
                       port=1)
    assert argv[argv.index("--ctx-size") + 1] == "512"
    assert "--embeddings" in argv and argv[-2:] == ["--flash-attn", "on"]


def test_parallel_option_sets_the_slots():
    engine = LlamaCppEngine("/bin/llama-server")
    llm = ModelSpec(name="user.a", checkpoint="/m.gguf")
    assert "--parallel" not in engine.argv(llm, LoadOptions(), port=1)
    argv = engine.argv(llm, LoadOptions(parallel=3), port=1)
    assert argv[argv.index("--parallel") + 1] == "3"


def test_api_key_travels_in_env_not_argv():
    engine = LlamaCppEngine("/bin/llama-server")
    argv = engine.argv(ModelSpec(name="user.a", checkpoint="/m.gguf"), LoadOptions(), port=1)
    assert not any("key" in a for a in argv)
    assert engine.env("s3cret")["LLAMA_API_KEY"] == "s3cret"


def test_explicit_bad_path_is_named(tmp_path, monkeypatch):
    with pytest.raises(EngineMissingError, match="llama_server_path"):
        find_llama_server(str(tmp_path / "nope"))
    monkeypatch.setenv("LEMONADE_LLAMA_SERVER", str(tmp_path))
    with pytest.raises(EngineMissingError, match="LEMONADE_LLAMA_SERVER"):
        find_llama_server()


def test_configured_path_wins(fake_llama_server_path, monkeypatch):
    monkeypatch.setenv("LEMONADE_LLAMA_SERVER", "/nonexistent")
    assert find_llama_server(fake_llama_server_path) == fake_llama_server_path
