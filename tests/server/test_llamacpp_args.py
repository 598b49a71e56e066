"""``llamacpp_args`` through the API of a real Jupyter server, with a real llama-server.

A load may set only the flags of the allowlist (``core/engine_flags.py``): a flag that names a
file, runs a program, reaches an address or is the router's own is a 400 that names it and
changes nothing (no backend started or restarted, the options in ``/health`` as they were).
An allowed flag reaches the engine's command line. ``allow_any_llamacpp_args`` (config only)
lifts the allowlist but never the router's own flags; that it cannot be set at run time is
checked on ``shared_api`` (ONE in-process app for the module: a settings-table refusal).
"""

from __future__ import annotations

import random

import psutil
import pytest

from lemonade_jupyter.core.engine_flags import (
    NAMES_ADDRESS,
    NAMES_FILE,
    NAMES_SECRET,
    NOT_ALLOWED,
    RUNS_PROGRAM,
    SET_BY_ROUTER,
    refusal_reason,
)
from tests.helpers.http import API
from tests.helpers.llama_help import outside_the_allowlist
from tests.helpers.processes import backend_pids

ALLOWED_ARGS = "--temp 0.5 -fa off --top_k=40"


def command_line(entry: dict) -> list[str]:
    return psutil.Process(entry["pid"]).cmdline()


async def refused(api, model: str, args: str, flag: str) -> str:
    """POST a load with ``args``; assert the 400 names ``flag``; return the message."""
    answer = await api.post(f"{API}/load", {"model_name": model, "llamacpp_args": args})
    assert answer.code == 400, (args, answer.body)
    error = answer.error
    assert error["type"] == "invalid_request_error" and error["param"] == "llamacpp_args"
    assert f"'{flag}'" in error["message"], (args, error["message"])
    return error["message"]


async def test_allowed_flags_load_and_reach_the_engine(api, default_model_name):
    await api.load(default_model_name, llamacpp_args=ALLOWED_ARGS)
    entry = (await api.loaded())[default_model_name]
    assert entry["recipe_options"]["llamacpp_args"] == ALLOWED_ARGS
    argv = command_line(entry)
    tail = argv[argv.index("--temp"):]
    # --top_k=40 as llama-server takes it: two words, - for _.
    assert tail[:6] == ["--temp", "0.5", "-fa", "off", "--top-k", "40"], argv


async def test_dangerous_flags_are_refused_and_change_nothing(
    api, default_model_name, default_model_file, jp_serverapp, tmp_path
):
    await api.load(default_model_name, llamacpp_args=ALLOWED_ARGS)
    before = await api.loaded()
    pids = backend_pids()
    home_file = tmp_path / "home" / ".bashrc"
    home_file.parent.mkdir(exist_ok=True)  # the server's HOME (jp_environ)
    home_file.write_text("untouched\n")
    dump = tmp_path / "dump"
    dump.mkdir()
    runtime_file = jp_serverapp.info_file  # holds the server's token
    cases = [
        (f"--mcp-servers-config {tmp_path / 'mcp.json'}", "--mcp-servers-config", RUNS_PROGRAM),
        ('--mcp-servers-json \'{"mcpServers": {}}\'', "--mcp-servers-json", RUNS_PROGRAM),
        ("--tools exec_shell_command", "--tools", RUNS_PROGRAM),
        ("--agent", "--agent", RUNS_PROGRAM),
        (f"--video-ffmpeg-dir {tmp_path}", "--video-ffmpeg-dir", RUNS_PROGRAM),
        (f"--chat-template-file {runtime_file}", "--chat-template-file", NAMES_FILE),
        (f"--jinja --chat_template_file {runtime_file}", "--chat_template_file", NAMES_FILE),
        (f"--log-file {home_file}", "--log-file", NAMES_FILE),
        (f"--slot-save-path {dump}", "--slot-save-path", NAMES_FILE),
        (f"--log-prompts-dir {dump}", "--log-prompts-dir", NAMES_FILE),
        (f"--media-path {dump}", "--media-path", NAMES_FILE),
        (f"--lora {default_model_file}", "--lora", NAMES_FILE),
        (f"--grammar-file {runtime_file}", "--grammar-file", NAMES_FILE),
        (f"-jf {runtime_file}", "-jf", NAMES_FILE),
        (f"--webui-config-file {runtime_file}", "--webui-config-file", NAMES_FILE),
        (f"--mmproj {default_model_file}", "--mmproj", SET_BY_ROUTER),
        (f"-mm={runtime_file}", "-mm", SET_BY_ROUTER),
        (f"--model {default_model_file}", "--model", SET_BY_ROUTER),
        (f"--api-key-file {runtime_file}", "--api-key-file", SET_BY_ROUTER),
        ("--host 0.0.0.0", "--host", SET_BY_ROUTER),
        ("--rpc 127.0.0.1:50052", "--rpc", NAMES_ADDRESS),
        ("-hf ggml-org/x", "-hf", SET_BY_ROUTER),
        ("-hff x.gguf", "-hff", NAMES_ADDRESS),
        ("--hf-token t", "--hf-token", NAMES_SECRET),
        ("--chat-template '{{ raise_exception() }}'", "--chat-template", "takes one of"),
        ("--alias other", "--alias", NOT_ALLOWED),
    ]
    for args, flag, why in cases:
        message = await refused(api, default_model_name, args, flag)
        assert why in message, message
    assert await api.loaded() == before  # same pid, same options
    assert backend_pids() == pids
    assert home_file.read_text() == "untouched\n" and not any(dump.iterdir())


async def test_a_sample_of_every_flag_outside_the_allowlist_is_refused(api, default_model_name):
    sample = random.Random(7).sample(outside_the_allowlist(), 40)
    for flag in sample:
        message = await refused(api, default_model_name, f"--temp 0.5 {flag} 1", flag)
        assert refusal_reason(flag) in message
    assert (await api.health())["all_models_loaded"] == []
    assert backend_pids() == set()


def test_the_any_flag_setting_is_not_settable_at_run_time(shared_api):
    answer = shared_api.post("lemonade/internal/set", {"allow_any_llamacpp_args": True})
    assert answer.code == 400 and answer.error["param"] == "allow_any_llamacpp_args"


@pytest.mark.parametrize("lemonade_traits", [{"allow_any_llamacpp_args": True}], indirect=True)
async def test_the_any_flag_setting_passes_others_but_never_the_routers(
    api, default_model_name, default_model_file
):
    await api.load(default_model_name, llamacpp_args="--alias extra --temp=0.5")
    entry = (await api.loaded())[default_model_name]
    argv = command_line(entry)
    assert argv[-4:] == ["--alias", "extra", "--temp", "0.5"], argv
    before = await api.loaded()
    for args, flag in ((f"--mmproj {default_model_file}", "--mmproj"), ("--port 1", "--port"),
                       ("--ctx_size 64", "--ctx_size"), ("-ngl 0", "-ngl")):
        assert "set by the router" in await refused(api, default_model_name, args, flag)
    assert await api.loaded() == before
