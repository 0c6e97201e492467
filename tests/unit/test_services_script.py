"""Checks on scripts/services.sh that need no services running."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "services.sh"


def _function(name: str) -> str:
    text = SCRIPT.read_text()
    match = re.search(rf"^{name}\(\) \{{.*?^\}}", text, flags=re.S | re.M)
    assert match, f"{name} not found in {SCRIPT}"
    return match.group(0)


def test_cluster_ids_never_look_like_an_option() -> None:
    # kafka-storage's parser read an id starting with "-" as a flag and formatting failed (seen once in CI).
    body = _function("new_cluster_id")
    out = subprocess.run(
        ["bash", "-c", f"{body}\nfor i in $(seq 400); do new_cluster_id; echo; done"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.split()
    assert len(out) == 400
    assert len(set(out)) == 400
    for cluster_id in out:
        assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{21}", cluster_id), cluster_id
