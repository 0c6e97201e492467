"""The diagnose HTML report renders in a real headless browser (Debian's chromium).

A real diagnosis of a simulated latency regression is rendered to HTML, chromium loads it from disk,
dumps the DOM after rendering (the SVG timeline and drill-down bars must be there) and takes a
screenshot, checked to be a real render (a PNG of the window's size with many distinct colours), kept
as test-artifacts/diagnose.png. chromium comes from scripts/install_chromium.sh (scripts/test.sh runs
it); without it this test skips locally and fails under CI=true. SM_SKIP_BROWSER_TESTS=1 skips it (and
the chromium install), except under CI=true, where the browser test always runs.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import orjson
import pytest

from stream_monitor.core.diagnosis import diagnose
from stream_monitor.diagnose_report import render_html
from stream_monitor.diagnosing import replay_file
from stream_monitor.sim import Incident, TrafficSimulator
from stream_monitor.topology import load_topology

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
WIDTH, HEIGHT = 1400, 2000


def _chromium() -> str:
    under_ci = os.environ.get("CI", "").lower() == "true"
    if os.environ.get("SM_SKIP_BROWSER_TESTS") == "1" and not under_ci:
        pytest.skip(
            "SM_SKIP_BROWSER_TESTS=1: the headless-browser test is skipped (no chromium installed for it)"
        )
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if under_ci:
            pytest.fail("chromium is missing under CI: scripts/install_chromium.sh should have installed it")
        pytest.skip("chromium not installed (scripts/install_chromium.sh installs it)")
    return found


def _browser(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--window-size={WIDTH},{HEIGHT}",
    ]
    return subprocess.run([binary, *flags, *args], capture_output=True, timeout=120, check=False)


def _png_pixels(data: bytes) -> tuple[int, int, set[bytes]]:
    """Width, height and the distinct RGB colours of a sample of rows of an 8-bit RGB(A) PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour in (2, 6), (depth, colour)
    channels = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * channels
    colours: set[bytes] = set()
    previous = bytearray(stride)
    for row in range(height):
        start = row * (stride + 1)
        line = bytearray(raw[start + 1 : start + 1 + stride])
        kind = raw[start]
        for i in range(stride):  # undo the PNG row filter
            a = line[i - channels] if i >= channels else 0
            b = previous[i]
            c = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 0xFF
        if row % 20 == 0:
            colours.update(bytes(line[i : i + 3]) for i in range(0, stride, channels))
        previous = line
    return width, height, colours


def test_diagnose_html_renders_in_headless_chromium(tmp_path: Path) -> None:
    binary = _chromium()
    start = 1_763_942_400_000
    incident = Incident("latency_regression", start + 900_000, 600_000, target={"region": "eu"})
    sim = TrafficSimulator(seed=2, start_ms=start, rate_per_s=10.0, incidents=[incident])
    recording = tmp_path / "recording.jsonl"
    with recording.open("wb") as out:
        for _kind, _key, event in sim.events_until(start + 1_800_000):
            out.write(orjson.dumps(event) + b"\n")
    topology = load_topology(None)
    recorder = replay_file(recording, topology)
    result = diagnose(
        recorder.history,
        recorder.alerts,
        topology.key_dims,
        topology.segment_dims,
        deployments=recorder.deployments(),
        examples=recorder.examples,
    )
    assert result.top is not None and result.top.signal == "latency"
    page = tmp_path / "diagnose.html"
    page.write_text(render_html(result), encoding="utf-8")

    dom = _browser(binary, tmp_path / "profile-dom", "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr.decode(errors="replace")[-2000:]
    html = dom.stdout.decode()
    assert '<svg id="timeline"' in html and "<polyline" in html
    assert '<svg id="drilldown"' in html and 'class="bar"' in html
    assert "latency" in html and "region=eu" in html

    shot = tmp_path / "diagnose.png"
    done = _browser(binary, tmp_path / "profile-shot", f"--screenshot={shot}", page.as_uri())
    assert done.returncode == 0 and shot.is_file(), done.stderr.decode(errors="replace")[-2000:]
    data = shot.read_bytes()
    width, height, colours = _png_pixels(data)
    assert (width, height) == (WIDTH, HEIGHT)
    # Text, the plotted line, markers and bars: a blank or failed page has a handful of colours.
    assert len(data) > 30_000 and len(colours) > 50, (len(data), len(colours))
    artefacts = REPO / "test-artifacts"
    artefacts.mkdir(exist_ok=True)
    (artefacts / "diagnose.png").write_bytes(data)
    (artefacts / "diagnose.html").write_bytes(page.read_bytes())
    print(f"screenshot: {artefacts / 'diagnose.png'}")
