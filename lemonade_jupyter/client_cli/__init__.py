"""``lemonade-jupyter`` as a client of a running router: status, models, load, pull, chat...

The subcommands talk to the router of a running Jupyter server over its HTTP API, found as a
kernel finds it (:mod:`.connect`); :mod:`.commands` holds one function per subcommand and
:mod:`.tables` the text views. ``--json`` prints the API's answer instead.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ClientError
from ..kernel.client import ctx_size
from .commands import COMMANDS
from .connect import Refused, Unreachable, UsageError, connect, fail

__all__ = ["COMMANDS", "add_parsers", "run"]


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="the Jupyter server (its base URL); default: "
                        "$LEMONADE_JUPYTER_URL, else the running server with the extension")
    common.add_argument("--token", help="its token; default: $LEMONADE_JUPYTER_TOKEN, or the "
                        "token in the server's info file")
    common.add_argument("--json", action="store_true", help="print the API's JSON answer")
    return common


def add_parsers(sub: Any) -> None:
    """Add the client subcommands to the ``lemonade-jupyter`` parser's subparsers."""
    common = [_common()]
    sub.add_parser("status", parents=common,
                   help="loaded models: state, pin, owner, device, memory; slots per type")
    models = sub.add_parser("models", parents=common, help="the catalog, with what is "
                            "downloaded and loaded")
    models.add_argument("--downloaded", action="store_true", help="only the models on disk")
    load = sub.add_parser("load", parents=common, help="load a model (warns before it "
                          "evicts one)")
    load.add_argument("model")
    load.add_argument("--pinned", action="store_true", help="pin it: never evicted "
                      "automatically")
    load.add_argument("--ctx-size", type=ctx_size, help="context size in tokens, or auto "
                      "(the default): the trained one capped by what fits")
    load.add_argument("--gpu-layers", type=int, help="layers offloaded to the GPU")
    load.add_argument("--device", help="cpu, auto, a GPU index or indices such as 0,1")
    load.add_argument("--llamacpp-args", help="more llama-server flags (allowlisted), "
                      "e.g. --llamacpp-args='--pooling mean'")
    for name, what in (("unload", "unload a model (pinned too)"), ("pin", "pin a loaded model"),
                       ("unpin", "unpin a loaded model"),
                       ("delete", "remove a user model or a download")):
        sub.add_parser(name, parents=common, help=what).add_argument("model")
    pull = sub.add_parser("pull", parents=common, help="download a catalog model, or register "
                          "user.NAME from a hub checkpoint or a local GGUF (Ctrl-C cancels)")
    pull.add_argument("name", help="a catalog model, or user.NAME with a CHECKPOINT")
    pull.add_argument("checkpoint", nargs="?", help="ORG/REPO:VARIANT, ORG/REPO/FILE.gguf or "
                      "a local .gguf path")
    chat = sub.add_parser("chat", parents=common, help="ask a model; the answer streams")
    chat.add_argument("model")
    chat.add_argument("prompt", nargs="?", help="the prompt (default: read stdin)")
    chat.add_argument("--system", help="a system message")
    chat.add_argument("--max-tokens", type=int)
    chat.add_argument("--temperature", type=float)
    logs = sub.add_parser("logs", parents=common, help="a model's backend log")
    logs.add_argument("model")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines "
                      "(Ctrl-C stops)")
    logs.add_argument("-n", "--lines", type=int, default=100, help="lines of history "
                      "(default 100)")
    config = sub.add_parser("config", parents=common, help="show the runtime settings, or set "
                            "some: key=value ...")
    config.add_argument("settings", nargs="*", metavar="key=value")


def run(args: argparse.Namespace) -> int:
    """Run one client subcommand; print one line on stderr and return its exit code on
    failure."""
    try:
        client = connect(args.url, args.token)
    except Unreachable as exc:
        return fail(exc)
    try:
        return COMMANDS[args.command](client, args)
    except (ClientError, UsageError, Refused, Unreachable) as exc:
        return fail(exc)
    finally:
        client.close()
