"""The generation session: which sequence the KV cache holds, and which of its tokens, at which positions.

One owner for these facts (they were flags written by the engine and reset by the graphs in three places): the
engine asks the session whether a stream's tokens are still in the cache (else it prefills again), the graphs record
what each prefill and decode step wrote, and anything that overwrites cache rows out of turn (a graph check's probe,
an evaluation pass, recaptured graphs) says so with `forget`. It holds one sequence now, in a list of slots shaped
for several (continuous batching gives each slot its own cache region).
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Slot:
    """One sequence's place in the KV cache: the stream that owns it and the token ids at positions 0.."""

    owner: object | None = None
    ids: list[int] = field(default_factory=list)


class GenerationSession:
    def __init__(self, n_slots: int = 1) -> None:
        self.slots = [Slot() for _ in range(n_slots)]

    @property
    def slot(self) -> Slot:
        return self.slots[0]

    @property
    def cached_ids(self) -> list[int]:
        """The token ids whose keys and values the cache holds at positions 0.. (a copy)."""
        return list(self.slot.ids)

    def holds(self, owner: object) -> bool:
        """Whether the cache still holds `owner`'s tokens (no other stream ran in between)."""
        return self.slot.owner is owner

    def claim(self, owner: object) -> None:
        self.slot.owner = owner

    def shared_prefix(self, ids: list[int]) -> int:
        """How many leading tokens of `ids` the cache already holds, leaving at least the last one to compute (its
        logits are the answer)."""
        shared = 0
        for a, b in zip(self.slot.ids, ids[:-1]):
            if a != b:
                break
            shared += 1
        return shared

    def wrote(self, ids: list[int]) -> None:
        """A prefill wrote the cache rows of `ids` from position 0."""
        self.slot.ids = list(ids)

    def wrote_token(self, token: int, pos: int) -> None:
        """A decode step wrote `token` at `pos` (the rows after it are stale)."""
        ids = self.slot.ids
        self.slot.ids = ids[:pos] + [token] if len(ids) >= pos else []

    def forget(self) -> None:
        """Cache rows were overwritten out of turn: no stream's tokens are known to be there."""
        self.slot.owner = None
        self.slot.ids = []
