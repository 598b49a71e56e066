"""``lemonade-jupyter``: build the engine, or run the quickstart.

``lemonade-jupyter install-llama-server`` builds llama-server into the cache (once).
``lemonade-jupyter quickstart [--headless]`` starts Jupyter with the extension, loads and pins
the default model, prints a chat answer, then keeps serving (JupyterLab, or a bare Jupyter
server with ``--headless``) until Ctrl-C; ``--exit`` stops after the answer.
"""

from __future__ import annotations

import argparse
import sys

from .core.engines.install import install_llama_server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lemonade-jupyter", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install-llama-server", help="build llama-server into the cache")
    inst.add_argument("--force", action="store_true", help="rebuild even if cached")
    quick = sub.add_parser("quickstart", help="start Jupyter, load+pin the default model, chat")
    quick.add_argument("--headless", action="store_true",
                       help="a bare Jupyter server instead of JupyterLab (no browser)")
    quick.add_argument("--exit", action="store_true",
                       help="stop after printing the chat answer")
    quick.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    args = parser.parse_args(argv)
    if args.command == "install-llama-server":
        try:
            install_llama_server(force=args.force)
        except RuntimeError as exc:
            print(f"lemonade-jupyter: {exc}", file=sys.stderr)
            return 1
        return 0
    from .quickstart import run_quickstart

    return run_quickstart(headless=args.headless, exit_after=args.exit, port=args.port)


if __name__ == "__main__":
    sys.exit(main())
