"""Change feeds: each subscriber collects the agents whose value changed since its last drain."""
from __future__ import annotations

from collections.abc import Iterable


class ChangeFeed:
    """One subscriber's pending set of changed agent ids.

    A feed may also pull from upstream feeds (`sources`): `drain()` returns its own pending agents
    together with whatever the sources report, so a derived priority can forward its inputs' changes.
    """

    __slots__ = ("_hub", "_pending", "_sources")

    def __init__(self, sources: Iterable[ChangeFeed] = (), hub: ChangeHub | None = None) -> None:
        self._pending: set[str] = set()
        self._sources = tuple(sources)
        self._hub = hub

    def drain(self) -> set[str]:
        """Agents whose value changed since the previous drain (each change reported once)."""
        out = self._pending
        self._pending = set()
        for source in self._sources:
            out |= source.drain()
        return out

    def close(self) -> None:
        """Stop collecting changes: pending ones are dropped and the hub forgets this feed."""
        if self._hub is not None:
            self._hub.unsubscribe(self)
            self._hub = None
        for source in self._sources:
            source.close()
        self._sources = ()
        self._pending = set()


class ChangeHub:
    """Fans out change notifications to every subscribed feed."""

    __slots__ = ("_feeds",)

    def __init__(self) -> None:
        self._feeds: list[ChangeFeed] = []

    def subscribe(self) -> ChangeFeed:
        feed = ChangeFeed(hub=self)
        self._feeds.append(feed)
        return feed

    def unsubscribe(self, feed: ChangeFeed) -> None:
        self._feeds = [f for f in self._feeds if f is not feed]

    def publish(self, agent_id: str) -> None:
        for feed in self._feeds:
            feed._pending.add(agent_id)

    @property
    def active(self) -> bool:
        """Whether anyone listens; publishers may skip work when nobody does."""
        return bool(self._feeds)
