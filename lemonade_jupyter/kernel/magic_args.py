"""The grammar of ``%lemonade``: its subcommands and options, and the few parsers argparse
cannot do (a chat prompt kept verbatim after the model, a value that may be JSON).

Apart from the magics so that the magics module reads as "parse, call, render".
"""

from __future__ import annotations

import argparse
import io
import json
import shlex
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import MagicArgumentParser

from .client import ctx_size

__all__ = ["build_parser", "looks_like_hub_checkpoint", "parse_value", "split_chat"]


def build_parser() -> MagicArgumentParser:
    parser = MagicArgumentParser(prog="lemonade", add_help=False)  # the formatter adds the %
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=MagicArgumentParser)

    load = sub.add_parser("load", help="load a model (blocks until it serves)")
    load.add_argument("model")
    load.add_argument(
        "--pinned",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="pin it (--no-pinned unpins); omitted keeps the current pin",
    )
    load.add_argument("--ctx-size", type=ctx_size, default=None,
                      help="context size in tokens, or auto (the default): the trained "
                      "context capped by what fits")
    load.add_argument(
        "--auto-evict",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="let the eviction engine downsize/unload it when idle",
    )
    load.add_argument("--llamacpp-args", default=None, help="extra llama-server flags (quoted)")
    load.add_argument("--downsize-idle-timeout", type=float, default=None, metavar="S")
    load.add_argument("--evict-idle-timeout", type=float, default=None, metavar="S")
    load.add_argument("--evict-weight-factor", type=float, default=None, metavar="F")
    load.add_argument("--parallel", type=int, default=None, metavar="N",
                      help="requests the model generates for at once (llama-server slots)")
    load.add_argument("--max-queue", type=int, default=None, metavar="N",
                      help="requests that may wait for a free slot before a 429; -1: no bound")

    for name, text in (("pin", "pin a loaded model"), ("unpin", "unpin a loaded model")):
        sub.add_parser(name, help=text).add_argument("model")
    sub.add_parser("unload", help="unload MODEL, or every model").add_argument("model", nargs="?")
    sub.add_parser("status", help="router, loaded models, slots and memory")
    sub.add_parser("models", help="the model catalog")

    pull = sub.add_parser(
        "pull", help="download a catalog model, or a hub checkpoint or local GGUF as user.NAME"
    )
    pull.add_argument("name")
    pull.add_argument(
        "checkpoint",
        nargs="?",
        default=None,
        help="ORG/REPO:VARIANT, ORG/REPO/FILE.gguf or a local .gguf path; "
        "omitted: the catalog model NAME",
    )
    pull.add_argument("--labels", default="", help="comma-separated labels, e.g. llm or embeddings")
    pull.add_argument("--recipe", default=None,
                      help="llamacpp (GGUF) or whispercpp (whisper.cpp ggml-*.bin); omitted: "
                      "the checkpoint's own (whispercpp for ggerganov/whisper.cpp:VARIANT)")
    pull.add_argument("--mmproj", default=None, help="the repository's mmproj file (vision)")
    sub.add_parser("delete", help="remove a user model").add_argument("name")
    remote = sub.add_parser("remote", help="NAME URL [URL ...]: a model served elsewhere "
                            "(vLLM, KServe, ...), one OpenAI /v1 URL per replica")
    remote.add_argument("name")
    remote.add_argument("urls", nargs="+", metavar="URL")
    remote.add_argument("--model", default=None, metavar="UPSTREAM",
                        help="its name there; omitted: every model the upstream lists")
    remote.add_argument("--key-env", default=None, metavar="VAR[,VAR]",
                        help="the server's environment variable(s) holding the API key")
    remote.add_argument("--labels", default="", help="comma-separated labels")
    alias = sub.add_parser("alias", help="MODEL ALIAS: another name for MODEL; "
                           "--remove ALIAS; alone: list the aliases")
    alias.add_argument("names", nargs="*", metavar="MODEL ALIAS")
    alias.add_argument("--remove", metavar="ALIAS", default=None, help="forget ALIAS")
    logs = sub.add_parser("logs", help="the last lines of MODEL's backend log")
    logs.add_argument("model")
    logs.add_argument("-n", "--lines", type=int, default=20, metavar="N")

    config = sub.add_parser("config", help="show the config, or set key=value ...")
    config.add_argument("pairs", nargs="*", metavar="key=value")

    chat = sub.add_parser("chat", help="chat with MODEL; the reply streams as it is generated")
    chat.add_argument("-o", "--output", metavar="NAME", help="store the reply in variable NAME")
    chat.add_argument("--max-tokens", type=int, default=None)
    chat.add_argument("--system", default=None, help="a system prompt")
    chat.add_argument(
        "--stats", action="store_true",
        help="after the reply, print its time to first token, tokens/s and token counts",
    )
    chat.add_argument(
        "-c",
        "--continue",
        dest="resume",
        action="store_true",
        help="continue the last %%lemonade chat conversation (its history is sent too)",
    )
    chat.add_argument("model")

    tr = sub.add_parser("transcribe", help="MODEL FILE: the text of an audio file (WAV) "
                        "from a transcription model (whisper.cpp)")
    tr.add_argument("model")
    tr.add_argument("file", metavar="FILE")
    tr.add_argument("-o", "--output", metavar="OUT", default=None,
                    help="write the text to file OUT instead of showing it")
    tr.add_argument("--language", default=None, metavar="L",
                    help="the spoken language (ISO 639-1, e.g. en), or auto (the default)")
    tr.add_argument("--format", dest="response_format", default="text",
                    choices=("text", "json", "verbose_json", "srt", "vtt"),
                    help="text (default), json, verbose_json (with segments), srt or vtt")
    tr.add_argument("--translate", action="store_true",
                    help="translate the speech into English instead")

    oai = sub.add_parser("openai", help="an openai.OpenAI client for this router")
    oai.add_argument("--async", dest="asynchronous", action="store_true", help="AsyncOpenAI")

    dash = sub.add_parser("dashboard", help="a live panel of models, slots, memory and events")
    dash.add_argument(
        "--interval", type=float, default=None, metavar="S", help="seconds between refreshes"
    )
    sub.add_parser("help", help="this help")
    return parser


def split_chat(rest: str) -> tuple[list[str], str]:
    """Split ``[options] MODEL PROMPT...`` keeping the prompt verbatim (quotes, apostrophes)."""
    lexer = shlex.shlex(io.StringIO(rest), posix=True)
    lexer.whitespace_split = True
    tokens: list[str] = []
    takes_value = {"-o", "--output", "--max-tokens", "--system"}
    try:
        while True:
            tok = lexer.get_token()
            if tok is None:
                return tokens, ""
            tokens.append(tok)
            if tok in takes_value:
                value = lexer.get_token()
                if value is not None:
                    tokens.append(value)
            elif not tok.startswith("-"):  # the model: the rest of the line is the prompt
                prompt = rest[lexer.instream.tell() :].strip()
                if len(prompt) >= 2 and prompt[0] == prompt[-1] and prompt[0] in "'\"":
                    prompt = prompt[1:-1]
                return tokens, prompt
    except ValueError as exc:
        raise UsageError(f"cannot parse chat options: {exc}") from None


def looks_like_hub_checkpoint(text: str) -> bool:
    """``ORG/REPO:VARIANT``, ``ORG/REPO`` or ``ORG/REPO/FILE.gguf`` (the server checks it)."""
    if not text or text[0] in "/.~" or " " in text:
        return False
    if ":" in text:
        return text.split(":", 1)[0].count("/") == 1
    slashes = text.count("/")
    return (slashes == 1 and not text.lower().endswith(".gguf")) or (
        slashes >= 2 and text.lower().endswith(".gguf"))


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text
