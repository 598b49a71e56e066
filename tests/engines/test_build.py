"""The native build without building: the cmake command line per flavour, the cache layout,
the progress parser on recorded ninja and make output, and what a missing tool says."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from lemonade_jupyter import cli
from lemonade_jupyter.core.engines import install
from lemonade_jupyter.core.engines.gpu import BuildPlan
from lemonade_jupyter.core.engines.install import (
    LLAMA_CPP_PYTHON_VERSION,
    cache_root,
    cached_binary,
    cmake_build_argv,
    cmake_configure_argv,
    native_cpu_argv,
)
from lemonade_jupyter.core.engines.progress import ProgressPrinter, parse_progress
from lemonade_jupyter.core.engines.whisper_install import whisper_configure_argv
from tests.engines.conftest import make_executable

#: The flags the cached CPU build was made with; they must not drift (a different configure
#: would be a different binary under the same cache path).
CPU_FLAGS = ["-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
             "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DBUILD_SHARED_LIBS=OFF",
             *native_cpu_argv()]

NINJA_LINES = """\
-- Configuring done (2.1s)
[1/212] Building C object ggml/src/CMakeFiles/ggml-base.dir/ggml.c.o
[2/212] Building CXX object ggml/src/CMakeFiles/ggml-base.dir/ggml-backend.cpp.o
[106/212] Building CUDA object ggml/src/ggml-cuda/CMakeFiles/ggml-cuda.dir/fattn.cu.o
/src/ggml/src/ggml-cuda/fattn.cu(12): warning #177-D: variable "x" was declared but never used
[212/212] Linking CXX executable bin/llama-server
""".splitlines()

MAKE_LINES = """\
[  1%] Building C object ggml/src/CMakeFiles/ggml-base.dir/ggml.c.o
[  3%] Building CXX object ggml/src/CMakeFiles/ggml-base.dir/ggml-backend.cpp.o
[ 45%] Built target ggml-cpu
[ 44%] Building CXX object src/CMakeFiles/llama.dir/llama-model.cpp.o
make[2]: Entering directory '/tmp/build'
[100%] Linking CXX executable ../../bin/llama-server
[100%] Built target llama-server
""".splitlines()


def test_cpu_configure_is_the_historical_one():
    plan = BuildPlan("cpu", "test")
    assert cmake_configure_argv("/src", "/b", plan) == ["cmake", "-S", "/src", "-B", "/b",
                                                        *CPU_FLAGS]
    argv = cmake_configure_argv("/src", "/b", plan, cmake="/venv/bin/cmake", generator="Ninja")
    assert argv[0] == "/venv/bin/cmake" and argv[-2:] == ["-G", "Ninja"]
    assert not any("CUDA" in a for a in argv)


def test_cuda_configure_targets_the_planned_architectures_only():
    plan = BuildPlan("cuda", "test", nvcc="/usr/local/cuda/bin/nvcc", cuda_version=(12, 4),
                     archs=("86", "90"))
    argv = cmake_configure_argv("/src", "/b", plan)
    assert argv[:5] == ["cmake", "-S", "/src", "-B", "/b"]
    assert argv[5:5 + len(CPU_FLAGS)] == CPU_FLAGS
    assert argv[5 + len(CPU_FLAGS):] == ["-DGGML_CUDA=ON", "-DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc",
                         "-DCMAKE_CUDA_ARCHITECTURES=86;90"]
    with pytest.raises(ValueError):
        cmake_configure_argv("/src", "/b", BuildPlan("cuda", "no archs", nvcc="/nvcc"))


def test_build_argv_builds_the_server_target_only():
    assert cmake_build_argv("/b", 3) == ["cmake", "--build", "/b", "--target", "llama-server",
                                         "-j", "3"]


def test_one_cached_binary_per_flavour_side_by_side(monkeypatch, tmp_path):
    monkeypatch.setenv("LEMONADE_CACHE_DIR", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    assert cached_binary() == cached_binary("cpu") == (
        tmp_path / "c" / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}" / "bin" / "llama-server")
    assert cached_binary("cuda") == (
        tmp_path / "c" / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}-cuda" / "bin" / "llama-server")
    with pytest.raises(ValueError):
        cached_binary("rocm")
    # Without the override: platformdirs' user cache folder (XDG on Linux).
    monkeypatch.delenv("LEMONADE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "lemonade_jupyter"


def test_progress_parser_on_recorded_lines():
    ninja = [parse_progress(line) for line in NINJA_LINES]
    assert ninja == [None, (1 / 212, "1/212 steps"), (2 / 212, "2/212 steps"),
                     (0.5, "106/212 steps"), None, (1.0, "212/212 steps")]
    make = [parse_progress(line) for line in MAKE_LINES]
    assert make == [(0.01, "1%"), (0.03, "3%"), (0.45, "45%"), (0.44, "44%"), None,
                    (1.0, "100%"), (1.0, "100%")]
    for junk in ("[12/0] x", "[300/212] x", "[101%] x", "warning: [1/2]", "[1/2]no-space"):
        assert parse_progress(junk) is None, junk


def test_progress_on_a_terminal_updates_one_line_in_place():
    out = io.StringIO()
    printer = ProgressPrinter("build", out, tty=True)
    for line in NINJA_LINES:
        printer.feed(line)
    printer.done()
    text = out.getvalue()
    assert text.count("\r") == 4 and text.endswith("100% (212/212 steps)\x1b[K\n")
    assert "\n" not in text[:-1]  # one line, rewritten


def test_progress_in_a_log_prints_every_tenth_and_never_goes_back():
    out = io.StringIO()
    printer = ProgressPrinter("build", out, tty=False)
    seen = [printer.feed(line) for line in MAKE_LINES]
    printer.done()
    assert seen == [0.01, 0.03, 0.45, 0.45, None, 1.0, 1.0]  # 44% after 45% stays 45%
    assert out.getvalue().splitlines() == ["build: 1% (1%)", "build: 45% (45%)",
                                           "build: 100% (100%)"]
    assert printer.fraction == 1.0


def test_a_missing_cmake_names_pip_install_cmake(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("LEMONADE_CACHE_DIR", str(tmp_path / "cache"))
    only_cxx = tmp_path / "bin"
    make_executable(only_cxx / "c++")
    # The build's PATH (which also has this environment's scripts folder) holds no cmake.
    monkeypatch.setattr(install, "build_env", lambda: {"PATH": str(only_cxx)})
    with pytest.raises(RuntimeError, match=r"cmake \(`pip install cmake`"):
        install.install_llama_server(gpu="cpu", out=io.StringIO())
    assert cli.main(["install-llama-server", "--gpu", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "pip install cmake" in err and "lemonade_jupyter[prebuilt]" in err
    assert not cached_binary("cpu").exists()


def test_a_cached_build_is_not_rebuilt(monkeypatch, tmp_path):
    monkeypatch.setenv("LEMONADE_CACHE_DIR", str(tmp_path / "cache"))
    binary = make_executable(cached_binary("cpu"))
    monkeypatch.setattr(install, "_build", lambda *a, **k: pytest.fail("must not build"))
    out = io.StringIO()
    assert install.install_llama_server(gpu="cpu", out=out) == binary
    assert "already built" in out.getvalue()


def test_the_build_env_finds_tools_installed_in_this_environment(monkeypatch):
    monkeypatch.setattr(install.sysconfig, "get_path", lambda _name: "/venv/bin")
    env = install.build_env({"PATH": "/usr/bin:/bin"})
    assert env["PATH"] == "/venv/bin:/usr/bin:/bin"
    assert install.build_env({"PATH": "/venv/bin:/bin"})["PATH"] == "/venv/bin:/bin"


def test_cli_gpu_choices(capsys):
    with pytest.raises(SystemExit):
        cli.main(["install-llama-server", "--gpu", "rocm"])
    assert "invalid choice" in capsys.readouterr().err


def test_cli_engine_prints_the_lookup(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("LEMONADE_CACHE_DIR", str(tmp_path / "cache"))
    binary = make_executable(cached_binary("cpu"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("LEMONADE_LLAMA_SERVER", raising=False)
    assert cli.main(["engine"]) == 0
    assert f'"path": "{binary}"' in capsys.readouterr().out
    assert Path(binary).exists()


def test_cli_engine_prints_the_backends_and_devices_the_engine_sees(monkeypatch, tmp_path,
                                                                    capsys):
    from tests.fakes.fake_engine import write_engine

    engine = write_engine(tmp_path / "vulkan", "vulkan")
    monkeypatch.setenv("LEMONADE_LLAMA_SERVER", str(engine))
    assert cli.main(["engine"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["path"], printed["flavour"], printed["offload"]) == (
        str(engine), "custom", True)
    assert printed["backends"] == ["Vulkan", "CPU"]
    assert printed["devices"] == [{"name": "Vulkan0",
                                   "description": "AMD Radeon RX 7900 XTX (RADV NAVI31)",
                                   "total": 24560 * 1024 * 1024, "free": 23012 * 1024 * 1024}]


def test_native_builds_leave_amx_out_on_x86_only(monkeypatch):
    """ggml's AMX matrix multiply crashes on Sapphire Rapids class CPUs (the build of this
    machine died on its first decode): every native x86 build compiles without it."""
    no_amx = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    assert native_cpu_argv("x86_64") == [f"-DCMAKE_C_FLAGS={no_amx}",
                                         f"-DCMAKE_CXX_FLAGS={no_amx}"]
    assert native_cpu_argv("AMD64") == native_cpu_argv("x86_64")
    assert native_cpu_argv("aarch64") == [] and native_cpu_argv("arm64") == []
    monkeypatch.setattr(install.platform, "machine", lambda: "x86_64")
    for argv in (cmake_configure_argv("/src", "/b", BuildPlan("cpu", "test")),
                 whisper_configure_argv("/src", "/b", BuildPlan("cpu", "test"))):
        assert f"-DCMAKE_CXX_FLAGS={no_amx}" in argv and f"-DCMAKE_C_FLAGS={no_amx}" in argv
    monkeypatch.setattr(install.platform, "machine", lambda: "aarch64")
    assert not any("amx" in a for a in cmake_configure_argv("/src", "/b",
                                                            BuildPlan("cpu", "test")))
