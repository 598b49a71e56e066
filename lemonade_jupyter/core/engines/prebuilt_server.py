"""The prebuilt engine: llama.cpp's own server from the ``xllamacpp`` wheel, with llama-server's
command line, as a process of its own.

``xllamacpp.Server(params)`` runs llama.cpp's C++ HTTP server (the code of ``llama-server``)
on threads inside the Python process that creates it: it loads the model, listens on
``params.hostnames``/``params.port``, answers ``/health`` (503 while loading, then 200),
checks ``params.api_keys`` like llama-server, and serves the OpenAI routes. This module turns
llama-server's command line into those ``CommonParams`` and keeps the process alive, so the
router starts, probes, signals and reaps it exactly like ``llama-server``:

    lemonade-prebuilt-llama-server --model M.gguf --port 8080 --host 127.0.0.1 ...
    python -m lemonade_jupyter.core.engines.prebuilt_server --model M.gguf ...

Flags (both ``--flag value`` and ``--flag=value``) are in :data:`FLAGS`; a flag it does not
know is an error that names the native build, which knows all of them. The flags that open a
file or an address (``--model``, ``--mmproj``, ``--port``, ``--host``) are taken only at the
head of the command line, before any other flag: that is where the router puts its own, and
a load's ``llamacpp_args`` always come after the router's flags, so a path or an address
given there is refused here too, whatever let it through. Like llama-server it
takes the API key from ``$LLAMA_API_KEY`` when ``--api-key`` is not given. ``--version``
prints the wheel's version.

Signals: while the model loads (inside the C++ constructor, which holds the GIL), SIGTERM and
SIGINT keep their default action and end the process at once. Once it serves, they make it
exit with status 0 at once, as llama-server does; SIGKILL and the parent-death signal work as
for any process.
"""

from __future__ import annotations

import importlib.util
import os
import select
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PROG = "lemonade-prebuilt-llama-server"

_FLASH = {"on": "ENABLED", "off": "DISABLED", "auto": "AUTO", "1": "ENABLED", "0": "DISABLED",
          "true": "ENABLED", "false": "DISABLED", "enabled": "ENABLED", "disabled": "DISABLED"}
_POOLING = ("none", "mean", "cls", "last", "rank")
_CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")


class UsageError(ValueError):
    """A command line the prebuilt engine cannot run; the message says why and what to do."""


def _int(text: str) -> int:
    return int(text)


def _gpu_layers(text: str) -> int:
    # llama-server takes a number, "auto" (the default: fit to memory) or "all".
    if text == "auto":
        return -1
    if text == "all":
        return 999
    return int(text)


def _on_off(text: str) -> bool:
    if text.lower() in ("on", "1", "true", "enabled"):
        return True
    if text.lower() in ("off", "0", "false", "disabled"):
        return False
    raise ValueError(text)


def _choice(options: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in options:
            raise ValueError(f"{text} (one of {', '.join(options)})")
        return text
    return parse


@dataclass(frozen=True)
class Flag:
    """One llama-server flag: its spellings, the setting it fills, how its value is read
    (None: a switch that stores ``const``)."""

    names: tuple[str, ...]
    dest: str
    parse: Callable[[str], Any] | None = None
    const: Any = True
    #: It opens a file or an address: taken only at the head of the command line.
    opens: bool = False


FLAGS: tuple[Flag, ...] = (
    Flag(("-m", "--model"), "model", str, opens=True),
    Flag(("-mm", "--mmproj"), "mmproj", str, opens=True),
    Flag(("--mmproj-offload",), "mmproj_offload", const=True),
    Flag(("--no-mmproj-offload",), "mmproj_offload", const=False),
    Flag(("--port",), "port", _int, opens=True),
    Flag(("--host",), "host", str, opens=True),
    Flag(("-c", "--ctx-size"), "ctx_size", _int),
    Flag(("--api-key",), "api_key", str),
    Flag(("-t", "--threads"), "threads", _int),
    Flag(("-tb", "--threads-batch"), "threads_batch", _int),
    Flag(("--threads-http",), "threads_http", _int),
    Flag(("--embedding", "--embeddings"), "embedding"),
    Flag(("--rerank", "--reranking"), "reranking"),
    Flag(("--pooling",), "pooling", _choice(_POOLING)),
    Flag(("--sleep-idle-seconds",), "sleep_idle_seconds", _int),
    Flag(("--no-webui", "--no-ui"), "ui", const=False),
    Flag(("--webui", "--ui"), "ui", const=True),
    Flag(("-np", "--parallel"), "parallel", _int),
    Flag(("-ngl", "--gpu-layers", "--n-gpu-layers"), "gpu_layers", _gpu_layers),
    Flag(("-dev", "--device"), "device", str),
    Flag(("-sm", "--split-mode"), "split_mode", _choice(("none", "layer", "row", "tensor"))),
    Flag(("-mg", "--main-gpu"), "main_gpu", _int),
    Flag(("-b", "--batch-size"), "batch_size", _int),
    Flag(("-ub", "--ubatch-size"), "ubatch_size", _int),
    Flag(("-fa", "--flash-attn"), "flash_attn", _choice(tuple(_FLASH))),
    Flag(("--jinja",), "jinja", const=True),
    Flag(("--no-jinja",), "jinja", const=False),
    Flag(("--chat-template",), "chat_template", str),
    Flag(("-a", "--alias"), "alias", str),
    Flag(("--metrics",), "metrics"),
    Flag(("--slots",), "slots", const=True),
    Flag(("--no-slots",), "slots", const=False),
    Flag(("--props",), "props"),
    Flag(("-cram", "--cache-ram"), "cache_ram", _int),
    Flag(("--cache-reuse",), "cache_reuse", _int),
    Flag(("-ctk", "--cache-type-k"), "cache_type_k", _choice(_CACHE_TYPES)),
    Flag(("-ctv", "--cache-type-v"), "cache_type_v", _choice(_CACHE_TYPES)),
    Flag(("--warmup",), "warmup", const=True),
    Flag(("--no-warmup",), "warmup", const=False),
    Flag(("-kvu", "--kv-unified"), "kv_unified", const=True),
    Flag(("-no-kvu", "--no-kv-unified"), "kv_unified", const=False),
    Flag(("-cb", "--cont-batching"), "cont_batching", const=True),
    Flag(("-nocb", "--no-cont-batching"), "cont_batching", const=False),
    Flag(("--swa-full",), "swa_full"),
    Flag(("-fit", "--fit"), "fit", _on_off),
    Flag(("-n", "--predict", "--n-predict"), "n_predict", _int),
    Flag(("--temp",), "temp", float),
    Flag(("--top-k",), "top_k", _int),
    Flag(("--top-p",), "top_p", float),
    Flag(("--min-p",), "min_p", float),
    Flag(("--repeat-penalty",), "repeat_penalty", float),
    Flag(("-s", "--seed"), "seed", _int),
    Flag(("-to", "--timeout"), "timeout", _int),
    Flag(("-lv", "--verbosity", "--log-verbosity"), "verbosity", _int),
    Flag(("-v", "--verbose", "--log-verbose"), "verbosity", const=99),
    Flag(("--version",), "version"),
    Flag(("-h", "--help", "--usage"), "help"),
)
_BY_NAME = {name: flag for flag in FLAGS for name in flag.names}


def parse_args(argv: Sequence[str], env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """llama-server's command line (without the program name) as a dict of settings.

    Pure: nothing is imported or started. Raises :class:`UsageError`.
    """
    env = os.environ if env is None else env
    settings: dict[str, Any] = {}
    args = list(argv)
    first_other: str | None = None  # the first flag that opens nothing: the head ends there
    i = 0
    while i < len(args):
        token = args[i]
        name, has_value, inline = token.partition("=") if token.startswith("--") else (
            token, "", "")
        flag = _BY_NAME.get(name)
        if flag is None:
            raise UsageError(
                f"invalid argument: {token} is not supported by the prebuilt engine "
                f"(xllamacpp); build the native llama-server, which takes every flag: "
                f"lemonade-jupyter install-llama-server")
        if flag.opens and first_other is not None:
            raise UsageError(
                f"invalid argument: {name} opens a file or an address and is taken only before "
                f"every other flag (it came after {first_other}), where the router puts the "
                f"ones it sets")
        if not flag.opens:
            first_other = first_other or name
        if flag.parse is None:
            if has_value:
                raise UsageError(f"invalid argument: {name} takes no value")
            settings[flag.dest] = flag.const
            i += 1
            continue
        if has_value:
            raw = inline
            i += 1
        else:
            if i + 1 >= len(args):
                raise UsageError(f"invalid argument: {name} expects a value")
            raw = args[i + 1]
            i += 2
        try:
            settings[flag.dest] = flag.parse(raw)
        except ValueError as exc:
            raise UsageError(f"invalid value for {name}: {exc or raw}") from None
    if "api_key" not in settings and env.get("LLAMA_API_KEY"):
        settings["api_key"] = env["LLAMA_API_KEY"]
    if not settings.get("version") and not settings.get("help") and not settings.get("model"):
        raise UsageError("invalid argument: --model is required")
    return settings


def make_params(xl: Any, settings: Mapping[str, Any]) -> Any:
    """``xllamacpp.CommonParams`` for ``settings`` (from :func:`parse_args`), with llama-server's
    defaults where the two differ (``--parallel`` auto: 4 slots sharing one KV cache)."""
    p = xl.CommonParams()
    s = dict(settings)
    p.model.path = s["model"]
    if "mmproj" in s:  # a vision model's projector
        p.mmproj.path = s["mmproj"]
    if "mmproj_offload" in s:
        p.mmproj_use_gpu = s["mmproj_offload"]
    p.hostnames = [s.get("host", "127.0.0.1")]
    p.port = s.get("port", 8080)
    p.n_parallel = s.get("parallel", -1)
    if "ctx_size" in s:
        p.n_ctx = s["ctx_size"]
    if s.get("api_key"):
        p.api_keys = [k for k in s["api_key"].split(",") if k]
    if "threads" in s:
        p.cpuparams.n_threads = s["threads"]
        # llama-server: the batch threads default to --threads.
        p.cpuparams_batch.n_threads = s.get("threads_batch", s["threads"])
    elif "threads_batch" in s:
        p.cpuparams_batch.n_threads = s["threads_batch"]
    if s.get("embedding"):
        p.embedding = True
    if s.get("reranking"):  # llama-server's --reranking: embeddings with rank pooling
        p.embedding = True
        p.pooling_type = xl.llama_pooling_type.LLAMA_POOLING_TYPE_RANK
    if "pooling" in s:
        p.pooling_type = getattr(xl.llama_pooling_type,
                                 f"LLAMA_POOLING_TYPE_{s['pooling'].upper()}")
    if "flash_attn" in s:
        p.flash_attn_type = getattr(xl.llama_flash_attn_type,
                                    f"LLAMA_FLASH_ATTN_TYPE_{_FLASH[s['flash_attn']]}")
    for key in ("cache_type_k", "cache_type_v"):
        if key in s:
            setattr(p, key, getattr(xl.ggml_type, f"GGML_TYPE_{s[key].upper()}"))
    if "split_mode" in s:
        p.split_mode = getattr(xl.llama_split_mode, f"LLAMA_SPLIT_MODE_{s['split_mode'].upper()}")
    if s.get("device") == "none":
        p.n_gpu_layers = 0
    if "alias" in s:
        p.model_alias = {a for a in s["alias"].split(",") if a}
    if "timeout" in s:
        p.timeout_read = p.timeout_write = s["timeout"]
    simple = {
        "threads_http": "n_threads_http", "sleep_idle_seconds": "sleep_idle_seconds",
        "ui": "ui", "gpu_layers": "n_gpu_layers", "batch_size": "n_batch",
        "ubatch_size": "n_ubatch", "jinja": "use_jinja", "chat_template": "chat_template",
        "metrics": "endpoint_metrics", "slots": "endpoint_slots", "props": "endpoint_props",
        "cache_ram": "cache_ram_mib", "cache_reuse": "n_cache_reuse", "warmup": "warmup",
        "kv_unified": "kv_unified", "cont_batching": "cont_batching", "swa_full": "swa_full",
        "fit": "fit_params", "n_predict": "n_predict", "verbosity": "verbosity",
        "main_gpu": "main_gpu",
    }
    for key, attr in simple.items():
        if key in s:
            setattr(p, attr, s[key])
    sampling = {"temp": "temp", "top_k": "top_k", "top_p": "top_p", "min_p": "min_p",
                "repeat_penalty": "penalty_repeat", "seed": "seed"}
    for key, attr in sampling.items():
        if key in s:
            setattr(p.sampling, attr, s[key])
    return p


def device_env(device: str, env: Mapping[str, str]) -> dict[str, str]:
    """``--device CUDA0,CUDA2`` as ``CUDA_VISIBLE_DEVICES`` (the wheel's server takes no
    device list): those GPUs, counted among the ones already visible; ``none``: no GPU."""
    if device == "none":
        return {"CUDA_VISIBLE_DEVICES": ""}
    names = [d.strip() for d in device.split(",") if d.strip()]
    if not names or not all(n.startswith("CUDA") and n[4:].isdigit() for n in names):
        raise UsageError(f"invalid value for --device: {device} (the prebuilt engine takes "
                         "none or CUDA<i>[,CUDA<j>...])")
    visible = env.get("CUDA_VISIBLE_DEVICES")
    indices = [int(n[4:]) for n in names]
    if visible is not None and visible.strip():
        pool = [v.strip() for v in visible.split(",") if v.strip()]
        if any(i >= len(pool) for i in indices):
            raise UsageError(f"invalid value for --device: {device} (CUDA_VISIBLE_DEVICES="
                             f"{visible})")
        return {"CUDA_VISIBLE_DEVICES": ",".join(pool[i] for i in indices)}
    return {"CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in indices)}


def usage() -> str:
    lines = [f"usage: {PROG} --model FILE [flags]",
             "llama-server's command line, run by the prebuilt llama.cpp server (xllamacpp).",
             "Supported flags:"]
    seen: set[str] = set()
    for flag in FLAGS:
        spelled = ", ".join(flag.names)
        if spelled not in seen:
            seen.add(spelled)
            lines.append(f"  {spelled}{' VALUE' if flag.parse else ''}")
    lines.append("The API key may also come from $LLAMA_API_KEY.")
    return "\n".join(lines)


def version_text() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        wheel = version("xllamacpp")
    except PackageNotFoundError:
        wheel = "not installed"
    return f"version: xllamacpp {wheel} (the prebuilt llama.cpp server)"


def _serve(settings: Mapping[str, Any]) -> int:
    # Loading happens inside the C++ constructor, which holds the GIL: no Python signal
    # handler could run until it returns. The default action ends the process at once.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    if "device" in settings:  # before CUDA starts, which is at the import
        os.environ.update(device_env(settings["device"], os.environ))
    import xllamacpp as xl

    params = make_params(xl, settings)
    try:
        server = xl.Server(params)
    except Exception as exc:  # noqa: BLE001 - the engine's own words, then a failure status
        print(f"error: the server did not start: {exc}", file=sys.stderr, flush=True)
        return 1
    # Serving: a signal delivered to any of the engine's threads writes its number to the
    # wakeup pipe (Python's C-level handler), which wakes this thread wherever it sleeps.
    rfd, wfd = os.pipe()
    os.set_blocking(wfd, False)
    signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: None)
    print(f"main: prebuilt server is listening on {server.listening_address}",
          file=sys.stderr, flush=True)
    while True:
        ready, _, _ = select.select([rfd], [], [])
        if ready and os.read(rfd, 64):
            break
    print("main: received a stop signal, exiting", file=sys.stderr, flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip the interpreter's and the engine's teardown: llama-server exits 0 on SIGTERM too,
    # and joining the engine's threads could wait on a request in flight.
    os._exit(0)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the prebuilt server with llama-server's command line; returns an exit status."""
    try:
        settings = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if settings.get("help"):
        print(usage())
        return 0
    if settings.get("version"):
        print(version_text(), file=sys.stderr)
        return 0
    try:
        if "device" in settings:
            device_env(settings["device"], os.environ)  # a bad value fails before the load
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if importlib.util.find_spec("xllamacpp") is None:  # not imported: CUDA starts with it
        print("error: the prebuilt engine needs xllamacpp: pip install "
              "'lemonade_jupyter[prebuilt]' (or build the native one: "
              "lemonade-jupyter install-llama-server)", file=sys.stderr)
        return 1
    return _serve(settings)


if __name__ == "__main__":
    sys.exit(main())
