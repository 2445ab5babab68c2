"""The review web app: people judge a resolver's entities in a browser (no Dagster here).

:mod:`.state` the app's settings, targets and sessions; :mod:`.app` the Starlette routes and
request checks; :mod:`.pages` the HTML; :mod:`.figures` the evaluation view. Started by
``matchbox-dagster review`` (:mod:`matchbox_dagster.cli.review`); see docs/review.md.
"""
