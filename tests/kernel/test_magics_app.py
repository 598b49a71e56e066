"""``%lemonade`` in a real IPython shell against the real app on memory backends (no process).

Covers parsing, UsageError cases, the one-line server errors, the pinned-slots warning, JSON
config values, pull's path checks, chat streaming and both renderings. The answers are the real
router's (its rules, its errors); the backends are in memory, which is enough here because
the magics see only HTTP answers. The same magics run against ``llama-server`` in
test_magics_embedded.py and test_magics_server.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from lemonade_jupyter.errors import ClientError
from lemonade_jupyter.kernel.magics import LemonadeMagics, LemonadeServerError
from lemonade_jupyter.kernel.widgets import Dashboard

from tests.fakes.fake_openai_upstream import FakeUpstream
from tests.helpers.memory_app import MemoryApp

from .conftest import DEFAULT, EMBEDDER, tiny_gguf, use_client


def test_magics_help_is_the_docstring(ip: InteractiveShell, app_magics: LemonadeMagics) -> None:
    doc = ip.find_line_magic("lemonade").__doc__
    assert "Usage::" in doc and "Example::" in doc and "%%lemonade chat" in doc
    with capture_output() as out:
        ip.run_cell("%lemonade?")
    assert "Usage::" in out.stdout and "%lemonade load MODEL [--pinned]" in out.stdout
    with capture_output() as out:
        ip.run_line_magic("lemonade", "")
    assert "Usage::" in out.stdout
    with capture_output() as out:
        ip.run_line_magic("lemonade", "load --help")
    assert "--ctx-size" in out.stdout


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("frob", "unknown command 'frob'"),
        ("load", "the following arguments are required: model"),
        ("load m --ctx-size x", "invalid ctx_size value"),
        ("load m --ctx-size 0", "--ctx-size must be a positive"),
        ("config max_loaded_models", "expected key=value"),
        ("pull n /no/such/file.gguf", "no such file"),
        ("chat " + DEFAULT, "no prompt"),
        ("unload a b", "unrecognized arguments"),
        ("load 'unbalanced", "cannot parse the line"),
        ("dashboard --interval 0", "--interval must be > 0"),
    ],
)
def test_magics_usage_errors(
    ip: InteractiveShell, app_magics: LemonadeMagics, line: str, message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        ip.run_line_magic("lemonade", line)


def test_magics_usage_error_prints_one_line(
    ip: InteractiveShell, app_magics: LemonadeMagics
) -> None:
    with capture_output() as out:
        result = ip.run_cell("%lemonade frob")
    assert isinstance(result.error_in_exec, UsageError)
    assert (
        out.stderr.startswith("UsageError: unknown command 'frob'")
        and "Traceback" not in out.stderr
    )


def test_magics_cell_magic_is_chat_only(ip: InteractiveShell, app_magics: LemonadeMagics) -> None:
    with pytest.raises(UsageError, match="cell magic for chat only"):
        ip.run_cell_magic("lemonade", "status", "x")
    with pytest.raises(UsageError, match="not both"):
        ip.run_cell_magic("lemonade", f"chat {DEFAULT} hello", "world")


def test_magics_server_error_is_one_line_no_traceback(
    ip: InteractiveShell, app_magics: LemonadeMagics
) -> None:
    with capture_output() as out:
        result = ip.run_cell("%lemonade unpin nothere")
    assert isinstance(result.error_in_exec, LemonadeServerError)
    assert isinstance(result.error_in_exec, ClientError)  # catchable as the package's error
    assert out.stdout == "lemonade: Model 'nothere' is not in the catalog (HTTP 404, model_not_found)\n"
    assert "Traceback" not in out.stdout + out.stderr


def test_magics_load_pin_unpin_unload(
    ip: InteractiveShell, app: MemoryApp, app_magics: LemonadeMagics
) -> None:
    with capture_output() as out:
        result = ip.run_line_magic(
            "lemonade", f"load {DEFAULT} --pinned --ctx-size 2048 --no-auto-evict "
            "--parallel 2 --max-queue 0"
        )
    assert repr(result).startswith(f"Loaded {DEFAULT} (pinned) in ")
    assert out.stdout.startswith(f"Loading {DEFAULT} ") and "done" in out.stdout  # text progress
    assert out.stderr == ""
    assert app.requests[-1][2] == {
        "model_name": DEFAULT,
        "pinned": True,
        "ctx_size": 2048,
        "auto_evict": False,
        "parallel": 2,
        "max_queue": 0,
    }
    assert repr(ip.run_line_magic("lemonade", f"unpin {DEFAULT}")) == f"Unpinned {DEFAULT}"
    assert app.loaded()[DEFAULT]["pinned"] is False
    assert repr(ip.run_line_magic("lemonade", f"pin {DEFAULT}")) == f"Pinned {DEFAULT}"
    assert app.loaded()[DEFAULT]["pinned"] is True
    assert repr(ip.run_line_magic("lemonade", f"unload {DEFAULT}")) == f"Unloaded {DEFAULT}"
    assert app.loaded() == {}
    ip.run_line_magic("lemonade", f"load {DEFAULT}")
    assert repr(ip.run_line_magic("lemonade", "unload")) == "Unloaded every model"
    assert app.requests[-1] == ("POST", "api/v1/unload", {})


def test_magics_load_warns_before_trying_when_all_slots_pinned(
    ip: InteractiveShell, app: MemoryApp, app_magics: LemonadeMagics, tmp_path: Path
) -> None:
    app.client().pull("user.copy", str(tiny_gguf(tmp_path / "copy.gguf")))
    with capture_output():
        ip.run_line_magic("lemonade", f"load {DEFAULT} --pinned")
    with capture_output() as out:
        result = ip.run_cell("%lemonade load user.copy")
    assert isinstance(result.error_in_exec, LemonadeServerError)
    assert result.error_in_exec.status_code == 409
    assert out.stderr.startswith("Warning: every llm slot (1/1) is pinned")
    assert "user.copy" in out.stderr
    assert "All loaded models of type llm are pinned" in out.stdout
    # the warnings came before the load was tried
    assert [p for _, p, _ in app.requests[-4:]] == [
        "api/v1/health",
        "api/v1/models",
        "internal/config",
        "api/v1/load",
    ]
    # no warning for a model that is itself loaded (a repeat load needs no slot)
    with capture_output() as out:
        ip.run_line_magic("lemonade", f"load {DEFAULT}")
    assert out.stderr == ""
    # and none for another pool
    with capture_output() as out:
        ip.run_line_magic("lemonade", f"load {EMBEDDER}")
    assert out.stderr == ""


def test_magics_load_display_progress(ip: InteractiveShell, app: MemoryApp) -> None:
    use_client(ip, app.client(), progress="display")
    with capture_output() as out:
        ip.run_line_magic("lemonade", f"load {DEFAULT}")
    html = [o.data.get("text/html", "") for o in out.outputs]
    assert any("lemonade-progress" in h for h in html)
    assert "✓ Loading" in html[-1]


def test_magics_config_show_and_set_json_values(
    ip: InteractiveShell, app: MemoryApp, app_magics: LemonadeMagics
) -> None:
    shown = ip.run_line_magic("lemonade", "config")
    assert "max_loaded_models" in repr(shown) and "<table" in shown._repr_html_()
    changed = ip.run_line_magic("lemonade", "config max_loaded_models=2 auto_evict=true")
    assert app.requests[-1][2] == {"max_loaded_models": 2, "auto_evict": True}
    assert "changed" in repr(changed) and changed.data["max_loaded_models"] == 2
    with pytest.raises(LemonadeServerError, match="Unknown config key 'flavour'"):
        ip.run_line_magic("lemonade", "config flavour=lemon")
    assert app.requests[-1][2] == {"flavour": "lemon"}  # not JSON: sent as a string


def test_magics_pull_and_delete(
    ip: InteractiveShell, app: MemoryApp, app_magics: LemonadeMagics, tmp_path: Path
) -> None:
    gguf = tiny_gguf(tmp_path / "m.gguf")
    msg = ip.run_line_magic("lemonade", f"pull emb {gguf} --labels embeddings,custom")
    assert repr(msg) == f"Registered user.emb (embedding) from {gguf}"
    assert app.requests[-1][2] == {
        "model_name": "user.emb",
        "checkpoint": str(gguf),  # no recipe: the server's default for the file
        "labels": ["embeddings", "custom"],
    }
    ip.run_line_magic("lemonade", f"pull user.emb2 {gguf}")
    assert app.requests[-1][2]["model_name"] == "user.emb2"
    assert repr(ip.run_line_magic("lemonade", "delete user.emb")) == "Deleted user.emb"
    assert "user.emb" not in {m["id"] for m in app.client().models()}


def test_magics_chat_line_and_cell(
    ip: InteractiveShell, app: MemoryApp, app_magics: LemonadeMagics
) -> None:
    with capture_output() as out:
        assert ip.run_line_magic("lemonade", f"chat {DEFAULT} What's up, doc?") is None
    assert out.stdout == "Hello there\n"
    assert app.requests[-1][2]["messages"] == [{"role": "user", "content": "What's up, doc?"}]
    with capture_output() as out:
        ip.run_cell_magic(
            "lemonade",
            f"chat -o reply --system 'Be brief.' --max-tokens 8 {DEFAULT}",
            "Tell me\na story\n",
        )
    assert out.stdout == "Hello there\n" and ip.user_ns["reply"] == "Hello there"
    body = app.requests[-1][2]
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Tell me\na story"},
    ]
    assert body["max_tokens"] == 8 and body["stream"] is True
    with capture_output() as out:
        result = ip.run_cell('%lemonade chat nosuch "hi"')
    assert out.stdout == ("lemonade: Model 'nosuch' is not in the catalog. See GET "
                          "lemonade/api/v1/models. (HTTP 404, model_not_found)\n")
    assert isinstance(result.error_in_exec, LemonadeServerError)


def test_magics_status_and_models_render_html_and_text(
    ip: InteractiveShell, app: MemoryApp, app_magics: LemonadeMagics
) -> None:
    with capture_output():
        ip.run_line_magic("lemonade", f"load {DEFAULT} --pinned")
    status = ip.run_line_magic("lemonade", "status")
    text = repr(status)
    assert text.startswith("Router: memory app")
    assert DEFAULT in text and "1/1" in text and "ready" in text
    html = status._repr_html_()
    assert "<table" in html and "Router: memory app" in html and "lemonade-slots" in html
    models = ip.run_line_magic("lemonade", "models")
    assert EMBEDDER in repr(models) and "embedding" in repr(models)
    assert "lemonade-models" in models._repr_html_()
    # IPython's pretty printer (terminal Out[]) uses the text form
    from IPython.lib.pretty import pretty

    assert pretty(status) == text


def test_magics_dashboard_returns_widget(ip: InteractiveShell, app_magics: LemonadeMagics) -> None:
    dash = ip.run_line_magic("lemonade", "dashboard --interval 0.05")
    try:
        assert isinstance(dash, Dashboard) and dash.interval == 0.05 and dash.polling
    finally:
        dash.close()
    assert not dash.polling


def test_magics_configurable_traits() -> None:
    from traitlets.config import Config

    config = Config()
    config.LemonadeMagics.server_url = "http://cfg.test/"
    config.LemonadeMagics.token = "abc"
    config.LemonadeMagics.mode = "server"
    shell = InteractiveShell.instance()
    old = shell.config
    try:
        shell.config = config
        magics = LemonadeMagics(shell)
        assert (magics.server_url, magics.token, magics.mode) == (
            "http://cfg.test/",
            "abc",
            "server",
        )
        assert magics.client.kind == "config" and magics.client.token == "abc"
    finally:
        shell.config = old


def test_magics_alias_add_list_remove_and_logs(
    ip: InteractiveShell, app: MemoryApp, app_magics: LemonadeMagics
) -> None:
    msg = ip.run_line_magic("lemonade", f"alias {DEFAULT} smol")
    assert repr(msg) == f"smol is now an alias of {DEFAULT}"
    assert app.requests[-1] == ("POST", "api/v1/alias", {"model_name": DEFAULT, "alias": "smol"})
    assert repr(ip.run_line_magic("lemonade", "alias")) == f"smol -> {DEFAULT}"
    with pytest.raises(LemonadeServerError, match="already an alias"):
        ip.run_line_magic("lemonade", f"alias {EMBEDDER} smol")
    with pytest.raises(UsageError):
        ip.run_line_magic("lemonade", "alias only-one")
    msg = ip.run_line_magic("lemonade", "alias --remove smol")
    assert repr(msg) == f"Removed alias smol (of {DEFAULT})" and app.client().aliases() == {}
    assert repr(ip.run_line_magic("lemonade", "alias")) == "No aliases"

    ip.run_line_magic("lemonade", f"load {DEFAULT}")
    app.write_log(DEFAULT, ["first", "second", "third"])
    msg = ip.run_line_magic("lemonade", f"logs {DEFAULT} -n 2")
    assert repr(msg) == "second\nthird"
    assert app.last_request.url.params["tail"] == "2"
    with pytest.raises(UsageError):
        ip.run_line_magic("lemonade", f"logs {DEFAULT} -n 0")


def test_magics_load_takes_ctx_size_minus_one(
    ip: InteractiveShell, app: MemoryApp, app_magics: LemonadeMagics, tmp_path: Path
) -> None:
    # A small weights file: -1 makes the server read the file's header for its trained context
    # (seconds for the default model's on a busy machine; this one has none: 2048 is used).
    app.client().pull("user.small", str(tiny_gguf(tmp_path / "small.gguf")))
    ip.run_line_magic("lemonade", "load user.small --ctx-size -1")
    assert app.calls("api/v1/load")[-1] == {"model_name": "user.small", "ctx_size": -1}
    assert app.loaded()["user.small"]["ctx_size"] == 2048
    with pytest.raises(UsageError, match="-1"):
        ip.run_line_magic("lemonade", "load user.small --ctx-size -2")


def test_magics_load_takes_ctx_size_auto(
    ip: InteractiveShell, app: MemoryApp, app_magics: LemonadeMagics, tmp_path: Path
) -> None:
    app.client().pull("user.small", str(tiny_gguf(tmp_path / "small.gguf")))
    ip.run_line_magic("lemonade", "load user.small --ctx-size auto")
    assert app.calls("api/v1/load")[-1] == {"model_name": "user.small", "ctx_size": "auto"}
    assert app.loaded()["user.small"]["ctx_size"] == 2048  # no trained context in its header
    with pytest.raises(UsageError, match="invalid ctx_size value"):
        ip.run_line_magic("lemonade", "load user.small --ctx-size automatic")


def test_magics_remote_registers_replicas_with_key_variables_never_keys(
    ip: InteractiveShell, app: MemoryApp, app_magics: LemonadeMagics,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two loopback upstreams stand for the remote servers (the app registers what they list)."""
    for env in ("LEMONADE_REMOTE_KEY_A", "LEMONADE_REMOTE_KEY_B"):
        monkeypatch.setenv(env, "secret")
    a, b = (app.run(FakeUpstream(key="secret", models=("a", "b")).start()) for _ in range(2))
    try:
        msg = ip.run_line_magic(
            "lemonade", f"remote vllm {a.base_url} {b.base_url} --model a "
            "--key-env LEMONADE_REMOTE_KEY_A,LEMONADE_REMOTE_KEY_B --labels llm,tools")
        assert app.requests[-1] == ("POST", "api/v1/pull", {
            "model_name": "user.vllm", "recipe": "remote", "base_urls": [a.base_url, b.base_url],
            "upstream_model": "a",
            "api_key_env": ["LEMONADE_REMOTE_KEY_A", "LEMONADE_REMOTE_KEY_B"],
            "labels": ["llm", "tools"]})
        assert repr(msg) == "Registered remote user.vllm (2 replicas)"
        msg = ip.run_line_magic(
            "lemonade", f"remote user.kserve {a.base_url} --key-env LEMONADE_REMOTE_KEY_A")
        assert app.requests[-1][2] == {"model_name": "user.kserve", "recipe": "remote",
                                        "base_urls": [a.base_url],
                                        "api_key_env": "LEMONADE_REMOTE_KEY_A"}
        assert repr(msg) == "Registered remote user.kserve/a, user.kserve/b (1 replica)"
        with pytest.raises(UsageError):
            ip.run_line_magic("lemonade", "remote user.nourl")
    finally:
        for upstream in (a, b):
            app.run(upstream.stop())
