"""Alembic environment: migrations run in the store's schema, on a connection we hand in."""

from alembic import context

config = context.config
connection = config.attributes["connection"]
schema = config.attributes["schema"]

context.configure(
    connection=connection,
    target_metadata=None,
    version_table_schema=schema,
    transaction_per_migration=False,
)

with context.begin_transaction():
    context.run_migrations()
