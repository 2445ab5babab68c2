"""Reading records: external locations (SQL, Parquet, CSV, S3, Python callables) and model inputs.

:mod:`.locations` reads a source's rows in batches and indexes them (hashes + keys);
:mod:`.inputs` rebuilds a model's input from the store's ids and the re-read source records.
"""

from matchbox_dagster.sources.inputs import query_frame as query_frame
from matchbox_dagster.sources.inputs import source_records as source_records
from matchbox_dagster.sources.locations import extract as extract
from matchbox_dagster.sources.locations import index_source as index_source
