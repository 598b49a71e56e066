"""``LemonadeApp``: the Jupyter server extension that hosts the router.

Nothing happens in the constructor (Jupyter builds the app even for ``jupyter server extension
list``). ``initialize_settings`` builds the router from the traits; the router's background
tasks start in ``_start_jupyter_server_extension`` once the server's loop runs; and
``stop_extension`` stops every backend.
"""

from __future__ import annotations

from pathlib import Path

from jupyter_core.paths import jupyter_data_dir
from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, Float, Int, TraitError, Unicode, default, validate

from ..core.catalog import Catalog
from ..core.router import Router
from ..core.settings import RouterSettings, validate_setting
from ..errors import InvalidRequestError
from .routes import ROUTES
from .upstream import UpstreamPool


class LemonadeApp(ExtensionApp):
    """Multi-model llama.cpp router with pinning, under ``{base_url}lemonade/``."""

    name = "lemonade_jupyter"
    load_other_extensions = True

    max_loaded_models = Int(
        1, config=True,
        help="Models kept loaded per type (llm, embedding, reranking...); -1 means no limit.",
    )
    llama_server_path = Unicode(
        "", config=True,
        help="Path of llama-server; empty: $LEMONADE_LLAMA_SERVER, PATH, then the cached build.",
    )
    data_dir = Unicode(
        config=True, help="Where pins, the loaded set and user models persist across restarts."
    )
    restore_on_start = Bool(
        True, config=True, help="Reload the models that were loaded (pinned first) at start."
    )
    auto_evict = Bool(
        False, config=True, help="Let the eviction engine downsize and unload idle models."
    )
    auto_evict_threshold_pct = Float(
        0.90, config=True,
        help="Memory pressure (used fraction of the fullest device) at which to evict, (0, 1].",
    )
    downsize_idle_timeout = Float(
        60.0, config=True, help="Default seconds idle before a model is downsized."
    )
    evict_idle_timeout = Float(
        300.0, config=True, help="Default seconds idle before a model is unloaded."
    )
    crash_loop_threshold = Int(
        2, config=True, help="Failed starts or crashes in a row before a model cools down."
    )
    crash_cooldown_s = Float(
        5.0, config=True, help="First cooldown of a crash-looping model; doubles, capped."
    )
    ready_timeout_s = Float(
        120.0, config=True, help="Seconds a backend may take to answer /health with 200."
    )
    watchdog_interval_s = Float(
        2.0, config=True, help="Seconds between liveness probes of the backends."
    )
    watchdog_probe_timeout_s = Float(
        3.0, config=True, help="Timeout of one liveness probe."
    )
    watchdog_probe_failures = Int(
        3, config=True, help="Failed probes in a row after which a hung backend is killed."
    )
    memory_sample_interval_s = Float(
        2.0, config=True, help="Seconds between memory samples while someone needs them."
    )
    backend_threads = Int(
        0, config=True,
        help="--threads for each llama-server; 0 lets llama.cpp use every core. Set it on a "
        "small or shared machine: several backends spinning on all cores slow each other down.",
    )
    sse_ping_interval_s = Float(
        2.0, config=True,
        help="Seconds of silence (cold load, prefill) before a ': ping' SSE comment.",
    )

    @validate("max_loaded_models", "auto_evict_threshold_pct", "downsize_idle_timeout",
              "evict_idle_timeout", "memory_sample_interval_s")
    def _validate_runtime_setting(self, proposal: dict) -> object:
        """Reject a bad value in the config file with the same rule as /internal/set."""
        try:
            return validate_setting(proposal["trait"].name, proposal["value"])
        except InvalidRequestError as exc:
            raise TraitError(f"c.LemonadeApp.{proposal['trait'].name}: {exc.message}") from None

    @validate("sse_ping_interval_s")
    def _validate_ping_interval(self, proposal: dict) -> float:
        """A ping interval of 0 or less (or NaN) would make every silent stream ping in a busy
        loop, writing ``: ping`` as fast as the socket takes it; refuse it at start."""
        value = float(proposal["value"])
        if not 0.001 <= value <= 3600:
            raise TraitError(
                f"c.LemonadeApp.sse_ping_interval_s must be between 0.001 and 3600 s, not {value}"
            )
        return value

    @default("data_dir")
    def _default_data_dir(self) -> str:
        return str(Path(jupyter_data_dir()) / "lemonade")

    def router_settings(self) -> RouterSettings:
        """The traits as the router's settings."""
        return RouterSettings(
            max_loaded_models=self.max_loaded_models,
            auto_evict=self.auto_evict,
            auto_evict_threshold_pct=self.auto_evict_threshold_pct,
            downsize_idle_timeout=self.downsize_idle_timeout,
            evict_idle_timeout=self.evict_idle_timeout,
            restore_on_start=self.restore_on_start,
            crash_loop_threshold=self.crash_loop_threshold,
            crash_cooldown_s=self.crash_cooldown_s,
            ready_timeout_s=self.ready_timeout_s,
            watchdog_interval_s=self.watchdog_interval_s,
            watchdog_probe_timeout_s=self.watchdog_probe_timeout_s,
            watchdog_probe_failures=self.watchdog_probe_failures,
            memory_sample_interval_s=self.memory_sample_interval_s,
            backend_threads=self.backend_threads or None,
        )

    def initialize_settings(self) -> None:
        data_dir = Path(self.data_dir)
        self.router = Router(
            Catalog(data_dir),
            self.router_settings(),
            llama_server_path=self.llama_server_path or None,
            data_dir=data_dir,
        )
        self.upstream = UpstreamPool()
        self.settings.update({
            "lemonade_router": self.router,
            "lemonade_upstream": self.upstream,
            "lemonade_ping_interval_s": self.sse_ping_interval_s,
        })

    def initialize_handlers(self) -> None:
        self.handlers.extend(
            (f"/lemonade/{path}", handler, kwargs) for path, handler, kwargs in ROUTES
        )

    async def _start_jupyter_server_extension(self, serverapp: object) -> None:
        await self.router.start()
        self.log.info("lemonade router started (data in %s)", self.data_dir)

    async def stop_extension(self) -> None:
        upstream = getattr(self, "upstream", None)
        if upstream is not None:
            upstream.close()
        router = getattr(self, "router", None)
        if router is not None:
            await router.stop()
