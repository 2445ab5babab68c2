"""What the review app knows: its settings, each collection's resolver, reviewers' sessions.

No Dagster here: the app talks to the store through the contract, as its user
(``store.as_user(user)``), so every read and write is checked against that user's permissions.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field

import polars as pl

from matchbox_dagster.common.dtos import Judgement, PermissionType, StepPath, StepType
from matchbox_dagster.common.errors import MatchboxError
from matchbox_dagster.evaluation.sampling import (
    EvalSample,
    Lineage,
    Strategy,
    draw,
    judged_sets,
    lineage,
    resolver_records,
)
from matchbox_dagster.sources.inputs import source_records
from matchbox_dagster.store.base import MatchboxDBAdapter

BATCH = 20
"""Samples drawn at a time for a session."""

MAX_SESSIONS = 1000
"""Sessions kept in memory (a request without a known cookie starts one)."""


class ReviewError(MatchboxError):
    """Input the app refuses; its message is shown on the page and nothing is changed."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class ReviewConfig:
    """How the app was started: store, reviewer, and which collection/run/resolver to review."""

    store: MatchboxDBAdapter
    user: str
    collection: str | None = None
    run: int | None = None
    label: str | None = None
    resolver: str | None = None
    strategy: Strategy = Strategy.RANDOM
    target: int = 50
    allowed_hosts: tuple[str, ...] = ("127.0.0.1", "localhost")


@dataclass
class Target:
    """One collection's reviewed resolver: its path, lineage and records (read once)."""

    path: StepPath
    lineage: Lineage
    records: pl.DataFrame
    fields: dict[str, pl.DataFrame] = field(default_factory=dict)


@dataclass
class Session:
    """One browser's state: CSRF token, queued samples, submitted tokens, last judgement."""

    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    queues: dict[tuple[str, str], list[tuple[str, EvalSample]]] = field(default_factory=dict)
    submitted: set[str] = field(default_factory=set)
    last: tuple[tuple[str, str], EvalSample] | None = None
    flash: str | None = None


class Review:
    """The app's state and its operations (thread-safe: one lock)."""

    def __init__(self, config: ReviewConfig) -> None:
        self.config = config
        self.store = config.store.as_user(config.user)
        self.targets: dict[str, Target] = {}
        self.sessions: dict[str, Session] = {}
        self.lock = threading.RLock()

    # --- permissions and targets -----------------------------------------------------------

    def readable(self) -> list[str]:
        """Collections the reviewer may read (the only ones the app shows)."""
        names = self.config.store.list_collections()
        if self.config.collection is not None:
            names = [n for n in names if n == self.config.collection]
        return [n for n in names if self.can_read(n)]

    def can_read(self, collection: str) -> bool:
        """Whether the reviewer holds READ (or more) on ``collection``."""
        try:
            return self.config.store.check_permission(
                self.config.user, PermissionType.READ, collection
            )
        except MatchboxError:
            return False

    def target(self, collection: str) -> Target:
        """The reviewed resolver of ``collection``; one message for unknown and unreadable."""
        if collection not in self.readable():
            raise ReviewError(
                f"There is no collection {collection!r} that user {self.config.user!r} may "
                "read. Pick one from the list of collections.",
                404,
            )
        with self.lock:
            if collection not in self.targets:
                self.targets[collection] = self._load(collection)
            return self.targets[collection]

    def _load(self, collection: str) -> Target:
        store, cfg = self.store, self.config
        if cfg.run is not None and collection == cfg.collection:
            run_id = cfg.run
        elif cfg.label is not None and collection == cfg.collection:
            run_id = store.run_for_label(collection, cfg.label, create=False).run_id
        else:
            default = store.get_collection(collection).default_run
            if default is None:
                raise ReviewError(f"Collection {collection!r} has no default run to review.")
            run_id = default
        run = store.get_run(collection, run_id)
        name = cfg.resolver if collection == cfg.collection else None
        if name is None:
            resolvers = [n for n, s in run.steps.items() if s.step_type == StepType.RESOLVER]
            if not resolvers:
                raise ReviewError(f"Run {run_id} of {collection!r} has no resolver to review.")
            name = resolvers[-1]
        path = StepPath(collection=collection, run=run_id, name=name)
        found = lineage(store, path)
        return Target(path, found, resolver_records(store, path, found.sources))

    def fields(self, target: Target, source: str) -> pl.DataFrame:
        """Every field of ``source``'s records by leaf (``id``), re-read from its location."""
        with self.lock:
            if source not in target.fields:
                path = target.path.model_copy(update={"name": source})
                frame = source_records(self.store, path)
                target.fields[source] = frame.with_columns(pl.col("key").cast(pl.String))
            return target.fields[source]

    # --- sessions and samples --------------------------------------------------------------

    def session(self, token: str | None) -> tuple[str, Session]:
        """The session of a cookie value (a new one when absent or unknown)."""
        with self.lock:
            if token and token in self.sessions:
                return token, self.sessions[token]
            token = secrets.token_urlsafe(32)
            while len(self.sessions) >= MAX_SESSIONS:  # the oldest go first
                del self.sessions[next(iter(self.sessions))]
            self.sessions[token] = Session()
            return token, self.sessions[token]

    def current(
        self, session: Session, collection: str, strategy: Strategy
    ) -> tuple[str, EvalSample] | None:
        """The sample on the reviewer's page (drawing a batch when the queue is empty)."""
        target = self.target(collection)
        key = (collection, strategy.value)
        with self.lock:
            queue = session.queues.setdefault(key, [])
            if not queue:
                samples = draw(
                    self.store, target.path, strategy, BATCH, self.config.user, target.records
                )
                queue.extend((secrets.token_urlsafe(16), s) for s in samples)
            return queue[0] if queue else None

    def skip(self, session: Session, collection: str, strategy: Strategy, token: str) -> None:
        """Put the sample ``token`` aside without judging it."""
        with self.lock:
            queue = session.queues.get((collection, strategy.value), [])
            session.queues[(collection, strategy.value)] = [q for q in queue if q[0] != token]

    def judge(
        self,
        session: Session,
        collection: str,
        strategy: Strategy,
        token: str,
        groups: dict[int, str],
    ) -> Judgement:
        """Record the reviewer's groups of the sample ``token``; refuse anything inconsistent."""
        self.target(collection)
        with self.lock:
            if token in session.submitted:
                raise ReviewError(
                    "This sample was already submitted; nothing was recorded twice.", 409
                )
            queue = session.queues.get((collection, strategy.value), [])
            if not queue or queue[0][0] != token:
                raise ReviewError(
                    "This sample is stale (the page was out of date); nothing was recorded. "
                    "The current sample is shown.",
                    409,
                )
            sample = queue[0][1]
            shown = set(sample.leaves)
            outside = sorted(set(groups) - shown)
            if outside:
                raise ReviewError(
                    f"The judgement names records outside the sample (ids {outside[:5]}); "
                    "nothing was recorded.",
                )
            missing = sorted(shown - set(groups))
            if missing:
                raise ReviewError(
                    f"Every record of the sample needs a group; {len(missing)} had none. "
                    "Nothing was recorded.",
                )
            by_group: dict[str, list[int]] = {}
            for leaf, group in sorted(groups.items()):
                by_group.setdefault(group, []).append(leaf)
            judgement = Judgement(shown=sorted(shown), endorsed=list(by_group.values()))
            self.store.insert_judgement(self.config.user, judgement)
            session.submitted.add(token)
            queue.pop(0)
            session.last = ((collection, strategy.value), sample)
            return judgement

    def undo(self, session: Session) -> int | None:
        """Delete the reviewer's own latest judgement; its sample comes back to be judged.

        Only after a judgement made in this session (None otherwise): undo is of what the
        reviewer just did here, never of older work.
        """
        with self.lock:
            if session.last is None:
                return None
            deleted = self.store.delete_last_judgement(self.config.user)
            if deleted is not None:
                key, sample = session.last
                session.queues.setdefault(key, []).insert(0, (secrets.token_urlsafe(16), sample))
            session.last = None
            return deleted

    def progress(self, collection: str) -> tuple[int, int]:
        """``(judged, target)``: the reviewer's judgements within this resolver's records."""
        target = self.target(collection)
        leaves = set(target.records.get_column("leaf").to_list())
        done = judged_sets(self.store, collection, self.config.user)
        return sum(1 for s in done if set(s) <= leaves), self.config.target


__all__ = ["BATCH", "Review", "ReviewConfig", "ReviewError", "Session", "Target"]
