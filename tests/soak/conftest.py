"""The soak suite (`make test-soak`): a month of default operation pushed through the real pipeline
time-compressed. It runs its own stream and loads millions of rows, so it runs alone."""

from __future__ import annotations

# the integration suite's fixtures, shared
from tests.integration.conftest import cassandra, cdc_ready, dagbag  # noqa: F401
