"""``%lemonade`` and ``%%lemonade``: drive the router from a notebook or IPython.

Parse, call the client, return something that renders; decide nothing. A user mistake raises
``UsageError`` (IPython prints one line, no traceback); an error answered by the server raises
``LemonadeServerError``, a ``ClientError`` that IPython renders as the server's one-line message.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.utils.text import dedent
from traitlets import Enum, Float, Unicode

from ..errors import ClientError
from .chat import Chat, register_input_transformer
from .client import RouterClient
from .discovery import discover
from .magic_args import build_parser, looks_like_hub_checkpoint, parse_value, split_chat
from .pools import catalog_type, pinned_memory_warning, pinned_slots_warning
from .progress import run_with_progress
from .transcribe import TranscriptText, transcribe
from .rendering import (
    Message, config_report, load_message, models_report, stats_line, status_report,
)

__all__ = ["LemonadeMagics", "LemonadeServerError"]


class LemonadeServerError(ClientError):
    """A server error as a magic raises it: IPython shows the message only, no traceback."""

    @classmethod
    def from_client_error(cls, exc: ClientError) -> LemonadeServerError:
        return cls(exc.status_code, getattr(exc, "body", None), exc.message)

    def one_line(self) -> str:
        code = self.code or self.error_type
        return f"lemonade: {self.message} (HTTP {self.status_code}, {code})"

    def _render_traceback_(self) -> list[str]:
        return [self.one_line()]


@magics_class
class LemonadeMagics(Magics):
    """The ``%lemonade`` magics; configure with ``c.LemonadeMagics.*``."""

    server_url = Unicode(
        None,
        allow_none=True,
        config=True,
        help="Base URL of the Jupyter server to use (LEMONADE_JUPYTER_URL wins over it).",
    )
    token = Unicode("", config=True, help="Jupyter token for server_url.")
    mode = Enum(
        ["auto", "server", "embedded"],
        "auto",
        config=True,
        help="auto: env/config, the JupyterHub server, this kernel's server, any server, "
        "else embedded; "
        "server: never start an embedded router; embedded: always use one.",
    )
    progress = Enum(
        ["auto", "display", "text", "none"],
        "auto",
        config=True,
        help="Load progress: an updating display (notebooks), dots (terminals), or nothing.",
    )
    chat_format = Enum(
        ["auto", "markdown", "text"],
        "auto",
        config=True,
        help="Chat replies: Markdown updated as it streams (notebooks), plain text (terminals).",
    )
    poll_interval = Float(1.0, config=True, help="Seconds between dashboard refreshes.")
    request_timeout = Float(600.0, config=True, help="Seconds to wait for a load or a reply.")

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell, **kwargs)
        self._client: RouterClient | None = None
        self._parser = build_parser()
        self.last_reply = ""
        #: The conversation ``%lemonade chat --continue`` continues (a :class:`Chat`).
        self.chat_session: Chat | None = None
        if shell is not None:
            register_input_transformer(shell)

    @property
    def client(self) -> RouterClient:
        """The router client, found on first use (see ``kernel.discovery``)."""
        if self._client is None:
            self._client = discover(
                server_url=self.server_url,
                token=self.token,
                mode=self.mode,
                timeout=self.request_timeout,
            )
        return self._client

    @client.setter
    def client(self, value: RouterClient | None) -> None:
        self._client = value

    @line_cell_magic
    def lemonade(self, line: str, cell: str | None = None) -> Any:
        """Drive the lemonade router (multi-model llama.cpp with pinning) from IPython.

        Usage::

          %lemonade load MODEL [--pinned] [--ctx-size N|auto] [--auto-evict | --no-auto-evict]
                               [--llamacpp-args "..."] [--downsize-idle-timeout S]
                               [--evict-idle-timeout S] [--evict-weight-factor F]
                               [--parallel N] [--max-queue N]
          %lemonade pin MODEL          %lemonade unpin MODEL
          %lemonade unload [MODEL]     (no MODEL: unload every model, pinned ones too)
          %lemonade status             router in use, loaded models, slots, memory
          %lemonade models             the catalog (built-in and user.* models)
          %lemonade pull NAME          download the catalog model NAME (see models)
          %lemonade pull NAME ORG/REPO:VARIANT [--mmproj FILE] [--labels a,b]
                                       download from the Hugging Face Hub as user.NAME
          %lemonade pull NAME PATH [--labels a,b] [--recipe whispercpp]
                                       register a local GGUF (or whisper.cpp .bin) as user.NAME
          %lemonade delete user.NAME
          %lemonade alias MODEL ALIAS  ALIAS is another name for MODEL (every command and
                                       request takes it); %lemonade alias lists them
          %lemonade alias --remove ALIAS
          %lemonade logs MODEL [-n N]  the last N lines of MODEL's backend log (redacted)
          %lemonade config [key=value ...]   values are JSON when they parse (2, true, 0.8)
          %lemonade chat [-o NAME] [--continue] [--system S] [--max-tokens N] [--stats]
                         MODEL PROMPT
          %%lemonade chat [-o NAME] [--continue] [--stats] MODEL    (the cell is the prompt)
          %lemonade transcribe MODEL FILE [-o OUT] [--language L] [--translate]
                         [--format text|json|verbose_json|srt|vtt]
                                       the text of a WAV file from a transcription model
                                       (e.g. Whisper-Tiny); -o writes it to file OUT
          %lemonade openai [--async]   an openai.OpenAI client for this router
          %lemonade dashboard [--interval S]   (one per kernel: a new one replaces the old)
          %lemonade COMMAND --help

        ``load`` warns before trying when every slot of the model's type is pinned (the server
        would refuse with 409). ``chat`` streams the reply (Markdown in a notebook) and keeps
        the conversation: ``--continue`` sends the earlier turns too; ``--stats`` prints the
        reply's time to first token, tokens/s and token counts. A prompt may end with
        ``?``. The router is found in this order: $LEMONADE_JUPYTER_URL
        (+ $LEMONADE_JUPYTER_TOKEN) or c.LemonadeMagics.server_url, the JupyterHub server
        ($JUPYTERHUB_SERVICE_URL), this kernel's Jupyter server, any running server with the
        extension, else an embedded router in the kernel; ``%lemonade status`` says which.

        Example::

          %load_ext lemonade_jupyter
          %lemonade load SmolLM2-135M-Instruct-GGUF --pinned
          %lemonade chat SmolLM2-135M-Instruct-GGUF What is the capital of France?
          %lemonade chat --continue SmolLM2-135M-Instruct-GGUF And of Italy?
          client = %lemonade openai
          %lemonade unpin SmolLM2-135M-Instruct-GGUF
          %lemonade dashboard
        """
        line = line.strip()
        command, _, rest = line.partition(" ")
        if not command or command == "help":
            print(dedent(self.lemonade.__doc__ or ""))
            return None
        try:
            if command == "chat":
                tokens, prompt = split_chat(rest)
                args = self._parse(["chat", *tokens])
            else:
                try:
                    argv = shlex.split(line)
                except ValueError as exc:
                    raise UsageError(f"cannot parse the line: {exc}") from None
                args = self._parse(argv)
                prompt = ""
            if cell is not None and args.command != "chat":
                raise UsageError("%%lemonade is a cell magic for chat only: %%lemonade chat MODEL")
            return getattr(self, f"_do_{args.command}")(args, prompt, cell)
        except ClientError as exc:
            if isinstance(exc, LemonadeServerError):
                raise
            raise LemonadeServerError.from_client_error(exc) from None

    def _parse(self, argv: list[str]) -> argparse.Namespace:
        if "-h" in argv or "--help" in argv:
            choices = self._subparsers()
            sub = choices.get(argv[0])
            print((sub or self._parser).format_help())
            return argparse.Namespace(command="noop")
        if argv and argv[0] not in self._subparsers():
            raise UsageError(
                f"unknown command {argv[0]!r}; one of: {', '.join(self._subparsers())} "
                "(see %lemonade?)"
            )
        return self._parser.parse_args(argv)

    def _subparsers(self) -> dict[str, argparse.ArgumentParser]:
        for action in self._parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                return dict(action.choices)
        return {}  # pragma: no cover - the parser always has subcommands

    def _progress_mode(self) -> str:
        if self.progress != "auto":
            return str(self.progress)
        return "display" if getattr(self.shell, "kernel", None) is not None else "text"

    # -- subcommands --------------------------------------------------------------------------
    def _do_noop(self, args: argparse.Namespace, prompt: str, cell: str | None) -> None:
        return None

    def _do_load(self, args: argparse.Namespace, prompt: str, cell: str | None) -> Message:
        if isinstance(args.ctx_size, int) and args.ctx_size <= 0 and args.ctx_size != -1:
            raise UsageError("--ctx-size must be a positive number of tokens, or auto (also "
                             "-1) for the context the model was trained with, capped by what "
                             "fits")
        client = self.client
        health = client.health()
        warning = pinned_slots_warning(
            health, args.model, catalog_type(client.models(), args.model)
        )
        if warning:
            print(f"Warning: {warning}", file=sys.stderr, flush=True)
        memory_warning = pinned_memory_warning(health, client.config(), args.model)
        if memory_warning:
            print(f"Warning: {memory_warning}", file=sys.stderr, flush=True)
        options = {
            "pinned": args.pinned,
            "ctx_size": args.ctx_size,
            "auto_evict": args.auto_evict,
            "llamacpp_args": args.llamacpp_args,
            "downsize_idle_timeout": args.downsize_idle_timeout,
            "evict_idle_timeout": args.evict_idle_timeout,
            "evict_weight_factor": args.evict_weight_factor,
            "parallel": args.parallel,
            "max_queue": args.max_queue,
        }
        answer, seconds = run_with_progress(
            f"Loading {args.model}",
            lambda: client.load(args.model, **options),
            mode=self._progress_mode(),
        )
        return load_message(answer, seconds)

    def _do_pin(self, args: argparse.Namespace, prompt: str, cell: str | None) -> Message:
        answer = self.client.pin(args.model, True)
        return Message(f"Pinned {answer.get('model_name', args.model)}", data=answer)

    def _do_unpin(self, args: argparse.Namespace, prompt: str, cell: str | None) -> Message:
        answer = self.client.pin(args.model, False)
        return Message(f"Unpinned {answer.get('model_name', args.model)}", data=answer)

    def _do_unload(self, args: argparse.Namespace, prompt: str, cell: str | None) -> Message:
        answer = self.client.unload(args.model)
        return Message(
            f"Unloaded {args.model}" if args.model else "Unloaded every model", data=answer
        )

    def _do_status(self, args: argparse.Namespace, prompt: str, cell: str | None) -> Any:
        client = self.client
        return status_report(client.health(), client.source)

    def _do_models(self, args: argparse.Namespace, prompt: str, cell: str | None) -> Any:
        return models_report(self.client.models())

    def _do_pull(self, args: argparse.Namespace, prompt: str, cell: str | None) -> Message:
        labels = [x.strip() for x in args.labels.split(",") if x.strip()]
        if args.checkpoint is None:  # a model of the catalog, by its name
            return self._pull_with_progress(args.name, None, args, labels)
        name = args.name if args.name.startswith("user.") else f"user.{args.name}"
        path = os.path.abspath(os.path.expanduser(args.checkpoint))
        if os.path.exists(path) or not looks_like_hub_checkpoint(args.checkpoint):
            if not os.path.isfile(path):
                raise UsageError(f"no such file: {path}")
            answer = self.client.pull(name, path, recipe=args.recipe, labels=labels)
            kind = answer.get("type") or "llm"
            return Message(f"Registered {name} ({kind}) from {path}", data=answer)
        return self._pull_with_progress(name, args.checkpoint, args, labels)

    def _pull_with_progress(
        self, name: str, checkpoint: str | None, args: argparse.Namespace, labels: list[str]
    ) -> Message:
        """A hub download with a progress bar (notebook) or a byte counter (terminal); Ctrl-C
        cancels it on the server, so nothing is registered."""
        client = self.client
        latest: dict[str, Any] = {}

        def where() -> tuple[int, int | None] | None:
            done = latest.get("bytes_downloaded")
            return (int(done), latest.get("bytes_total")) if done is not None else None

        def cancel() -> None:
            try:
                client.cancel_pull(name)
            except ClientError as exc:
                if exc.status_code != 404:  # 404: it ended meanwhile
                    raise
            print(f"\nCancelled the pull of {name}; nothing was registered.",
                  file=sys.stderr, flush=True)

        answer, seconds = run_with_progress(
            f"Pulling {name}",
            lambda: client.pull(name, checkpoint, recipe=args.recipe, labels=labels,
                                mmproj=args.mmproj, progress=latest.update),
            mode=self._progress_mode(),
            progress=where,
            on_interrupt=cancel,
        )
        kind = answer.get("type") or "llm"
        source = answer.get("checkpoint") or checkpoint or name
        return Message(f"Pulled {name} ({kind}) from {source} in {seconds:.1f} s", data=answer)

    def _do_delete(self, args: argparse.Namespace, prompt: str, cell: str | None) -> Message:
        answer = self.client.delete(args.name)
        return Message(f"Deleted {args.name}", data=answer)

    def _do_remote(self, args: argparse.Namespace, prompt: str, cell: str | None) -> Message:
        name = args.name if args.name.startswith("user.") else f"user.{args.name}"
        keys = None
        if args.key_env:
            parts = [k.strip() or None for k in args.key_env.split(",")]
            keys = parts[0] if len(parts) == 1 else parts
        labels = [x.strip() for x in args.labels.split(",") if x.strip()]
        answer = self.client.add_remote(name, args.urls, args.model, keys, labels)
        names = [m.get("model_name") for m in answer.get("registered") or []] or [name]
        return Message(f"Registered remote {', '.join(map(str, names))} "
                       f"({len(args.urls)} replica{'s' if len(args.urls) > 1 else ''})",
                       data=answer)

    def _do_alias(self, args: argparse.Namespace, prompt: str, cell: str | None) -> Any:
        if args.remove is not None:
            if args.names:
                raise UsageError("%lemonade alias --remove ALIAS takes no other name")
            answer = self.client.remove_alias(args.remove)
            return Message(f"Removed alias {args.remove} (of {answer.get('model_name')})",
                           data=answer)
        if not args.names:
            listed = self.client.aliases()
            text = "\n".join(f"{a} -> {m}" for a, m in listed.items()) or "No aliases"
            return Message(text, data=listed)
        if len(args.names) != 2:
            raise UsageError("usage: %lemonade alias MODEL ALIAS")
        answer = self.client.add_alias(*args.names)
        return Message(f"{answer.get('alias')} is now an alias of {answer.get('model_name')}",
                       data=answer)

    def _do_logs(self, args: argparse.Namespace, prompt: str, cell: str | None) -> Message:
        if not 0 < args.lines <= 10_000:
            raise UsageError("-n must be between 1 and 10000")
        lines = self.client.log_tail(args.model, args.lines)
        return Message("\n".join(lines) or f"No log yet for {args.model}",
                       data={"model": args.model, "lines": lines})

    def _do_config(self, args: argparse.Namespace, prompt: str, cell: str | None) -> Any:
        if not args.pairs:
            return config_report(self.client.config())
        updates = {}
        for pair in args.pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise UsageError(f"expected key=value, got {pair!r}")
            updates[key.strip()] = parse_value(value.strip())
        return config_report(self.client.set_config(updates), changed=updates)

    def _do_chat(self, args: argparse.Namespace, prompt: str, cell: str | None) -> None:
        if cell is not None:
            if prompt:
                raise UsageError("give the prompt on the line or in the cell, not both")
            prompt = cell.strip()
        if not prompt:
            raise UsageError("no prompt: %lemonade chat MODEL PROMPT, or %%lemonade chat MODEL")
        session = self.chat_session
        if args.resume and session is not None:
            session.model = args.model
            if args.system is not None:
                session.system = args.system
        else:
            session = Chat(args.model, system=args.system, client=self.client)
        self.chat_session = session
        params = {"max_tokens": args.max_tokens} if args.max_tokens else {}
        try:
            session.send(prompt, show=self._chat_mode(), **params)
        finally:
            self.last_reply = session.last_reply
            if args.output:
                self.shell.user_ns[args.output] = self.last_reply
        if args.stats:
            print(stats_line(self.client.stats()))
        return None

    def _chat_mode(self) -> str:
        if self.chat_format != "auto":
            return str(self.chat_format)
        return "markdown" if getattr(self.shell, "kernel", None) is not None else "text"

    def _do_transcribe(self, args: argparse.Namespace, prompt: str,
                       cell: str | None) -> TranscriptText | Message:
        return transcribe(self.client, args.model, args.file, output=args.output,
                          language=args.language, response_format=args.response_format,
                          translate=args.translate, progress_mode=self._progress_mode())

    def _do_openai(self, args: argparse.Namespace, prompt: str, cell: str | None) -> Any:
        from .openai_support import async_openai_client, openai_client

        try:
            make = async_openai_client if args.asynchronous else openai_client
            return make(self.client)
        except ImportError as exc:
            raise UsageError(str(exc)) from None

    def _do_dashboard(self, args: argparse.Namespace, prompt: str, cell: str | None) -> Any:
        from .widgets import Dashboard

        interval = args.interval if args.interval is not None else self.poll_interval
        if interval <= 0:
            raise UsageError("--interval must be > 0")
        return Dashboard.for_kernel(self.client, interval=interval)
