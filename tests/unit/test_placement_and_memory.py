"""Placement, the fit decision, llama-server's buffer report and per-model memory sources."""

from __future__ import annotations

from pathlib import Path

import pytest

from lemonade_jupyter.core.decisions import fit
from lemonade_jupyter.core.lifecycle import ModelState
from lemonade_jupyter.core.live_model import ModelSnapshot
from lemonade_jupyter.core.memory import DeviceMemory, MemorySample
from lemonade_jupyter.core.memory_sources import MIB, attribute, parse_buffer_report
from lemonade_jupyter.core.options import LoadOptions, parse_load_options
from lemonade_jupyter.core.placement import ALL_LAYERS, Placement, choose
from lemonade_jupyter.errors import InvalidRequestError

DATA = Path(__file__).parent.parent / "data"
GB = 1024 * MIB


def gpus(*free_gb: float) -> tuple[DeviceMemory, ...]:
    return tuple(DeviceMemory(f"GPU {i}", 80 * GB, int((80 - f) * GB), f"GPU-{i}")
                 for i, f in enumerate(free_gb))


def opts(**body) -> LoadOptions:
    return parse_load_options(body)[0]


# ------------------------------------------------------------------------------ placement
PLACEMENT = [
    # (options, free GB per GPU, offload, need GB, expected gpus, expected layers)
    ("auto: the GPU with the most free memory", {}, (10, 30, 20), True, None, (1,), ALL_LAYERS),
    ("auto: most free among those that fit", {}, (10, 30, 20), True, 5, (1,), ALL_LAYERS),
    ("auto: two hold it together", {}, (10, 30, 20), True, 45, (1, 2), ALL_LAYERS),
    ("auto: the fewest, largest first", {}, (10, 30, 20, 25), True, 50, (1, 3), ALL_LAYERS),
    ("auto: three when two are too few", {}, (10, 30, 20, 25), True, 70, (1, 2, 3),
     ALL_LAYERS),
    ("auto: nothing holds it, every GPU", {}, (1, 3, 2), True, 50, (0, 1, 2), ALL_LAYERS),
    ("an index", {"device": 2}, (10, 30, 20), True, None, (2,), ALL_LAYERS),
    ("a list splits", {"device": [0, 2]}, (10, 30, 20), True, None, (0, 2), ALL_LAYERS),
    ("some layers", {"gpu_layers": 12}, (10,), True, None, (0,), 12),
    ("gpu_layers 0: the CPU", {"gpu_layers": 0}, (10,), True, None, (), 0),
    ("cpu", {"device": "cpu"}, (10,), True, None, (), 0),
    ("an engine that cannot offload", {}, (10,), False, None, (), 0),
    ("no GPU", {}, (), True, None, (), 0),
]


@pytest.mark.parametrize("body,free,offload,need,want_gpus,want_layers",
                         [c[1:] for c in PLACEMENT], ids=[c[0] for c in PLACEMENT])
def test_placement_choice(body, free, offload, need, want_gpus, want_layers):
    placed = choose(opts(**body), gpus(*free), offload=offload,
                    need_bytes=None if need is None else need * GB)
    assert placed.gpus == want_gpus
    assert placed.on_cpu is (want_gpus == ())
    if want_gpus:
        assert placed.gpu_layers == want_layers
        assert placed.uuids == tuple(f"GPU-{i}" for i in want_gpus)
        assert placed.device_keys == placed.uuids
    else:
        assert placed.device_keys == ("cpu",)


def test_placement_unknown_gpu_is_a_400_even_without_gpus():
    for free, missing, have in (((), 1, "none"), ((10, 10), 2, "0, 1")):
        with pytest.raises(InvalidRequestError) as info:
            choose(opts(device=[1, 2]), gpus(*free), offload=False)
        assert info.value.param == "device"
        assert f"no GPU {missing} on this machine (GPUs: {have})" in info.value.message


def test_placement_spread_is_in_proportion_to_free_memory_and_named_by_the_engine():
    placed = choose(LoadOptions(), gpus(10, 30, 20), offload=True, need_bytes=45 * GB,
                    names=["ROCm0", "ROCm1", "ROCm2"])
    assert placed.split == (30 * 1024, 20 * 1024)
    assert placed.share("GPU-1") == pytest.approx(0.6) and placed.share("GPU-0") == 0.0
    assert placed.args(True) == ["--n-gpu-layers", str(ALL_LAYERS), "--device", "ROCm1,ROCm2",
                                 "--split-mode", "layer", "--tensor-split", "30720,20480"]
    assert "--tensor-split" not in placed.args(True, tensor_split=False)
    assert placed.to_json()["tensor_split"] == [30720, 20480]
    alone = choose(LoadOptions(), gpus(10, 30, 20), offload=True, need_bytes=5 * GB)
    assert alone.split == () and alone.share("GPU-1") == 1.0
    assert alone.args(True)[3:] == ["CUDA1", "--split-mode", "none"]


def test_placement_explicit_list_splits_by_total_memory():
    devices = (DeviceMemory("big", 80 * GB, 79 * GB, "GPU-0"),
               DeviceMemory("small", 24 * GB, 0, "GPU-1"))
    placed = choose(opts(device=[0, 1]), devices, offload=True, need_bytes=10 * GB)
    assert placed.split == (80 * 1024, 24 * 1024)
    assert placed.share("GPU-0") == pytest.approx(80 / 104)


def test_placement_room_idle_models_hold_counts_when_free_memory_holds_it_nowhere():
    # Free: 4 and 6 GB, 12 GB needed; idle models hold 10 GB on GPU 0: GPU 0 alone.
    placed = choose(LoadOptions(), gpus(4, 6), offload=True, need_bytes=12 * GB,
                    reclaimable=[10 * GB, 0])
    assert placed.gpus == (0,) and placed.split == ()
    # Free memory of both holds it: spread, nobody needs to go.
    placed = choose(LoadOptions(), gpus(4, 9), offload=True, need_bytes=12 * GB,
                    reclaimable=[10 * GB, 0])
    assert placed.gpus == (0, 1)


def test_placement_reserve_decides_what_fits():
    # Both have room for 8 GB, but GPU 1 only before its reserve: GPU 0 is the one that fits.
    devices = (DeviceMemory("a", 80 * GB, 71 * GB, "GPU-0"),
               DeviceMemory("b", 80 * GB, 70 * GB, "GPU-1"))
    assert choose(LoadOptions(), devices, offload=True, need_bytes=8 * GB).gpus == (1,)
    assert choose(LoadOptions(), devices, offload=True, need_bytes=8 * GB,
                  reserve_bytes=int(1.5 * GB)).gpus == (1,)
    assert choose(LoadOptions(), (devices[1], devices[0]), offload=True,
                  need_bytes=8 * GB, reserve_bytes=int(1.5 * GB)).gpus == (0,)


ARGS = [
    (Placement((1,), ("u",), ALL_LAYERS), True,
     ["--n-gpu-layers", "999", "--device", "CUDA1", "--split-mode", "none"]),
    (Placement((0, 2), ("u", "v"), 20), True,
     ["--n-gpu-layers", "20", "--device", "CUDA0,CUDA2", "--split-mode", "layer"]),
    (Placement(), True, ["--n-gpu-layers", "0"]),
    (Placement((1,), ("u",), ALL_LAYERS), False, []),
]


@pytest.mark.parametrize("placement,offload,argv", ARGS)
def test_placement_argv(placement, offload, argv):
    assert placement.args(offload) == argv


@pytest.mark.parametrize("value", ["gpu0", -1, 1.5, True, [], [0, 0], {"i": 1}, "0"])
def test_placement_options_refuse_junk(value):
    with pytest.raises(InvalidRequestError) as info:
        parse_load_options({"device": value})
    assert info.value.param == "device"


def test_placement_options_round_trip_through_json():
    for body in ({"device": 1}, {"device": [0, 3], "gpu_layers": 7}, {"device": "cpu"}):
        options = opts(**body)
        assert parse_load_options(options.to_json())[0] == options
        assert "device" in options.process_key() or options.process_key()
    assert opts(device="auto").device is None


# ------------------------------------------------------------------------------ the fit decision
def snap(name: str, last_use: float, *, pinned: bool = False, busy: bool = False,
         state: ModelState = ModelState.READY) -> ModelSnapshot:
    return ModelSnapshot(name=name, type="llm", state=state, pinned=pinned, admitted=True,
                         in_flight=int(busy), busy=busy, last_use=last_use,
                         load_duration_ms=100.0, options=LoadOptions(), memory_bytes=None,
                         device="cpu")


FIT = [
    # (needed, free, members (name, last_use, pinned, busy), held, fits, victims)
    ("fits as it is", 5, 10, [("a", 1, False, False)], {"a": 9}, True, []),
    ("one victim, the LRU", 5, 2, [("a", 2, False, False), ("b", 1, False, False)],
     {"a": 9, "b": 9}, True, ["b"]),
    ("as many as needed, LRU first", 20, 2,
     [("a", 3, False, False), ("b", 1, False, False), ("c", 2, False, False)],
     {"a": 9, "b": 9, "c": 9}, True, ["b", "c"]),
    ("pinned ones are skipped", 5, 2, [("a", 2, False, False), ("b", 1, True, False)],
     {"a": 9, "b": 9}, True, ["a"]),
    ("busy ones are skipped", 5, 2, [("a", 2, False, True), ("b", 1, False, False)],
     {"a": 9, "b": 9}, True, ["b"]),
    ("pinned make it impossible: nobody", 20, 2, [("a", 2, False, False), ("b", 1, True, False)],
     {"a": 9, "b": 9}, False, []),
    ("busy make it impossible: nobody", 20, 2, [("a", 2, False, True), ("b", 1, False, False)],
     {"a": 9, "b": 9}, False, []),
]


@pytest.mark.parametrize("needed,free,members,held,fits,victims", [c[1:] for c in FIT],
                         ids=[c[0] for c in FIT])
def test_fit_table(needed, free, members, held, fits, victims):
    decision = fit(needed, free, [snap(n, t, pinned=p, busy=b) for n, t, p, b in members], held)
    assert decision.fits is fits
    assert [v.name for v in decision.victims] == victims
    assert decision.pinned == sum(held[n] for n, _t, p, _b in members if p)
    assert (decision.needed, decision.free) == (needed, free)


# ------------------------------------------------------------------------------ buffer report
def test_buffer_report_of_a_recorded_cpu_load():
    """A real llama-server load of the default model (CPU build, -c 2048, -lv 4)."""
    report = parse_buffer_report((DATA / "llama_server_cpu_load.log").read_text())
    # model 92.10 + KV 45.00 + compute 15.51 + output 0.75 MiB
    assert report == {"host": round(153.36 * MIB)}


#: CUDA lines in the format llama.cpp prints them ("%s: %10s model buffer size = %8.2f MiB"):
#: no real GPU run has been recorded yet.
CUDA_LOG = """\
load_tensors: offloading 28 repeating layers to GPU
load_tensors:        CUDA0 model buffer size =  1234.56 MiB
load_tensors:   CPU_Mapped model buffer size =    78.75 MiB
llama_context:  CUDA_Host  output buffer size =     0.58 MiB
llama_kv_cache:      CUDA0 KV buffer size =   896.00 MiB
llama_kv_cache:      CUDA1 KV buffer size =    10.00 MiB
sched_reserve:      CUDA0 compute buffer size =   300.75 MiB
sched_reserve:  CUDA_Host compute buffer size =    20.01 MiB
llama_kv_cache: size =  906.00 MiB (  4096 cells,  28 layers,  1/1 seqs)
"""


def test_buffer_report_of_cuda_lines():
    report = parse_buffer_report(CUDA_LOG)
    assert report == {"gpu0": round(2431.31 * MIB), "gpu1": round(10.0 * MIB),
                      "host": round(99.34 * MIB)}
    assert parse_buffer_report("no buffers here\n") == {}


# ------------------------------------------------------------------------------ sources
def sample(per_gpu: dict[int, dict[str, int | None]], used: dict[str, int]) -> MemorySample:
    devices = tuple(DeviceMemory(u, 80 * GB, used.get(u, 0), u) for u in ("GPU-0", "GPU-1"))
    return MemorySample("nvml", devices, gpu_per_pid=per_gpu, rss_per_pid={7: 300 * MIB},
                        ram=DeviceMemory("system", 64 * GB, 8 * GB))


SOURCES = [
    ("NVML lists the pid", {7: {"GPU-0": 5 * GB}}, {"gpu0": 4 * GB}, {"GPU-0": 3 * GB},
     5 * GB, "nvml_process"),
    ("no list: the engine's report", {}, {"gpu0": 4 * GB}, {"GPU-0": 3 * GB},
     4 * GB, "engine_log"),
    ("listed as unknown: the report", {7: {"GPU-0": None}}, {"gpu0": 4 * GB}, {}, 4 * GB,
     "engine_log"),
    ("no report: the device delta", {}, {}, {"GPU-0": 3 * GB}, 3 * GB, "device_delta"),
    ("nothing: unknown, never 0", {}, {}, {}, None, "unknown"),
]


@pytest.mark.parametrize("listed,report,delta,bytes_,source", [c[1:] for c in SOURCES],
                         ids=[c[0] for c in SOURCES])
def test_memory_source_order(listed, report, delta, bytes_, source):
    placed = Placement((0,), ("GPU-0",), ALL_LAYERS)
    memory = attribute(7, placed, sample(listed, {}), report, delta)
    assert memory.gpu["GPU-0"].bytes == bytes_ and memory.gpu["GPU-0"].source == source
    assert memory.ram.bytes == 300 * MIB and memory.ram.source == "process_rss"
    assert memory.total_for(placed) == bytes_


def test_memory_of_a_model_split_over_two_gpus_and_of_a_cpu_model():
    split = Placement((0, 1), ("GPU-0", "GPU-1"), ALL_LAYERS)
    memory = attribute(7, split, sample({7: {"GPU-0": 2 * GB}}, {}), {"gpu1": GB}, {})
    assert memory.sources() == {"GPU-0": "nvml_process", "GPU-1": "engine_log",
                                "cpu": "process_rss"}
    assert memory.total_for(split) == 3 * GB
    cpu = attribute(7, Placement(), sample({}, {}), {}, {})
    assert cpu.gpu == {} and cpu.total_for(Placement()) == 300 * MIB
