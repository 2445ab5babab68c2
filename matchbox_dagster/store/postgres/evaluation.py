"""PLACEHOLDER (being replaced): judgements and evaluation samples."""

from __future__ import annotations

from matchbox_dagster.store.postgres.core import PostgresCore


class EvaluationMixin(PostgresCore):
    """Judgements (placeholder)."""

    def insert_judgement(self, user_name, judgement):  # noqa: ANN001, ANN201, D102
        raise NotImplementedError

    def get_judgements(self, tag=None):  # noqa: ANN001, ANN201, D102
        raise NotImplementedError

    def sample_for_eval(self, n, path, user_name):  # noqa: ANN001, ANN201, D102
        raise NotImplementedError
