"""The build flavour of ``install-llama-server --gpu auto|cuda|cpu``: from a fake ``nvcc`` (a
script printing nvcc's ``--version`` text) and a fake NVML module."""

from __future__ import annotations

from pathlib import Path

import pytest

from lemonade_jupyter.core.engines.gpu import (
    BuildFlavourError,
    build_plan,
    compute_capabilities,
    find_nvcc,
    parse_nvcc_version,
)
from tests.engines.conftest import make_executable, make_toolkit

NVCC_12_4 = """nvcc: NVIDIA (R) Cuda compiler driver
Copyright (c) 2005-2024 NVIDIA Corporation
Built on Tue_Feb_27_16:19:38_PST_2024
Cuda compilation tools, release 12.4, V12.4.99
Build cuda_12.4.r12.4/compiler.33961263_0
"""


class NVMLError(Exception):
    """Like pynvml's base error class."""


class FakeNvml:
    """The part of pynvml the flavour detection uses; ``fail`` names a call that raises."""

    NVMLError = NVMLError

    def __init__(self, capabilities: list[tuple[int, int]], fail: str | None = None) -> None:
        self.capabilities = capabilities
        self.fail = fail
        self.shutdowns = 0

    def _maybe_fail(self, name: str) -> None:
        if self.fail == name:
            raise NVMLError(name)

    def nvmlInit(self) -> None:  # noqa: N802 - pynvml's names
        self._maybe_fail("nvmlInit")

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        self._maybe_fail("nvmlDeviceGetCount")
        return len(self.capabilities)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:  # noqa: N802
        return index

    def nvmlDeviceGetCudaComputeCapability(self, handle: int) -> tuple[int, int]:  # noqa: N802
        self._maybe_fail("nvmlDeviceGetCudaComputeCapability")
        return self.capabilities[handle]


def fake_nvcc(folder: Path, text: str = NVCC_12_4, *, cublas: bool = True) -> Path:
    """A toolkit in ``folder/..``: an ``nvcc`` that prints ``text`` (whatever it is asked),
    and every other part of a toolkit, cuBLAS unless told otherwise."""
    make_toolkit(folder.parent, without=() if cublas else ("cublas",),
                 nvcc=f"#!/bin/sh\ncat <<'END'\n{text}END\n")
    return folder / "nvcc"


def env_with(path: Path, **extra: str) -> dict[str, str]:
    return {"PATH": f"{path}:/bin:/usr/bin", "CUDA_HOME": str(path / "no-cuda"), **extra}


def test_nvcc_and_an_h100_build_cuda_for_sm90_only(tmp_path):
    nvcc = fake_nvcc(tmp_path / "bin")
    nvml = FakeNvml([(9, 0)])
    plan = build_plan("auto", env=env_with(tmp_path / "bin"), nvml=nvml)
    assert (plan.flavour, plan.archs, plan.nvcc, plan.cuda_version) == (
        "cuda", ("90",), str(nvcc), (12, 4))
    assert "NVML" in plan.reason and nvml.shutdowns == 1
    assert build_plan("cuda", env=env_with(tmp_path / "bin"), nvml=nvml).archs == ("90",)


def test_several_gpus_give_each_architecture_once(tmp_path):
    fake_nvcc(tmp_path / "bin")
    nvml = FakeNvml([(9, 0), (8, 6), (9, 0), (8, 0)])
    assert build_plan("auto", env=env_with(tmp_path / "bin"), nvml=nvml).archs == (
        "80", "86", "90")


def test_nvcc_under_cuda_home_is_found(tmp_path):
    nvcc = fake_nvcc(tmp_path / "toolkit" / "bin")
    env = {"PATH": "/bin:/usr/bin", "CUDA_HOME": str(tmp_path / "toolkit")}
    assert find_nvcc(env) == str(nvcc)
    assert build_plan("auto", env=env, nvml=FakeNvml([(8, 9)])).flavour == "cuda"


def test_no_nvcc_means_cpu_and_cuda_says_what_is_missing(tmp_path):
    (tmp_path / "bin").mkdir()
    env = env_with(tmp_path / "bin")
    plan = build_plan("auto", env=env, nvml=FakeNvml([(9, 0)]))
    assert plan.flavour == "cpu" and "nvcc" in plan.reason
    with pytest.raises(BuildFlavourError, match="nvcc.*CUDA_HOME"):
        build_plan("cuda", env=env, nvml=FakeNvml([(9, 0)]))


@pytest.mark.parametrize("nvml", [FakeNvml([]), FakeNvml([(9, 0)], fail="nvmlInit"),
                                  FakeNvml([(9, 0)], fail="nvmlDeviceGetCount")],
                         ids=["no-gpu", "no-driver", "count-fails"])
def test_nvcc_without_a_gpu_builds_for_the_cpu(tmp_path, nvml):
    fake_nvcc(tmp_path / "bin")
    env = env_with(tmp_path / "bin")
    plan = build_plan("auto", env=env, nvml=nvml)
    assert plan.flavour == "cpu" and "no GPU" in plan.reason
    with pytest.raises(BuildFlavourError, match="CUDAARCHS"):
        build_plan("cuda", env=env, nvml=nvml)
    # $CUDAARCHS names the architectures instead.
    plan = build_plan("cuda", env={**env, "CUDAARCHS": "86;90"}, nvml=nvml)
    assert (plan.flavour, plan.archs) == ("cuda", ("86", "90"))


def test_an_old_toolkit_cannot_target_a_new_gpu(tmp_path):
    fake_nvcc(tmp_path / "bin", NVCC_12_4.replace("12.4", "11.7"))
    env = env_with(tmp_path / "bin")
    plan = build_plan("auto", env=env, nvml=FakeNvml([(9, 0)]))
    assert plan.flavour == "cpu" and "11.7" in plan.reason and "90" in plan.reason
    with pytest.raises(BuildFlavourError, match="newer CUDA toolkit"):
        build_plan("cuda", env=env, nvml=FakeNvml([(9, 0)]))
    assert build_plan("auto", env=env, nvml=FakeNvml([(8, 6)])).archs == ("86",)


def test_gpu_cpu_ignores_cuda(tmp_path):
    fake_nvcc(tmp_path / "bin")
    plan = build_plan("cpu", env=env_with(tmp_path / "bin"), nvml=FakeNvml([(9, 0)]))
    assert plan.flavour == "cpu" and plan.archs == ()
    with pytest.raises(ValueError):
        build_plan("rocm", env=env_with(tmp_path / "bin"))


def test_nvcc_version_text():
    assert parse_nvcc_version(NVCC_12_4) == (12, 4)
    assert parse_nvcc_version("Cuda compilation tools, release 13.0, V13.0.48") == (13, 0)
    assert parse_nvcc_version("command not found") is None


def test_compute_capabilities_shut_nvml_down_even_when_a_gpu_fails():
    nvml = FakeNvml([(9, 0)], fail="nvmlDeviceGetCudaComputeCapability")
    assert compute_capabilities(nvml) == [] and nvml.shutdowns == 1


def test_a_toolkit_without_cublas_cannot_build_cuda(tmp_path):
    fake_nvcc(tmp_path / "cuda" / "bin", cublas=False)
    env = env_with(tmp_path / "cuda" / "bin")
    plan = build_plan("auto", env=env, nvml=FakeNvml([(9, 0)]))
    assert plan.flavour == "cpu" and "cuBLAS" in plan.reason
    with pytest.raises(BuildFlavourError, match="libcublas"):
        build_plan("cuda", env=env, nvml=FakeNvml([(9, 0)]))


def test_a_wrapper_script_on_path_is_followed_to_its_toolkit(tmp_path):
    """CMake finds cuBLAS next to the compiler it is given: the build gets the toolkit's nvcc,
    not a ``/usr/local/bin/nvcc`` wrapper (which nvcc's ``--dryrun`` sees through)."""
    real = fake_nvcc(tmp_path / "cuda-13.0" / "bin", NVCC_12_4.replace("12.4", "13.0"))
    wrappers = tmp_path / "usr-local-bin"
    make_executable(wrappers / "nvcc", f"""#!/bin/sh
if [ "$1" = --dryrun ]; then echo '#$ _HERE_={real.parent}'; exit 0; fi
exec {real} "$@"
""")
    plan = build_plan("auto", env=env_with(wrappers), nvml=FakeNvml([(9, 0)]))
    assert (plan.flavour, plan.nvcc, plan.cuda_version) == ("cuda", str(real), (13, 0))
