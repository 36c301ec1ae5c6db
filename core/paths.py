"""Where inboxstream keeps its local state: one folder for services, registries and chDB.

``<repo>/.inboxstream`` by default (so a fresh clone is self-contained and ``rm -rf
.inboxstream`` is a full reset), ``INBOXSTREAM_HOME`` to put it elsewhere. The ground floor
owns it because settings defaults (the chDB path, the inbox registry) and the service
installers both need it.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def state_dir() -> Path:
    path = Path(os.environ.get("INBOXSTREAM_HOME", REPO_ROOT / ".inboxstream"))
    path.mkdir(parents=True, exist_ok=True)
    return path
