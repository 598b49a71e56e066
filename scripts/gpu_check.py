"""The GPU check: one run on a machine with an NVIDIA GPU, written to one JSON file.

Started by ``scripts/gpu_check.sh`` (which unpacks the bundle and sets up Python). Steps, each
recorded in the JSON even when a later one fails:

1. ``build``: the CUDA flavour of llama-server from the bundled llama.cpp tree, for this
   machine's GPUs only, into the cache where the router finds it (build time).
2. ``models``: three synthetic GGUFs (random F16 weights, a real tokenizer).
3. ``load``: a real Jupyter server with the extension loads all three, fully offloaded; per
   model, its VRAM from each source side by side (NVML per process, llama-server's buffer
   report, the device's change across the load) with the router's own figure and source, and
   the device's used memory.
4. ``evict``: unload one; the device's used memory before and after (VRAM freed).
5. ``fit``: a server whose reserve leaves room for two models: the first pinned, the third
   load evicts exactly the second (reason ``fit``), the pinned one untouched.
6. ``stream``: tokens/s per stream, direct to a bare llama-server vs through the router, at
   concurrency 1 and 16.

``--cpu`` runs the same steps on the CPU build (no NVML, no CUDA build): it checks the script,
not a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import httpx  # noqa: E402

from lemonade_jupyter.core.memory_sources import parse_buffer_report  # noqa: E402
from tests.helpers.http import API, loaded  # noqa: E402
from tests.helpers.jupyter import JupyterProcess  # noqa: E402

MIB = 1024 * 1024
RESULT: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def save(out: Path) -> None:
    out.write_text(json.dumps(RESULT, indent=1, default=str) + "\n")


def nvml_state() -> dict[str, Any] | None:
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no GPU: the --cpu dry run
        return None
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
    procs = {p.pid: p.usedGpuMemory for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)}
    return {"name": str(pynvml.nvmlDeviceGetName(handle)), "total": int(mem.total),
            "used": int(mem.used), "procs": procs}


def step_build(source: Path, cpu: bool) -> None:
    from lemonade_jupyter.core.engines import install
    from lemonade_jupyter.core.engines.gpu import build_plan

    if cpu:
        RESULT["build"] = {"skipped": "--cpu: the cached CPU build is used"}
        return
    plan = build_plan("cuda")
    target = install.cached_binary("cuda")
    build = Path(tempfile.mkdtemp(prefix="gpu-check-build-"))
    env = install.build_env()
    started = time.monotonic()
    generator = "Ninja" if shutil.which("ninja") else None
    subprocess.run(install.cmake_configure_argv(str(source), str(build), plan,
                                                generator=generator), check=True, env=env)
    subprocess.run(install.cmake_build_argv(str(build), os.cpu_count() or 8), check=True,
                   env=env)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(build / "bin" / "llama-server", target)
    RESULT["build"] = {"flavour": "cuda", "archs": list(plan.archs),
                       "seconds": round(time.monotonic() - started, 1), "binary": str(target)}


def step_models(vocab: Path, work: Path, mib: int) -> list[Path]:
    import synthetic_gguf

    paths = []
    started = time.monotonic()
    for i in range(3):
        path = work / f"synthetic-{i}.gguf"
        synthetic_gguf.write(str(vocab), str(path), mib, layers=8)
        paths.append(path)
    RESULT["models"] = {"count": 3, "file_mib": round(paths[0].stat().st_size / MIB, 1),
                        "seconds": round(time.monotonic() - started, 1)}
    return paths


def server(root: Path, **lemonade: Any) -> JupyterProcess:
    logs = root / "backend-logs"
    logs.mkdir(parents=True, exist_ok=True)
    return JupyterProcess(root, lemonade={"max_loaded_models": -1, "restore_on_start": False,
                                          **lemonade},
                          env={"TMPDIR": str(logs)}).start(timeout=180)


def register(c: httpx.Client, paths: list[Path]) -> list[str]:
    names = []
    for i, path in enumerate(paths):
        name = f"user.synthetic{i}"
        r = c.post(f"{API}/pull", json={"model_name": name, "checkpoint": str(path)})
        r.raise_for_status()
        names.append(name)
    return names


def engine_report(root: Path, pid: int | None) -> dict[str, int]:
    """Parse the buffer report of the backend log that belongs to ``pid`` (newest logs)."""
    for log in sorted((root / "backend-logs").rglob("*.log"), key=lambda p: p.stat().st_mtime,
                      reverse=True):
        text = log.read_text(errors="replace")
        if text:
            report = parse_buffer_report(text)
            if report:
                return report
    return {}


def step_load_and_evict(root: Path, paths: list[Path]) -> None:
    srv = server(root / "srv-load")
    rows = []
    try:
        with srv.client(timeout=600) as c:
            names = register(c, paths)
            for name in names:
                before = nvml_state()
                started = time.monotonic()
                c.post(f"{API}/load", json={"model_name": name}).raise_for_status()
                load_s = time.monotonic() - started
                time.sleep(1.0)
                after = nvml_state()
                entry = loaded(srv.health(c))[name]
                pid = entry["pid"]
                row = {"model": name, "load_s": round(load_s, 2),
                       "placement": entry.get("placement"),
                       "router_figure": entry.get("memory_by_device"),
                       "router_source": entry.get("memory_source"),
                       "engine_log_gpu0_mib": None, "nvml_process_mib": None,
                       "device_delta_mib": None}
                report = engine_report(srv.root, pid)
                if "gpu0" in report:
                    row["engine_log_gpu0_mib"] = round(report["gpu0"] / MIB, 1)
                row["engine_log_host_mib"] = round(report.get("host", 0) / MIB, 1)
                if before and after:
                    row["device_delta_mib"] = round((after["used"] - before["used"]) / MIB, 1)
                    listed = after["procs"].get(pid)
                    row["nvml_process_mib"] = round(listed / MIB, 1) if listed else None
                    row["device_used_mib"] = round(after["used"] / MIB, 1)
                rows.append(row)
            RESULT["load"] = rows
            victim = names[-1]
            before = nvml_state()
            figure = loaded(srv.health(c))[victim]["memory_bytes"]
            c.post(f"{API}/unload", json={"model_name": victim}).raise_for_status()
            time.sleep(2.0)
            after = nvml_state()
            RESULT["evict"] = {"model": victim,
                               "router_figure_mib": round((figure or 0) / MIB, 1),
                               "vram_freed_mib": round((before["used"] - after["used"]) / MIB, 1)
                               if before and after else None}
            c.post(f"{API}/unload", json={})
    finally:
        srv.stop()


def step_fit(root: Path, paths: list[Path], model_mib: float) -> None:
    state = nvml_state()
    if state is None:
        RESULT["fit"] = {"skipped": "no GPU: admission by fit on RAM is covered by the tests"}
        return
    free = state["total"] - state["used"]
    reserve_mib = max(0.0, free / MIB - 2.5 * model_mib)
    srv = server(root / "srv-fit", gpu_memory_reserve_mib=reserve_mib)
    try:
        with srv.client(timeout=600) as c:
            names = register(c, paths)
            c.post(f"{API}/load", json={"model_name": names[0], "pinned": True}).raise_for_status()
            c.post(f"{API}/load", json={"model_name": names[1]}).raise_for_status()
            r = c.post(f"{API}/load", json={"model_name": names[2]})
            now = loaded(srv.health(c))
            RESULT["fit"] = {"reserve_mib": round(reserve_mib), "third_load_status": r.status_code,
                             "loaded": sorted(now), "pinned_untouched": names[0] in now,
                             "evicted_exactly_the_lru": sorted(now) == sorted(names[::2]),
                             "answer": r.json() if r.status_code != 200 else None}
            c.post(f"{API}/unload", json={})
    finally:
        srv.stop()


def tokens_per_s(url: str, headers: dict[str, str], model: str, streams: int) -> float:
    body = {"model": model, "messages": [{"role": "user", "content": "Count."}],
            "max_tokens": 256, "stream": True, "ignore_eos": True}
    rates: list[float] = []

    def one() -> None:
        with httpx.Client(timeout=300) as c, c.stream("POST", url, json=body,
                                                       headers=headers) as resp:
            first = None
            n = 0
            for line in resp.iter_lines():
                if line.startswith("data: {"):
                    n += 1
                    first = first or time.monotonic()
            if first and n > 1:
                rates.append((n - 1) / (time.monotonic() - first))

    threads = [threading.Thread(target=one) for _ in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(rates)[len(rates) // 2] if rates else 0.0


def step_stream(root: Path, paths: list[Path], cpu: bool) -> None:
    from lemonade_jupyter.core.engines.lookup import find_engine
    from lemonade_jupyter.core.ports import free_port

    binary = find_engine(None).path
    port = free_port()
    gpu = [] if cpu else ["--n-gpu-layers", "999"]
    bare = subprocess.Popen([binary, "-m", str(paths[0]), "--port", str(port), "--host",
                             "127.0.0.1", "-c", "8192", "-np", "16", *gpu],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    srv = server(root / "srv-stream")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        with srv.client(timeout=600) as c:
            [name] = register(c, paths[:1])
            c.post(f"{API}/load", json={"model_name": name, "ctx_size": 8192,
                                        "parallel": 16}).raise_for_status()
        rows = []
        for streams in (1, 16):
            direct = tokens_per_s(f"http://127.0.0.1:{port}/v1/chat/completions", {}, "x",
                                  streams)
            routed = tokens_per_s(f"{srv.url}{API}/chat/completions", srv.headers(), name,
                                  streams)
            rows.append({"concurrency": streams, "direct_tok_s": round(direct, 1),
                         "router_tok_s": round(routed, 1),
                         "ratio": round(routed / direct, 3) if direct else None})
        RESULT["stream"] = rows
    finally:
        bare.terminate()
        bare.wait(30)
        srv.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, help="the bundled llama.cpp tree")
    parser.add_argument("--vocab", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model-mib", type=int, default=2048)
    parser.add_argument("--cpu", action="store_true")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    RESULT["gpu"] = {k: v for k, v in (nvml_state() or {}).items() if k != "procs"} or None
    steps = [
        ("build", lambda: step_build(args.source, args.cpu)),
        ("models", lambda: RESULT.__setitem__(
            "_paths", step_models(args.vocab, work, args.model_mib))),
        ("load", lambda: step_load_and_evict(work, RESULT["_paths"])),
        ("fit", lambda: step_fit(work, RESULT["_paths"], args.model_mib)),
        ("stream", lambda: step_stream(work, RESULT["_paths"], args.cpu)),
    ]
    failed = 0
    for name, run in steps:
        started = time.monotonic()
        try:
            run()
        except Exception:  # noqa: BLE001 - record it and go on with the next step
            failed += 1
            RESULT.setdefault("errors", {})[name] = traceback.format_exc()[-2000:]
        RESULT.setdefault("step_seconds", {})[name] = round(time.monotonic() - started, 1)
        save(args.out)
    RESULT.pop("_paths", None)
    save(args.out)
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(RESULT, indent=1, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
