"""What the server knows about masks: resolving REFs (live, with a short cache), loading them into the engine's
workers once, and listing the masks this base can serve. No HTTP here; the middleware and routes call it.

REFs are resolved on every request through a cache of `resolve_ttl_s` seconds, so a version pushed or a tag moved
is served within that time, with no restart. The cache is keyed on the REF's canonical spelling, checked first (a
REF longer than any valid one is refused), and holds at most `resolve_cache_size` entries, least recently used out.
Residency: the workers' bank owns the slots, and is the only record of which masks are loaded. Before a request for
a mask goes to the engine, an idempotent load RPC makes sure the workers hold it (a resident mask costs a dictionary
lookup there; its file is not read again); nothing is loaded inside the forward pass. The heavy part of a load
(checking, decoding and gathering the mask into its slot file, runtime/slot_files.py) runs here on a thread, before
any lock, so cold masks prepare side by side while the engine decodes; the RPC only copies the file into a slot.
Loads are batched: the engine answers an RPC between two steps, so every load waiting when one ends goes in the next
RPC, and the masks queued behind a load cost one step between them, not one each. Every load spares the masks of
requests in flight here (`admit` ... `release`) and the other masks of its batch, so a mask is never evicted between
the moment a request is admitted and the moment the engine holds it. A mask that already has requests in flight is
admitted at once, with no RPC: every running load spares it. When every slot holds a mask in flight, a request for
another mask waits (as vLLM's scheduler holds LoRA requests for a free adapter slot), up to `slot_wait_s`, and only
then fails with BankFull (retryable). So that hot masks cannot keep every slot busy forever, a waiting request
drains one slot: the resident mask with the fewest requests in flight admits no new ones until it empties, and the
waiter takes its slot. Only that mask's new requests queue behind the waiter.
"""

import asyncio
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from mask_store.errors import MaskError, NotFound
from mask_store.store import Store
from runtime import canary
from runtime.bank import BankFull
from mask_store.logs import get_logger
from runtime.requests import ServedMask, first_result, new_mask_key, per_item, resolve
from runtime.slot_files import SLOT_FILE_BUDGET_FACTOR, SlotFiles, SlotPlan

from . import metrics
from .protocol import check_ref

logger = get_logger("serve")

RPC_TIMEOUT_S = 120.0  # a mask load takes milliseconds; an engine that does not answer in minutes is gone
RESOLVE_CACHE_SIZE = 1024  # REF resolutions kept; a server sees a few dozen REFs, a client can send any number


DEFAULT_RESOLVE_TTL_S = 1.0  # how long a REF resolution and the /v1/models listing are reused


class EngineUnavailable(MaskError):
    """The engine did not answer a mask RPC (stopped, or shutting down)."""

    status = 503


@dataclass
class _Load:
    """A load waiting for the next batch; `done` gets its report."""

    served: ServedMask
    path: str  # its slot file
    pin: bool
    admit: bool  # for a request: counted in flight once loaded, and may wait for a slot instead of failing
    done: asyncio.Future | None = None


class MaskService:
    def __init__(self, engine_client, store: Store, model_dir: str, base_id: str, served_name: str,
                 expected: dict[str, tuple[int, ...]], resolve_ttl_s: float = DEFAULT_RESOLVE_TTL_S,
                 slot_wait_s: float = 30.0,
                 resolve_cache_size: int = RESOLVE_CACHE_SIZE):
        self.engine = engine_client
        self.store = store
        self.model_dir = model_dir
        self.base_id = base_id
        self.served_name = served_name
        self.expected = expected  # HF tensor name -> shape of every projection a mask may name
        self.resolve_ttl_s = resolve_ttl_s
        self.resolve_cache_size = resolve_cache_size
        # canonical REF -> (at, the mask or the NotFound it gave): a `model` that is no mask (a LoRA adapter's name)
        # is not looked up in the store on every request either
        self._resolved: OrderedDict[str, tuple[float, ServedMask | NotFound]] = OrderedDict()
        self._listing: tuple[float, list] | None = None  # (at, this base's versions) for /v1/models and /v1/masks
        self._residency = asyncio.Lock()  # held while a batch of loads runs
        self._waiting: list[_Load] = []  # loads the next batch takes
        self._in_flight: Counter[str] = Counter()  # digest -> requests admitted and not yet finished
        self._slot_freed = asyncio.Event()  # set, then replaced, whenever a mask's last request in flight ends
        self._draining: str | None = None  # a resident mask admitting no new requests, to free its slot for a waiter
        self.slot_wait_s = slot_wait_s
        self.key = new_mask_key()  # per-digest tokens and cache salts derive from it; see runtime/requests.py

    async def _rpc(self, method: str, *args) -> dict:
        return first_result(await self._rpc_all(method, *args))

    async def _rpc_all(self, method: str, *args) -> list[dict]:
        """Every worker's answer. Bounded, so a request never waits forever on an engine that stopped (it would also
        hold up shutdown)."""
        try:
            return await asyncio.wait_for(self.engine.collective_rpc(method, args=args), RPC_TIMEOUT_S)
        except TimeoutError:
            raise EngineUnavailable(f"the engine did not answer {method} in {RPC_TIMEOUT_S:g} s") from None

    async def setup(self) -> None:
        report = await self._rpc("maskserve_setup", self.base_id, self.key)
        self.slot_files = SlotFiles(SlotPlan.from_report(report["plan"]), self.model_dir,
                                    SLOT_FILE_BUDGET_FACTOR * report["memory_bytes"])

    async def run_canary(self, config, dtype: str, generate) -> dict:
        """The start-up canary (runtime/canary.py) through the engine client; raises CanaryFailed on a mismatch.

        `generate(token_ids, served | None)` -> prompt log-probs, through the same path requests take."""
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as tmp:
            probe = canary.make_probe(config, self.base_id, Path(tmp))
            served = ServedMask("canary", 0, probe.digest, str(probe.mask_path))
            async with self._slot_file(served) as path:
                await self._commit(_Load(served, path, pin=False, admit=False))
            try:
                got = (await generate(probe.token_ids, None), await generate(probe.token_ids, served))
            finally:
                await self._rpc("maskserve_unload", served.digest)
            reference = await asyncio.to_thread(canary.reference_logprobs, Path(self.model_dir), probe)
        return canary.check(got, reference, dtype)

    def _cached(self, key: str) -> ServedMask | NotFound | None:
        hit = self._resolved.get(key)
        if hit is None:
            return None
        if time.monotonic() - hit[0] >= self.resolve_ttl_s:
            del self._resolved[key]
            return None
        self._resolved.move_to_end(key)
        return hit[1]

    def _remember(self, key: str, started: float, served: ServedMask | NotFound) -> None:
        """In the event loop's thread only: the cache is never touched from two threads."""
        if self.resolve_ttl_s <= 0:
            return
        self._resolved[key] = (started, served)
        self._resolved.move_to_end(key)
        while len(self._resolved) > self.resolve_cache_size:
            self._resolved.popitem(last=False)

    async def resolve(self, ref: str) -> ServedMask:
        """From the cache, or from the store on a worker thread: an S3 store is network round trips."""
        key = check_ref(ref)
        served = self._cached(key)
        if served is None:
            started = time.monotonic()
            try:
                served = await asyncio.to_thread(resolve, self.store, key, self.base_id, self.expected)
            except NotFound as e:
                served = e
            self._remember(key, started, served)
        if isinstance(served, NotFound):
            raise NotFound(str(served))
        return served

    async def admit(self, served: ServedMask) -> bool:
        """Make sure the workers hold the mask and keep it there until `release`: call before submitting. True when
        this admission loaded it (the request pays a cold load)."""
        if self._in_flight[served.digest] and served.digest != self._draining:
            # Resident and spared by any load running now (it was in flight when that load began): no lock, so
            # requests for hot masks never queue behind another mask's load.
            self._in_flight[served.digest] += 1
            return False
        deadline = time.monotonic() + self.slot_wait_s
        async with self._slot_file(served) as path:  # prepared before any lock: cold masks prepare side by side
            while True:
                freed = self._slot_freed
                if served.digest != self._draining:
                    report = await self._commit(_Load(served, path, pin=False, admit=True))
                    if report is not None:
                        return report["loaded"]
                try:  # no slot yet: releases and other masks' admissions go on
                    await asyncio.wait_for(freed.wait(), max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    logger.warning("%s waited %g s for a mask slot and was refused (503)", _label(served),
                                   self.slot_wait_s)
                    raise BankFull(f"all mask slots stayed in use for {self.slot_wait_s:g} s; retry later") from None

    async def _commit(self, load: "_Load") -> dict | None:
        """Load through the next batch: whoever takes `_residency` next loads every mask waiting for it in one RPC,
        so cold masks cost one engine step between them, not one each. The load's report; None for an admission
        that must wait for a slot."""
        load.done = asyncio.get_running_loop().create_future()
        self._waiting.append(load)
        async with self._residency:  # one batch at a time: every decision sees a settled bank
            if not load.done.done():
                batch, self._waiting = self._waiting, []
                await self._load_batch(batch)
        return load.done.result()

    async def _load_batch(self, batch: list["_Load"]) -> None:
        """Under `_residency`. Spares every mask with a request in flight, and every mask of the batch."""
        for load in batch:
            if load.admit and load.served.digest == self._draining:  # it admits no new requests until it drains
                load.done.set_result(None)
        batch = [load for load in batch if not load.done.done()]
        spared = bool(self._in_flight)  # requests may finish during the load, never start
        started = time.perf_counter()
        try:
            results = await self._rpc_all("maskserve_load", [(load.path, load.served.digest, load.pin)
                                                              for load in batch], sorted(self._in_flight))
            reports = per_item(results, "loads")
        except MaskError as e:  # the engine did not answer: every load of the batch fails with it
            for load in batch:
                load.done.set_exception(e)
            return
        elapsed = time.perf_counter() - started
        for load, report in zip(batch, reports):
            if isinstance(report, BankFull) and load.admit and spared:  # free a slot for this request
                self._drain_one()
                logger.info("every mask slot is in use: %s waits; %s admits no new requests until it drains",
                            _label(load.served), self._draining)
                load.done.set_result(None)
            elif isinstance(report, MaskError):
                load.done.set_exception(report)
            else:
                self._note_load(load.served, report, elapsed)
                if load.admit:
                    self._in_flight[load.served.digest] += 1
                load.done.set_result(report)

    def _drain_one(self) -> None:
        """Masks in flight are resident (every load spares them): drain the one with the fewest requests."""
        if self._draining not in self._in_flight:
            self._draining = min(self._in_flight, key=self._in_flight.__getitem__, default=None)

    def release(self, served: ServedMask) -> None:
        self._in_flight[served.digest] -= 1
        if self._in_flight[served.digest] <= 0:
            del self._in_flight[served.digest]
            self._slot_freed.set()
            self._slot_freed = asyncio.Event()

    async def ensure_loaded(self, served: ServedMask, pin: bool = False) -> dict:
        """Load into every worker unless already there (or add a pin); the report says whether this call loaded."""
        async with self._slot_file(served) as path:
            return await self._commit(_Load(served, path, pin, admit=False))

    @asynccontextmanager
    async def _slot_file(self, served: ServedMask) -> AsyncIterator[str]:
        """The mask's slot file (slot_files.py), prepared on a thread unless it exists, kept while the block runs."""
        path = self.slot_files.acquire_ready(served.digest) or \
            await asyncio.to_thread(self.slot_files.acquire, served.path, served.digest)
        try:
            yield str(path)
        finally:
            self.slot_files.release(served.digest)

    def _note_load(self, served: ServedMask, report: dict, elapsed_s: float) -> None:
        """Metrics and the log line for one load report; the bank, not this service, keeps what is resident."""
        metrics.MASK_EVICTIONS.inc(len(report["evicted"]))
        if report["loaded"]:
            metrics.MASK_LOAD_SECONDS.observe(elapsed_s)
            self._draining = None  # a slot was found: the waiter it drained for, if any, has it
            logger.info("loaded %s in %.0f ms (%d resident%s)", _label(served), 1e3 * elapsed_s, report["resident"],
                        f"; evicted {', '.join(report['evicted'])}" if report["evicted"] else "")
        metrics.MASKS_LOADED.set(report["resident"])

    async def unload(self, ref: str) -> bool:
        served = await self.resolve(ref)
        unloaded = (await self._rpc("maskserve_unload", served.digest, sorted(self._in_flight)))["unloaded"]
        if unloaded:
            logger.info("unloaded %s", _label(served))
        return unloaded

    async def status(self) -> dict:
        status = await self._rpc("maskserve_status")
        metrics.MASKS_LOADED.set(len(status["masks"]))
        names = {r.digest: r.ref for r in await self._versions()}
        for m in status["masks"]:
            m["ref"] = names.get(m["digest"])
        return status

    async def _versions(self) -> list:
        """This base's versions in the store, the listing reused for `resolve_ttl_s` as resolutions are: an S3 store
        reads one object per version to list them, which clients polling /v1/models or /v1/masks must not repeat on
        every call."""
        if self._listing is None or time.monotonic() - self._listing[0] >= self.resolve_ttl_s:
            started = time.monotonic()
            self._listing = (started, await asyncio.to_thread(self.store.versions, base_id=self.base_id))
        return self._listing[1]

    async def model_cards(self, created: int) -> list[dict]:
        """OpenAI model objects for every mask name this base can serve (its newest version), like vLLM's LoRAs."""
        newest = {}
        for record in await self._versions():
            newest[record.name] = record
        return [
            {"id": name, "object": "model", "created": created, "owned_by": "maskserve", "root": record.ref,
             "parent": self.served_name, "permission": [],
             "mask": {"name": name, "version": record.version, "digest": record.digest, "tags": list(record.tags)}}
            for name, record in sorted(newest.items())
        ]


def _label(served: ServedMask) -> str:
    """How log lines name a mask: its version and the digest workers know it by."""
    return f"mask {served.name}@{served.version} ({served.digest[:12]})"
