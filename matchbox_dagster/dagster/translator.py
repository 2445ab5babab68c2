"""How a collection's steps become Dagster assets: keys, groups, descriptions and tags."""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

from matchbox_dagster.dagster.partitions import dagster_name


class MatchboxTranslator:
    """How steps become assets: override ``get_*`` to customise keys, groups, descriptions."""

    def get_asset_key(self, collection: str, step: str) -> dg.AssetKey:
        """Asset key of a step (default ``[collection, step]``)."""
        return dg.AssetKey([collection, step])

    def get_group_name(self, collection: str, step: str) -> str:
        """Asset group of a step (default: the collection)."""
        return dagster_name(collection)

    def get_description(self, collection: str, step: str, kind: str, given: str | None) -> str:
        """Description shown in the UI."""
        return given or f"matchbox {kind} {step!r} of collection {collection!r}."

    def get_tags(self, collection: str, step: str, kind: str) -> dict[str, str]:
        """Asset tags."""
        return {"matchbox/collection": collection, "matchbox/step_type": kind}


class PrefixTranslator(MatchboxTranslator):
    """Keys ``[*prefix, step]`` and, when given, one group: a collection's ``key_prefix``."""

    def __init__(self, prefix: Sequence[str], group: str | None) -> None:
        self.prefix = list(prefix)
        self.group = group

    def get_asset_key(self, collection: str, step: str) -> dg.AssetKey:
        """``[*prefix, step]``."""
        return dg.AssetKey([*self.prefix, step])

    def get_group_name(self, collection: str, step: str) -> str:
        """The given group, else the collection."""
        return self.group or super().get_group_name(collection, step)
