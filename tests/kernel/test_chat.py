"""Chat from a notebook, against the real app on memory backends: the trailing ``?``, Markdown
replies, conversations that continue, and the OpenAI client helpers.

The backends answer with set pieces of text (``app.launcher.replies``): what is checked is what
the notebook side sends and does with the answer, through the real proxy.

Every magic here goes through ``InteractiveShell.run_cell``, so IPython's own input
transformers (the help-on-``?`` one among them) see the line as they would in a notebook.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

import lemonade_jupyter
from lemonade_jupyter.errors import ClientError
from lemonade_jupyter.kernel.chat import Chat, ChatReply, protect_chat_lines
from lemonade_jupyter.kernel.client import RouterClient
from lemonade_jupyter.kernel.magics import LemonadeMagics
from lemonade_jupyter.kernel.openai_support import openai_client

from tests.helpers.memory_app import MemoryApp

from .conftest import DEFAULT, use_client


def _chats(app: MemoryApp) -> list[dict[str, Any]]:
    return app.calls("api/v1/chat/completions")


def _user_turns(body: dict[str, Any]) -> list[str]:
    return [m["content"] for m in body["messages"] if m["role"] == "user"]


# -- the trailing "?" ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cell", "prompt"),
    [
        (f"%lemonade chat {DEFAULT} What is the capital of France?",
         "What is the capital of France?"),
        (f"%lemonade chat --max-tokens 8 {DEFAULT} Why?  Really why??", "Why?  Really why??"),
        ("M = 'SmolLM2-135M-Instruct-GGUF'\n%lemonade chat {M} Is {M} small?", "Is {M} small?"),
        (f"if True:\n    %lemonade chat {DEFAULT} Indented, is it sent?\n",
         "Indented, is it sent?"),
        (f"%%lemonade chat {DEFAULT}\nA cell prompt?\nStill the cell?",
         "A cell prompt?\nStill the cell?"),
    ],
)
def test_chat_prompt_ending_with_question_mark_is_sent(
    ip: InteractiveShell, app: MemoryApp, app_magics: LemonadeMagics, cell: str, prompt: str
) -> None:
    with capture_output() as out:
        result = ip.run_cell(cell)
    assert result.success, result.error_in_exec
    assert out.stdout == "Hello there\n"  # the reply, not IPython's help text
    sent = _user_turns(_chats(app)[-1])
    # {M} in the prompt is expanded by the magic as usual; the "?" stays in it
    assert sent == [prompt.replace("{M}", DEFAULT)]


def test_chat_question_mark_assign_form_and_help_still_work(
    ip: InteractiveShell, app: MemoryApp, app_magics: LemonadeMagics
) -> None:
    with capture_output() as out:
        assert ip.run_cell(f"x = %lemonade chat -o y {DEFAULT} Who are you?").success
    assert _user_turns(_chats(app)[-1]) == ["Who are you?"]
    assert ip.user_ns["y"] == "Hello there" and ip.user_ns["x"] is None
    # what is not a chat with a prompt is help: the magic's, or the command's
    for cell, shown in (
        ("%lemonade?", "Usage::"),
        ("%lemonade chat?", "--continue"),
        (f"%lemonade chat {DEFAULT}?", "--continue"),
        (f"%lemonade load {DEFAULT}?", "--ctx-size"),
    ):
        sent = len(app.requests)
        with capture_output() as out:
            assert ip.run_cell(cell).success
        assert shown in out.stdout, cell
        assert len(app.requests) == sent, cell


def test_chat_transformer_leaves_other_lines_alone() -> None:
    lines = ["a = 1\n", "b?\n", "%lemonade status\n", "%time x?\n"]
    assert protect_chat_lines(lines) == lines
    assert protect_chat_lines(["%%lemonade chat M\n", "%lemonade chat M x y?\n"]) == [
        "%%lemonade chat M\n",
        "%lemonade chat M x y?\n",
    ]
    assert protect_chat_lines(["  %lemonade chat M Why 'so'?\n"]) == [
        "  get_ipython().run_line_magic('lemonade', \"chat M Why 'so'?\")\n"
    ]


# -- rendering ----------------------------------------------------------------------------------
def test_chat_reply_is_markdown_in_a_notebook_and_text_in_a_terminal(
    ip: InteractiveShell, app: MemoryApp
) -> None:
    app.launcher.replies.pieces = ["# Paris\n", "It is **the** capital", "."]
    use_client(ip, app.client(), chat_format="markdown")
    with capture_output() as out:
        ip.run_cell(f"%lemonade chat {DEFAULT} Capital of France?")
    assert out.stdout == ""  # nothing printed as plain text
    final = out.outputs[-1].data
    assert final["text/markdown"] == "# Paris\nIt is **the** capital."
    assert final["text/plain"] == "# Paris\nIt is **the** capital."
    # in a terminal (no kernel: what "auto" picks here) the same reply is plain text
    use_client(ip, app.client())
    with capture_output() as out:
        ip.run_cell(f"%lemonade chat {DEFAULT} Capital of France?")
    assert out.stdout == "# Paris\nIt is **the** capital.\n" and not out.outputs
    assert ChatReply("x", streaming=True)._repr_markdown_() == "x▌"


# -- conversations ------------------------------------------------------------------------------
def test_chat_continue_sends_the_history(
    ip: InteractiveShell, app: MemoryApp, app_magics: LemonadeMagics
) -> None:
    with capture_output():
        ip.run_cell(f"%lemonade chat --system 'Be brief.' {DEFAULT} What is the capital of France?")
        ip.run_cell(f"%lemonade chat --continue {DEFAULT} And of Italy?")
        ip.run_cell_magic("lemonade", f"chat -c {DEFAULT}", "And of Spain?\n")
    last = _chats(app)[-1]["messages"]
    assert last == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Hello there"},
        {"role": "user", "content": "And of Italy?"},
        {"role": "assistant", "content": "Hello there"},
        {"role": "user", "content": "And of Spain?"},
    ]
    assert app_magics.chat_session is not None and app_magics.chat_session.turns == 3
    # without --continue a new conversation starts
    with capture_output():
        ip.run_cell(f"%lemonade chat {DEFAULT} Fresh start?")
    assert _chats(app)[-1]["messages"] == [{"role": "user", "content": "Fresh start?"}]


def test_chat_object_keeps_history_and_a_failed_turn_changes_nothing(app: MemoryApp) -> None:
    chat = Chat(DEFAULT, client=app.client(), system="You are terse.", max_tokens=16)
    assert chat.send("Hi?") == "Hello there"
    with capture_output() as out:
        assert chat("Again?") is None  # shown, not returned
    assert out.stdout == "Hello there\n"
    body = _chats(app)[-1]
    assert body["max_tokens"] == 16 and _user_turns(body) == ["Hi?", "Again?"]
    assert chat.turns == 2 and "2 turn" in repr(chat)
    chat.model = "nosuch"
    with pytest.raises(ClientError, match="not in the catalog"):
        chat.send("Lost?")
    assert chat.turns == 2
    chat.reset()
    assert chat.history == [] and chat.messages("x")[0]["role"] == "system"


# -- the OpenAI client --------------------------------------------------------------------------
def test_openai_client_uses_the_magics_router_and_token(
    ip: InteractiveShell, app: MemoryApp, app_magics: LemonadeMagics
) -> None:
    client = lemonade_jupyter.openai_client()
    assert str(client.base_url).rstrip("/") == f"{app.url}lemonade/api/v1"
    assert client.api_key == app.token
    aclient = lemonade_jupyter.async_openai_client()
    assert str(aclient.base_url).rstrip("/") == f"{app.url}lemonade/api/v1"
    same = ip.run_line_magic("lemonade", "openai")
    assert type(same).__name__ == "OpenAI" and same.api_key == app.token
    assert type(ip.run_line_magic("lemonade", "openai --async")).__name__ == "AsyncOpenAI"


def test_openai_client_reaches_a_unix_socket_server_through_it() -> None:
    router = RouterClient("http://localhost/base/", "t", uds="/tmp/jupyter.sock")
    client = openai_client(router)
    assert str(client.base_url).rstrip("/") == "http://localhost/base/lemonade/api/v1"
    pool = client._client._transport._pool  # the transport the helper built
    assert pool._uds == "/tmp/jupyter.sock"


def test_openai_client_names_the_install_when_openai_is_missing(
    ip: InteractiveShell, app_magics: LemonadeMagics, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "openai", None)  # import openai -> ImportError
    with pytest.raises(ImportError, match="pip install openai"):
        lemonade_jupyter.openai_client()
    with pytest.raises(UsageError, match="pip install openai"):
        ip.run_line_magic("lemonade", "openai")
