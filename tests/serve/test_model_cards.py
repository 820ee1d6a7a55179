"""GET /v1/models lists the masks this base can serve; the listing is reused for the resolution TTL, so a client
polling it does not make an S3 store read every version record on every call."""

import asyncio

from mask_store.format import save_mask
from mask_store.store import Store
from serve.masks import MaskService
from tests.mask_store.helpers import BASE_A, random_mask

from .fake_vllm import FakeEngine


class CountingStore(Store):
    listings = 0

    def versions(self, *args, **kwargs):
        type(self).listings += 1
        return super().versions(*args, **kwargs)


def _cards(tmp_path, ttl: float, calls: int) -> tuple[list[list[str]], int]:
    CountingStore.listings = 0
    store = CountingStore(tmp_path / "store")
    save_mask(random_mask(0), tmp_path / "a.mask")
    store.push(tmp_path / "a.mask", "a")
    service = MaskService(FakeEngine(), store, "unused", BASE_A, "base", {}, resolve_ttl_s=ttl)

    async def scenario():
        out = []
        for i in range(calls):
            out.append([card["id"] for card in await service.model_cards(0)])
            save_mask(random_mask(i + 1), tmp_path / "b.mask")
            store.push(tmp_path / "b.mask", "b")  # visible once the TTL has passed
        return out

    return asyncio.run(scenario()), CountingStore.listings


def test_the_listing_is_reused_within_the_ttl(tmp_path):
    names, listings = _cards(tmp_path, ttl=3600, calls=3)
    assert listings == 1
    assert names == [["a"], ["a"], ["a"]]


def test_with_no_ttl_every_call_lists_the_store(tmp_path):
    names, listings = _cards(tmp_path, ttl=0, calls=2)
    assert listings == 2
    assert names == [["a"], ["a", "b"]]


def test_the_mask_status_route_shares_the_listing(tmp_path):
    """GET /v1/masks names each resident mask's version from the store listing: it listed the store on every call
    (on S3 a GET per version), where /v1/models reused its listing for the TTL."""
    CountingStore.listings = 0
    store = CountingStore(tmp_path / "store")
    save_mask(random_mask(0), tmp_path / "a.mask")
    store.push(tmp_path / "a.mask", "a")
    service = MaskService(FakeEngine(), store, "unused", BASE_A, "base", {}, resolve_ttl_s=3600)

    async def scenario():
        for _ in range(3):
            await service.status()
        await service.model_cards(0)

    asyncio.run(scenario())
    assert CountingStore.listings == 1
