"""Fixtures of the evaluation tests: a source indexed in the store, and a resolver over it."""

from tests.sources.test_inputs import merged as merged
from tests.sources.test_inputs import source as source
