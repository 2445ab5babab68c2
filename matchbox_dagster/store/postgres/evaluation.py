"""Judgements and evaluation samples.

A judgement records which of the leaf clusters shown to a person belong together. The shown set
and every endorsed group are stored as content-addressed clusters (a group of one leaf is the
leaf itself; larger groups go into ``clusters``/``contains``, with the id a resolver gives the
same leaves), so a judgement made in one run still refers to the same entity in every later run,
after that run's resolver partitions are gone.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from typing import Any

import pyarrow as pa

from matchbox_dagster.common.arrow import (
    SCHEMA_CLUSTER_EXPANSION,
    SCHEMA_EVAL_SAMPLES,
    SCHEMA_JUDGEMENTS,
)
from matchbox_dagster.common.dtos import (
    Judgement,
    ResolverStepPath,
    StepType,
    UploadStage,
    validate_text,
)
from matchbox_dagster.common.errors import (
    MatchboxDataNotFound,
    MatchboxInvalidData,
    MatchboxPermissionDenied,
    MatchboxStepNotQueriable,
    MatchboxTooManySamplesRequested,
)
from matchbox_dagster.common.fingerprint import cluster_id
from matchbox_dagster.store.postgres import auth, core
from matchbox_dagster.store.postgres.core import logger
from matchbox_dagster.store.postgres.partitions import lock_partitions

MAX_SAMPLES = 100
"""Most clusters ``sample_for_eval`` returns in one call."""

RESAMPLE_AFTER = "1 year"
"""A cluster a user judged is not offered to them again for this long."""


def cluster_hash(leaves: Iterable[int]) -> bytes:
    """SHA-256 of the sorted leaf ids as 8-byte big-endian integers (the store's cluster hash)."""
    packed = b"".join(struct.pack(">q", leaf) for leaf in sorted(set(leaves)))
    return hashlib.sha256(packed).digest()


def _arrow(rows: list[tuple[Any, ...]], schema: pa.Schema) -> pa.Table:
    """Rows of a small result as an Arrow table of ``schema``."""
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(schema)
    return pa.table(
        [pa.array(list(c), type=f.type) for c, f in zip(columns, schema, strict=True)],
        schema=schema,
    )


_READERS = """
SELECT ug.user_id FROM user_groups ug JOIN permissions p ON p.group_id = ug.group_id
WHERE (p.is_system AND p.permission = 'admin')
   OR (p.collection_id = c.collection_id AND p.permission IN ('read', 'write', 'admin'))
"""
"""Users holding READ (or more) on collection ``c`` (ADMIN on the system counts everywhere)."""

_JUDGEMENTS = """
SELECT u.user_name, g.endorsed_cluster_id AS endorsed, j.shown_cluster_id AS shown
FROM judgements j
JOIN users u ON u.user_id = j.user_id
JOIN judgement_groups g ON g.judgement_id = j.judgement_id
WHERE (%(tag)s::text IS NULL OR j.tag = %(tag)s::text)
  AND (%(collection)s::bigint IS NULL OR j.user_id IN (
       SELECT r.user_id FROM collections c, LATERAL ({readers}) r
       WHERE c.collection_id = %(collection)s::bigint))
ORDER BY j.judgement_id, g.endorsed_cluster_id
""".replace("{readers}", _READERS)

_UNREADABLE = """
SELECT i FROM unnest(%(ids)s::bigint[]) AS i WHERE NOT EXISTS (
    SELECT 1 FROM source_rows s WHERE s.leaf_id = i AND (NOT %(restricted)s OR s.step_id IN (
        SELECT st.data_id FROM steps st JOIN runs r ON r.run_id = st.run_id
        JOIN collections c ON c.collection_id = r.collection_id
        WHERE st.step_type = 'source' AND %(user)s IN ({readers}))))
ORDER BY i
""".replace("{readers}", _READERS)
"""Shown ids that are no leaf of a source the user may read (any source when unrestricted)."""

_EXPANSION = """
SELECT i.id AS root,
       CASE WHEN count(c.leaf) = 0 THEN ARRAY[i.id]
            ELSE array_agg(c.leaf ORDER BY c.leaf) END AS leaves
FROM unnest(%s::bigint[]) AS i(id)
LEFT JOIN contains c ON c.root = i.id
GROUP BY i.id
ORDER BY i.id
"""

_SAMPLE = """
WITH own AS (
    SELECT root_id FROM resolver_leaves
    WHERE step_id = %(step)s AND own
    GROUP BY root_id HAVING count(*) > 1
), picked AS (
    SELECT o.root_id FROM own o
    WHERE NOT EXISTS (
        SELECT 1 FROM judgements j
        WHERE j.user_id = %(user)s AND j.shown_cluster_id = o.root_id
          AND j.created_at > now() - %(after)s::interval
    )
    ORDER BY random()
    LIMIT %(n)s
)
SELECT p.root_id AS root, r.leaf_id AS leaf, s.key, st.name AS source
FROM picked p
JOIN resolver_leaves r ON r.step_id = %(step)s AND r.root_id = p.root_id
JOIN source_rows s ON s.leaf_id = r.leaf_id AND s.step_id = ANY(%(sources)s::bigint[])
JOIN unnest(%(sources)s::bigint[], %(names)s::text[]) AS st(data_id, name)
  ON st.data_id = s.step_id
ORDER BY 1, 2, 4, 3
"""
"""``step`` and ``sources`` are data ids (partitions' step ids); ``names`` the sources' names."""


class Evaluation:
    """Judgements and evaluation samples."""

    def __init__(self, ctx: core.Context) -> None:
        self.ctx = ctx
        self.db = ctx.db

    def insert_judgement(self, user_name: str, judgement: Judgement) -> None:
        """Record a user's judgement, in one transaction.

        Raises :class:`MatchboxUserNotFoundError` for an unknown user and
        :class:`MatchboxDataNotFound` if a shown id is not a leaf of any source. With
        authorisation on, users record judgements as themselves (admins for anyone).
        """
        groups = [sorted(set(judgement.shown)), *(sorted(set(g)) for g in judgement.endorsed)]
        ids = [cluster_id(g) for g in groups]
        multi = {i: g for i, g in zip(ids, groups, strict=True) if len(g) > 1}
        roots = list(multi)
        hashes = [cluster_hash(multi[r]) for r in roots]
        sizes = [len(multi[r]) for r in roots]
        contains = ([r for r in roots for _ in multi[r]], [x for r in roots for x in multi[r]])
        with self.db.connection() as conn:
            user_id = auth.find_user(conn, user_name)
            # One answer for a leaf that does not exist and one the user may not read: a
            # judgement must not tell whether a record exists in a collection they cannot see.
            restricted = self.ctx.settings.authorisation
            missing = [
                r[0]
                for r in conn.execute(
                    _UNREADABLE, {"ids": groups[0], "restricted": restricted, "user": user_id}
                )
            ]
            if missing:
                raise MatchboxDataNotFound(
                    f"Judgement by {user_name!r} shows {len(missing)} id(s) that are not leaf "
                    f"clusters of any source {user_name!r} may read, e.g. {missing[:5]}. Judge "
                    "the leaf ids sample_for_eval() returned."
                )
            if roots:
                conn.execute(
                    "INSERT INTO clusters (cluster_id, cluster_hash, size) "
                    "SELECT * FROM unnest(%s::bigint[], %s::bytea[], %s::int[]) "
                    "ORDER BY 1 ON CONFLICT (cluster_id) DO NOTHING",
                    (roots, hashes, sizes),
                )
                collided = conn.execute(
                    "SELECT c.cluster_id FROM clusters c "
                    "JOIN unnest(%s::bigint[], %s::bytea[]) AS n(id, h) ON c.cluster_id = n.id "
                    "WHERE c.cluster_hash <> n.h",
                    (roots, hashes),
                ).fetchall()
                if collided:
                    raise MatchboxInvalidData(
                        f"Cluster id(s) {[r[0] for r in collided]} of this judgement collide with "
                        "different content in the store (a 63-bit id collision). Nothing was "
                        "written; please report this."
                    )
                conn.execute(
                    "INSERT INTO contains (root, leaf) "
                    "SELECT * FROM unnest(%s::bigint[], %s::bigint[]) ORDER BY 1, 2 "
                    "ON CONFLICT DO NOTHING",
                    contains,
                )
            judgement_id = conn.execute(
                "INSERT INTO judgements (user_id, tag, shown_cluster_id) VALUES (%s, %s, %s) "
                "RETURNING judgement_id",
                (user_id, judgement.tag, ids[0]),
            ).fetchone()[0]  # type: ignore[index]
            conn.execute(
                "INSERT INTO judgement_groups (judgement_id, endorsed_cluster_id) "
                "SELECT %s, e FROM unnest(%s::bigint[]) AS e ON CONFLICT DO NOTHING",
                (judgement_id, ids[1:]),
            )
        logger.info(
            "Recorded judgement %s by %s: %d leaves in %d group(s)",
            judgement_id,
            user_name,
            len(groups[0]),
            len(groups) - 1,
        )

    def get_judgements(
        self, tag: str | None = None, collection: str | None = None
    ) -> tuple[pa.Table, pa.Table]:
        """Judgements (``SCHEMA_JUDGEMENTS``: one row per endorsed group) and the expansion.

        The expansion (``SCHEMA_CLUSTER_EXPANSION``) gives the leaves of every shown and
        endorsed cluster id; a leaf expands to itself. ``tag`` filters the judgements; with a
        ``collection`` and authorisation on, only judgements by users holding READ on it (or
        ADMIN on the system) are given: only they could see what they judged.
        """
        if tag is not None:
            validate_text(tag, "A judgement tag")
        with self.db.connection() as conn:
            collection_id = None
            if collection is not None:
                collection_id = core.collection_id(conn, collection)
                if not self.ctx.settings.authorisation:
                    collection_id = None
            rows = conn.execute(_JUDGEMENTS, {"tag": tag, "collection": collection_id}).fetchall()
            ids = sorted({r[1] for r in rows} | {r[2] for r in rows})
            roots = conn.execute(_EXPANSION, (ids,)).fetchall()
        judgements = _arrow(rows, SCHEMA_JUDGEMENTS)
        expansion = _arrow(roots, SCHEMA_CLUSTER_EXPANSION)
        return judgements, expansion

    def sample_for_eval(self, n: int, path: ResolverStepPath, user_name: str) -> pa.Table:
        """Up to ``n`` random clusters of the resolver for ``user_name`` to judge.

        Only the resolver's own clusters of two or more leaves are offered, never one this user
        judged in the last year. Returns ``SCHEMA_EVAL_SAMPLES``: every leaf of each cluster
        with each of its keys and the name of the source step holding the key.
        """
        if n > MAX_SAMPLES:
            raise MatchboxTooManySamplesRequested(
                f"Asked for {n} samples; at most {MAX_SAMPLES} can be taken at a time. Ask for "
                "fewer and call again."
            )
        if n < 0:
            raise MatchboxInvalidData(f"n must be zero or positive, not {n}.")
        with self.db.connection() as conn:
            user_id = auth.find_user(conn, user_name)
            step = core.step_row(conn, path, expected=StepType.RESOLVER)
            if step.stage != UploadStage.COMPLETE:
                raise MatchboxStepNotQueriable(path, step.stage)
            lineage = conn.execute(
                "SELECT s.data_id, s.name FROM step_lineage l JOIN steps s "
                "ON s.step_id = l.parent_id WHERE l.child_id = %s AND s.step_type = 'source' "
                "ORDER BY 1",
                (step.step_id,),
            ).fetchall()
            sources = [int(r[0]) for r in lineage]
            # The resolver and its sources cannot be dropped while they are sampled.
            named = [
                (StepType.SOURCE, int(i), f"{path.collection}/{path.run}/{n}") for i, n in lineage
            ]
            lock_partitions(conn, self.db.schema, [step, *named])
            rows = conn.execute(
                _SAMPLE,
                {
                    "step": step.data_id,
                    "user": user_id,
                    "n": n,
                    "sources": sources,
                    "names": [str(r[1]) for r in lineage],
                    "after": RESAMPLE_AFTER,
                },
            ).fetchall()
        return _arrow(rows, SCHEMA_EVAL_SAMPLES)

    def delete_last_judgement(self, user_name: str, acting_as_them: bool) -> int | None:
        """Delete ``user_name``'s latest judgement (with its groups) in one transaction.

        Refused (:class:`MatchboxPermissionDenied`) unless the call acts as ``user_name``. The
        clusters it named stay: other judgements may share them, and they are content-addressed.
        """
        if not acting_as_them:
            raise MatchboxPermissionDenied(user_name, "their own judgement", "judgements")
        with self.db.connection() as conn:
            user_id = auth.find_user(conn, user_name)
            row = conn.execute(
                "DELETE FROM judgements WHERE judgement_id = (SELECT max(judgement_id) "
                "FROM judgements WHERE user_id = %s) RETURNING judgement_id",
                (user_id,),
            ).fetchone()
        if row is not None:
            logger.info("Deleted judgement %s by %s (undo)", row[0], user_name)
        return None if row is None else int(row[0])


__all__ = ["MAX_SAMPLES", "Evaluation", "cluster_hash"]
