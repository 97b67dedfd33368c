"""`--json`: one JSON object per line (keys documented in README "JSON output")."""

from __future__ import annotations

import json


def render(item) -> str:
    return json.dumps(item.to_dict(), separators=(",", ":"))
