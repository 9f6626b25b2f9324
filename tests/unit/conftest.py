"""Make the collection importable as ansible_collections.venta.deploy in unit tests."""

from __future__ import annotations

import sys
from pathlib import Path

COLLECTIONS_ROOT = Path(__file__).resolve().parents[2] / "collections"
if str(COLLECTIONS_ROOT) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS_ROOT))
