"""Every setting, router and server: one table, and everything derived from it.

:data:`SETTINGS` lists every setting once: name, type, default, help text, bounds, whether
``/internal/set`` may change it at run time and whether the state file keeps it across a
restart, and whom it configures (``scope``): the router, or the HTTP side around it (the
engine path, the data folder, streaming, TLS of remote models). From it come the
:class:`RouterSettings` dataclass the router reads, the :class:`ServerOptions` the HTTP side
reads, the checks of ``/internal/set`` (:func:`validate_setting`) and of the config file
(:func:`check_value`), the persisted keys (:data:`PERSISTED_KEYS`), and, in
``server/app.py``, the ``c.LemonadeApp.*`` traits. ``server/compose.py`` builds the same
services from both dataclasses for the Jupyter server and for the embedded router, so the two
cannot drift. Adding a setting is one entry in the table.

A row may name an environment variable (``env``) as the source of its default: a config value
still wins over it. :meth:`Setting.initial` is the one place such a variable is read.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, asdict, dataclass, field, make_dataclass, replace
from typing import Any

from ..errors import InvalidRequestError
from .remote_rules import DEFAULT_KEY_ENVS, is_host_entry, is_key_env_entry
from .validation import check_bool, check_number

def _is_absolute_path(entry: str) -> bool:
    return entry.startswith("/") and "\0" not in entry and len(entry) <= 4096


#: Most entries of a list setting.
MAX_LIST_ENTRIES = 256

#: Upper bound of ``eviction_grace_s``: the engine sleeps this long before acting on memory
#: pressure, and a long grace is an engine that never relieves it.
MAX_EVICTION_GRACE_S = 60.0
#: The engine reads token counts as 32-bit integers.
_INT32_MAX = 2**31 - 1

#: Longest text setting (a path): longer is a mistake, not a path.
MAX_TEXT_CHARS = 4096

#: ``Setting.scope``: read by the router (a field of :class:`RouterSettings`) or by the HTTP
#: side that hosts it (a field of :class:`ServerOptions`).
ROUTER, SERVER = "router", "server"


@dataclass(frozen=True)
class Setting:
    """One row of :data:`SETTINGS`."""

    name: str
    type: type  # bool, int, float, str, or tuple: a list of strings, each passing ``item``
    default: Any
    _: KW_ONLY
    help: str
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    #: One more accepted value outside the bounds (-1: no limit).
    special: int | None = None
    #: The value that stands for ``None`` in a config file (a trait cannot be None).
    none_as: int | None = None
    #: ``/internal/set`` may change it while the router runs.
    runtime: bool = False
    #: The state file keeps it, so a value set at run time survives a restart.
    persisted: bool = False
    #: The error message for any bad value, instead of the generic one.
    message: str | None = None
    #: The check of each entry of a list setting (``type`` tuple), with what it wants in words.
    item: tuple[Callable[[Any], bool], str] | None = None
    #: Whom it configures: :data:`ROUTER` or :data:`SERVER`.
    scope: str = ROUTER
    #: An environment variable whose value, when set, is the default instead of ``default``.
    env: str | None = None

    def initial(self, environ: Mapping[str, str] | None = None) -> Any:
        """The value when nothing is configured: ``$env`` if set (checked like a config
        value), else ``default``. Raises InvalidRequestError naming the variable."""
        raw = (os.environ if environ is None else environ).get(self.env or "", "")
        if not self.env or not raw.strip():
            return self.default
        try:
            value = self._parse_env(raw.strip())
            return self.from_config(self.check_config(value))
        except (InvalidRequestError, ValueError):
            raise InvalidRequestError(
                f"${self.env}={raw!r} is not a valid {self.name}: "
                f"{self._wanted()}", param=self.name) from None

    def _parse_env(self, raw: str) -> Any:
        """A variable's text as a config value (numbers and text; no row needs more)."""
        return self.type(raw) if self.type in (int, float) else raw

    def _wanted(self) -> str:
        if self.message:
            return self.message
        low = "" if self.minimum is None else f" of at least {self.minimum:g}"
        return {int: f"an integer{low}", float: f"a number{low}"}.get(self.type, "a text")

    @property
    def config_default(self) -> Any:
        """The default as a config value (``none_as`` for ``None``, a list for a tuple)."""
        if self.type is tuple:
            return list(self.default)
        return self.none_as if self.default is None else self.default

    def check(self, value: Any) -> Any:
        """Return ``value`` checked against this row; raise InvalidRequestError otherwise."""
        key = self.name
        if value is None and self.none_as is not None:
            return None  # a nullable setting: null unsets it
        if self.type is tuple:
            return self._check_list(value)
        if self.type is str:
            return self._check_text(value)
        try:
            if self.type is bool:
                return check_bool(key, value)
            integer = self.type is int
            if self.special is not None:
                if check_number(key, value, integer=integer) == self.special:
                    return value
            return check_number(
                key, value, minimum=self.minimum, maximum=self.maximum, integer=integer,
                exclusive_minimum=self.exclusive_minimum,
            )
        except InvalidRequestError:
            if self.message is None:
                raise
            raise InvalidRequestError(self.message, param=key) from None

    def _check_list(self, value: Any) -> tuple[str, ...]:
        """A list of strings, each one passing ``item``: returned as a tuple."""
        key = self.name
        ok, wanted = self.item if self.item is not None else (lambda _: True, "strings")
        if not isinstance(value, (list, tuple)) or len(value) > MAX_LIST_ENTRIES:
            raise InvalidRequestError(
                f"Parameter '{key}' must be a list of at most {MAX_LIST_ENTRIES} entries",
                param=key)
        for entry in value:
            if not isinstance(entry, str) or not ok(entry):
                raise InvalidRequestError(
                    f"Parameter '{key}': {entry!r} is not {wanted}", param=key)
        return tuple(value)

    def _check_text(self, value: Any) -> str:
        """One line of text (a path), at most :data:`MAX_TEXT_CHARS` characters."""
        if (not isinstance(value, str) or len(value) > MAX_TEXT_CHARS
                or any(c in value for c in "\0\n\r")):
            raise InvalidRequestError(
                f"Parameter '{self.name}' must be one line of at most {MAX_TEXT_CHARS} "
                "characters", param=self.name)
        return value

    def check_config(self, value: Any) -> Any:
        """Check a config-file value: ``none_as`` (a trait cannot be None) passes as it is,
        a list stays a list (the trait's type)."""
        if self.type is tuple:
            return list(self.check(value))
        if self.none_as is not None and value == self.none_as and not isinstance(value, bool):
            return value
        return self.check(value)

    def from_config(self, value: Any) -> Any:
        """The router's value for a config value (``none_as`` becomes ``None``)."""
        if self.type is tuple:
            return tuple(value)
        return None if self.none_as is not None and value == self.none_as else value


#: Every router setting, in the order of :class:`RouterSettings`' fields.
SETTINGS: tuple[Setting, ...] = (
    Setting("max_loaded_models", int, 1, minimum=1, maximum=1_000_000, special=-1,
            runtime=True, persisted=True,
            message="max_loaded_models must be a positive integer or -1 (unlimited)",
            help="Models kept loaded per type (llm, embedding, reranking...); -1 means no limit."),
    Setting("auto_evict", bool, False, runtime=True, persisted=True,
            help="Let the eviction engine downsize and unload idle models."),
    Setting("auto_evict_threshold_pct", float, 0.90, minimum=0, exclusive_minimum=True,
            maximum=1, runtime=True, persisted=True,
            help="Memory pressure (used fraction of the fullest device) at which to evict, "
            "(0, 1]."),
    Setting("downsize_idle_timeout", float, 60.0, minimum=0, runtime=True,
            help="Default seconds idle before a model is downsized."),
    Setting("evict_idle_timeout", float, 300.0, minimum=0, runtime=True,
            help="Default seconds idle before a model is unloaded."),
    Setting("evict_weight_factor", float, 1.0, minimum=0, exclusive_minimum=True, runtime=True,
            help="Default weight of a model's reload cost under memory pressure: candidates "
            "rank by idle time / (load time x factor)."),
    Setting("max_queue", int, -1, minimum=0, maximum=1_000_000, special=-1, runtime=True,
            persisted=True,
            message="max_queue must be a non-negative integer or -1 (no bound)",
            help="Requests that may wait for a busy model (all its parallel slots in use) "
            "before more are refused with 429 and Retry-After; -1: no bound. A load option of "
            "the same name overrides it for one model."),
    Setting("restore_on_start", bool, True, runtime=True, persisted=True,
            help="Reload the models that were loaded (pinned first) at start."),
    Setting("crash_loop_threshold", int, 2, minimum=1,
            help="Failed starts or crashes in a row before a model cools down."),
    Setting("crash_loop_window_s", float, 60.0, minimum=0,
            help="Window in seconds within which failed starts and early deaths of one model "
            "are counted by the crash-loop guard."),
    Setting("crash_cooldown_s", float, 5.0, minimum=0,
            help="First cooldown of a crash-looping model; doubles, capped."),
    Setting("crash_cooldown_max_s", float, 300.0, minimum=0,
            help="Cap of the doubling cooldown of a crash-looping model."),
    Setting("ready_timeout_s", float, 120.0, minimum=0, exclusive_minimum=True,
            help="Seconds a backend may take to answer /health with 200."),
    Setting("stop_grace_s", float, 5.0, minimum=0,
            help="Seconds a stopping backend gets after SIGTERM before SIGKILL."),
    Setting("watchdog_interval_s", float, 2.0, minimum=0, exclusive_minimum=True,
            help="Seconds between liveness probes of the backends."),
    Setting("watchdog_probe_timeout_s", float, 3.0, minimum=0, exclusive_minimum=True,
            help="Timeout of one liveness probe."),
    Setting("watchdog_probe_failures", int, 3, minimum=1,
            help="Failed probes in a row after which a hung backend is killed."),
    Setting("memory_sample_interval_s", float, 2.0, minimum=0.1, runtime=True,
            help="Seconds between memory samples while someone needs them."),
    Setting("eviction_interval_s", float, 5.0, minimum=0.1, runtime=True,
            help="Seconds between rounds of the eviction engine while auto-eviction is on."),
    Setting("eviction_grace_s", float, 0.25, minimum=0, maximum=MAX_EVICTION_GRACE_S,
            runtime=True,
            help="Seconds the eviction engine waits before committing a decision; a model used "
            "meanwhile is spared."),
    Setting("memory_budget_mib", float, None, minimum=0, exclusive_minimum=True, none_as=0,
            runtime=True, persisted=True,
            help="System memory (MiB) the models on the CPU may hold together; a load that "
            "does not fit evicts idle unpinned models first (reason fit), else answers 409. "
            "Unset (0 in a config file, null at run time): no budget."),
    Setting("gpu_memory_reserve_mib", float, 512.0, minimum=0,
            help="GPU memory (MiB) kept free on each device when admitting a model by fit: "
            "room for other processes and the CUDA context."),
    Setting("backend_threads", int, None, minimum=0, none_as=0,
            env="LEMONADE_BACKEND_THREADS",
            help="--threads for each llama-server; 0 lets llama.cpp use every core. Set it on a "
            "small or shared machine: several backends spinning on all cores slow each other "
            "down. Default: $LEMONADE_BACKEND_THREADS when it is set, else 0."),
    Setting("allow_any_llamacpp_args", bool, False,
            help="Let a load's llamacpp_args pass any llama-server flag, not only the allowlist "
            "(which leaves out every flag that names a file, a program, an address or a "
            "secret). A single-user escape hatch for the server's owner: never turn it on "
            "where others can load models. The flags the router sets stay refused."),
    # -- backend logs and engine defaults ---------------------------------------------------
    Setting("backend_log_max_mib", int, 64, minimum=1, maximum=1_048_576, runtime=True,
            help="Size cap (MiB) of each backend's log file: its start-up lines and its newest "
            "lines are kept, the middle is cut. Applies to backends started afterwards."),
    Setting("default_n_predict", int, 2048, minimum=1, maximum=_INT32_MAX, special=-1,
            runtime=True,
            message="default_n_predict must be a positive integer or -1 (no cap)",
            help="Tokens generated at most by llama.cpp's own completion and infill routes "
            "when a request sets neither n_predict nor max_tokens; -1: no cap (the engine then "
            "generates until the context is full)."),
    # -- remote models (an OpenAI-compatible upstream; see core/remote.py) --------------------
    Setting("remote_connect_timeout_s", float, 5.0, minimum=0, exclusive_minimum=True,
            help="Seconds to connect to a remote model's replica (and the timeout of a probe); "
            "a replica that does not connect in time is marked down."),
    Setting("remote_timeout_s", float, 300.0, minimum=0, exclusive_minimum=True,
            help="Seconds a remote model's replica may stay silent during a request (504 after "
            "that, and the replica is marked down)."),
    Setting("remote_probe_interval_s", float, 10.0, minimum=0.1,
            help="Seconds between probes (GET /models) of a remote replica that answers."),
    Setting("remote_probe_backoff_max_s", float, 30.0, minimum=0.1,
            help="Cap of the doubling back-off (from 0.5 s) between probes of a remote replica "
            "that is down."),
    # -- what a remote model may point at and which key variables it may name (remote_rules) -
    Setting("remote_allowed_hosts", tuple, (),
            item=(is_host_entry, "a host name, an IP address or a network"),
            help="Hosts a remote model may point at (names, IP addresses, networks such as "
            "10.0.0.0/8); empty: any host but this Jupyter server itself. An entry also lifts "
            "the refusal of one of this server's own addresses."),
    Setting("remote_denied_hosts", tuple, (),
            item=(is_host_entry, "a host name, an IP address or a network"),
            help="Hosts a remote model may never point at, whatever remote_allowed_hosts says "
            "(names, IP addresses, networks)."),
    Setting("remote_key_envs", tuple, DEFAULT_KEY_ENVS,
            item=(is_key_env_entry, "a variable name, or a prefix ending with *"),
            help="Environment variables of the server a remote model may name as api_key_env "
            "(an entry ending with * is a prefix). The server's own credentials (Jupyter's and "
            "JupyterHub's tokens, JUPYTER*, JPY_*, HF_*...) are never lent, even if listed."),
    Setting("remote_total_timeout_s", float, 600.0, minimum=0, exclusive_minimum=True,
            help="Seconds one request to a remote model may take in all, streams included, "
            "however steadily its replica answers (504, or an SSE error event once a stream "
            "has started)."),
    Setting("remote_max_answer_mib", float, 64.0, minimum=0, exclusive_minimum=True,
            help="Size cap (MiB) of a remote model's answer that is not streamed; a larger one "
            "is cut (502) without reading the rest."),
    Setting("remote_max_models_per_upstream", int, 256, minimum=1, maximum=100_000,
            help="Models one remote pull may register from an upstream's list; an upstream "
            "that lists more is refused (400): register the models needed one by one."),
    # -- the audio routes (server/audio.py, core/audio_upload.py) -----------------------------
    Setting("max_audio_upload_mib", float, 25.0, minimum=0, exclusive_minimum=True,
            maximum=1024,
            help="Size cap (MiB) of one upload to the audio routes (transcriptions, "
            "translations); a larger one is refused with 413 audio_too_large before it is "
            "read. 25, like OpenAI's."),
    Setting("max_audio_seconds", float, 1800.0, minimum=0, exclusive_minimum=True,
            maximum=86_400,
            help="Longest audio (seconds) one request to the audio routes may transcribe; "
            "longer is refused with 400 audio_too_long before any model loads."),
    # -- the HTTP side around the router (scope SERVER: fields of ServerOptions) --------------
    Setting("llama_server_path", str, "", scope=SERVER,
            help="Path of llama-server; empty: $LEMONADE_LLAMA_SERVER, PATH, then the cached "
            "build."),
    Setting("data_dir", str, "", scope=SERVER,
            help="Where pins, the loaded set and user models persist across restarts; empty: "
            "<jupyter data dir>/lemonade (an embedded router uses a folder of its own)."),
    Setting("remote_ca_bundle", str, "", scope=SERVER,
            help="PEM file of CA certificates to trust for https remote models; empty: the "
            "system's store. Certificates are always verified."),
    Setting("sse_ping_interval_s", float, 2.0, minimum=0.001, maximum=3600, scope=SERVER,
            help="Seconds of silence (cold load, prefill) before a ': ping' SSE comment."),
    Setting("node_mode", bool, False, scope=SERVER,
            help="One router for every user of a JupyterHub, run as a Hub service by "
            "`lemonade-jupyter node`: callers are Hub users whose custom:lemonade:* scopes are "
            "checked on every route, and the surface is locked down (docs/jupyterhub.md)."),
    Setting("stream_loading_state", bool, False, scope=SERVER,
            help="Tell a streaming chat request that waits for a cold load the load's progress, "
            "as reasoning content before the answer (chat UIs show it as the model thinking)."),
    # -- node mode: one router for every user of a JupyterHub (server/node.py) ---------------
    Setting("node_model_folders", tuple, (),
            item=(_is_absolute_path, "an absolute path"),
            help="Node mode: folders whose GGUF files any user with custom:lemonade:use may "
            "register by local path (a pull with a file checkpoint); a file elsewhere needs "
            "custom:lemonade:admin. Paths are compared after resolving links. Ignored by a "
            "single-user server."),
    # -- node mode: quotas per user (core/quotas.py) ------------------------------------------
    Setting("node_max_pins_per_user", int, 2, minimum=0, maximum=1_000_000, special=-1,
            runtime=True, persisted=True,
            message="node_max_pins_per_user must be a non-negative integer or -1 (no limit)",
            help="Node mode: models one user may hold pinned (admins too, for their own pins); "
            "a pin beyond it is refused with 409 quota_exceeded. -1: no limit. Ignored by a "
            "single-user server."),
    Setting("node_max_pinned_mib_per_user", int, -1, minimum=0, maximum=1_000_000_000,
            special=-1, runtime=True, persisted=True,
            message="node_max_pinned_mib_per_user must be a non-negative integer or -1 "
            "(no limit)",
            help="Node mode: memory (MiB) one user's pinned models may hold together, each "
            "counted as measured, else as estimated, else as its file's size; a pin beyond it "
            "is refused with 409 quota_exceeded. -1: no limit. Ignored by a single-user "
            "server."),
    Setting("node_max_requests_per_user", int, 8, minimum=1, maximum=1_000_000, special=-1,
            runtime=True, persisted=True,
            message="node_max_requests_per_user must be a positive integer or -1 (no limit)",
            help="Node mode: inference requests (chat, completions, embeddings...) one user may "
            "have in flight at once; one more is refused with 429 and Retry-After, so one "
            "notebook's batch cannot starve the other users. -1: no limit. Ignored by a "
            "single-user server."),
)

SETTINGS_BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}

#: The rows the router reads (:class:`RouterSettings`) and those of the HTTP side
#: (:class:`ServerOptions`).
ROUTER_SETTINGS: tuple[Setting, ...] = tuple(s for s in SETTINGS if s.scope == ROUTER)
SERVER_SETTINGS: tuple[Setting, ...] = tuple(s for s in SETTINGS if s.scope == SERVER)

#: Keys ``/internal/set`` accepts (the rest are start-up only).
RUNTIME_KEYS: tuple[str, ...] = tuple(s.name for s in SETTINGS if s.runtime)

#: Keys the router keeps in its state file.
PERSISTED_KEYS: tuple[str, ...] = tuple(s.name for s in SETTINGS if s.persisted)


def check_value(key: str, value: Any) -> Any:
    """Check a config-file value of any setting; raise InvalidRequestError."""
    setting = SETTINGS_BY_NAME.get(key)
    if setting is None:
        raise InvalidRequestError(f"Unknown setting '{key}'", param=key)
    return setting.check_config(value)


def validate_setting(key: str, value: Any) -> Any:
    """Return the checked value for a runtime key; raise InvalidRequestError otherwise."""
    if key not in RUNTIME_KEYS:
        raise InvalidRequestError(
            f"Unknown config key '{key}'; settable keys: {', '.join(RUNTIME_KEYS)}", param=key
        )
    return SETTINGS_BY_NAME[key].check(value)


def _to_json(self: Any) -> dict[str, Any]:
    return asdict(self)


def _with_updates(self: Any, updates: Mapping[str, Any]) -> Any:
    """Validate every key first, then apply all of them; a bad one changes nothing."""
    checked = {key: validate_setting(key, value) for key, value in updates.items()}
    return replace(self, **checked)


def _annotation(setting: Setting) -> Any:
    return setting.type | None if setting.default is None else setting.type


def _field(setting: Setting) -> Any:
    """A dataclass field with the row's default, read from its variable at construction."""
    if setting.env:
        return field(default_factory=setting.initial)
    return field(default=setting.default)


#: Everything the router reads; replaced as a whole, never mutated in place. Generated from
#: the router rows of :data:`SETTINGS`: one field per row, with its default.
RouterSettings = make_dataclass(
    "RouterSettings",
    [(s.name, _annotation(s), _field(s)) for s in ROUTER_SETTINGS],
    namespace={
        "__module__": __name__,
        "__doc__": "Everything the router reads; replaced as a whole, never mutated in place.",
        "to_json": _to_json,
        "with_updates": _with_updates,
    },
    frozen=True,
)

#: What the HTTP side around the router reads (the server rows of :data:`SETTINGS`); fixed for
#: the server's life.
ServerOptions = make_dataclass(
    "ServerOptions",
    [(s.name, _annotation(s), _field(s)) for s in SERVER_SETTINGS],
    namespace={
        "__module__": __name__,
        "__doc__": "What the HTTP side around the router reads; fixed for the server's life.",
    },
    frozen=True,
)


def _values(rows: tuple[Setting, ...], values: Mapping[str, Any]) -> dict[str, Any]:
    return {s.name: s.from_config(values[s.name]) for s in rows if s.name in values}


def from_config(values: Mapping[str, Any]) -> Any:
    """:class:`RouterSettings` from config values (the traits), already checked: ``none_as``
    becomes ``None``; a setting missing from ``values`` keeps its default. Keys of server
    rows are left to :func:`server_options_from_config`."""
    return RouterSettings(**_values(ROUTER_SETTINGS, values))


def server_options_from_config(values: Mapping[str, Any]) -> Any:
    """:class:`ServerOptions` from config values, as :func:`from_config` does for the router."""
    return ServerOptions(**_values(SERVER_SETTINGS, values))
