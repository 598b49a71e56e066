"""Which engine the router starts: configured > $LEMONADE_LLAMA_SERVER > PATH > native CUDA
(with a GPU) > native CPU > prebuilt, and what ``/health`` is told about each."""

from __future__ import annotations

from pathlib import Path

import pytest

from lemonade_jupyter.core.engines import lookup
from lemonade_jupyter.core.engines.gpu import gpu_visible
from lemonade_jupyter.core.engines.install import cached_binary
from lemonade_jupyter.core.engines.llamacpp import INSTALL_HINT, find_engine, find_llama_server
from lemonade_jupyter.core.engines.prebuilt_server import PROG
from lemonade_jupyter.errors import EngineMissingError
from tests.engines.conftest import make_executable


#: What ``/health`` says of an engine not asked about its devices yet (tests/engines/test_probe.py
#: asks them).
NOT_PROBED = {"backends": None, "devices": None, "version": None, "probe_error": None}


@pytest.fixture
def no_prebuilt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEMONADE_PREBUILT", "0")


def test_native_cuda_with_a_gpu_then_native_cpu_then_prebuilt(bare_world, monkeypatch):
    monkeypatch.setattr(lookup, "prebuilt_available", lambda: True)
    # Only the prebuilt engine: it is used, through a launcher whose name says llama-server.
    engine = find_engine(gpu=True)
    assert (engine.flavour, engine.source) == ("prebuilt", "prebuilt")
    assert Path(engine.path).name == PROG and "llama-server" in PROG
    assert Path(engine.path).is_file()

    # A native CPU build wins over the prebuilt engine, GPU or not.
    cpu = make_executable(cached_binary("cpu"))
    for gpu in (False, True):
        engine = find_engine(gpu=gpu)
        assert (engine.path, engine.flavour, engine.offload, engine.source) == (
            str(cpu), "cpu", False, "cache")

    # A native CUDA build beside it wins only when a GPU is visible.
    cuda = make_executable(cached_binary("cuda"))
    assert cuda.parent != cpu.parent  # side by side, one folder per flavour
    assert find_engine(gpu=True).to_json() == {
        "flavour": "cuda", "path": str(cuda), "offload": True, "source": "cache",
        **NOT_PROBED}
    assert find_engine(gpu=False).path == str(cpu)

    # Without the CPU build and without a GPU, the CUDA build is skipped for the prebuilt one.
    cpu.unlink()
    assert find_engine(gpu=False).flavour == "prebuilt"
    assert find_engine(gpu=True).flavour == "cuda"


def test_explicit_choices_win_in_order(bare_world, tmp_path, monkeypatch):
    monkeypatch.setattr(lookup, "prebuilt_available", lambda: True)
    make_executable(cached_binary("cpu"))
    make_executable(cached_binary("cuda"))
    on_path = make_executable(bare_world / "llama-server")
    assert find_engine(gpu=True).to_json() == {
        "flavour": "custom", "path": str(on_path), "offload": False, "source": "PATH",
        **NOT_PROBED}

    from_env = make_executable(tmp_path / "env" / "llama-server")
    monkeypatch.setenv("LEMONADE_LLAMA_SERVER", str(from_env))
    assert (find_engine(gpu=True).path, find_engine(gpu=True).source) == (
        str(from_env), "$LEMONADE_LLAMA_SERVER")

    configured = make_executable(tmp_path / "conf" / "llama-server")
    engine = find_engine(str(configured), gpu=True)
    assert (engine.path, engine.source) == (str(configured), "c.LemonadeApp.llama_server_path")
    assert find_llama_server(str(configured)) == str(configured)


def test_an_explicit_path_is_classified_by_what_it_is(bare_world, tmp_path, monkeypatch):
    cuda = make_executable(cached_binary("cuda"))
    engine = find_engine(str(cuda), gpu=True)
    assert (engine.flavour, engine.offload) == ("cuda", True)
    assert find_engine(str(cuda), gpu=False).offload is False
    launcher = make_executable(tmp_path / "venv" / "bin" / PROG)
    monkeypatch.setenv("LEMONADE_LLAMA_SERVER", str(launcher))
    engine = find_engine(gpu=False)
    assert (engine.flavour, engine.source) == ("prebuilt", "$LEMONADE_LLAMA_SERVER")


def test_an_explicit_path_that_points_nowhere_is_named_not_skipped(bare_world, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setattr(lookup, "prebuilt_available", lambda: True)
    make_executable(cached_binary("cpu"))
    with pytest.raises(EngineMissingError, match="llama_server_path") as info:
        find_engine(str(tmp_path / "nope"), gpu=False)
    assert INSTALL_HINT in info.value.message
    monkeypatch.setenv("LEMONADE_LLAMA_SERVER", str(tmp_path))  # a folder, not a program
    with pytest.raises(EngineMissingError, match="LEMONADE_LLAMA_SERVER"):
        find_engine(gpu=False)


def test_no_engine_at_all_names_both_fixes(bare_world, no_prebuilt):
    make_executable(cached_binary("cuda"))  # unusable: no GPU
    with pytest.raises(EngineMissingError) as info:
        find_engine(gpu=False)
    message = info.value.message
    assert "not found" in message and INSTALL_HINT in message
    assert "pip install 'lemonade_jupyter[prebuilt]'" in message
    assert "no NVIDIA GPU is visible" in message and "$LEMONADE_PREBUILT" in message
    assert info.value.status_code == 503


def test_the_prebuilt_launcher_runs_this_copy_of_the_package(bare_world, monkeypatch):
    """From a source tree, a launcher for this interpreter and this copy of the package is
    written once into the cache; an installed package uses pip's console script."""
    monkeypatch.setattr(lookup, "prebuilt_available", lambda: True)
    monkeypatch.setattr(lookup.sysconfig, "get_path", lambda _name: str(bare_world))
    monkeypatch.setattr(lookup.sys, "executable", str(bare_world / "python3"))
    script = make_executable(bare_world / PROG)  # pip's, for another copy of the package
    path = Path(lookup.prebuilt_launcher() or "")
    assert path != script and path.name == PROG
    assert path.is_relative_to(cached_binary("cpu").parents[2])
    root = str(Path(lookup.__file__).resolve().parents[3])
    assert path.read_text() == (
        f"#!{bare_world / 'python3'}\n"
        "import sys\n"
        f"sys.path.insert(0, {root!r})\n"
        "from lemonade_jupyter.core.engines.prebuilt_server import main\n"
        "sys.exit(main())\n")
    mtime = path.stat().st_mtime_ns
    assert lookup.prebuilt_launcher() == str(path) and path.stat().st_mtime_ns == mtime
    # The package pip installed in this environment: its console script.
    monkeypatch.setattr(lookup, "_site_folders", lambda: {root})
    assert lookup.prebuilt_launcher() == str(script)


def test_prebuilt_can_be_turned_off(bare_world, monkeypatch):
    monkeypatch.setattr(lookup.importlib.util, "find_spec", lambda name: object())
    assert lookup.prebuilt_available()
    for off in ("0", "off", "false", "no"):
        monkeypatch.setenv("LEMONADE_PREBUILT", off)
        assert not lookup.prebuilt_available()
        assert lookup.prebuilt_launcher() is None


def test_gpu_visible_from_device_files(tmp_path):
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "nvidiactl").touch()
    (dev / "nvidia-uvm").touch()
    assert not gpu_visible(str(dev), env={})  # a driver without a GPU
    (dev / "nvidia0").touch()
    assert gpu_visible(str(dev), env={})
    assert gpu_visible(str(dev), env={"CUDA_VISIBLE_DEVICES": "0"})
    for hidden in ("", "-1", " "):
        assert not gpu_visible(str(dev), env={"CUDA_VISIBLE_DEVICES": hidden})
    assert not gpu_visible(str(tmp_path / "missing"), env={})


def test_a_router_without_any_engine_answers_engine_missing(bare_world, no_prebuilt, tmp_path,
                                                            default_model_name):
    """What a test of "no engine at all" must set now that the prebuilt engine is found
    without a setting: ``$LEMONADE_PREBUILT=0``."""
    import asyncio

    from lemonade_jupyter.core.catalog import Catalog
    from lemonade_jupyter.core.router import Router
    from lemonade_jupyter.core.settings import RouterSettings
    from lemonade_jupyter.server.views import health_view

    async def scenario() -> tuple[EngineMissingError, dict]:
        router = Router(Catalog(tmp_path / "data"), RouterSettings(), llama_server_path=None,
                        data_dir=tmp_path / "data", log_dir=tmp_path / "logs")
        await router.start()
        try:
            with pytest.raises(EngineMissingError) as info:
                await router.load(default_model_name)
            return info.value, health_view(router, None)
        finally:
            await router.stop()

    error, health = asyncio.run(scenario())
    assert error.status_code == 503 and error.code == "engine_missing"
    assert INSTALL_HINT in error.message and "not found" in error.message
    assert health["engine"] is None and health["all_models_loaded"] == []
