"""The README's component -> file table names files that exist."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_path_in_the_component_table_exists():
    text = (ROOT / "README.md").read_text()
    table = text.split("## Components", 1)[1].split("\n## ", 1)[0]
    missing = []
    for line in table.splitlines():
        if not line.startswith("|") or "---" in line:
            continue
        cells = line.split("|")[2]
        paths = re.findall(r"`([^`]+)`", cells)
        base = None
        for p in paths:
            if "/" in p:
                base = Path(p).parent if not p.endswith("/") else Path(p)
                target = ROOT / p
            else:
                target = ROOT / base / p
            if not target.exists():
                missing.append(p)
    assert not missing, f"README names missing paths: {missing}"
