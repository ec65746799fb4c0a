"""The registry of webhook source kinds. A kind is one module under ``sources/`` that defines its
``SOURCE_KIND`` (how it is made, created from the command line, described in the OpenAPI document, and
what it needs installed) plus one line in ``KINDS`` below; the route, ``sources create <kind>``
and the API description all come from here.
"""

from __future__ import annotations

from profilehook.sources import amplitude, copernica
from profilehook.sources.webhooks import Kind

# The one line per kind:
KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        copernica.SOURCE_KIND,
        amplitude.SOURCE_KIND,
    )
}


def titles() -> str:
    """The kinds as a sentence lists them: "Copernica, Amplitude"."""
    return ", ".join(kind.title for kind in KINDS.values())
