"""A native build cached before x86 builds left ggml's AMX code out crashes on CPUs with AMX
(every load, SIGSEGV in the warm-up): on such a CPU the lookups (llama-server's and
whisper-server's) pass over it and the installer builds it again; elsewhere, and for builds
that record the change, nothing differs."""

from __future__ import annotations

import io
import json

import pytest

from lemonade_jupyter.core.engines import install, lookup, whispercpp
from lemonade_jupyter.core.engines.gpu import BuildPlan
from lemonade_jupyter.core.engines.install import _cpu_has_amx as cpu_has_amx  # the real one
from lemonade_jupyter.core.engines.install import cached_binary, may_crash_here
from lemonade_jupyter.core.engines.llamacpp import find_engine
from lemonade_jupyter.core.engines.whisper_install import cached_whisper_server
from lemonade_jupyter.core.engines.whispercpp import find_whisper_engine
from tests.engines.conftest import make_executable


@pytest.fixture
def amx_cpu(bare_world, monkeypatch):
    monkeypatch.setattr(install, "_cpu_has_amx", lambda: True)
    monkeypatch.setattr(install.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(lookup, "prebuilt_available", lambda: True)
    return bare_world


def _cached(which: str, **info) -> object:
    binary = make_executable(cached_binary(which))
    if info:
        (binary.parent / "build.json").write_text(json.dumps(info))
    return binary


def test_an_old_build_is_passed_over_on_an_amx_cpu(amx_cpu, caplog):
    old = _cached("cpu", flavour="cpu")  # built before: no amx_left_out
    assert may_crash_here(old)
    assert find_engine(gpu=False).flavour == "prebuilt"
    assert "built with ggml's AMX code" in caplog.text and "--force" in caplog.text
    cuda = _cached("cuda", flavour="cuda")
    assert find_engine(gpu=True).flavour == "prebuilt"  # the CUDA build's CPU code too
    (cuda.parent / "build.json").write_text(json.dumps({"amx_left_out": True}))
    assert find_engine(gpu=True).path == str(cuda)


def test_a_build_without_its_record_counts_as_old_and_a_new_one_is_used(amx_cpu):
    assert may_crash_here(_cached("cpu"))  # no build.json at all
    new = _cached("cpu", flavour="cpu", amx_left_out=True)
    assert not may_crash_here(new) and find_engine(gpu=False).path == str(new)


def test_an_old_whisper_build_is_passed_over_too(amx_cpu, caplog, monkeypatch):
    monkeypatch.delenv("LEMONADE_WHISPER_SERVER", raising=False)
    monkeypatch.setattr(whispercpp, "pywhispercpp_available", lambda: True)
    old = make_executable(cached_whisper_server("cpu"))  # no build.json: built before
    assert find_whisper_engine(gpu=False).flavour == "pywhispercpp"
    assert "install-whisper-server --force" in caplog.text
    (old.parent / "build.json").write_text(json.dumps({"amx_left_out": True}))
    assert find_whisper_engine(gpu=False).native == str(old)


def test_nothing_changes_without_amx_or_off_x86(bare_world, monkeypatch):
    old = _cached("cpu", flavour="cpu")
    assert not may_crash_here(old)  # bare_world's CPU has no AMX
    monkeypatch.setattr(install, "_cpu_has_amx", lambda: True)
    monkeypatch.setattr(install.platform, "machine", lambda: "aarch64")
    assert not may_crash_here(old) and find_engine(gpu=False).path == str(old)


def test_the_installer_builds_an_old_build_again(amx_cpu, monkeypatch):
    old = _cached("cpu", flavour="cpu")
    make_executable(amx_cpu / "cmake")
    make_executable(amx_cpu / "c++")
    built: list[str] = []

    def build(plan, target, env, jobs, out):
        built.append(str(target))
        return target

    out = io.StringIO()
    got = install.install_once("llama-server", BuildPlan("cpu", "test"), old,
                               {"PATH": str(amx_cpu)}, build, force=False, jobs=1, out=out)
    assert got == old and built == [str(old)]
    assert "crashes on this CPU: building it again" in out.getvalue()


def test_amx_is_read_from_the_cpu_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512f amx_bf16 amx_int8 amx_tile\n")
    assert cpu_has_amx(str(cpuinfo))
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f\n")
    assert not cpu_has_amx(str(cpuinfo))
    assert not cpu_has_amx(str(tmp_path / "absent"))


def test_a_new_build_records_that_amx_was_left_out():
    assert install.native_cpu_argv("x86_64")  # what amx_left_out records on x86
