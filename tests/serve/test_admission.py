"""Admission: a request's mask stays resident while it is in flight, and a request for another mask waits for a
slot (bounded) instead of failing while every slot is busy. MaskService over the fake engine: fast, no HTTP."""

import asyncio
from pathlib import Path

import pytest

from runtime.bank import BankFull
from mask_store.format import save_mask
from mask_store.store import Store
from serve.masks import MaskService
from tests.mask_store.helpers import BASE_A, random_mask

from .fake_vllm import FakeEngine, fake_model


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "store")
    for i, name in enumerate(["a", "b", "c"]):
        save_mask(random_mask(i), tmp_path / f"{name}.mask")
        store.push(tmp_path / f"{name}.mask", name)
    return store


async def _service(store, slot_wait_s):
    expected = {n: t.shape for n, t in random_mask(0).tensors.items()}
    engine = FakeEngine(BASE_A, 1)  # one slot
    service = MaskService(engine, store, str(fake_model(Path(store.uri).parent)), BASE_A, "base", expected,
                          resolve_ttl_s=0.0, slot_wait_s=slot_wait_s)
    await service.setup()
    for name in ("a", "b", "c"):  # their slot files: admissions then run on the event loop alone, as _spin needs
        served = await service.resolve(name)
        await asyncio.to_thread(service.slot_files.acquire, served.path, served.digest)
        service.slot_files.release(served.digest)
    return service, engine


async def _spin(turns: int = 50) -> None:
    for _ in range(turns):  # let every ready task run; no wall-clock waiting
        await asyncio.sleep(0)


def _gate_loads(engine, when=lambda: True) -> asyncio.Event:
    """From now on, a load RPC sent while `when()` holds waits until the returned event is set."""
    gate, rpc = asyncio.Event(), engine.collective_rpc

    async def gated(method, args=()):
        if method == "maskserve_load" and when():
            await gate.wait()
        return await rpc(method, args)

    engine.collective_rpc = gated
    return gate


def test_a_request_waits_for_a_busy_slot_then_runs(store):
    async def scenario():
        service, engine = await _service(store, slot_wait_s=30)
        a, b = await service.resolve("a"), await service.resolve("b")
        await service.admit(a)
        waiting = asyncio.ensure_future(service.admit(b))
        await _spin()
        assert not waiting.done() and list(engine.loaded) == [a.digest]  # a, in flight, was not evicted
        service.release(a)
        await asyncio.wait_for(waiting, 10)
        assert list(engine.loaded) == [b.digest]
        service.release(b)

    asyncio.run(scenario())


def test_a_request_gives_up_when_no_slot_frees_in_time(store):
    async def scenario():
        service, engine = await _service(store, slot_wait_s=0.01)
        a, b = await service.resolve("a"), await service.resolve("b")
        await service.admit(a)
        with pytest.raises(BankFull, match="stayed in use"):
            await service.admit(b)
        assert list(engine.loaded) == [a.digest]

    asyncio.run(scenario())


def test_a_hot_mask_cannot_starve_a_waiting_one(store):
    """New requests for a busy resident mask queue behind a request waiting for its slot, so the slot drains."""
    async def scenario():
        service, engine = await _service(store, slot_wait_s=30)
        a, b = await service.resolve("a"), await service.resolve("b")
        await service.admit(a)
        waiting_b = asyncio.ensure_future(service.admit(b))
        await _spin()
        late_a = asyncio.ensure_future(service.admit(a))  # would keep a's slot busy forever if admitted at once
        await _spin()
        assert not late_a.done() and not waiting_b.done()
        service.release(a)  # a drains: b gets the slot before the late request for a
        await asyncio.wait_for(waiting_b, 10)
        assert list(engine.loaded) == [b.digest] and not late_a.done()
        service.release(b)
        await asyncio.wait_for(late_a, 10)
        assert list(engine.loaded) == [a.digest]
        service.release(a)

    asyncio.run(scenario())


def test_a_mask_in_flight_is_admitted_while_another_mask_loads(store):
    """Requests for a hot mask do not queue behind a cold mask's load (bench/many_masks.py: p99 TTFT)."""
    async def scenario():
        service, engine = await _service(store, slot_wait_s=30)
        engine.capacity = 2
        gate = _gate_loads(engine, lambda: engine.loaded)  # the second mask's load takes until the gate opens
        a, b = await service.resolve("a"), await service.resolve("b")
        await service.admit(a)
        loading_b = asyncio.ensure_future(service.admit(b))
        await _spin()
        assert not loading_b.done()
        await asyncio.wait_for(service.admit(a), 1)  # admitted while b's load still runs
        gate.set()
        await asyncio.wait_for(loading_b, 10)
        assert set(engine.loaded) == {a.digest, b.digest}
        for served in (a, a, b):
            service.release(served)

    asyncio.run(scenario())


def test_a_drained_mask_that_kept_its_slot_is_admitted_again(store):
    """A waiter drains the least busy mask, but the load it waited for may evict another one: the drained mask must
    not stay closed to new requests (it did, until each one timed out after slot_wait_s)."""
    async def scenario():
        service, engine = await _service(store, slot_wait_s=30)
        engine.capacity = 2
        a, b, c = [await service.resolve(n) for n in "abc"]
        await service.admit(a)
        await service.admit(b)
        waiting_c = asyncio.ensure_future(service.admit(c))
        await _spin()
        assert not waiting_c.done() and service._draining == a.digest
        service.release(b)  # b frees its slot first: c evicts b, and a keeps its slot
        await asyncio.wait_for(waiting_c, 10)
        assert set(engine.loaded) == {a.digest, c.digest}
        await asyncio.wait_for(service.admit(a), 1)
        for served in (a, a, c):
            service.release(served)

    asyncio.run(scenario())


def test_the_workers_bank_is_the_only_record_of_residency(store):
    """A mask the workers dropped behind the server's back (another admin path, a restarted worker) is loaded again
    before the next request for it, never assumed resident."""
    async def scenario():
        service, engine = await _service(store, slot_wait_s=30)
        a = await service.resolve("a")
        await service.admit(a)
        service.release(a)
        engine.loaded.clear()
        await service.admit(a)
        assert list(engine.loaded) == [a.digest]
        service.release(a)

    asyncio.run(scenario())


def _load_calls(engine) -> list[list[str]]:
    return [[digest for _, digest, _ in args[0]] for method, args in engine.calls if method == "maskserve_load"]


def test_cold_masks_that_wait_behind_a_load_are_loaded_together_in_one_call(store):
    """Each load RPC waits for the engine's step to end: masks queued behind one load share the next RPC."""
    async def scenario():
        service, engine = await _service(store, slot_wait_s=30)
        engine.capacity = 3
        gate = _gate_loads(engine, lambda: not engine.loaded)  # the first load
        a, b, c = [await service.resolve(name) for name in "abc"]
        first = asyncio.ensure_future(service.admit(a))
        await _spin()
        rest = [asyncio.ensure_future(service.admit(m)) for m in (b, c)]
        await _spin()
        assert not first.done() and not any(r.done() for r in rest)
        gate.set()
        assert await first and await asyncio.gather(*rest) == [True, True]  # each was loaded for its request
        assert _load_calls(engine) == [[a.digest], [b.digest, c.digest]]
        for m in (a, b, c):
            service.release(m)

    asyncio.run(scenario())


def test_a_load_of_a_batch_that_finds_no_slot_waits_alone(store):
    """In one batch, b gets the last free slot and c finds none: b's request goes on, c's waits for a slot."""
    async def scenario():
        service, engine = await _service(store, slot_wait_s=30)
        engine.capacity = 2
        a, b, c = [await service.resolve(name) for name in "abc"]
        await service.admit(a)
        gate = _gate_loads(engine)  # the next load waits until b and c are both queued behind it
        holder = asyncio.ensure_future(service.ensure_loaded(a))  # a no-op load that b and c queue behind
        await _spin()
        waiting = {m.name: asyncio.ensure_future(service.admit(m)) for m in (b, c)}
        await _spin()
        gate.set()
        await holder
        assert await asyncio.wait_for(waiting["b"], 10) is True
        await _spin()
        assert not waiting["c"].done() and set(engine.loaded) == {a.digest, b.digest}
        service.release(a)  # frees a's slot: c takes it
        assert await asyncio.wait_for(waiting["c"], 10) is True
        assert set(engine.loaded) == {b.digest, c.digest}
        assert _load_calls(engine)[1:3] == [[a.digest], [b.digest, c.digest]]
        service.release(b)
        service.release(c)

    asyncio.run(scenario())
