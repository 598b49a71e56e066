"""``install-whisper-server`` without compiling anything, and which whisper engine the router
picks: the cmake command lines per flavour, a whole build run against fake tools (a fake
sdist, a fake cmake that records its calls), and the lookup order."""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import pytest

from lemonade_jupyter import cli
from lemonade_jupyter.core.catalog import ModelSpec
from lemonade_jupyter.core.engines import whisper_install, whispercpp
from lemonade_jupyter.core.engines.gpu import BuildPlan
from lemonade_jupyter.core.engines.whisper_install import (
    PYWHISPERCPP_VERSION,
    cached_whisper_server,
    whisper_build_argv,
    whisper_configure_argv,
)
from lemonade_jupyter.core.engines.whispercpp import (
    SERVER_MODULE,
    WhisperCppEngine,
    WhisperEngineInfo,
    find_whisper_engine,
)
from lemonade_jupyter.core.options import LoadOptions
from lemonade_jupyter.errors import EngineMissingError
# Fixtures: a bare machine, and (autouse) a CPU whose AMX does not decide the lookup.
from tests.engines.conftest import bare_world, cpu_without_amx, make_executable  # noqa: F401

CPU = BuildPlan("cpu", "no GPU")
CUDA = BuildPlan("cuda", "a GPU", nvcc="/usr/local/cuda/bin/nvcc", cuda_version=(12, 4),
                 archs=("86", "90"))


def test_whisper_configure_builds_only_the_server_statically():
    argv = whisper_configure_argv("/src", "/build", CPU, cmake="cmake", generator="Ninja")
    assert argv[:5] == ["cmake", "-S", "/src", "-B", "/build"]
    for flag in ("-DBUILD_SHARED_LIBS=OFF", "-DWHISPER_BUILD_SERVER=ON", "-DWHISPER_SDL2=OFF",
                 "-DWHISPER_CURL=OFF", "-DWHISPER_FFMPEG=OFF", "-DWHISPER_BUILD_TESTS=OFF"):
        assert flag in argv
    assert argv[-2:] == ["-G", "Ninja"] and not any("CUDA" in a for a in argv)
    cuda = whisper_configure_argv("/src", "/build", CUDA)
    assert "-DGGML_CUDA=ON" in cuda and "-DCMAKE_CUDA_ARCHITECTURES=86;90" in cuda
    assert "-DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc" in cuda
    with pytest.raises(ValueError):
        whisper_configure_argv("/src", "/build", BuildPlan("cuda", "no nvcc"))
    assert whisper_build_argv("/build", 3) == ["cmake", "--build", "/build", "--target",
                                                "whisper-server", "-j", "3"]


def test_cached_whisper_server_has_a_folder_per_flavour(bare_world):  # noqa: F811
    cpu, cuda = cached_whisper_server("cpu"), cached_whisper_server("cuda")
    assert cpu.parent.parent.name == f"whisper.cpp-{PYWHISPERCPP_VERSION}"
    assert cuda.parent.parent.name == f"whisper.cpp-{PYWHISPERCPP_VERSION}-cuda"
    assert cpu.name == cuda.name == "whisper-server"
    with pytest.raises(ValueError):
        cached_whisper_server("rocm")


FAKE_CMAKE = """#!{python}
import json, os, sys
with open({calls!r}, "a") as fh:
    fh.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1] == "--build":
    build = sys.argv[2]
    for i in range(1, 5):
        print(f"[{{i}}/4] Building CXX object x{{i}}.o", flush=True)
    os.makedirs(os.path.join(build, "bin"), exist_ok=True)
    with open(os.path.join(build, "bin", "whisper-server"), "w") as fh:
        fh.write("#!/bin/sh\\necho built\\n")
    os.chmod(os.path.join(build, "bin", "whisper-server"), 0o755)
"""


COPY = "import shutil, sys; shutil.copy(sys.argv[1], sys.argv[2])"


def test_a_whole_build_against_fake_tools(bare_world, tmp_path, monkeypatch):  # noqa: F811
    """Download, unpack, configure, build, copy into the cache, record the build."""
    sdist_dir = tmp_path / "index"
    tree = sdist_dir / f"pywhispercpp-{PYWHISPERCPP_VERSION}" / "whisper.cpp"
    (tree / "examples" / "server").mkdir(parents=True)
    (tree / "CMakeLists.txt").write_text("project(whisper)\n")
    sdist = sdist_dir / f"pywhispercpp-{PYWHISPERCPP_VERSION}.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        tar.add(tree.parent, arcname=tree.parent.name)
    calls = tmp_path / "cmake.calls"
    make_executable(bare_world / "cmake", FAKE_CMAKE.format(python=sys.executable,
                                                           calls=str(calls)))
    make_executable(bare_world / "c++")
    monkeypatch.setattr(whisper_install, "build_env", lambda: {"PATH": str(bare_world)})
    monkeypatch.setattr(whisper_install, "download_argv",
                        lambda dest: [sys.executable, "-c", COPY, str(sdist), dest])
    out = io.StringIO()
    target = whisper_install.install_whisper_server(gpu="cpu", jobs=2, out=out)
    assert target == cached_whisper_server("cpu") and target.read_text().endswith("built\n")
    configure, build = [json.loads(line) for line in calls.read_text().splitlines()]
    assert configure[0] == "-S" and configure[1].endswith("/whisper.cpp")
    assert "-DWHISPER_BUILD_SERVER=ON" in configure
    assert build == ["--build", configure[3], "--target", "whisper-server", "-j", "2"]
    info = json.loads((target.parent / "build.json").read_text())
    assert info["flavour"] == "cpu" and info["pywhispercpp"] == PYWHISPERCPP_VERSION
    text = out.getvalue()
    assert "building whisper-server: 100% (4/4 steps)" in text and "built whisper-server" in text
    # Once built, it is not built again, and the router's lookup picks it.
    monkeypatch.setattr(whisper_install, "_build", lambda *a, **k: pytest.fail("rebuilt"))
    assert whisper_install.install_whisper_server(gpu="cpu", out=io.StringIO()) == target
    assert find_whisper_engine(gpu=False) == WhisperEngineInfo("cpu", str(target), "cache")


def test_a_missing_compiler_is_named_and_builds_nothing(bare_world, monkeypatch,  # noqa: F811
                                                        capsys):
    monkeypatch.setattr(whisper_install, "build_env", lambda: {"PATH": str(bare_world)})
    monkeypatch.setattr(whisper_install, "_build", lambda *a, **k: pytest.fail("built"))
    with pytest.raises(RuntimeError, match="cmake .* and a C\\+\\+ compiler"):
        whisper_install.install_whisper_server(gpu="cpu", out=io.StringIO())
    assert cli.main(["install-whisper-server", "--gpu", "cpu"]) == 1
    assert "lemonade_jupyter[prebuilt]" in capsys.readouterr().err
    assert not cached_whisper_server("cpu").exists()


def test_whisper_lookup_order(bare_world, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.delenv("LEMONADE_WHISPER_SERVER", raising=False)
    assert find_whisper_engine(gpu=False) == WhisperEngineInfo("pywhispercpp", "", "prebuilt")
    cpu = make_executable(cached_whisper_server("cpu"))
    cuda = make_executable(cached_whisper_server("cuda"))
    assert find_whisper_engine(gpu=False).native == str(cpu)
    assert find_whisper_engine(gpu=True) == WhisperEngineInfo("cuda", str(cuda), "cache")
    explicit = make_executable(tmp_path / "mine" / "whisper-server")
    monkeypatch.setenv("LEMONADE_WHISPER_SERVER", str(explicit))
    assert find_whisper_engine(gpu=True).source == "$LEMONADE_WHISPER_SERVER"
    monkeypatch.setenv("LEMONADE_WHISPER_SERVER", str(tmp_path / "nowhere"))
    with pytest.raises(EngineMissingError, match="LEMONADE_WHISPER_SERVER"):
        find_whisper_engine(gpu=False)


def test_no_whisper_engine_names_both_fixes(bare_world, monkeypatch):  # noqa: F811
    monkeypatch.delenv("LEMONADE_WHISPER_SERVER", raising=False)
    monkeypatch.setattr(whispercpp, "pywhispercpp_available", lambda: False)
    with pytest.raises(EngineMissingError) as caught:
        find_whisper_engine(gpu=False)
    assert "lemonade_jupyter[prebuilt]" in caught.value.message
    assert "install-whisper-server" in caught.value.message


def test_whisper_command_line_and_environment():
    spec = ModelSpec(name="user.w", checkpoint="/m/ggml-tiny.bin", recipe="whispercpp",
                     labels=("transcription",))
    ours = WhisperCppEngine(WhisperEngineInfo("pywhispercpp", "", "prebuilt"), threads=1,
                            python="/py")
    # Options of a llama.cpp model (context, llama.cpp flags) do not reach a whisper engine.
    options = LoadOptions(ctx_size=4096, llamacpp_args="--mlock")
    assert ours.argv(spec, options, port=4242) == [
        "/py", "-m", SERVER_MODULE, "-m", "/m/ggml-tiny.bin", "--host", "127.0.0.1",
        "--port", "4242", "--threads", "1"]
    native = WhisperCppEngine(WhisperEngineInfo("cpu", "/c/whisper-server", "cache"),
                              python="/py")
    assert native.argv(spec, LoadOptions(), port=1)[-2:] == ["--native", "/c/whisper-server"]
    env = WhisperCppEngine.env("secret")
    assert env["WHISPER_API_KEY"] == "secret"
    root = str(Path(whispercpp.__file__).resolve().parents[3])
    assert env["PYTHONPATH"].split(":")[0] == root
    assert "secret" not in " ".join(ours.argv(spec, LoadOptions(), port=1))
