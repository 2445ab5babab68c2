"""The facade's reuse and trained-model operations, declared here and adopted by name.

:class:`~.adapter.MatchboxPostgres` is one flat class, and ``adapter.py`` is at the module size
budget, so these declarations live in :class:`ReuseOperations` and the facade binds each one as
its own attribute (``step_data_origin = ReuseOperations.step_data_origin``): no inheritance, no
mixin, and every method is still one ``@operation(rule, retry=…)`` declaration delegating to one
part (:class:`~.reuse.Reuse`, :class:`~.trained.TrainedModels`). ``self`` is the facade.
"""

from __future__ import annotations

from typing import Any

from matchbox_dagster.common.dtos import CollectionName, StepPath
from matchbox_dagster.common.reuse import TrainedModel
from matchbox_dagster.store.postgres.operations import IDEMPOTENT, READ, WRITE, operation
from matchbox_dagster.store.postgres.reuse import Reuse
from matchbox_dagster.store.postgres.trained import TrainedModels


class ReuseOperations:
    """Declarations the facade adopts (never instantiated; ``self`` is a ``MatchboxPostgres``)."""

    _ctx: Any

    @operation(READ.on_path("path"), retry=IDEMPOTENT)
    def step_data_origin(self, path: StepPath) -> StepPath | None:
        """The step that stored the data this step shares (None: the step holds its own)."""
        return Reuse(self._ctx).step_data_origin(path)

    @operation(READ.on_path("path"), retry=IDEMPOTENT)
    def find_reusable_step(
        self, path: StepPath, config: dict[str, Any], inputs: list[str]
    ) -> StepPath | None:
        """The default run's step ``path.name`` whose results ``path`` may reuse, or None."""
        return Reuse(self._ctx).find_reusable_step(path, config, inputs)

    # ``model`` has a ``collection`` like a step path: WRITE on the model's collection.
    @operation(WRITE.on_path("model"), retry=IDEMPOTENT)
    def put_trained_model(self, model: TrainedModel) -> int:
        """Store trained parameters as a new version (the latest again if identical)."""
        return TrainedModels(self._ctx).put(model)

    @operation(READ.on("collection"), retry=IDEMPOTENT)
    def get_trained_model(
        self, collection: CollectionName, model: str, config_key: str
    ) -> TrainedModel | None:
        """The latest version not retired of a trained model (None: none)."""
        return TrainedModels(self._ctx).get(collection, model, config_key)

    @operation(WRITE.on("collection"), retry=IDEMPOTENT)
    def retire_trained_models(self, collection: CollectionName, model: str) -> int:
        """Retire every version of a collection's model; how many were live."""
        return TrainedModels(self._ctx).retire(collection, model)
