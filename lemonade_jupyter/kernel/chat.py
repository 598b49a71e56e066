"""Chat from a notebook: a conversation object, a reply that renders, and the ``?`` guard.

:class:`Chat` keeps the history of one conversation with a model (what ``%lemonade chat
--continue`` continues, and what a script uses directly). A reply streams as it is generated:
in a notebook as Markdown, updated in place in one display; in a terminal as plain text on
stdout.

IPython reads a line that ends with ``?`` as a help request (``obj?``) before any magic runs,
so ``%lemonade chat MODEL What is the capital of France?`` would show help and send nothing.
:func:`protect_chat_lines` is an input transformer that runs before IPython's help transformer
and turns such a line into the call of the magic it is, with the line kept verbatim.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from .client import RouterClient

__all__ = [
    "Chat",
    "ChatReply",
    "show_reply",
    "display_mode",
    "protect_chat_lines",
    "register_input_transformer",
    "unregister_input_transformer",
]

#: Seconds between two updates of a streaming Markdown display (each is a message to the
#: front end; the last update always happens).
_UPDATE_EVERY_S = 0.08
_CURSOR = "▌"


class ChatReply:
    """A model's reply: Markdown in a notebook, the text itself everywhere else."""

    def __init__(self, text: str, *, streaming: bool = False) -> None:
        self.text = text
        self.streaming = streaming

    def _repr_markdown_(self) -> str:
        if self.streaming:
            return self.text + _CURSOR
        return self.text if self.text.strip() else "*(empty reply)*"

    def __repr__(self) -> str:
        return self.text

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.text)


def display_mode(shell: Any = None) -> str:
    """``markdown`` in a kernel that has a front end (a notebook), else ``text``."""
    if shell is None:
        shell = _current_shell()
    return "markdown" if getattr(shell, "kernel", None) is not None else "text"


def _current_shell() -> Any:
    if "IPython" not in sys.modules:
        return None
    from IPython import get_ipython

    return get_ipython()


def show_reply(pieces: Iterable[str], mode: str = "auto", sink: list[str] | None = None) -> str:
    """Consume a stream of text pieces, showing them as they come; return the whole text.

    ``mode``: ``markdown`` (one display updated in place), ``text`` (stdout), ``none`` (quiet),
    or ``auto`` (:func:`display_mode`). ``sink`` collects the pieces as they arrive, so a caller
    keeps what came before an error.
    """
    if mode == "auto":
        mode = display_mode()
    got: list[str] = sink if sink is not None else []
    if mode == "markdown":
        from IPython.display import display

        handle = display(ChatReply("", streaming=True), display_id=True)
        last = 0.0
        try:
            for piece in pieces:
                got.append(piece)
                now = time.monotonic()
                if now - last >= _UPDATE_EVERY_S:
                    handle.update(ChatReply("".join(got), streaming=True))
                    last = now
        finally:
            handle.update(ChatReply("".join(got)))
    elif mode == "text":
        try:
            for piece in pieces:
                got.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
        finally:
            if got:
                sys.stdout.write("\n")
                sys.stdout.flush()
    else:
        for piece in pieces:
            got.append(piece)
    return "".join(got)


class Chat:
    """One conversation with a model, its history kept between turns.

    ``chat = Chat("SmolLM2-135M-Instruct-GGUF")``; ``chat("Hello!")`` shows the reply as it
    streams (Markdown in a notebook); ``text = chat.send("And then?")`` returns it quietly. Each
    turn sends the system prompt, every earlier turn and the new prompt. A failed turn leaves
    the history as it was. ``client`` defaults to the router the ``%lemonade`` magics use (or
    the one discovery finds).
    """

    def __init__(
        self,
        model: str,
        *,
        system: str | None = None,
        client: RouterClient | None = None,
        **params: Any,
    ) -> None:
        self.model = model
        self.system = system
        self.params = dict(params)
        self.history: list[dict[str, str]] = []
        #: The text of the last reply, also while it streams (what came before an error).
        self.last_reply = ""
        self._client = client

    @property
    def client(self) -> RouterClient:
        if self._client is None:
            from .openai_support import router_client

            self._client = router_client()
        return self._client

    def messages(self, prompt: str) -> list[dict[str, str]]:
        """What the next turn sends for ``prompt``."""
        out = [{"role": "system", "content": self.system}] if self.system else []
        return [*out, *self.history, {"role": "user", "content": prompt}]

    def stream(self, prompt: str, **params: Any) -> Iterator[str]:
        """Yield the reply's pieces; the turn joins the history once the reply is complete."""
        pieces: list[str] = []
        self.last_reply = ""
        merged = {**self.params, **{k: v for k, v in params.items() if v is not None}}
        for piece in self.client.stream_chat(self.model, self.messages(prompt), **merged):
            pieces.append(piece)
            self.last_reply += piece
            yield piece
        self.history += [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": "".join(pieces)},
        ]

    def send(self, prompt: str, *, show: str | bool = False, **params: Any) -> str:
        """One turn; return the reply. ``show``: False (quiet), True/``auto``, ``markdown``,
        ``text``."""
        mode = "none" if show is False else ("auto" if show is True else str(show))
        return show_reply(self.stream(prompt, **params), mode)

    def __call__(self, prompt: str, **params: Any) -> None:
        """One turn, the reply shown as it streams (Markdown in a notebook)."""
        self.send(prompt, show=True, **params)

    def reset(self) -> None:
        """Forget the history (the system prompt stays)."""
        self.history.clear()
        self.last_reply = ""

    @property
    def turns(self) -> int:
        return len(self.history) // 2

    def __repr__(self) -> str:
        return f"<Chat with {self.model}: {self.turns} turn(s)>"

    def _repr_markdown_(self) -> str:
        lines = [f"**Chat with `{self.model}`**" + (f" — system: *{self.system}*"
                                                    if self.system else "")]
        for m in self.history:
            who = "**you**" if m["role"] == "user" else "**model**"
            lines.append(f"{who}: {m['content']}")
        return "\n\n".join(lines)


def history_of(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """User and assistant turns of an OpenAI message list (to seed a :class:`Chat`)."""
    return [
        {"role": str(m["role"]), "content": str(m.get("content") or "")}
        for m in messages
        if m.get("role") in ("user", "assistant")
    ]


# -- the trailing "?" -----------------------------------------------------------------------------
#: ``%lemonade chat`` with at least a model and one prompt word, optionally assigned
#: (``x = %lemonade chat ...``), ending with ``?``.
_CHAT_LINE = re.compile(
    r"^(?P<indent>\s*)(?P<assign>(?:[A-Za-z_][\w.]*\s*=\s*)?)"
    r"%lemonade(?P<rest>\s+chat\s+\S.*\s\S.*\?)\s*$"
)


#: Any other ``%lemonade COMMAND ...?``: a help request about COMMAND.
_COMMAND_HELP = re.compile(
    r"^(?P<indent>\s*)%lemonade\s+(?P<command>[a-z][\w-]*)(?:\s+[^?]*)?\?+\s*$"
)


def protect_chat_lines(lines: list[str]) -> list[str]:
    """An IPython cleanup transformer: a ``%lemonade chat ... ?`` line becomes the magic's call.

    IPython's ``HelpEnd`` transformer would read the line as ``obj?`` (help about the last
    word) and drop the chat. The rewritten line calls ``run_line_magic('lemonade', <the
    line>)``, which expands ``{var}`` and ``$var`` as the magic's own line would be. Any other
    ``%lemonade COMMAND ...?`` (``%lemonade chat?``, ``%lemonade load MODEL?``) becomes
    ``%lemonade COMMAND --help``; ``%lemonade?`` stays IPython's help of the magic.
    """
    first = next((line for line in lines if line.strip()), "")
    if first.lstrip().startswith("%%"):
        return lines  # a cell magic's body is its own text, never rewritten
    out = []
    for line in lines:
        body = line.rstrip("\r\n")
        newline = line[len(body):]
        m = _CHAT_LINE.match(body)
        if m is not None:
            call = f"get_ipython().run_line_magic('lemonade', {m['rest'].strip()!r})"
            out.append(f"{m['indent']}{m['assign']}{call}{newline}")
            continue
        h = _COMMAND_HELP.match(body)
        if h is not None:
            call = f"get_ipython().run_line_magic('lemonade', {h['command'] + ' --help'!r})"
            out.append(f"{h['indent']}{call}{newline}")
            continue
        out.append(line)
    return out


def register_input_transformer(shell: Any) -> None:
    """Put :func:`protect_chat_lines` among the shell's cleanup transformers (idempotent)."""
    transforms = getattr(shell, "input_transformers_cleanup", None)
    if transforms is not None and protect_chat_lines not in transforms:
        transforms.append(protect_chat_lines)


def unregister_input_transformer(shell: Any) -> None:
    transforms = getattr(shell, "input_transformers_cleanup", None)
    while transforms is not None and protect_chat_lines in transforms:
        transforms.remove(protect_chat_lines)
