"""The CUDA toolkit of ``install-llama-server --gpu cuda``: the system's when it is complete,
else NVIDIA's wheels in the cache; the architectures it builds for; the cmake arguments that
let the binary find cuBLAS and the runtime. Fake file trees and a fake ``pip`` (a script that
lays out what each wheel holds); nothing is downloaded or compiled."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import pytest

from lemonade_jupyter import cli
from lemonade_jupyter.core.engines import cuda_toolkit as tk
from lemonade_jupyter.core.engines import install
from lemonade_jupyter.core.engines.gpu import (
    KNOWN_ARCHS,
    BuildFlavourError,
    build_plan,
    driver_cuda_version,
    parse_cuda_archs,
)
from tests.engines.conftest import make_executable, make_toolkit
from tests.engines.test_flavour import FakeNvml

NVCC_13_0 = "Cuda compilation tools, release 13.0, V13.0.88\n"

#: What each CUDA 13 wheel unpacks (the files that matter; from ``unzip -l`` of the real ones).
WHEEL_FILES = {
    "nvidia-cuda-nvcc": ["bin/nvcc", "bin/ptxas", "bin/fatbinary", "bin/nvlink",
                         "include/fatbinary_section.h"],
    "nvidia-cuda-crt": ["include/crt/host_config.h"],
    "nvidia-nvvm": ["nvvm/bin/cicc", "nvvm/libdevice/libdevice.10.bc", "lib/libnvvm.so.4"],
    "nvidia-cuda-runtime": ["include/cuda_runtime.h", "lib/libcudart.so.13"],
    "nvidia-cublas": ["include/cublas_v2.h", "lib/libcublas.so.13", "lib/libcublasLt.so.13"],
    "nvidia-cuda-cccl": ["include/cccl/cub/cub.cuh"],
}

FAKE_PIP = """#!{python}
# Acts as `python -m pip install ... --target DIR REQUIREMENT...`: lays out each wheel's files.
import json, os, sys
files = json.loads({files!r})
skip = os.environ.get("FAKE_PIP_SKIP", "").split(",")
args = sys.argv[1:]
with open({log!r}, "a") as log:
    log.write(json.dumps(args) + "\\n")
target = args[args.index("--target") + 1]
for spec in args[args.index("--target") + 2:]:
    name = spec.split("==")[0]
    if name in skip:
        continue
    for rel in files[name]:
        path = os.path.join(target, "nvidia", "cu13", rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as fh:
            fh.write("#!/bin/sh\\necho 'Cuda compilation tools, release 13.0, V13.0.88'\\n"
                     if rel == "bin/nvcc" else "")
        if rel.startswith("bin/"):
            os.chmod(path, 0o755)
"""


def fake_python(tmp_path: Path) -> tuple[Path, Path]:
    """A fake interpreter whose ``-m pip install --target`` lays out :data:`WHEEL_FILES`;
    returns it and the log of the command lines it was given."""
    log = tmp_path / "pip.log"
    script = FAKE_PIP.format(python=sys.executable, files=json.dumps(WHEEL_FILES),
                             log=str(log))
    return make_executable(tmp_path / "fake-python", script), log


def wheel_tree(target: Path, *, without: tuple[str, ...] = ()) -> Path:
    """A toolkit from wheels as ``install_toolkit`` leaves it in ``target``; returns its home."""
    home = target / "nvidia" / "cu13"
    for wheel, files in WHEEL_FILES.items():
        if wheel in without:
            continue
        for rel in files:
            (home / rel).parent.mkdir(parents=True, exist_ok=True)
            (home / rel).touch()
    tk.link_layout(str(home))
    return home


class DriverNvml(FakeNvml):
    """NVML of a driver that runs CUDA ``cuda`` (``13000`` is 13.0) with these GPUs."""

    def __init__(self, capabilities: list[tuple[int, int]], cuda: int) -> None:
        super().__init__(capabilities)
        self.cuda = cuda

    def nvmlSystemGetCudaDriverVersion(self) -> int:  # noqa: N802 - pynvml's name
        return self.cuda


def no_toolkit_env(tmp_path: Path) -> dict[str, str]:
    empty = tmp_path / "empty-bin"
    empty.mkdir(exist_ok=True)
    return {"PATH": str(empty), "CUDA_HOME": str(tmp_path / "no-cuda")}


def _no_toolkit_plan(tmp_path, archs: str):
    """The CUDA plan on a machine without a toolkit or a visible GPU, for ``archs``."""
    return build_plan("cuda", env=no_toolkit_env(tmp_path), nvml=FakeNvml([]),
                      cuda_archs=archs, cache=tmp_path / "cache")


# The plan, from file trees.


def test_plan_a_complete_system_toolkit_is_used_as_it_is(tmp_path):
    system = make_toolkit(tmp_path / "cuda-12.4")
    plan = tk.plan_toolkit(str(system), tmp_path / "cache", 13)
    assert (plan.home, plan.from_wheels, plan.wheels, plan.missing) == (
        str(system), False, (), ())
    assert plan.present == tuple(tk.COMPONENTS)
    assert plan.nvcc == str(system / "bin" / "nvcc")


def test_plan_without_any_toolkit_takes_every_wheel(tmp_path):
    plan = tk.plan_toolkit(None, tmp_path / "cache", 13)
    target = tmp_path / "cache" / "cuda-toolkit-13"
    assert plan.from_wheels and plan.target == str(target)
    assert plan.home == str(target / "nvidia" / "cu13")
    assert plan.wheels == tuple(tk.WHEELS[13].values())
    assert (plan.present, plan.missing) == ((), tuple(tk.COMPONENTS))
    assert "no CUDA toolkit found" in plan.describe()


def test_plan_nvcc_without_cublas_says_what_the_system_lacks(tmp_path):
    """The machine this was written on: nvcc 13 and the runtime, no cuBLAS."""
    system = make_toolkit(tmp_path / "cuda-13.0", without=("cublas",))
    plan = tk.plan_toolkit(str(system), tmp_path / "cache", 13)
    assert plan.missing == ("cublas",) and "cublas" not in plan.present
    assert plan.from_wheels and plan.wheels == tuple(tk.WHEELS[13].values())
    line = plan.describe()
    assert str(system) in line and "cuBLAS" in line and "nvidia-cublas==13.0.*" in line


@pytest.mark.parametrize("part", list(tk.COMPONENTS))
def test_plan_any_missing_part_sends_the_build_to_the_wheels(tmp_path, part):
    system = make_toolkit(tmp_path / "cuda", without=(part,))
    assert tk.missing_components(str(system)) == [part]
    assert tk.plan_toolkit(str(system), tmp_path / "cache", 13).missing == (part,)


def test_plan_a_complete_toolkit_from_wheels_in_the_cache_needs_nothing(tmp_path):
    home = wheel_tree(tmp_path / "cache" / "cuda-toolkit-13")
    plan = tk.plan_toolkit(None, tmp_path / "cache", 13)
    assert (plan.home, plan.wheels) == (str(home), ())
    assert "already installed" in plan.describe()
    # One part gone (an interrupted manual clean-up): the whole set again.
    os.remove(home / "include" / "cublas_v2.h")
    assert tk.plan_toolkit(None, tmp_path / "cache", 13).wheels == tuple(tk.WHEELS[13].values())


def test_the_wheel_list_names_each_part_of_cuda_13():
    assert tk.WHEELS[13] == {
        "nvcc": "nvidia-cuda-nvcc==13.0.*", "crt": "nvidia-cuda-crt==13.0.*",
        "nvvm": "nvidia-nvvm==13.0.*", "cudart": "nvidia-cuda-runtime==13.0.*",
        "cublas": "nvidia-cublas==13.0.*", "cccl": "nvidia-cuda-cccl==13.0.*"}
    assert set(tk.WHEELS[13]) == set(tk.COMPONENTS)
    assert tk.pip_install_argv(["nvidia-cublas==13.0.*"], "/t", python="/py") == [
        "/py", "-m", "pip", "install", "--no-deps", "--only-binary", ":all:", "--target", "/t",
        "nvidia-cublas==13.0.*"]


def test_the_cuda_major_follows_the_driver():
    assert tk.wheel_major(None) == 13  # no driver visible: the newest
    assert tk.wheel_major((13, 0)) == 13
    assert tk.wheel_major((14, 2)) == 13
    with pytest.raises(BuildFlavourError, match=r"CUDA 12\.4.*580.*--cuda-home"):
        tk.wheel_major((12, 4))  # CUDA 12's nvcc wheel has no nvcc


def test_driver_cuda_version_from_nvml():
    assert driver_cuda_version(DriverNvml([], 12040)) == (12, 4)
    assert driver_cuda_version(DriverNvml([], 13000)) == (13, 0)
    assert driver_cuda_version(FakeNvml([])) is None  # no such call
    assert driver_cuda_version(FakeNvml([], fail="nvmlInit")) is None


# Installing the wheels, with a fake pip.

def test_install_lays_out_a_toolkit_nvcc_and_cmake_can_use(tmp_path):
    python, log = fake_python(tmp_path)
    plan = tk.plan_toolkit(None, tmp_path / "cache", 13)
    steps: list[str] = []

    def run(argv, what):
        steps.append(what)
        import subprocess
        subprocess.run(list(argv), check=True)

    home = Path(tk.install_toolkit(plan, run, python=str(python)))
    assert home == Path(plan.home) and tk.missing_components(str(home)) == []
    assert "530 MB" in steps[0]
    (args,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert args[-6:] == list(tk.WHEELS[13].values()) and "--no-deps" in args
    # nvcc.profile passes -L$TOP/lib64; CMake looks for libcublas.so, not libcublas.so.13.
    assert os.readlink(home / "lib64") == "lib"
    assert os.readlink(home / "lib" / "libcublas.so") == "libcublas.so.13"
    assert os.readlink(home / "lib" / "libcudart.so") == "libcudart.so.13"
    assert tk.library_dirs(str(home)) == [os.path.realpath(home / "lib")]
    assert not tk.has_driver_stub(str(home))
    # Nothing half-made is left beside it, and a second plan needs nothing.
    assert sorted(os.listdir(tmp_path / "cache")) == ["cuda-toolkit-13"]
    assert (tmp_path / "cache" / "cuda-toolkit-13").stat().st_mode & 0o777 == 0o755
    assert tk.plan_toolkit(None, tmp_path / "cache", 13).wheels == ()


def test_install_that_misses_a_part_fails_and_leaves_nothing(tmp_path, monkeypatch):
    python, _ = fake_python(tmp_path)
    monkeypatch.setenv("FAKE_PIP_SKIP", "nvidia-cublas")
    plan = tk.plan_toolkit(None, tmp_path / "cache", 13)
    import subprocess
    with pytest.raises(BuildFlavourError, match="cuBLAS"):
        tk.install_toolkit(plan, lambda argv, what: subprocess.run(list(argv), check=True),
                           python=str(python))
    assert os.listdir(tmp_path / "cache") == []


def test_the_installer_installs_the_wheels_once_and_links_the_binary_to_them(
        tmp_path, monkeypatch):
    python, log = fake_python(tmp_path)
    monkeypatch.setattr(sys, "executable", str(python))
    plan = _no_toolkit_plan(tmp_path, "90")
    assert plan.runpath == ()  # nothing there yet
    out = io.StringIO()
    ready = install._ensure_toolkit(plan, {"PATH": os.environ["PATH"]}, out)
    home = tmp_path / "cache" / "cuda-toolkit-13" / "nvidia" / "cu13"
    assert ready.toolkit.wheels == () and ready.runpath == (os.path.realpath(home / "lib"),)
    assert ready.no_vmm and "NVIDIA's wheels" in out.getvalue()
    assert "installed CUDA 13 in" in out.getvalue() and str(home) in out.getvalue()
    again = _no_toolkit_plan(tmp_path, "90")
    assert install._ensure_toolkit(again, {}, out) == again  # already there: no pip
    assert len(log.read_text().splitlines()) == 1


def test_a_build_that_planned_the_wheels_while_another_installed_them_installs_nothing(
        tmp_path, monkeypatch):
    python, log = fake_python(tmp_path)
    monkeypatch.setattr(sys, "executable", str(python))
    stale = _no_toolkit_plan(tmp_path, "90")
    assert stale.toolkit.wheels
    home = wheel_tree(tmp_path / "cache" / "cuda-toolkit-13")  # the other build's
    ready = install._ensure_toolkit(stale, {}, io.StringIO())
    assert not log.exists() and ready.runpath == (os.path.realpath(home / "lib"),)


# The build plan and its cmake arguments.

def test_cuda_without_a_toolkit_or_gpu_plans_wheels_for_the_named_archs(tmp_path):
    plan = _no_toolkit_plan(tmp_path, "80,90")
    home = tmp_path / "cache" / "cuda-toolkit-13" / "nvidia" / "cu13"
    assert (plan.flavour, plan.archs, plan.cuda_version) == ("cuda", ("80", "90"), (13, 0))
    assert plan.nvcc == str(home / "bin" / "nvcc") and plan.toolkit.from_wheels
    assert "--cuda-arch" in plan.reason and "NVIDIA's wheels" in plan.reason


def test_cuda_takes_the_visible_gpus_architectures(tmp_path):
    plan = build_plan("cuda", env=no_toolkit_env(tmp_path),
                      nvml=DriverNvml([(9, 0), (8, 6)], 13000), cache=tmp_path / "cache")
    assert plan.archs == ("86", "90") and "NVML" in plan.reason


def test_a_system_toolkit_without_cublas_is_replaced_by_wheels(tmp_path):
    system = make_toolkit(tmp_path / "cuda-13.0", without=("cublas",),
                          nvcc=f"#!/bin/sh\necho '{NVCC_13_0.strip()}'\n")
    env = {"PATH": str(system / "bin"), "CUDA_HOME": str(tmp_path / "no-cuda")}
    plan = build_plan("cuda", env=env, nvml=DriverNvml([(9, 0)], 13000),
                      cache=tmp_path / "cache")
    assert plan.toolkit.from_wheels and plan.toolkit.system == str(system)
    assert "lacks cuBLAS" in plan.reason
    # Without the cache (the old call) it is refused, naming what is missing.
    with pytest.raises(BuildFlavourError, match="cuBLAS"):
        build_plan("cuda", env=env, nvml=DriverNvml([(9, 0)], 13000))


def test_auto_never_downloads_but_uses_a_toolkit_from_wheels_already_there(tmp_path):
    env, nvml = no_toolkit_env(tmp_path), DriverNvml([(9, 0)], 13000)
    plan = build_plan("auto", env=env, nvml=nvml, cache=tmp_path / "cache")
    assert plan.flavour == "cpu" and "nvcc" in plan.reason
    home = wheel_tree(tmp_path / "cache" / "cuda-toolkit-13")
    plan = build_plan("auto", env=env, nvml=nvml, cache=tmp_path / "cache")
    assert (plan.flavour, plan.archs, plan.toolkit.wheels) == ("cuda", ("90",), ())
    assert plan.runpath == (os.path.realpath(home / "lib"),) and plan.no_vmm


def test_an_old_driver_cannot_use_the_wheels(tmp_path):
    env, nvml = no_toolkit_env(tmp_path), DriverNvml([(9, 0)], 12040)
    with pytest.raises(BuildFlavourError, match="CUDA 12.4"):
        build_plan("cuda", env=env, nvml=nvml, cache=tmp_path / "cache")
    assert build_plan("auto", env=env, nvml=nvml, cache=tmp_path / "cache").flavour == "cpu"


def test_cuda_13_wheels_refuse_the_architectures_it_dropped(tmp_path):
    with pytest.raises(BuildFlavourError, match="70.*CUDA 13 dropped"):
        _no_toolkit_plan(tmp_path, "70")


def test_cuda_home_names_the_toolkit_and_must_be_complete(tmp_path):
    nvcc = "#!/bin/sh\necho 'Cuda compilation tools, release 12.4, V12.4.99'\n"
    mine = make_toolkit(tmp_path / "my-cuda", nvcc=nvcc)
    (mine / "lib64" / "stubs").mkdir()
    (mine / "lib64" / "stubs" / "libcuda.so").touch()
    plan = build_plan("cuda", env=no_toolkit_env(tmp_path), nvml=FakeNvml([(8, 0)]),
                      cuda_home=str(mine), cache=tmp_path / "cache")
    assert (plan.nvcc, plan.cuda_version, plan.toolkit.from_wheels) == (
        str(mine / "bin" / "nvcc"), (12, 4), False)
    assert plan.runpath == (str(mine / "lib64"),) and not plan.no_vmm
    broken = make_toolkit(tmp_path / "broken", without=("cccl",), nvcc=nvcc)
    with pytest.raises(BuildFlavourError, match=r"broken \(--cuda-home\) lacks the CCCL"):
        build_plan("cuda", env=no_toolkit_env(tmp_path), nvml=FakeNvml([(8, 0)]),
                   cuda_home=str(broken), cache=tmp_path / "cache")


def test_cmake_arguments_name_the_toolkit_the_archs_and_the_runpath(tmp_path):
    home = wheel_tree(tmp_path / "cache" / "cuda-toolkit-13")
    plan = _no_toolkit_plan(tmp_path, "90")
    argv = install.cmake_configure_argv("/src", "/b", plan)
    lib = os.path.realpath(home / "lib")
    assert argv[argv.index("-DGGML_CUDA=ON"):] == [
        "-DGGML_CUDA=ON", f"-DCMAKE_CUDA_COMPILER={home}/bin/nvcc",
        "-DCMAKE_CUDA_ARCHITECTURES=90", f"-DCUDAToolkit_ROOT={home}",
        "-DGGML_CUDA_NO_VMM=ON", f"-DCMAKE_BUILD_RPATH={lib}", f"-DCMAKE_INSTALL_RPATH={lib}",
        "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON"]


# The architectures a user may name.

def test_cuda_arch_accepts_known_architectures_only():
    assert parse_cuda_archs("80,90") == ("80", "90")
    assert parse_cuda_archs(" 86;90a 90a ") == ("86", "90a")
    assert parse_cuda_archs("120f") == ("120f",)
    for bad in ("91", "9.0", "sm_90", "90;$(reboot)", "90-real", "1200", "-90", "90b"):
        with pytest.raises(BuildFlavourError, match="--cuda-arch.*known: 50"):
            parse_cuda_archs(bad)
    with pytest.raises(BuildFlavourError, match="names no architecture"):
        parse_cuda_archs(" , ")
    assert set(KNOWN_ARCHS) >= {"75", "80", "86", "89", "90", "100", "120"}


def test_cudaarchs_is_checked_like_cuda_arch_and_the_flag_wins(tmp_path):
    env = {**no_toolkit_env(tmp_path), "CUDAARCHS": "90;nope"}
    with pytest.raises(BuildFlavourError, match=r"\$CUDAARCHS: 'nope'"):
        build_plan("cuda", env=env, nvml=FakeNvml([]), cache=tmp_path / "cache")
    plan = build_plan("cuda", env={**env, "CUDAARCHS": "86"}, nvml=FakeNvml([(9, 0)]),
                      cuda_archs="80", cache=tmp_path / "cache")
    assert plan.archs == ("80",)


def test_the_command_refuses_an_unknown_architecture_before_anything_runs(
        bare_world, tmp_path, capsys):
    code = cli.main(["install-llama-server", "--gpu", "cuda", "--cuda-arch", "95"])
    assert code == 1
    assert "--cuda-arch: '95' is not a CUDA architecture" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


def test_the_command_passes_cuda_home_and_names_what_that_toolkit_lacks(
        bare_world, tmp_path, capsys):
    mine = make_toolkit(tmp_path / "my-cuda", without=("cublas", "cccl"))
    code = cli.main(["install-llama-server", "--gpu", "cuda", "--cuda-home", str(mine)])
    err = capsys.readouterr().err
    assert code == 1 and f"{mine} (--cuda-home) lacks cuBLAS" in err and "CCCL" in err
    assert not (tmp_path / "cache").exists()
