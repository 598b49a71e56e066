"""The ``llamacpp_args`` allowlist, checked against every flag llama-server has.

``tests/data/llama_server_help.txt`` is llama-server's ``--help`` flag list for the llama.cpp
that the native engine is built from (its header says which and how it was made). Every
spelling in it is tried: a flag outside the allowlist is a 400 that names it, and never reaches
the command line the engine builds.
"""

from __future__ import annotations

import random
import shlex
from types import SimpleNamespace

import pytest

from lemonade_jupyter.core.catalog import ModelSpec
from lemonade_jupyter.core.engine_flags import (
    ALLOWED,
    NAMES_ADDRESS,
    NAMES_FILE,
    NAMES_SECRET,
    NOT_ALLOWED,
    REFUSED,
    ROUTER_SET,
    RUNS_PROGRAM,
    SET_BY_ROUTER,
    STRICT,
    ArgsPolicy,
    Choice,
    Float,
    Int,
    JsonObject,
    args_policy,
    check_llamacpp_args,
    refusal_reason,
)
from lemonade_jupyter.core.engines.llamacpp import LlamaCppEngine
from lemonade_jupyter.core.options import LoadOptions, parse_load_options
from lemonade_jupyter.core.preferences import ModelPreferences
from lemonade_jupyter.errors import InvalidRequestError
from tests.helpers import REPO
from tests.helpers.llama_help import HELP, help_entries, outside_the_allowlist

ENTRIES = help_entries()
SPELLINGS = sorted({s for e in ENTRIES for s in e.spellings})
ALLOWED_SPELLINGS = {n for rule in ALLOWED for n in rule.names + rule.negations}
ALLOWED_ORDERED = sorted(ALLOWED_SPELLINGS)
OUTSIDE = outside_the_allowlist()
ENGINE = LlamaCppEngine("/bin/llama-server", threads=1)
MODEL = ModelSpec(name="user.a", checkpoint="/m.gguf")


def router_words() -> list[str]:
    """The command line the engine builds with no ``llamacpp_args``."""
    return ENGINE.argv(MODEL, LoadOptions(), port=1)


def user_words(args: str, policy: ArgsPolicy = STRICT) -> list[str]:
    """What ``args`` adds to the engine's command line."""
    engine = LlamaCppEngine("/bin/llama-server", threads=1, args_policy=policy)
    argv = engine.argv(MODEL, LoadOptions(llamacpp_args=args), port=1)
    base = router_words()
    assert argv[:len(base)] == base
    return argv[len(base):]


def a_valid_value(rule: Int | Float | Choice | JsonObject) -> str:
    if isinstance(rule, Int):
        return str(rule.high)
    if isinstance(rule, Float):
        return f"{rule.high:g}"
    if isinstance(rule, Choice):
        return rule.options[-1]
    return '{"enable_thinking": false}'


def test_the_help_list_is_llama_servers_whole_list():
    """The recorded list is complete enough to judge by: the flags of every kind are there."""
    assert len(SPELLINGS) > 300
    for flag in ("--mcp-servers-config", "--chat-template-file", "--log-file", "--mmproj",
                 "--slot-save-path", "--log-prompts-dir", "--tools", "--temp", "-fa"):
        assert flag in SPELLINGS, flag
    assert "llama-cpp-python 0.3.36" in HELP.read_text(encoding="utf-8").splitlines()[0]


def test_the_allowlist_names_only_flags_llama_server_has():
    unknown = sorted(ALLOWED_SPELLINGS - set(SPELLINGS))
    assert not unknown, f"not llama-server flags: {unknown}"
    named = sorted((set(ROUTER_SET) | set(REFUSED)) - set(SPELLINGS))
    assert not named, f"refusal reasons for flags llama-server does not have: {named}"
    assert not ALLOWED_SPELLINGS & (set(ROUTER_SET) | set(REFUSED))


def test_the_allowlist_takes_a_value_exactly_where_llama_server_does():
    by_spelling = {s: e for e in ENTRIES for s in e.spellings}
    for rule in ALLOWED:
        for name in rule.names:
            assert by_spelling[name].takes_value == (rule.value is not None), name
            assert set(rule.names + rule.negations) == set(by_spelling[name].spellings), name


@pytest.mark.parametrize("flag", OUTSIDE)
def test_every_flag_outside_the_allowlist_is_refused_by_name(flag):
    for args in (f"{flag}", f"{flag} 1", f"{flag}=1", f"--temp 0.5 {flag} /tmp/x"):
        with pytest.raises(InvalidRequestError) as info:
            parse_load_options({"llamacpp_args": args})
        assert info.value.param == "llamacpp_args" and info.value.status_code == 400
        assert f"'{flag}'" in info.value.message, info.value.message
        assert refusal_reason(flag) in info.value.message
        with pytest.raises(InvalidRequestError):
            user_words(args)


@pytest.mark.parametrize("rule", ALLOWED, ids=lambda r: r.names[0])
def test_every_allowed_flag_reaches_the_command_line_in_each_spelling(rule):
    for name in rule.names:
        if rule.value is None:
            assert user_words(name) == [name]
            continue
        value = a_valid_value(rule.value)
        assert user_words(f"{name} {shlex.quote(value)}") == [name, value]
        # llama-server does not take --flag=value: the engine gets two words.
        assert user_words(shlex.quote(f"{name}={value}")) == [name, value]
    for name in rule.negations:
        assert user_words(name) == [name]


def test_no_flag_outside_the_allowlist_reaches_the_command_line_fuzzed():
    """Random mixes of every spelling, values and junk: the engine's words either fail the
    check or hold nothing outside the allowlist."""
    rng = random.Random(20261206)
    values = ["1", "-1", "0.5", "on", "/etc/passwd", "http://127.0.0.1:1", "{}", "x=y",
              "--port", "q8_0", "chatml"]
    outside = set(OUTSIDE)
    passed = 0
    for _ in range(3000):
        words = []
        for _ in range(rng.randint(1, 6)):
            spelling = rng.choice(SPELLINGS if rng.random() < 0.4 else ALLOWED_ORDERED)
            if rng.random() < 0.3:
                spelling = spelling.replace("-", "_").replace("__", "--", 1)
            words.append(spelling if rng.random() < 0.5 else
                         f"{spelling}={rng.choice(values)}" if rng.random() < 0.5 else
                         f"{spelling} {rng.choice(values)}")
        try:
            added = user_words(" ".join(words))
        except InvalidRequestError as exc:
            assert exc.param == "llamacpp_args"
            continue
        passed += 1
        assert not outside & set(added), added
    assert passed > 50  # the fuzz reached the engine often enough to mean something


@pytest.mark.parametrize("args, reason", [
    ("--mcp-servers-config /tmp/mcp.json", RUNS_PROGRAM),
    ("--mcp-servers-json {}", RUNS_PROGRAM),
    ("--tools all", RUNS_PROGRAM),
    ("--agent", RUNS_PROGRAM),
    ("--chat-template-file /root/.local/share/jupyter/runtime/jpserver-1.json", NAMES_FILE),
    ("--log-file /root/.bashrc", NAMES_FILE),
    ("--slot-save-path /tmp/slots", NAMES_FILE),
    ("--log-prompts-dir /tmp/prompts", NAMES_FILE),
    ("--lora /tmp/x.gguf", NAMES_FILE),
    ("--grammar-file /etc/passwd", NAMES_FILE),
    ("--rpc 127.0.0.1:50052", NAMES_ADDRESS),
    ("-hff model.gguf", NAMES_ADDRESS),
    ("--hf-token secret", NAMES_SECRET),
    ("--mmproj /etc/passwd", SET_BY_ROUTER),
    ("--port 1", SET_BY_ROUTER),
    ("--ctx_size 99", SET_BY_ROUTER),  # llama-server reads _ as -
    ("--fim-qwen-7b-default", SET_BY_ROUTER),  # a preset: downloads a model, takes a port
    ("--alias other", NOT_ALLOWED),
])
def test_dangerous_flags_say_why(args, reason):
    with pytest.raises(InvalidRequestError) as info:
        check_llamacpp_args(args)
    assert reason in info.value.message and args.split()[0] in info.value.message


@pytest.mark.parametrize("args, message", [
    ("--temp nan", "--temp' takes a number from 0 to 100"),
    ("--temp inf", "takes a number"),
    ("--temp 1e400", "takes a number"),
    ("--top-p 1.5", "takes a number from 0 to 1"),
    ("--threads 0", "takes an integer from 1 to 1024"),
    ("--threads 2x", "takes an integer"),
    ("--prio 3", "takes an integer from -1 to 2"),
    ("-fa maybe", "takes one of on, off, auto"),
    ("--chat-template {{ messages }}", "takes one of chatml"),
    ("--chat-template-kwargs [1]", "takes a JSON object"),
    ("--warmup=yes", "'--warmup' takes no value"),
    ("--no-warmup=1", "takes no value"),
    ("--temp", "'--temp' expects a value"),
    ("0.5", "'0.5' in llamacpp_args is not a flag"),
])
def test_values_are_checked(args, message):
    with pytest.raises(InvalidRequestError) as info:
        check_llamacpp_args(args)
    assert message in info.value.message and info.value.param == "llamacpp_args"


def test_llama_servers_spellings_are_accepted():
    assert check_llamacpp_args("--top_k 40 --no_warmup -s -1 --temperature=0.2") == [
        "--top-k", "40", "--no-warmup", "-s", "-1", "--temperature", "0.2"]
    assert check_llamacpp_args("--chat-template chatml --chat-template-kwargs "
                               "'{\"enable_thinking\": false}'")[1] == "chatml"


def test_any_flag_policy_lets_others_through_but_never_the_routers():
    anything = ArgsPolicy(allow_any=True)
    assert user_words("--log-file /tmp/x --temp=0.5 --alias a", anything) == [
        "--log-file", "/tmp/x", "--temp", "0.5", "--alias", "a"]
    for flag in sorted(ROUTER_SET):
        with pytest.raises(InvalidRequestError, match="set by the router"):
            check_llamacpp_args(f"--alias a {flag} 1", anything)
    with pytest.raises(InvalidRequestError, match="set by the router"):
        check_llamacpp_args("--port_x 1 --host=0.0.0.0", anything)
    # Strict is the default everywhere a caller does not say otherwise.
    with pytest.raises(InvalidRequestError):
        parse_load_options({"llamacpp_args": "--log-file /tmp/x"})
    assert parse_load_options({"llamacpp_args": "--log-file /tmp/x"},
                              args_policy=anything)[0].llamacpp_args == "--log-file /tmp/x"


def test_the_policy_follows_the_setting():
    assert args_policy(SimpleNamespace(allow_any_llamacpp_args=False)) == STRICT
    assert args_policy(SimpleNamespace(allow_any_llamacpp_args=True)).allow_any is True


def test_saved_options_are_restored_under_the_servers_policy():
    saved = {"user.a": {"pinned": True, "options": {"llamacpp_args": "--log-file /tmp/x"}}}
    strict = ModelPreferences()
    strict.load_json(saved, {"user.a"})
    assert strict.options("user.a").llamacpp_args == "" and strict.pinned("user.a")
    lifted = ModelPreferences()
    lifted.load_json(saved, {"user.a"}, ArgsPolicy(allow_any=True))
    assert lifted.options("user.a").llamacpp_args == "--log-file /tmp/x"


def doc_row(rule) -> str:
    """The row of docs/api.md's allowlist table for ``rule``."""
    main = next((n for n in rule.names if n.startswith("--")), rule.names[0])
    others = ", ".join(f"`{n}`" for n in rule.names if n != main)
    if rule.negations:
        off = "off: " + ", ".join(f"`{n}`" for n in rule.negations)
        others = f"{others}; {off}" if others else off
    value = rule.value.describe() if rule.value else "none (a switch)"
    return f"| `{main}` | {others} | {value} |"


def test_the_documented_table_is_the_allowlist():
    doc = (REPO / "docs" / "api.md").read_text(encoding="utf-8")
    section = doc[doc.index("### `llamacpp_args`: the flags a load may set"):]
    start = section.index("| Flag | Other spellings | Value |")
    rows = section[start:].split("\n\n")[0].splitlines()[2:]
    assert rows == [doc_row(rule) for rule in ALLOWED]
    for flag in sorted(ROUTER_SET - {"--fim-qwen-1.5b-default", "--fim-qwen-3b-default",
                                     "--fim-qwen-7b-spec", "--fim-qwen-14b-spec",
                                     "--fim-qwen-30b-default", "--gpt-oss-20b-default",
                                     "--gpt-oss-120b-default", "--vision-gemma-4b-default",
                                     "--vision-gemma-12b-default", "--spec-default",
                                     "--embd-gemma-default"}):
        assert f"`{flag}`" in section, flag


def test_the_router_puts_its_file_and_address_flags_first():
    vision = ModelSpec(name="user.v", checkpoint="/v.gguf", mmproj="/v-mmproj.gguf")
    argv = ENGINE.argv(vision, LoadOptions(llamacpp_args="--temp 0.5"), port=7)
    assert argv[1:9] == ["--model", "/v.gguf", "--mmproj", "/v-mmproj.gguf", "--port", "7",
                         "--host", "127.0.0.1"]
    assert argv[-2:] == ["--temp", "0.5"]
