"""Resolver clusters live only in their resolver's partition; clusters/contains hold judged ones.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26

Writing every resolver cluster into the shared ``clusters``/``contains`` tables (a hash and a size
per cluster, a row per leaf, each with a primary-key index) cost more than half of a resolver
insert (~1.3 s of 2.5 s at 720k leaves), and nothing read them back: a resolver's partition
already holds each of its leaves' cluster, indexed on ``root_id``. From this revision the store
writes resolver clusters to the partition only; ``clusters``/``contains`` keep the clusters
judgements refer to (shown and endorsed groups), which must outlive any run.

The upgrade deletes the clusters no judgement refers to (their content stays in the resolver
partitions). The downgrade writes every resolver's multi-leaf clusters back, hash and all.
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE TEMP TABLE mb_judged ON COMMIT DROP AS "
        "SELECT shown_cluster_id AS id FROM judgements "
        "UNION SELECT endorsed_cluster_id FROM judgement_groups"
    )
    op.execute(
        "DELETE FROM contains c WHERE NOT EXISTS (SELECT 1 FROM mb_judged j WHERE j.id = c.root)"
    )
    op.execute(
        "DELETE FROM clusters c "
        "WHERE NOT EXISTS (SELECT 1 FROM mb_judged j WHERE j.id = c.cluster_id)"
    )
    op.execute("DROP TABLE mb_judged")


def downgrade() -> None:
    op.execute(
        """
        CREATE TEMP TABLE mb_resolver_clusters ON COMMIT DROP AS
        SELECT DISTINCT root_id AS root, leaf_id AS leaf FROM resolver_leaves
        WHERE own AND root_id <> leaf_id
        """
    )
    op.execute(
        """
        INSERT INTO clusters (cluster_id, cluster_hash, size)
        SELECT root, sha256(string_agg(int8send(leaf), ''::bytea ORDER BY leaf)), count(*)
        FROM mb_resolver_clusters GROUP BY root
        ON CONFLICT (cluster_id) DO NOTHING
        """
    )
    op.execute(
        "INSERT INTO contains (root, leaf) SELECT root, leaf FROM mb_resolver_clusters "
        "ORDER BY root, leaf ON CONFLICT DO NOTHING"
    )
    op.execute("DROP TABLE mb_resolver_clusters")
