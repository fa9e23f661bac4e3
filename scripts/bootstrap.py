"""One bootstrap for the scripts: they run as files from a checkout (`.venv/bin/python
scripts/NAME.py` from the repository root), so `import bootstrap` (first of the project's
imports) puts the repository root on `sys.path` and names the shared material beside it."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DATA = SHARED / "assets" / "data"
COCO = DATA / "coco128_seg"

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
