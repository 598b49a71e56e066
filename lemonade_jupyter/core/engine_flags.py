"""Which llama-server flags a load may pass through ``llamacpp_args``: one table, one check.

``llamacpp_args`` reaches the engine's command line, and llama-server has flags that read
files (``--chat-template-file``), write them (``--log-file``, ``--slot-save-path``), run
programs (``--mcp-servers-config``, ``--tools``) or reach other machines (``--rpc``,
``--hf-repo``). So the rule is an allowlist: :data:`ALLOWED` lists the flags that name no file,
program, address or secret (sampling, batching, cache types, threads, flash attention,
rope/yarn numbers, built-in chat-template names, reasoning), each with the values it takes.
Everything else is refused, with the reason when we know it (:data:`ROUTER_SET`,
:data:`REFUSED`). The spellings are llama-server's own: short and long aliases, ``--no-…``
negations, ``--flag=value`` (split into two words for the engine, which does not take ``=``),
and ``_`` for ``-`` in a long flag, which llama-server accepts too.

The owner of a single-user server may lift the allowlist (``allow_any_llamacpp_args``); the
caller says so with an explicit :class:`ArgsPolicy`, so a caller that serves many users can
always pass :data:`STRICT`. Even then the flags the router sets stay reserved: the model,
port, host, API key, context size, placement and slots are the router's.

The same function checks a ``/load`` body (:mod:`.options`) and builds the engine's words
(:mod:`.engines.llamacpp`), so nothing outside the allowlist reaches a command line.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidRequestError

PARAM = "llamacpp_args"
#: Bound of the ``llamacpp_args`` string (characters).
MAX_ARGS_LENGTH = 4096
#: Bound of the tokens counted in a context, a batch, a prediction...
MAX_TOKENS = 1 << 20
MAX_THREADS = 1024

# Why a flag is refused; each message reads "Flag '--x' <reason>".
SET_BY_ROUTER = "is set by the router"
NAMES_FILE = "names a file"
RUNS_PROGRAM = "runs a program"
NAMES_ADDRESS = "names a network address (it reaches other machines)"
NAMES_SECRET = "names a secret"
NOT_ALLOWED = "is not among the flags a load may set"


@dataclass(frozen=True)
class ArgsPolicy:
    """How strictly ``llamacpp_args`` is checked.

    ``allow_any``: flags outside :data:`ALLOWED` pass unchecked (the router-set ones never
    do). A single-user owner's escape hatch, from the ``allow_any_llamacpp_args`` setting;
    a server shared by several users must pass :data:`STRICT`.
    """

    allow_any: bool = False


STRICT = ArgsPolicy()


def args_policy(settings: Any) -> ArgsPolicy:
    """The policy a single-user server's settings ask for (``allow_any_llamacpp_args``)."""
    return ArgsPolicy(allow_any=settings.allow_any_llamacpp_args is True)


# -- value rules ---------------------------------------------------------------------------
_INT = re.compile(r"[+-]?\d{1,12}")
_FLOAT = re.compile(r"[+-]?(\d{1,12}(\.\d{0,12})?|\.\d{1,12})([eE][+-]?\d{1,3})?")


@dataclass(frozen=True)
class Int:
    """An integer in ``[low, high]``."""

    low: int
    high: int

    def check(self, text: str) -> None:
        if not _INT.fullmatch(text) or not self.low <= int(text) <= self.high:
            raise ValueError(f"takes an integer from {self.low} to {self.high}")

    def describe(self) -> str:
        return f"integer {self.low} to {self.high}"


@dataclass(frozen=True)
class Float:
    """A finite number in ``[low, high]`` (``low`` excluded when ``above``)."""

    low: float
    high: float
    above: bool = False

    def check(self, text: str) -> None:
        value = float(text) if _FLOAT.fullmatch(text) else math.nan
        low_ok = self.low < value if self.above else self.low <= value
        if not (low_ok and value <= self.high):  # NaN fails both
            raise ValueError(f"takes a number {self._range()}")

    def _range(self) -> str:
        return f"{'above' if self.above else 'from'} {self.low:g} to {self.high:g}"

    def describe(self) -> str:
        return f"number {self._range()}"


@dataclass(frozen=True)
class Choice:
    """One of a fixed set of words."""

    options: tuple[str, ...]

    def check(self, text: str) -> None:
        if text not in self.options:
            raise ValueError(f"takes one of {', '.join(self.options)}")

    def describe(self) -> str:
        return "one of " + ", ".join(f"`{o}`" for o in self.options)


@dataclass(frozen=True)
class JsonObject:
    """A JSON object of at most ``limit`` characters (template variables, not paths)."""

    limit: int = 1024

    def check(self, text: str) -> None:
        try:
            ok = len(text) <= self.limit and isinstance(json.loads(text), dict)
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"takes a JSON object of at most {self.limit} characters")

    def describe(self) -> str:
        return f"JSON object (at most {self.limit} characters)"


ValueRule = Int | Float | Choice | JsonObject


@dataclass(frozen=True)
class FlagRule:
    """One allowed flag: its spellings, its ``--no-…`` spellings, and what value it takes
    (None: a switch, which takes no value)."""

    names: tuple[str, ...]
    value: ValueRule | None = None
    negations: tuple[str, ...] = ()


# llama.cpp's words for on/off/auto (is_truthy, is_falsey, is_autoy in common/arg.cpp).
ON_OFF_AUTO = Choice(("on", "off", "auto", "enabled", "disabled", "true", "false", "1", "0",
                      "-1"))
#: KV cache types llama-server accepts (kv_cache_types in common/arg.cpp).
CACHE_TYPES = Choice(("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1"))
#: llama.cpp's built-in chat templates (LLM_CHAT_TEMPLATES in src/llama-chat.cpp): a load
#: names one of these, never a template text or a file.
CHAT_TEMPLATES = Choice((
    "chatml", "llama2", "llama2-sys", "llama2-sys-bos", "llama2-sys-strip", "mistral-v1",
    "mistral-v3", "mistral-v3-tekken", "mistral-v7", "mistral-v7-tekken", "phi3", "phi4",
    "falcon3", "zephyr", "monarch", "gemma", "orion", "openchat", "vicuna", "vicuna-orca",
    "deepseek", "deepseek2", "deepseek3", "deepseek-ocr", "command-r", "llama3", "chatglm3",
    "chatglm4", "glmedge", "minicpm", "exaone3", "exaone4", "exaone-moe", "rwkv-world",
    "granite", "granite-4.0", "granite-4.1", "gigachat", "megrez", "yandex", "bailing",
    "bailing-think", "bailing2", "llama4", "smolvlm", "hunyuan-moe", "gpt-oss",
    "hunyuan-dense", "hunyuan-vl", "kimi-k2", "seed_oss", "grok-2", "pangu-embedded",
    "solar-open",
))
_UNIT = Float(0, 1)
_PENALTY = Float(-100, 100)

#: Every flag a load may set. Each spelling is one llama-server lists in ``--help``
#: (tests/data/llama_server_help.txt; a test keeps the two in step).
ALLOWED: tuple[FlagRule, ...] = (
    # threads and scheduling (no realtime priority: it can starve the machine)
    FlagRule(("-t", "--threads"), Int(1, MAX_THREADS)),
    FlagRule(("-tb", "--threads-batch"), Int(1, MAX_THREADS)),
    FlagRule(("--threads-http",), Int(-1, MAX_THREADS)),
    FlagRule(("--cpu-strict",), Choice(("0", "1"))),
    FlagRule(("--cpu-strict-batch",), Choice(("0", "1"))),
    FlagRule(("--prio",), Int(-1, 2)),
    FlagRule(("--prio-batch",), Int(-1, 2)),
    FlagRule(("--poll",), Int(0, 100)),
    FlagRule(("--poll-batch",), Int(0, 100)),
    FlagRule(("--numa",), Choice(("distribute", "isolate", "numactl"))),
    # batching, memory and attention
    FlagRule(("-n", "--predict", "--n-predict"), Int(-2, MAX_TOKENS)),
    FlagRule(("-b", "--batch-size"), Int(1, MAX_TOKENS)),
    FlagRule(("-ub", "--ubatch-size"), Int(1, MAX_TOKENS)),
    FlagRule(("--keep",), Int(-1, MAX_TOKENS)),
    FlagRule(("--swa-full",)),
    FlagRule(("-fa", "--flash-attn"), ON_OFF_AUTO),
    FlagRule(("-ctk", "--cache-type-k"), CACHE_TYPES),
    FlagRule(("-ctv", "--cache-type-v"), CACHE_TYPES),
    FlagRule(("-kvo", "--kv-offload"), negations=("-nkvo", "--no-kv-offload")),
    FlagRule(("-kvu", "--kv-unified"), negations=("-no-kvu", "--no-kv-unified")),
    FlagRule(("--repack",), negations=("-nr", "--no-repack")),
    FlagRule(("--no-host",)),
    FlagRule(("--op-offload",), negations=("--no-op-offload",)),
    FlagRule(("-lm", "--load-mode"), Choice(("auto", "none", "mmap", "mlock", "mmap+mlock",
                                              "dio"))),
    FlagRule(("-lzm", "--lazy-mode"), Choice(("on", "auto", "off"))),
    FlagRule(("--check-tensors",)),
    FlagRule(("-cb", "--cont-batching"), negations=("-nocb", "--no-cont-batching")),
    FlagRule(("-cram", "--cache-ram"), Int(-1, 1 << 24)),
    FlagRule(("--cache-reuse",), Int(0, MAX_TOKENS)),
    FlagRule(("--cache-prompt",), negations=("--no-cache-prompt",)),
    FlagRule(("--cache-idle-slots",), negations=("--no-cache-idle-slots",)),
    FlagRule(("--context-shift",), negations=("--no-context-shift",)),
    FlagRule(("-ctxcp", "--ctx-checkpoints", "--swa-checkpoints"), Int(0, 1024)),
    FlagRule(("-cms", "--checkpoint-min-step"), Int(0, MAX_TOKENS)),
    FlagRule(("-sps", "--slot-prompt-similarity"), _UNIT),
    FlagRule(("--warmup",), negations=("--no-warmup",)),
    FlagRule(("--perf",), negations=("--no-perf",)),
    # rope and yarn
    FlagRule(("--rope-scaling",), Choice(("none", "linear", "yarn"))),
    FlagRule(("--rope-scale",), Float(0, 1e6, above=True)),
    FlagRule(("--rope-freq-base",), Float(0, 1e9, above=True)),
    FlagRule(("--rope-freq-scale",), Float(0, 1e6, above=True)),
    FlagRule(("--yarn-orig-ctx",), Int(0, MAX_TOKENS)),
    FlagRule(("--yarn-ext-factor",), Float(-1, 100)),
    FlagRule(("--yarn-attn-factor",), Float(-1, 100)),
    FlagRule(("--yarn-beta-slow",), Float(-1, 1000)),
    FlagRule(("--yarn-beta-fast",), Float(-1, 1000)),
    # sampling defaults (a request may still set its own)
    FlagRule(("-s", "--seed"), Int(-1, (1 << 32) - 1)),
    FlagRule(("--temp", "--temperature"), Float(0, 100)),
    FlagRule(("--top-k",), Int(0, 1_000_000)),
    FlagRule(("--top-p",), _UNIT),
    FlagRule(("--min-p",), _UNIT),
    FlagRule(("--top-nsigma", "--top-n-sigma"), Float(-1, 100)),
    FlagRule(("--xtc-probability",), _UNIT),
    FlagRule(("--xtc-threshold",), _UNIT),
    FlagRule(("--typical", "--typical-p"), _UNIT),
    FlagRule(("--repeat-last-n",), Int(-1, MAX_TOKENS)),
    FlagRule(("--repeat-penalty",), Float(0, 100)),
    FlagRule(("--presence-penalty",), _PENALTY),
    FlagRule(("--frequency-penalty",), _PENALTY),
    FlagRule(("--dry-multiplier",), Float(0, 100)),
    FlagRule(("--dry-base",), Float(0, 100)),
    FlagRule(("--dry-allowed-length",), Int(0, MAX_TOKENS)),
    FlagRule(("--dry-penalty-last-n",), Int(-1, MAX_TOKENS)),
    FlagRule(("--adaptive-target",), Float(-1, 1)),
    FlagRule(("--dynatemp-range",), Float(0, 100)),
    FlagRule(("--dynatemp-exp",), Float(0, 100)),
    FlagRule(("--mirostat",), Int(0, 2)),
    FlagRule(("--mirostat-lr",), Float(0, 10)),
    FlagRule(("--mirostat-ent",), Float(0, 100)),
    FlagRule(("--ignore-eos",)),
    FlagRule(("-bs", "--backend-sampling")),
    # chat templates and reasoning
    FlagRule(("--jinja",), negations=("--no-jinja",)),
    FlagRule(("--chat-template",), CHAT_TEMPLATES),
    FlagRule(("--chat-template-kwargs",), JsonObject()),
    FlagRule(("--reasoning-format",), Choice(("none", "auto", "deepseek", "deepseek-legacy"))),
    FlagRule(("-rea", "--reasoning"), ON_OFF_AUTO),
    FlagRule(("--reasoning-effort",), Choice(("default", "minimal", "low", "medium", "high",
                                              "xhigh", "max"))),
    FlagRule(("--reasoning-budget",), Int(-1, MAX_TOKENS)),
    FlagRule(("--reasoning-preserve",), negations=("--no-reasoning-preserve",)),
    FlagRule(("--skip-chat-parsing",), negations=("--no-skip-chat-parsing",)),
    FlagRule(("--prefill-assistant",), negations=("--no-prefill-assistant",)),
    FlagRule(("-sp", "--special")),
    FlagRule(("--spm-infill",)),
    # embeddings, vision, serving
    FlagRule(("--pooling",), Choice(("none", "mean", "cls", "last", "rank"))),
    FlagRule(("--embd-normalize",), Int(-1, 100)),
    FlagRule(("--mmproj-offload",), negations=("--no-mmproj-offload",)),
    FlagRule(("--image-min-tokens",), Int(0, MAX_TOKENS)),
    FlagRule(("--image-max-tokens",), Int(0, MAX_TOKENS)),
    FlagRule(("-to", "--timeout"), Int(1, 86_400)),
    FlagRule(("--metrics",)),
    # logs (to the router's log file, which it reads back)
    FlagRule(("-v", "--verbose", "--log-verbose")),
    FlagRule(("-lv", "--verbosity", "--log-verbosity"), Int(0, 99)),
    FlagRule(("--offline",)),
)

#: Flags the router sets itself (the model, its address and key, context, type, placement,
#: slots, idle sleep, the web UI) or that would replace them (the preset flags set a model
#: and a port). Refused even when ``allow_any_llamacpp_args`` is on.
ROUTER_SET = frozenset({
    "-m", "--model", "--port", "--host", "--reuse-port", "--api-key", "--api-key-file",
    "--api-prefix", "-c", "--ctx-size", "--embeddings", "--embedding", "--rerank",
    "--reranking", "--sleep-idle-seconds", "-hf", "-hfr", "--hf-repo", "-mu", "--model-url",
    "--path", "--ssl-key-file", "--ssl-cert-file", "-mm", "--mmproj",
    "--ui", "--webui", "--no-ui", "--no-webui",
    # placement: the gpu_layers and device options
    "-ngl", "--gpu-layers", "--n-gpu-layers", "-dev", "--device", "-sm", "--split-mode",
    "-mg", "--main-gpu", "-ts", "--tensor-split",
    # the parallel option: the router counts requests against it
    "-np", "--parallel",
    # presets: each sets a model to download and a port
    "--embd-gemma-default", "--fim-qwen-1.5b-default", "--fim-qwen-3b-default",
    "--fim-qwen-7b-default", "--fim-qwen-7b-spec", "--fim-qwen-14b-spec",
    "--fim-qwen-30b-default", "--gpt-oss-20b-default", "--gpt-oss-120b-default",
    "--vision-gemma-4b-default", "--vision-gemma-12b-default", "--spec-default",
})

#: Why the flags that touch the world are refused (a flag missing here and from
#: :data:`ALLOWED` gets :data:`NOT_ALLOWED`).
REFUSED: dict[str, str] = {
    **dict.fromkeys((
        "--log-file", "--lora", "--lora-scaled", "--control-vector", "--control-vector-scaled",
        "--grammar-file", "-jf", "--json-schema-file", "-lcs", "--lookup-cache-static", "-lcd",
        "--lookup-cache-dynamic", "--ui-config-file", "--webui-config-file",
        "--chat-template-file", "--slot-save-path", "--media-path", "--models-dir",
        "--models-preset", "--log-prompts-dir", "--spec-draft-model", "-md", "--model-draft",
    ), NAMES_FILE),
    **dict.fromkeys((
        "--tools", "--tools-runtime", "--mcp-servers-config", "--mcp-servers-json", "-ag",
        "--agent", "-no-ag", "--no-agent", "--ui-mcp-proxy", "--webui-mcp-proxy",
        "--no-ui-mcp-proxy", "--no-webui-mcp-proxy", "--video-ffmpeg-dir",
    ), RUNS_PROGRAM),
    **dict.fromkeys((
        "--rpc", "-dr", "--docker-repo", "-hff", "--hf-file", "-mmu", "--mmproj-url",
        "--spec-draft-hf", "-hfd", "-hfrd", "--hf-repo-draft", "--cors-origins",
        "--cors-methods", "--cors-headers", "--cors-credentials", "--no-cors-credentials",
    ), NAMES_ADDRESS),
    **dict.fromkeys(("-hft", "--hf-token"), NAMES_SECRET),
}

#: Spelling -> (rule, True for a positive spelling, False for a ``--no-…`` one).
_BY_NAME: dict[str, tuple[FlagRule, bool]] = {
    **{n: (rule, True) for rule in ALLOWED for n in rule.names},
    **{n: (rule, False) for rule in ALLOWED for n in rule.negations},
}


def _refuse(message: str) -> InvalidRequestError:
    return InvalidRequestError(message, param=PARAM)


def _normal(name: str) -> str:
    """llama-server reads ``_`` as ``-`` in a long flag (``--ctx_size`` is ``--ctx-size``)."""
    return name.replace("_", "-") if name.startswith("--") else name


def refusal_reason(name: str) -> str | None:
    """Why the flag spelled ``name`` may not be given (None: it is allowed)."""
    name = _normal(name)
    if name in ROUTER_SET:
        return SET_BY_ROUTER
    if name in _BY_NAME:
        return None
    return REFUSED.get(name, NOT_ALLOWED)


def split_args(value: object) -> list[str]:
    """``llamacpp_args`` as shell words; a 400 for a non-string, an over-long or an unparsable
    one."""
    if not isinstance(value, str) or len(value) > MAX_ARGS_LENGTH:
        raise _refuse(f"Parameter '{PARAM}' must be a string of llama-server flags "
                      f"(at most {MAX_ARGS_LENGTH} characters)")
    try:
        return shlex.split(value)
    except ValueError as exc:
        raise _refuse(f"Parameter '{PARAM}' cannot be parsed: {exc}") from exc


def check_llamacpp_args(value: object, policy: ArgsPolicy = STRICT) -> list[str]:
    """Check ``llamacpp_args`` against the allowlist; return the words for the command line.

    ``--flag=value`` comes back as two words. Raises InvalidRequestError (``param:
    "llamacpp_args"``) naming the first flag refused and why.
    """
    words = split_args(value)
    out: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        typed, has_inline, inline = word.partition("=") if word.startswith("-") else (
            word, "", "")
        name = _normal(typed)
        reason = refusal_reason(name) if word.startswith("-") else NOT_ALLOWED
        if reason == SET_BY_ROUTER:
            raise _refuse(f"Flag '{typed}' is set by the router and cannot be given in {PARAM}")
        if reason is not None:
            if policy.allow_any:  # the owner's escape hatch: pass the word as it is
                out.append(word)
                i += 1
                continue
            if not word.startswith("-"):
                raise _refuse(f"'{word}' in {PARAM} is not a flag (flags start with '-')")
            raise _refuse(f"Flag '{typed}' {reason}; {PARAM} takes only the flags listed in "
                          "the documentation")
        rule, positive = _BY_NAME[name]
        if rule.value is None or not positive:
            if has_inline:
                raise _refuse(f"Flag '{typed}' takes no value")
            out.append(name)
            i += 1
            continue
        if has_inline:
            raw, i = inline, i + 1
        elif i + 1 < len(words):
            raw, i = words[i + 1], i + 2
        else:
            raise _refuse(f"Flag '{typed}' expects a value")
        try:
            rule.value.check(raw)
        except ValueError as exc:
            raise _refuse(f"Flag '{typed}' {exc} (got '{raw[:40]}')") from None
        out += [name, raw]
    return out
