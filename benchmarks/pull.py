"""``python -m benchmarks.pull [--runs N]``: a hub pull's throughput against ``curl``.

Both fetch the default model's GGUF from the same local fake hub (``tests/fakes/fake_hub.py``,
unthrottled, served with ``sendfile``), alternately, N times each:

* ``curl``: ``curl -o FILE URL`` of the file's resolve URL, the floor of what a download costs
  on this machine;
* ``pull``: ``POST lemonade/api/v1/pull`` of an embedded router (the same handlers as in a
  Jupyter server), into a fresh ``HF_HUB_CACHE`` each time: listing the repository, the
  ``HEAD``, ``huggingface_hub``'s download, the registration;
* ``hf_hub_download``: the library call alone, to tell its cost from the router's.

Prints the medians in MB/s and the ratios to ``curl`` as JSON. Every run writes the ~98 MB
file to disk (the page cache, mostly), so a loaded machine shows in every row alike.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from lemonade_jupyter.core.catalog import default_model_path
from lemonade_jupyter.server.embedded import EmbeddedServer

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
from tests.fakes.fake_hub import FakeHub  # noqa: E402 - the fake lives with the tests

REPO = "bench/SmolLM2-GGUF"
FILE = "SmolLM2-135M-Instruct-Q4_1.gguf"


def _curl(url: str, dest: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["curl", "-sS", "--fail", "-o", str(dest), url], check=True)
    return time.perf_counter() - start


def _pull(server: EmbeddedServer, cache: Path, n: int) -> float:
    os.environ["HF_HUB_CACHE"] = str(cache)  # read by the router at each pull
    start = time.perf_counter()
    resp = httpx.post(f"{server.url}lemonade/api/v1/pull",
                      json={"model_name": f"user.bench{n + 1}", "checkpoint": f"{REPO}:Q4_1"},
                      headers={"Authorization": f"token {server.token}"}, timeout=600)
    elapsed = time.perf_counter() - start
    resp.raise_for_status()
    return elapsed


def _library(endpoint: str, cache: Path) -> float:
    from huggingface_hub import hf_hub_download

    start = time.perf_counter()
    hf_hub_download(REPO, FILE, cache_dir=cache, endpoint=endpoint)
    return time.perf_counter() - start


def run(runs: int) -> dict[str, Any]:
    model = default_model_path()
    size = os.path.getsize(model)
    work = Path(tempfile.mkdtemp(prefix="lemonade-bench-pull-"))
    times: dict[str, list[float]] = {"curl": [], "pull": [], "hf_hub_download": []}
    try:
        with FakeHub({REPO: {"files": {FILE: model}}}, work) as hub:
            os.environ["HF_ENDPOINT"] = hub.url
            os.environ.pop("HF_HUB_OFFLINE", None)
            url = f"{hub.url}/{REPO}/resolve/main/{FILE}"
            server = EmbeddedServer(data_dir=work / "data")
            server.start()
            try:
                # Warm-up, not counted: the source file into the page cache, and the imports
                # and connections of a first pull.
                _curl(url, work / "warm.gguf")
                _pull(server, work / "warm-cache", -1)
                _library(hub.url, work / "warm-lib")
                shutil.rmtree(work / "warm-cache")
                shutil.rmtree(work / "warm-lib")
                for n in range(runs):
                    dest = work / f"curl-{n}.gguf"
                    times["curl"].append(_curl(url, dest))
                    dest.unlink()
                    cache = work / f"cache-{n}"
                    times["pull"].append(_pull(server, cache, n))
                    shutil.rmtree(cache)
                    times["hf_hub_download"].append(_library(hub.url, cache))
                    shutil.rmtree(cache)
            finally:
                server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    mbps = {k: [size / t / 1e6 for t in v] for k, v in times.items()}
    medians = {k: round(statistics.median(v), 1) for k, v in mbps.items()}
    return {
        "file_bytes": size,
        "runs": runs,
        "median_MBps": medians,
        "all_MBps": {k: [round(x, 1) for x in v] for k, v in mbps.items()},
        "ratio_to_curl": {k: round(medians[k] / medians["curl"], 3) for k in ("pull",
                                                                              "hf_hub_download")},
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pull",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each (default 5)")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.runs), indent=1))


if __name__ == "__main__":
    main()
