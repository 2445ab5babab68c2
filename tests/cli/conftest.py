"""The ``cli`` fixture: the real ``matchbox-dagster`` command on the session's store."""

from tests.cli_runner import cli as cli
