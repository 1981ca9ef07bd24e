"""Fake backends for the guest-model contract tests.

``RecordingFrontswap`` / ``RecordingCleancache`` are fake backends: plain dicts that log every op
call. They exist so a contract test can see exactly which backend ops the *frontend* issues (the
real backends hide that); every behaviour is also exercised with the real backends elsewhere.
"""

from __future__ import annotations

from xentmem.abi import PAGE_SIZE


def page(fill: int) -> bytes:
    return bytes([fill]) * PAGE_SIZE


class RecordingFrontswap:
    """A fake frontswap backend: stores in a dict, logs calls, rejects what ``reject`` says."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.pages: dict[tuple[int, int], bytes] = {}
        self.reject: set[tuple[int, int]] = set()
        self.exclusive = False

    def init(self, type: int) -> None:
        self.calls.append(("init", type))

    def store(self, type: int, offset: int, page: bytes) -> int:
        self.calls.append(("store", type, offset))
        if (type, offset) in self.reject:
            self.pages.pop((type, offset), None)  # the contract: drop the old copy
            return -1
        self.pages[(type, offset)] = bytes(page)
        return 0

    def load(self, type: int, offset: int, page: bytearray) -> int:
        self.calls.append(("load", type, offset))
        data = (self.pages.pop if self.exclusive else self.pages.get)((type, offset), None)
        if data is None:
            return -1
        page[:] = data
        return 0

    def invalidate_page(self, type: int, offset: int) -> None:
        self.calls.append(("invalidate_page", type, offset))
        self.pages.pop((type, offset), None)

    def invalidate_area(self, type: int) -> None:
        self.calls.append(("invalidate_area", type))
        for k in [k for k in self.pages if k[0] == type]:
            del self.pages[k]

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


class RecordingCleancache:
    """A fake cleancache backend with private (exclusive) pools, logging every call."""

    def __init__(self, refuse_shared: bool = False) -> None:
        self.calls: list[tuple] = []
        self.pools: dict[int, dict] = {}
        self.shared: set[int] = set()
        self.next = 0
        self.refuse_shared = refuse_shared

    def init_fs(self, pagesize: int) -> int:
        self.calls.append(("init_fs", pagesize))
        self.pools[self.next] = {}
        self.next += 1
        return self.next - 1

    def init_shared_fs(self, uuid: bytes, pagesize: int) -> int:
        self.calls.append(("init_shared_fs", uuid, pagesize))
        if self.refuse_shared:
            return -22
        self.pools[self.next] = {}
        self.shared.add(self.next)
        self.next += 1
        return self.next - 1

    def get_page(self, pool_id, key, index, page) -> int:
        self.calls.append(("get_page", pool_id, key, index))
        pool = self.pools.get(pool_id, {})
        data = pool.get((key, index)) if pool_id in self.shared else pool.pop((key, index), None)
        if data is None:
            return -1
        page[:] = data
        return 0

    def put_page(self, pool_id, key, index, page) -> None:
        self.calls.append(("put_page", pool_id, key, index))
        self.pools.setdefault(pool_id, {})[(key, index)] = bytes(page)

    def invalidate_page(self, pool_id, key, index) -> None:
        self.calls.append(("invalidate_page", pool_id, key, index))
        self.pools.get(pool_id, {}).pop((key, index), None)

    def invalidate_inode(self, pool_id, key) -> None:
        self.calls.append(("invalidate_inode", pool_id, key))
        pool = self.pools.get(pool_id, {})
        for k in [k for k in pool if k[0] == key]:
            del pool[k]

    def invalidate_fs(self, pool_id) -> None:
        self.calls.append(("invalidate_fs", pool_id))
        self.pools.pop(pool_id, None)
