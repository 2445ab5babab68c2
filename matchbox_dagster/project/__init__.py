"""A data team's own project: the ``init`` template and the preflight run before any write.

:mod:`.template` writes a defs-folder project (``matchbox-dagster init DIR``); :mod:`.preflight`
reads each source's schema cheaply and validates a collection against it before a run writes
anything (``matchbox-dagster validate``). Neither imports Dagster's layer of this package.
"""

from matchbox_dagster.project.preflight import PreflightError as PreflightError
from matchbox_dagster.project.preflight import Problem as Problem
from matchbox_dagster.project.preflight import preflight as preflight
from matchbox_dagster.project.preflight import preflight_problems as preflight_problems
from matchbox_dagster.project.template import init_project as init_project

__all__ = ["PreflightError", "Problem", "init_project", "preflight", "preflight_problems"]
