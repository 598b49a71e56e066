"""The Ollama API's model routes: ``/api/tags``, ``/api/ps``, ``/api/show``, ``/api/pull``,
``/api/delete`` and ``/api/version``, under ``lemonade/ollama/``.

Views of the router's catalog and live models in Ollama's shapes (sizes in bytes, times in
RFC 3339), and pulls from the hub (:mod:`..core.pulls`) told as Ollama's NDJSON progress. A pull
names a catalog model (``SmolLM2-360M-Instruct-GGUF``) or a hub checkpoint
(``hf.co/ORG/REPO:VARIANT``), which is registered as ``user.REPO-VARIANT`` and answers to the
name it was pulled by as well.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from datetime import datetime, timezone
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from .._version import __version__
from ..core.catalog import ModelSpec, PullRequest
from ..core.eviction import enabled_for
from ..core.gguf_facts import read_facts
from ..core.lifecycle import ModelState
from ..core.live_model import LiveModel
from ..core.pulls import PullJob
from ..errors import InvalidRequestError, LemonadeError, ModelNotFoundError
from .ollama_base import OllamaHandler, hub_checkpoint
from .ollama_translate import check_keys
from .rest import delete_model

#: The Ollama API version we answer like (``/api/version``).
OLLAMA_API_VERSION = "0.12.0"
#: ``expires_at`` of a model that no idle timer unloads (pinned, or keep-alive forever).
NEVER = "2318-01-01T00:00:00Z"
#: Seconds of silence on a pull stream before its progress is told again.
PULL_KEEPALIVE_S = 5.0
_QUANT = re.compile(r"(?i)(?:^|[-_.])((?:I?Q\d(?:_[A-Z0-9]+)*)|BF16|F16|F32)(?=[-_.]|$)")
_NAME_JUNK = re.compile(r"[^A-Za-z0-9._-]+")
#: Pulls whose client left: kept referenced until they have registered their model.
_orphans: set[asyncio.Future[Any]] = set()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def _files(spec: ModelSpec) -> tuple[str, ...]:
    return spec.files or ((spec.checkpoint,) if spec.checkpoint else ())


def _architecture(spec: ModelSpec) -> tuple[str, int | None, int | None]:
    """(architecture, trained context, layers) from the GGUF header; "" when unreadable."""
    try:
        facts = read_facts(spec.checkpoint)
    except (OSError, ValueError):
        return "", None, None
    return facts.architecture, facts.context_length, facts.n_layer


def details(spec: ModelSpec) -> dict[str, Any]:
    """Ollama's ``details`` of a model."""
    arch, _ctx, _layers = _architecture(spec) if spec.downloaded else ("", None, None)
    quant = _QUANT.search(os.path.basename(spec.checkpoint) or spec.source or "")
    return {"parent_model": "", "format": "gguf", "family": arch,
            "families": [arch] if arch else None, "parameter_size": "",
            "quantization_level": quant.group(1).upper() if quant else ""}


def _size_bytes(spec: ModelSpec) -> int:
    total = 0
    for path in _files(spec):
        try:
            total += os.path.getsize(path)
        except OSError:
            pass
    return total


def _digest(spec: ModelSpec) -> str:
    return hashlib.sha256((spec.source or spec.checkpoint).encode()).hexdigest()


def _modified(spec: ModelSpec) -> str:
    try:
        return _iso(os.path.getmtime(spec.checkpoint))
    except OSError:
        return _iso(0)


def tag_entry(spec: ModelSpec) -> dict[str, Any]:
    return {"name": spec.name, "model": spec.name, "modified_at": _modified(spec),
            "size": _size_bytes(spec), "digest": _digest(spec), "details": details(spec)}


def expires_at(m: LiveModel, router: Any) -> str:
    """When the idle timer would unload ``m`` if nothing uses it (NEVER without one)."""
    if m.pinned or not enabled_for(m.snapshot(), router.settings):
        return NEVER
    timeout = m.options.evict_idle_timeout
    if timeout is None:
        timeout = router.settings.evict_idle_timeout
    return _iso(m.last_use_wall + timeout)


def ps_entry(m: LiveModel, router: Any, model_details: dict[str, Any]) -> dict[str, Any]:
    """One loaded model as ``/api/ps`` shows it (``model_details``: :func:`details`)."""
    vram = sum(f.bytes or 0 for f in m.memory.gpu.values())
    size = m.memory_bytes or m.estimate_bytes or _size_bytes(m.spec)
    ctx = m.backend.options.ctx_size if m.backend is not None else None
    return {"name": m.name, "model": m.name, "size": size, "digest": _digest(m.spec),
            "details": model_details, "expires_at": expires_at(m, router),
            "size_vram": vram, "context_length": ctx, "pinned": m.pinned}


class TagsHandler(OllamaHandler):
    """``GET lemonade/ollama/api/tags``: the models on disk (the catalog's downloaded ones)."""

    _track_activity = False

    @web.authenticated
    @authorized
    async def get(self) -> None:
        specs = [s for s in self.router.catalog.all() if s.downloaded]
        # GGUF headers and file sizes are read in a worker thread, off the event loop.
        entries = await asyncio.to_thread(lambda: [tag_entry(s) for s in specs])
        self.write_json({"models": entries})


class PsHandler(OllamaHandler):
    """``GET lemonade/ollama/api/ps``: the loaded models, with memory and expiry."""

    _track_activity = False

    @web.authenticated
    @authorized
    async def get(self) -> None:
        gone = (ModelState.EVICTING, ModelState.UNLOADED)
        models = sorted((m for m in self.router.live_models() if m.state not in gone),
                        key=lambda m: m.name)
        facts = await asyncio.to_thread(lambda: [details(m.spec) for m in models])
        self.write_json({"models": [ps_entry(m, self.router, d) for m, d in zip(models, facts)]})


class ShowHandler(OllamaHandler):
    """``POST lemonade/ollama/api/show``: a model's details, GGUF facts and capabilities."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.json_body()
        check_keys(body, {"model", "name", "verbose"})
        name = self.local_model(self.model_param(body))
        spec = self.router.catalog.get(name)
        info: dict[str, Any] = {}
        if spec.downloaded:
            arch, ctx, layers = await asyncio.to_thread(_architecture, spec)
            if arch:
                info = {"general.architecture": arch, f"{arch}.context_length": ctx,
                        f"{arch}.block_count": layers}
        self.write_json({
            "modelfile": f"FROM {spec.checkpoint}\n", "parameters": "", "template": "",
            "details": await asyncio.to_thread(details, spec), "model_info": info,
            "modified_at": _modified(spec),
            "capabilities": ["embedding"] if spec.type == "embedding" else ["completion"],
        })


class VersionHandler(OllamaHandler):
    """``GET lemonade/ollama/api/version``."""

    _track_activity = False

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.write_json({"version": OLLAMA_API_VERSION, "lemonade_jupyter": __version__})


class DeleteHandler(OllamaHandler):
    """``DELETE lemonade/ollama/api/delete``: remove a model and its downloaded files."""

    @web.authenticated
    @authorized
    async def delete(self) -> None:
        body = self.json_body()
        check_keys(body, {"model", "name"})
        name = self.model_param(body)
        if name not in self.router.catalog and self.router.resolve(name) == name:
            raise ModelNotFoundError(f"model '{name}' not found", param="model")
        await delete_model(self.router, name, delete_files=True)
        self.set_status(200)
        self.finish()


def user_name_for(checkpoint: str) -> str:
    """``user.REPO-VARIANT`` for a hub checkpoint ``ORG/REPO:VARIANT``."""
    repo, _, variant = checkpoint.partition(":")
    stem = repo.rsplit("/", 1)[-1].removesuffix(".gguf")
    raw = f"{stem}-{variant}" if variant else stem
    return "user." + _NAME_JUNK.sub("-", raw).strip("-._")[:120]


class PullHandler(OllamaHandler):
    """``POST lemonade/ollama/api/pull``: NDJSON progress of a hub pull (or one line)."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.json_body()
        check_keys(body, {"model", "name", "insecure", "stream"})
        stream = body.get("stream", True)
        if not isinstance(stream, bool):
            raise InvalidRequestError("Parameter 'stream' must be a boolean", param="stream")
        request = self._request(body)
        catalog = self.router.catalog
        job = catalog.start_pull(request, self.router.events.emit)
        finish = asyncio.ensure_future(catalog.finish_pull(request, job))
        if not stream:
            await finish
            self.write_json({"status": "success"})
            return
        await self.run_stream(self._progress(job, finish))

    def _request(self, body: dict[str, Any]) -> PullRequest:
        raw = body.get("model", body.get("name"))
        if not isinstance(raw, str) or not raw or len(raw) > 512:
            raise InvalidRequestError("Parameter 'model' is required", param="model")
        name = self.resolve_name(raw)
        catalog = self.router.catalog
        if name in catalog:
            return catalog.prepare_pull(name, None)
        checkpoint = hub_checkpoint(raw)
        if checkpoint is None:
            raise ModelNotFoundError(
                f"model '{raw}' not found: pull a catalog model by name or a hub checkpoint "
                "hf.co/ORG/REPO:VARIANT", param="model")
        return catalog.prepare_pull(user_name_for(checkpoint), checkpoint, "llamacpp")

    async def _progress(self, job: PullJob | None,
                        finish: asyncio.Future[ModelSpec]) -> None:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        unsubscribe = job.subscribe(queue.put_nowait) if job is not None else (lambda: None)
        try:
            await self.write_line({"status": "pulling manifest"})
            current = job.progress() if job is not None else None
            if current is not None:
                queue.put_nowait(current)
            while not finish.done():
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter, finish}, timeout=PULL_KEEPALIVE_S,
                                             return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    await self.write_line(_progress_line(getter.result()))
                else:
                    getter.cancel()
            while not queue.empty():
                await self.write_line(_progress_line(queue.get_nowait()))
            try:
                finish.result()
            except LemonadeError:
                raise
            except Exception as exc:  # noqa: BLE001 - told as a line, logged here
                self.log.error("Pull failed", exc_info=exc)
                raise LemonadeError("Internal error in the lemonade router; see the Jupyter "
                                    "server log") from None
            for status in ("verifying sha256 digest", "writing manifest", "success"):
                await self.write_line({"status": status})
        except BaseException:
            if not finish.done():  # the client left: the pull goes on and registers
                _orphans.add(finish)
                finish.add_done_callback(_orphans.discard)
                finish.add_done_callback(_retrieve)
            raise
        finally:
            unsubscribe()


def _progress_line(p: dict[str, Any]) -> dict[str, Any]:
    name = os.path.basename(str(p.get("file") or ""))
    line: dict[str, Any] = {"status": f"pulling {name}", "digest": name,
                            "completed": p.get("file_bytes_downloaded") or 0}
    if p.get("file_bytes_total") is not None:
        line["total"] = p["file_bytes_total"]
    return line


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # an orphaned pull's failure was an event already
