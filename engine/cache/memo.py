"""A bounded in-memory cache (least recently used first out), for the warm engine's memories.

The warm engine (`python -m engine serve`) keeps the text embeddings of recent prompts and the
inversions it has read or made, so a prompt tweak costs neither the text encoder nor a cache read.
Bounded by a total size (entries, or bytes for tensors) so a long session cannot grow without end.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


def tensor_bytes(value: Any) -> int:
    """Size of a tensor (or anything else: 1), for a cache bounded in bytes."""
    try:
        return int(value.nbytes)  # a tensor, or a prompt's conditioning (engine/model/conditioning.py)
    except AttributeError:
        return 1


class Bounded:
    """A mapping that drops its least recently used entries beyond `limit` (in `size` units)."""

    def __init__(self, limit: int, size: Callable[[Any], int] = lambda _v: 1) -> None:
        self.limit = limit
        self.size = size
        self.total = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key: Hashable, value: Any) -> None:
        cost = self.size(value)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.total -= old[1]
            if cost > self.limit:  # larger than the whole cache: not kept
                return
            self._items[key] = (value, cost)
            self.total += cost
            while self.total > self.limit:
                _, (_, dropped) = self._items.popitem(last=False)
                self.total -= dropped

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.total = 0
