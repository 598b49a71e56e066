"""The prebuilt engine's command line: llama-server's flags as xllamacpp's ``CommonParams``."""

from __future__ import annotations

import pytest

from lemonade_jupyter.core.catalog import ModelSpec
from lemonade_jupyter.core.engines.llamacpp import LlamaCppEngine
from lemonade_jupyter.core.engines.prebuilt_server import (
    FLAGS,
    UsageError,
    main,
    make_params,
    parse_args,
    usage,
)
from lemonade_jupyter.core.options import LoadOptions


def router_argv(**kw) -> list[str]:
    """What the router passes (the program name dropped)."""
    engine = LlamaCppEngine("/x/lemonade-prebuilt-llama-server", threads=1)
    spec = kw.pop("spec", ModelSpec(name="user.a", checkpoint="/m.gguf"))
    return engine.argv(spec, LoadOptions(**kw), port=4321, sleep_idle_seconds=7)[1:]


def test_the_routers_command_line_maps_completely():
    settings = parse_args(router_argv(llamacpp_args="--flash-attn on --temp 0.5", parallel=2),
                          env={"LLAMA_API_KEY": "k1"})
    assert settings == {"model": "/m.gguf", "port": 4321, "host": "127.0.0.1",
                        "ctx_size": 2048, "ui": False, "threads": 1, "sleep_idle_seconds": 7,
                        "flash_attn": "on", "parallel": 2, "temp": 0.5, "api_key": "k1"}
    emb = parse_args(router_argv(spec=ModelSpec(name="user.e", checkpoint="/e.gguf",
                                                labels=("embeddings",))), env={})
    assert emb["embedding"] is True and "api_key" not in emb
    rank = parse_args(router_argv(spec=ModelSpec(name="user.r", checkpoint="/r.gguf",
                                                 labels=("reranking",))), env={})
    assert rank["reranking"] is True
    vision = parse_args(router_argv(spec=ModelSpec(name="user.v", checkpoint="/v.gguf",
                                                   mmproj="/v-mmproj.gguf")), env={})
    assert vision["mmproj"] == "/v-mmproj.gguf"


def test_flag_spellings_and_values():
    s = parse_args(["-m", "/m.gguf", "--port=9", "-c", "512", "--api-key", "a,b", "-ngl",
                    "all", "--reranking", "--no-jinja", "-ctk", "q8_0", "-to", "30"],
                   env={"LLAMA_API_KEY": "ignored"})
    assert s == {"model": "/m.gguf", "port": 9, "ctx_size": 512, "api_key": "a,b",
                 "gpu_layers": 999, "reranking": True, "jinja": False, "cache_type_k": "q8_0",
                 "timeout": 30}
    assert parse_args(["--model", "m", "-ngl", "auto"], env={})["gpu_layers"] == -1


@pytest.mark.parametrize("argv, message", [
    (["--model", "m", "--rpc", "h:1"], "--rpc is not supported by the prebuilt engine"),
    (["--model", "m", "--port"], "--port expects a value"),
    (["--model", "m", "--port", "eighty"], "invalid value for --port"),
    (["--model", "m", "--embeddings=yes"], "--embeddings takes no value"),
    (["--model", "m", "-fa", "maybe"], "invalid value for -fa"),
    (["--port", "1"], "--model is required"),
])
def test_what_it_cannot_run_is_a_usage_error(argv, message):
    with pytest.raises(UsageError, match=message) as info:
        parse_args(argv, env={})
    if "not supported" in message:
        assert "lemonade-jupyter install-llama-server" in str(info.value)


def test_main_reports_usage_errors_like_llama_server(capsys):
    assert main(["--model", "m", "--bogus"]) == 1
    assert capsys.readouterr().err.startswith("error: invalid argument: --bogus")
    assert main(["--help"]) == 0
    assert "--sleep-idle-seconds VALUE" in capsys.readouterr().out
    assert all(f.names[0] in usage() for f in FLAGS)


def test_params_match_llama_servers_defaults_and_the_flags():
    xl = pytest.importorskip("xllamacpp")
    p = make_params(xl, parse_args(router_argv(llamacpp_args="-fa off -ctv q4_0 --seed 3"),
                                   env={"LLAMA_API_KEY": "k1,k2"}))
    assert p.model.path == "/m.gguf" and p.port == 4321 and p.hostnames == ["127.0.0.1"]
    assert p.n_ctx == 2048 and p.api_keys == ["k1", "k2"] and p.ui is False
    assert p.cpuparams.n_threads == 1 and p.cpuparams_batch.n_threads == 1
    assert p.sleep_idle_seconds == 7 and p.embedding is False
    assert p.n_parallel == -1  # llama-server's default: automatic slots
    assert p.flash_attn_type == xl.llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_DISABLED
    assert p.cache_type_v == xl.ggml_type.GGML_TYPE_Q4_0 and p.sampling.seed == 3
    vision = make_params(xl, parse_args(["-m", "/v.gguf", "--mmproj", "/p.gguf"], env={}))
    assert vision.mmproj.path == "/p.gguf"
    rank = make_params(xl, parse_args(["-m", "/r.gguf", "--reranking"], env={}))
    assert rank.embedding is True
    assert rank.pooling_type == xl.llama_pooling_type.LLAMA_POOLING_TYPE_RANK
    assert make_params(xl, parse_args(["-m", "/r.gguf"], env={})).api_keys == []


def test_gpu_placement_flags_map_to_visible_devices():
    from lemonade_jupyter.core.engines.prebuilt_server import device_env

    # What the router adds for a model placed on GPUs (see core/placement.py).
    s = parse_args(["-m", "/m.gguf", "--n-gpu-layers", "999", "--device", "CUDA1,CUDA2",
                    "--split-mode", "layer", "-lv", "4"], env={})
    assert (s["gpu_layers"], s["device"], s["split_mode"], s["verbosity"]) == (
        999, "CUDA1,CUDA2", "layer", 4)
    assert device_env(s["device"], {}) == {"CUDA_VISIBLE_DEVICES": "1,2"}
    # Counted among the GPUs already visible, like CUDA's own numbering.
    assert device_env("CUDA1", {"CUDA_VISIBLE_DEVICES": "4,6,7"}) == {
        "CUDA_VISIBLE_DEVICES": "6"}
    assert device_env("none", {}) == {"CUDA_VISIBLE_DEVICES": ""}
    for bad, env in (("Vulkan0", {}), ("CUDA", {}), ("CUDA3", {"CUDA_VISIBLE_DEVICES": "0,1"})):
        with pytest.raises(UsageError, match="--device"):
            device_env(bad, env)
    assert main(["-m", "/m.gguf", "--device", "Vulkan0"]) == 1


def test_split_mode_and_no_device_params():
    xl = pytest.importorskip("xllamacpp")
    p = make_params(xl, parse_args(["-m", "/m", "-sm", "row", "-mg", "1"], env={}))
    assert p.split_mode == xl.llama_split_mode.LLAMA_SPLIT_MODE_ROW and p.main_gpu == 1
    assert make_params(xl, parse_args(["-m", "/m", "-dev", "none"], env={})).n_gpu_layers == 0


@pytest.mark.parametrize("late", [["--mmproj", "/etc/passwd"], ["--mmproj=/etc/passwd"],
                                  ["--model", "/other.gguf"], ["-m", "/other.gguf"],
                                  ["--host", "0.0.0.0"], ["--port=1"]])
def test_files_and_addresses_are_taken_only_where_the_router_puts_its_own(late):
    """The router's file and address flags open its command line; a load's llamacpp_args come
    after its other flags, so one given there is refused even if the API let it through."""
    vision = ModelSpec(name="user.v", checkpoint="/v.gguf", mmproj="/v-mmproj.gguf")
    assert parse_args(router_argv(spec=vision), env={})["mmproj"] == "/v-mmproj.gguf"
    name = late[0].split("=")[0]
    with pytest.raises(UsageError, match=f"{name} opens a file or an address") as info:
        parse_args(router_argv(spec=vision) + late, env={})
    assert "after --ctx-size" in str(info.value)
    # By hand, the same flags work at the head, in any order among themselves.
    assert parse_args(["--port", "9", "-mm", "/p.gguf", "-m", "/m.gguf", "-c", "64"],
                      env={})["mmproj"] == "/p.gguf"


def test_the_process_refuses_a_late_projector_before_opening_it(tmp_path):
    """Run as the router runs it: exits 1 naming the flag, and never imports the engine."""
    import subprocess
    import sys

    argv = router_argv() + ["--mmproj", str(tmp_path / "missing-mmproj.gguf")]
    done = subprocess.run([sys.executable, "-m", "lemonade_jupyter.core.engines.prebuilt_server",
                           *argv], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "--mmproj opens a file or an address" in done.stderr
