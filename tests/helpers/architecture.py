"""The floor plan the architecture tests hold the code to (the README's table of layers)."""

from __future__ import annotations

#: layer number of each top-level part of the namespace; a part may import only lower layers.
LAYERS: dict[str, int] = {
    "errors": 0,
    "_compiled": 0,
    "schemas": 1,
    "core": 2,
    "mail": 3,
    "imap": 3,
    "producers": 4,
    "processors": 4,
    "sinks": 4,
    "send": 4,
    "infra": 5,
    "app": 6,
}
