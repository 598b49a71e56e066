"""``lemonade-jupyter``: build a native engine, show the engine in use, run the quickstart, or
drive a running router (``status``, ``models``, ``load``, ``pull``, ``chat``...; see
``lemonade_jupyter/client_cli``).

``lemonade-jupyter install-llama-server [--gpu auto|cuda|cpu]`` builds llama-server into the
cache (once per flavour): with ``auto``, for this machine's GPUs when a CUDA toolkit and a GPU
are found, else for the CPU; ``cuda`` installs a toolkit from NVIDIA's wheels into the cache
when the system's is missing or incomplete (``--cuda-arch 80,90`` without a visible GPU,
``--cuda-home DIR`` for a toolkit of your own). Nothing needs it to get started: the
``[prebuilt]`` extra's engine runs until a native build exists, which the router then prefers.
``lemonade-jupyter install-whisper-server [--gpu auto|cuda|cpu]`` does the same for
whisper.cpp's ``whisper-server`` (transcription models); without it they run on the
``pywhispercpp`` wheel of the ``[prebuilt]`` extra.
``lemonade-jupyter engine`` prints the engine the router would start (JSON), with the backends
it was built with and the devices it sees (it is asked: ``llama-server --list-devices``).
``lemonade-jupyter node [JUPYTER SERVER ARGS]`` runs one router for a whole JupyterHub node, as
a Hub-managed service (docs/jupyterhub.md).
``lemonade-jupyter quickstart [--headless]`` starts Jupyter with the extension, loads and pins
the default model, prints a chat answer, then keeps serving (JupyterLab, or a bare Jupyter
server with ``--headless``) until Ctrl-C; ``--exit`` stops after the answer.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lemonade-jupyter", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install-llama-server",
                          help="build a native llama-server into the cache (minutes)")
    inst.add_argument("--gpu", choices=("auto", "cuda", "cpu"), default="auto",
                      help="the flavour: cuda builds for the GPUs NVML reports, with the "
                           "system's CUDA toolkit or one from NVIDIA's wheels; auto picks cuda "
                           "when a toolkit and a GPU are there (default)")
    inst.add_argument("--cuda-arch", default=None, metavar="80,90",
                      help="CUDA architectures to build for (compute capabilities without the "
                           "dot); default: those of the GPUs NVML reports")
    inst.add_argument("--cuda-home", default=None, metavar="DIR",
                      help="the CUDA toolkit to build with; default: nvcc's on PATH or "
                           "$CUDA_HOME when complete, else (with --gpu cuda) NVIDIA's wheels "
                           "installed into the cache")
    inst.add_argument("--force", action="store_true", help="rebuild even if cached")
    inst.add_argument("--jobs", type=int, default=None, help="parallel build jobs (default: "
                      "every core)")
    winst = sub.add_parser("install-whisper-server",
                           help="build whisper.cpp's whisper-server into the cache (minutes)")
    winst.add_argument("--gpu", choices=("auto", "cuda", "cpu"), default="auto",
                       help="the flavour, chosen as for install-llama-server")
    winst.add_argument("--force", action="store_true", help="rebuild even if cached")
    winst.add_argument("--jobs", type=int, default=None, help="parallel build jobs")
    sub.add_parser("engine", help="print the engine the router would start, its backends and "
                   "devices, as JSON")
    quick = sub.add_parser("quickstart", help="start Jupyter, load+pin the default model, chat")
    quick.add_argument("--headless", action="store_true",
                       help="a bare Jupyter server instead of JupyterLab (no browser)")
    quick.add_argument("--exit", action="store_true",
                       help="stop after printing the chat answer")
    quick.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    quick.add_argument("--no-build", action="store_true",
                       help="on the prebuilt engine, do not build a native llama-server in the "
                            "background after the first answer")
    node = sub.add_parser("node", help="one router for every user of a JupyterHub, run as a "
                          "Hub service (docs/jupyterhub.md)")
    node.add_argument("server_args", nargs=argparse.REMAINDER,
                      help="more Jupyter server arguments, e.g. --LemonadeApp.data_dir=DIR")
    from . import client_cli

    client_cli.add_parsers(sub)
    args = parser.parse_args(argv)
    if args.command == "node":
        from .server.node import run_node

        return run_node(args.server_args)
    if args.command in client_cli.COMMANDS:
        return client_cli.run(args)
    if args.command == "install-llama-server":
        from .core.engines.install import install_llama_server

        try:
            install_llama_server(force=args.force, jobs=args.jobs, gpu=args.gpu,
                                 cuda_archs=args.cuda_arch, cuda_home=args.cuda_home)
        except RuntimeError as exc:
            print(f"lemonade-jupyter: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.command == "install-whisper-server":
        from .core.engines.whisper_install import install_whisper_server

        try:
            install_whisper_server(force=args.force, jobs=args.jobs, gpu=args.gpu)
        except RuntimeError as exc:
            print(f"lemonade-jupyter: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.command == "engine":
        import asyncio

        from .core.engines.lookup import find_engine
        from .core.engines.probe import probe
        from .errors import EngineMissingError

        try:
            info = find_engine()
            if info.caps is None:  # ask the binary what it was built with and what it sees
                asyncio.run(probe(info.path))
                info = find_engine()
            print(json.dumps(info.to_json(), indent=1))
        except EngineMissingError as exc:
            print(f"lemonade-jupyter: {exc.message}", file=sys.stderr)
            return 1
        return 0
    from .quickstart import run_quickstart

    return run_quickstart(headless=args.headless, exit_after=args.exit, port=args.port,
                          build=not args.no_build)


if __name__ == "__main__":
    sys.exit(main())
