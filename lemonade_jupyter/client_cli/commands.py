"""The client subcommands: one function each, ``(client, args) -> exit code``.

Each calls the router's HTTP API through the kernel's client and prints either a text view
(:mod:`.tables`) or, with ``--json``, the API's answer as it came. Failures are raised and
turned into one line and an exit code by :mod:`.connect`.
"""

from __future__ import annotations

import json
import sys
from typing import Any
from urllib.parse import quote

import httpx

from ..kernel.client import RouterClient, error_from_response, iter_sse, map_http_errors
from . import tables
from .connect import Refused, UsageError

#: Interval of the text progress lines of a pull when stderr is not a terminal (percent).
PROGRESS_STEP = 10.0


def emit(args: Any, answer: Any, text: str | None = None) -> None:
    """Print the answer as JSON (``--json``), else its text view (if any)."""
    if args.json:
        print(json.dumps(answer, indent=1))
    elif text:
        print(text)


def status(client: RouterClient, args: Any) -> int:
    health = client.health()
    emit(args, health, tables.status_text(health))
    return 0


def models(client: RouterClient, args: Any) -> int:
    answer = client.request("GET", "api/v1/models?show_all=true")
    listed = [m for m in answer.get("data", []) if isinstance(m, dict)]
    if args.downloaded:
        listed = [m for m in listed if m.get("downloaded")]
        answer = {**answer, "data": listed}
    emit(args, answer, tables.models_text(listed))
    return 0


def _device(value: str | None) -> Any:
    """``--device``: ``cpu``, ``auto``, a GPU index or a comma-separated list of them."""
    if value is None or value in ("cpu", "auto"):
        return value
    parts = value.split(",")
    if all(p.strip().isdigit() for p in parts):
        ids = [int(p) for p in parts]
        return ids[0] if len(ids) == 1 else ids
    raise UsageError(f"--device must be cpu, auto, a GPU index or indices such as 0,1: "
                     f"{value!r}")


def _slot_check(client: RouterClient, model: str, pinned: bool) -> None:
    """Before a load: warn when it will evict a model, or stop (``--pinned``) when every slot
    of its type is pinned, with the API's own 409 message."""
    health = client.health()
    live = {m.get("model_name"): m for m in health.get("all_models_loaded") or []}
    if model in live:
        return  # already loaded: a touch, a re-pin or a reload in its slot
    catalog: dict[str, dict[str, Any]] = {}
    for m in client.request("GET", "api/v1/models?show_all=true").get("data", []):
        for name in [m.get("id"), *(m.get("aliases") or [])]:
            catalog[str(name)] = m
    entry = catalog.get(model)
    if entry is None or entry.get("recipe") == "remote":
        return  # the API says what is wrong with it
    if entry.get("id") in live:
        return
    kind = entry.get("type", "llm")
    slots = (health.get("max_models") or {}).get(kind, 1)
    pool = [m for m in live.values() if m.get("type") == kind]
    if slots == -1 or len(pool) < slots:
        return
    unpinned = [m for m in pool if not m.get("pinned")]
    if not unpinned:
        message = f"All loaded models of type {kind} are pinned. Unload a model first."
        if pinned:
            raise Refused(message)
        print(f"lemonade-jupyter: warning: {message}", file=sys.stderr)
        return
    oldest = min(unpinned, key=lambda m: m.get("last_use") or 0)
    print(f"lemonade-jupyter: warning: every {kind} slot is in use ({len(pool)} of {slots}); "
          f"loading {model} unloads {oldest.get('model_name')} (least recently used, "
          "not pinned)", file=sys.stderr)


def load(client: RouterClient, args: Any) -> int:
    _slot_check(client, args.model, args.pinned)
    options = {"ctx_size": args.ctx_size, "gpu_layers": args.gpu_layers,
               "device": _device(args.device), "llamacpp_args": args.llamacpp_args}
    if args.pinned:
        options["pinned"] = True
    answer = client.load(args.model, **options)
    pin = " (pinned)" if answer.get("pinned") else ""
    emit(args, answer, f"Loaded {answer.get('model_name')}{pin}")
    return 0


def unload(client: RouterClient, args: Any) -> int:
    emit(args, client.unload(args.model), f"Unloaded {args.model}")
    return 0


def pin(client: RouterClient, args: Any) -> int:
    answer = client.pin(args.model, args.command == "pin")
    emit(args, answer, f"{'Pinned' if answer.get('pinned') else 'Unpinned'} {args.model}")
    return 0


def _looks_like_checkpoint(value: str) -> bool:
    return "/" in value or value.endswith(".gguf")


def pull(client: RouterClient, args: Any) -> int:
    if args.checkpoint is None:
        name, checkpoint = args.name, None
        if _looks_like_checkpoint(name):
            raise UsageError("give the model a name: lemonade-jupyter pull user.NAME "
                             f"{name}")
    else:
        name, checkpoint = args.name, args.checkpoint
    reporter = _Progress(sys.stderr.isatty() and not args.json)
    try:
        answer = client.pull(name, checkpoint, progress=reporter)
    except KeyboardInterrupt:
        reporter.end()
        client.cancel_pull(name)
        print(f"lemonade-jupyter: pull of {name} cancelled", file=sys.stderr)
        return 130
    reporter.end()
    emit(args, answer, f"Pulled {answer.get('model_name', name)}")
    return 0


class _Progress:
    """A pull's progress on stderr: a bar redrawn in place on a terminal, else a line at
    every :data:`PROGRESS_STEP` percent."""

    def __init__(self, bar: bool) -> None:
        self.bar = bar
        self.next_step = 0.0
        self.drawn = False

    def __call__(self, event: dict[str, Any]) -> None:
        if self.bar:
            sys.stderr.write("\r" + tables.progress_bar(event))
            sys.stderr.flush()
            self.drawn = True
            return
        percent = event.get("percent")
        if isinstance(percent, (int, float)) and percent >= self.next_step:
            print(tables.progress_bar(event), file=sys.stderr, flush=True)
            self.next_step = (percent // PROGRESS_STEP + 1) * PROGRESS_STEP

    def end(self) -> None:
        if self.drawn:
            sys.stderr.write("\n")
            self.drawn = False


def delete(client: RouterClient, args: Any) -> int:
    emit(args, client.delete(args.model), f"Deleted {args.model}")
    return 0


def chat(client: RouterClient, args: Any) -> int:
    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    if not prompt.strip():
        raise UsageError("no prompt: give one as an argument or on stdin")
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + \
        [{"role": "user", "content": prompt}]
    params = {k: v for k, v in (("max_tokens", args.max_tokens),
                                ("temperature", args.temperature)) if v is not None}
    if args.json:
        body = {"model": args.model, "messages": messages, **params, "stream": False}
        emit(args, client.request("POST", "api/v1/chat/completions", json_body=body))
        return 0
    for piece in client.stream_chat(args.model, messages, **params):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def logs(client: RouterClient, args: Any) -> int:
    path = (f"api/v1/logs/{quote(args.model, safe='')}?tail={args.lines}"
            f"&follow={'true' if args.follow else 'false'}")
    headers = {"Authorization": f"token {client.token}"} if client.token else {}
    transport = httpx.HTTPTransport(uds=client.uds) if client.uds else None
    timeout = httpx.Timeout(None, connect=10.0)  # following waits for lines without end
    with (httpx.Client(base_url=client.api_url, headers=headers, timeout=timeout,
                       transport=transport) as http,
          map_http_errors(client.base_url),
          http.stream("GET", path, headers={"Accept": "text/event-stream"}) as response):
        if response.status_code >= 400:
            response.read()
            raise error_from_response(response)
        try:
            for event in iter_sse(response.iter_lines()):
                if args.json:
                    print(json.dumps(event), flush=True)
                elif event.get("event") == "log":
                    print(event.get("data", ""), flush=True)
        except KeyboardInterrupt:
            return 0
    return 0


def _setting(pair: str) -> tuple[str, Any]:
    key, sep, raw = pair.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"settings are key=value: {pair!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value


def config(client: RouterClient, args: Any) -> int:
    if not args.settings:
        answer = client.config()
    else:
        answer = client.set_config(dict(_setting(p) for p in args.settings))
    emit(args, answer, tables.config_text(answer))
    return 0


COMMANDS = {"status": status, "models": models, "load": load, "unload": unload, "pin": pin,
            "unpin": pin, "pull": pull, "delete": delete, "chat": chat, "logs": logs,
            "config": config}
