"""tardis.dev normalized CSV files (``source: tardis``)."""

import sigkit

from . import reader


@sigkit.hookimpl
def register_sources(register):
    register(reader.SOURCE)
