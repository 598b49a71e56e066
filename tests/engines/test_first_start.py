"""A freshly built llama-server is started once on the default model before it goes into the
cache: one that crashes on its first decode (as ggml's AMX path did on this machine's CPU) is
kept out, with its exit and last lines; one that serves goes in."""

from __future__ import annotations

import dataclasses
import io
import sys
import tarfile
from pathlib import Path

import pytest

from lemonade_jupyter.core.engines import install
from lemonade_jupyter.core.engines.first_start import FirstStartError, check_first_start
from lemonade_jupyter.core.engines.gpu import BuildPlan
from tests.conftest import FAKE_SERVER
from tests.engines.conftest import make_executable

CRASHES = """#!/bin/sh
echo "load_model: loading model '$2'"
echo "init: llama threadpool init, n_threads = 1"
kill -SEGV $$
"""


def _model(tmp_path: Path) -> str:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    return str(model)


def test_a_binary_that_crashes_while_loading_is_refused_with_its_exit_and_last_lines(tmp_path):
    binary = make_executable(tmp_path / "llama-server", CRASHES)
    said: list[str] = []
    with pytest.raises(FirstStartError) as info:
        check_first_start(binary, _model(tmp_path), said.append, timeout_s=30)
    message = str(info.value)
    assert "signal 11 (SIGSEGV)" in message and "not installed" in message
    assert "llama threadpool init" in message  # the log's tail, where the crash was
    assert said and "trying the new llama-server" in said[0]


def test_a_binary_that_serves_passes_and_is_stopped(tmp_path):
    FAKE_SERVER.chmod(0o755)  # answers /health 200 once "loaded"
    said: list[str] = []
    check_first_start(FAKE_SERVER, _model(tmp_path), said.append, timeout_s=30)
    assert said[-1] == "the new llama-server served the default model"
    # (the after-test check fails the test if the started server were still running)


def test_without_the_default_model_nothing_runs(tmp_path):
    binary = make_executable(tmp_path / "llama-server", CRASHES)
    said: list[str] = []
    check_first_start(binary, "", said.append)
    check_first_start(binary, str(tmp_path / "absent.gguf"), said.append)
    assert said == ["no default model to try the new llama-server on: installed untried"] * 2


def test_a_start_that_never_answers_is_stopped_and_installed_untried(tmp_path):
    binary = make_executable(tmp_path / "llama-server", "#!/bin/sh\nexec sleep 600\n")
    said: list[str] = []
    check_first_start(binary, _model(tmp_path), said.append, timeout_s=1)
    assert "did not answer within 1 s" in said[-1]


FAKE_CMAKE = """#!{python}
import os, sys
if sys.argv[1] == "--build":
    os.makedirs(os.path.join(sys.argv[2], "bin"), exist_ok=True)
    path = os.path.join(sys.argv[2], "bin", "llama-server")
    with open(path, "w") as fh:
        fh.write("#!/bin/sh\\nexit 0\\n")
    os.chmod(path, 0o755)
"""
COPY = "import shutil, sys; shutil.copy(sys.argv[1], sys.argv[2])"


def _fake_sdist(tmp_path: Path) -> Path:
    tree = tmp_path / "index" / "llama_cpp_python-0" / "vendor" / "llama.cpp"
    tree.mkdir(parents=True)
    (tree / "CMakeLists.txt").write_text("project(llama)\n")
    sdist = tmp_path / "index" / "llama_cpp_python-0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        tar.add(tree.parents[1], arcname=tree.parents[1].name)
    return sdist


@pytest.mark.parametrize("passes", [True, False])
def test_the_build_goes_into_the_cache_only_when_its_first_start_passes(bare_world, tmp_path,
                                                                         passes):
    make_executable(bare_world / "cmake", FAKE_CMAKE.format(python=sys.executable))
    sdist = _fake_sdist(tmp_path)
    tried: list[Path] = []

    def check(binary: Path, say) -> None:
        tried.append(binary)
        assert binary.is_file()  # the new binary, not yet in the cache
        if not passes:
            raise FirstStartError("crashed")

    sources = dataclasses.replace(install.LLAMA_CPP_SOURCES, check=check)
    target = install.cached_binary("cpu")
    target.parent.mkdir(parents=True)

    def build() -> float:
        return install.compile_from_sdist(
            sources, BuildPlan("cpu", "test"), target, {"PATH": str(bare_world)}, 1,
            io.StringIO(), download=lambda dest: [sys.executable, "-c", COPY, str(sdist), dest])

    if passes:
        build()
        assert target.is_file()
    else:
        with pytest.raises(FirstStartError):
            build()
        assert not target.exists()
    assert tried and tried[0] != target and not tried[0].exists()  # no half-installed copy


def test_llama_cpp_builds_are_tried_on_the_default_model():
    assert install.LLAMA_CPP_SOURCES.check is not None
