"""Admission by fit: where a model goes, what it needs there, and who makes room for it.

Slots (``max_loaded_models``) say how many models a pool holds; memory says whether the next
one fits. Before a backend starts, :meth:`FitAdmission.place` chooses its devices
(:mod:`.placement`) and estimates its need: the figure measured the last time the same file ran
with the same process options, else the GGUF header's estimate (:mod:`.gguf_facts`; a
whisper.cpp model's from its own header, :mod:`.whisper_facts`). Then
:meth:`FitAdmission.victims` asks :func:`~.decisions.fit` on each of its devices: free memory
(a GPU's free memory minus ``gpu_memory_reserve_mib``, or ``memory_budget_mib`` minus what the
models on the CPU hold) against the need; the LRU unpinned idle models on that device are the
victims, evicted as one decision with reason ``fit``; when pinned or busy models make it
impossible, :class:`InsufficientMemoryError` (409, with every device's figures) and nobody is
evicted. A model spread over several GPUs needs its share (``--tensor-split``) on each.

GPUs are NVML's; on a machine without NVML (ROCm, Vulkan, Metal) they are the devices the
engine listed when it was probed (:mod:`.engines.probe`), whose free memory is the engine's
figure at the probe.

Estimates are only made where a fit is checked (on a GPU, or with a RAM budget): reading a
header takes a while, and without a budget a CPU load needs none.

A planner: it reads models and returns decisions (:class:`FitPlan`, the context to start with,
each model's :class:`~.memory_sources.ModelMemory`); :class:`~.model_table.ModelTable` applies
them, so a model's record keeps one writer. Owns ``_measured`` (what models measured once
they ran). Runs on the router's loop.
"""

from __future__ import annotations

import asyncio
import logging

import psutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ..errors import InsufficientMemoryError
from . import placement as placing
from .context_size import cpu_room_bytes, is_auto, largest_fitting_context, requested_context
from .decisions import EvictReason, fit, may_evict
from .engines.llamacpp import DEFAULT_CTX_SIZE
from .engines.probe import EngineDevice
from .gguf_facts import read_facts
from .live_model import LiveModel
from .memory import DeviceMemory, MemorySample
from .memory_sources import ModelMemory, attribute
from .placement import Placement
from .settings import RouterSettings
from .whisper_facts import estimate_bytes as whisper_estimate
from .whisper_models import WHISPER_RECIPE

log = logging.getLogger(__name__)
MIB = 1024 * 1024


@dataclass(frozen=True)
class FitPlan:
    """Where a model's next start goes, what it needs there, and the context it starts with."""

    placement: Placement
    #: Its expected need (None: no fit is checked for it).
    estimate_bytes: int | None
    ctx_size: int | None


class FitAdmission:
    """Placement, need estimates and the fit decision for models about to start."""

    def __init__(self, settings: Callable[[], RouterSettings],
                 offloads: Callable[[], bool],
                 engine_gpus: Callable[[], tuple[EngineDevice, ...]] = tuple) -> None:
        """``engine_gpus``: the GPUs the next start's engine listed (its names for them,
        and the figures where NVML has none)."""
        self._settings = settings
        self._offloads = offloads
        self._engine_gpus = engine_gpus
        self._measured: dict[tuple[object, ...], int] = {}

    def active(self) -> bool:
        """Whether placement or fit has anything to decide: an engine that offloads, or a
        RAM budget."""
        return self._offloads() or self._settings().memory_budget_mib is not None

    async def resolve_context(self, m: LiveModel) -> int:
        """The context ``m``'s next start asks for: the ``ctx_size`` number, or for ``auto``
        (the default) the trained context from the GGUF header (read off the loop);
        :meth:`place` or :meth:`place_unchecked` may lower an ``auto`` to what fits."""
        facts = None
        if _sized_by_fit(m):
            try:
                facts = await asyncio.to_thread(read_facts, m.spec.checkpoint)
            except (OSError, ValueError) as exc:
                log.warning("Cannot read the trained context of %s (using %d): %s",
                            m.name, DEFAULT_CTX_SIZE, exc)
        return requested_context(m.options.ctx_size, facts)

    async def place(self, m: LiveModel, ctx_size: int, others: Sequence[LiveModel],
                    sample: MemorySample) -> FitPlan:
        """Choose ``m``'s devices and estimate its need there for a start with ``ctx_size``.

        An ``auto`` context is capped here to the largest that fits the room (free memory
        plus what every model that may go for a fit holds; on the CPU without a budget, the
        machine's room). Nobody is evicted here; :meth:`victims` refuses (409) a need that
        cannot fit once the plan is applied."""
        gpus = self._gpus(sample, others)
        offload = self._offloads()
        on_gpu = not placing.choose(m.options, gpus, offload=offload).on_cpu
        need = None
        if on_gpu or self._settings().memory_budget_mib is not None:
            need = await self._need(m, ctx_size)
        where = self._choose(m, need, gpus, offload, others)
        if _sized_by_fit(m):
            room = self.room(where, others, sample) if need is not None else None
            if room is not None and need is not None and need > room:
                ctx_size = await self._cap_context(m, ctx_size, room)
                need = await self._need(m, ctx_size)
                where = self._choose(m, need, gpus, offload, others)
            elif need is None and where.on_cpu:  # the CPU without a budget
                ctx_size = await self._cap_context(m, ctx_size, await _machine_room())
        return FitPlan(where, need, ctx_size)

    async def place_unchecked(self, m: LiveModel, ctx_size: int) -> FitPlan:
        """The plan when nothing is checked (an engine that cannot offload, no RAM budget):
        the CPU, no estimate, and an ``auto`` context capped to the machine's room
        (:func:`~.context_size.cpu_room_bytes`)."""
        if _sized_by_fit(m):
            ctx_size = await self._cap_context(m, ctx_size, await _machine_room())
        return FitPlan(Placement(), None, ctx_size)

    def _choose(self, m: LiveModel, need: int | None, gpus: tuple[DeviceMemory, ...],
                offload: bool, others: Sequence[LiveModel]) -> Placement:
        reclaimable = [sum(x.held_on(d.uuid) for x in others
                           if d.uuid in x.devices() and may_evict(x.snapshot(), EvictReason.FIT))
                       for d in gpus if d.uuid]
        return placing.choose(m.options, gpus, offload=offload, need_bytes=need,
                              reserve_bytes=self._reserve_bytes(), reclaimable=reclaimable,
                              names=[d.name for d in self._engine_gpus()])

    def _gpus(self, sample: MemorySample,
              others: Sequence[LiveModel]) -> tuple[DeviceMemory, ...]:
        """The GPUs placement chooses from: NVML's, else those the engine listed (with what
        the router's models hold there since counted as used)."""
        if sample.gpus():
            return sample.gpus()
        listed = [_as_memory(d) for d in self._engine_gpus()]
        return tuple(DeviceMemory(d.name, d.total, d.used + self._held(d.uuid or "", others),
                                  d.uuid) for d in listed)

    def _device(self, sample: MemorySample, key: str) -> DeviceMemory | None:
        """A device of the sample, else (no NVML) the engine-listed one, whose used memory
        is the engine's figure at the probe: the models' own share is added by the caller."""
        found = sample.device(key)
        if found is not None or key == placing.CPU or sample.gpus():
            return found
        return next((_as_memory(d) for d in self._engine_gpus() if d.name == key), None)

    @staticmethod
    def _held(key: str, models: Sequence[LiveModel]) -> int:
        return sum(x.held_on(key) for x in models if key in x.devices())

    async def _cap_context(self, m: LiveModel, ctx_size: int, room: int) -> int:
        """``ctx_size`` (an ``auto`` one) capped to what fits ``room`` (:mod:`.context_size`)."""
        try:
            facts = await asyncio.to_thread(read_facts, m.spec.checkpoint)
        except (OSError, ValueError):
            return ctx_size  # no header, no per-token figure: the fit check decides as it is
        capped = largest_fitting_context(facts, room, ctx_size)
        if capped != ctx_size:
            log.info("%s: trained context %d does not fit in %d MiB; starting with %d",
                     m.name, ctx_size, room // MIB, capped)
        return capped

    def room(self, where: Placement, others: Sequence[LiveModel],
             sample: MemorySample) -> int | None:
        """The largest need a model could have on the devices of ``where`` with its split: on
        each, free memory plus what every model that may be evicted for a fit holds, divided
        by its share. None where nothing is checked (the CPU without a budget, a device the
        sample does not know)."""
        rooms = []
        for key in where.device_keys:
            members = [x for x in others if key in x.devices()]
            free = self._free(key, members, sample)
            if free is None:
                return None
            room = free + sum(x.held_on(key) for x in members
                              if may_evict(x.snapshot(), EvictReason.FIT))
            rooms.append(int(room / max(where.share(key), 1e-9)))
        return min(rooms) if rooms else None

    def _free(self, key: str, members: Sequence[LiveModel],
              sample: MemorySample) -> int | None:
        """Free bytes on device ``key`` for a model beside ``members``; None where no fit is
        checked."""
        if key == placing.CPU:
            budget = self._settings().memory_budget_mib
            if budget is None:
                return None
            return int(budget * MIB) - sum(x.held_on(key) for x in members)
        device = self._device(sample, key)
        if device is None:
            return None
        if sample.device(key) is None:
            # Engine-listed (no NVML): its figure predates every model of ours there.
            return device.total - device.used - self._reserve_bytes() - self._held(key, members)
        # Neighbours still loading are not in the device's used memory yet.
        pending = sum(x.held_on(key) for x in members if x.backend is None)
        return device.total - device.used - self._reserve_bytes() - pending

    def victims(self, m: LiveModel, others: Sequence[LiveModel],
                sample: MemorySample) -> list[LiveModel]:
        """The models to evict so ``m`` fits on each of its devices (its share on each);
        409 if any device cannot make room, with every device's figures."""
        if m.estimate_bytes is None:
            return []
        victims: list[LiveModel] = []
        figures: list[dict[str, object]] = []
        refused: tuple[str, int, int, int] | None = None  # where, need, free, pinned
        for key in m.placement.device_keys:
            members = [x for x in others if key in x.devices()]
            maybe_free = self._free(key, members, sample)
            if maybe_free is None:
                continue
            free = maybe_free
            need = int(m.estimate_bytes * m.placement.share(key))
            by_name = {x.name: x for x in members}
            decision = fit(need, free, [x.snapshot() for x in members],
                           {x.name: x.held_on(key) for x in members})
            figure: dict[str, object] = {
                "device": _where(m, key), "needed_bytes": need, "free_bytes": max(free, 0),
                "pinned_bytes": decision.pinned, "fits": decision.fits}
            if key != placing.CPU:
                figure["gpu"] = m.placement.gpus[m.placement.uuids.index(key)]
                figure["uuid"] = key
            figures.append(figure)
            if not decision.fits:
                refused = refused or (_where(m, key), need, max(free, 0), decision.pinned)
                continue
            victims += [by_name[v.name] for v in decision.victims
                        if by_name[v.name] not in victims]
        if refused is not None:
            where, need, free, pinned = refused
            raise InsufficientMemoryError(m.name, where, needed_bytes=need, free_bytes=free,
                                          pinned_bytes=pinned, devices=figures)
        return victims

    def attribute(self, models: Iterable[LiveModel],
                  sample: MemorySample) -> list[tuple[LiveModel, ModelMemory]]:
        """Each running model's memory in a sample (per device, with sources), for the table
        to apply; remembers each model's measured figure for its next admission."""
        found = []
        for m in models:
            backend = m.backend
            if backend is None or backend.pid is None:
                continue
            memory = attribute(backend.pid, m.placement, sample, backend.buffer_report,
                               m.load_delta)
            total = memory.total_for(m.placement)
            if total is not None:
                self._measured[_measure_key(m, m.ctx_size)] = total
            found.append((m, memory))
        return found

    async def _need(self, m: LiveModel, ctx_size: int | None) -> int | None:
        """The measured figure of an earlier run with the same file and options, else the
        estimate from the GGUF header (a whisper.cpp model's: :mod:`.whisper_facts`); None
        when the header cannot be read."""
        measured = self._measured.get(_measure_key(m, ctx_size))
        if measured is not None:
            return measured
        if m.spec.recipe == WHISPER_RECIPE:
            try:
                return await asyncio.to_thread(whisper_estimate, m.spec.checkpoint)
            except (OSError, ValueError) as exc:
                log.info("No memory estimate for %s: %s", m.name, exc)
                return None
        try:
            facts = await asyncio.to_thread(read_facts, m.spec.checkpoint)
        except (OSError, ValueError) as exc:
            log.info("No memory estimate for %s: %s", m.name, exc)
            return None
        return facts.estimate_bytes(ctx_size or m.options.ctx_size or DEFAULT_CTX_SIZE)

    def _reserve_bytes(self) -> int:
        return int(self._settings().gpu_memory_reserve_mib * MIB)


async def _machine_room() -> int:
    """The room of an ``auto`` context on the CPU without a budget: a share of the memory the
    machine has available now (read in a worker thread: psutil reads /proc)."""
    available = (await asyncio.to_thread(psutil.virtual_memory)).available
    return cpu_room_bytes(int(available))


def _where(m: LiveModel, key: str) -> str:
    if key == placing.CPU:
        return "the CPU (memory_budget_mib)"
    return f"GPU {m.placement.gpus[m.placement.uuids.index(key)]}"


def _as_memory(device: EngineDevice) -> DeviceMemory:
    """An engine-listed device as a memory device, keyed by the engine's name for it."""
    return DeviceMemory(device.description, device.total_bytes,
                        device.total_bytes - device.free_bytes, device.name)


def _measure_key(m: LiveModel, ctx_size: int | None) -> tuple[object, ...]:
    # The context actually started with: a -1 can resolve differently from run to run.
    return (m.spec.checkpoint, m.options.process_key(), ctx_size)


def _sized_by_fit(m: LiveModel) -> bool:
    """Whether ``m``'s context is ours to choose: an ``auto`` ``ctx_size`` on a model that has
    a context (a speech model has none to read or cap)."""
    return is_auto(m.options.ctx_size) and m.spec.recipe != WHISPER_RECIPE
