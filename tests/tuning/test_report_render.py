"""The HTML reports as a browser shows them: rendered by headless Chromium to a PNG, the plot
areas hold a plot (not a blank box), nothing overflows the page sideways, and the text is for
people (readable headers, no True/False, no references to documents the reader lacks)."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from xentmem.tuning.fleet import FleetSpec, run_fleet, write_reports
from xentmem.tuning.knobs import KNOBS, parse_grid
from xentmem.tuning.report import _time_axis, render_html
from xentmem.tuning.sweep import sweep
from xentmem.tuning.synth import SynthSpec, synthesize

CHROMIUM = shutil.which("chromium-headless-shell") or shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no headless Chromium (apt-get install chromium-headless-shell)")
WIDTH = 1100
GRID = parse_grid(["downhysteresis=1,2,4,8", "reserved_mb=0,32,64"])
# after load: where the plots are, how wide the page and each table box is
PROBE = """<script>addEventListener("load", () => {
  const box = e => { const r = e.getBoundingClientRect();
    return [r.left + scrollX, r.top + scrollY, r.width, r.height]; };
  const out = {page: [document.documentElement.scrollWidth, document.documentElement.scrollHeight],
    plots: Object.fromEntries([...document.querySelectorAll("img[id^=plot-]")].map(
      e => [e.id, box(e)])),
    tables: [...document.querySelectorAll("table")].map(t => {
      const s = t.closest(".scroll");
      return {fits: s === null ? t.scrollWidth <= innerWidth : s.clientWidth <= innerWidth,
              scrolls: s !== null}; })};
  const pre = document.createElement("pre"); pre.id = "probe";
  pre.textContent = JSON.stringify(out); document.body.append(pre); });</script>"""


def _chromium(*args: str) -> str:
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                           "--hide-scrollbars", "--force-device-scale-factor=1",
                           "--virtual-time-budget=5000", *args],
                          capture_output=True, text=True, timeout=120, check=True)
    return done.stdout


def _layout(page: Path) -> dict:
    probed = page.with_name("probe-" + page.name)
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    dom = _chromium(f"--window-size={WIDTH},1000", "--dump-dom", probed.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, dom[-500:]
    return json.loads(html.unescape(found.group(1)))


def _screenshot(page: Path, height: int) -> np.ndarray:
    from matplotlib.image import imread

    png = page.with_suffix(".png")
    _chromium(f"--window-size={WIDTH},{height}", f"--screenshot={png}", page.as_uri())
    return imread(png)[..., :3]  # RGB floats in [0, 1]


def _check_page(page: Path, plots: set[str]) -> None:
    layout = _layout(page)
    assert set(layout["plots"]) == plots
    assert layout["page"][0] <= WIDTH  # nothing makes the page scroll sideways
    assert all(t["fits"] for t in layout["tables"]), layout["tables"]
    shot = _screenshot(page, layout["page"][1])
    for name, (x, y, w, h) in layout["plots"].items():
        assert w > 300 and h > 150, (name, w, h)
        area = shot[int(y):int(y + h), int(x):int(x + w)]
        assert area.shape[0] > 100, (name, area.shape)  # the screenshot reaches the plot
        ink = (area.min(axis=2) < 0.9).mean()  # share of pixels that are not (near) white
        levels = (area * 15).round().astype(np.int64)  # 16 levels a channel, packed
        colours = len(np.unique(levels[..., 0] * 256 + levels[..., 1] * 16 + levels[..., 2]))
        assert ink > 0.03 and colours >= 6, (name, ink, colours)
    text = page.read_text()
    assert "§" not in text and "ref " not in text
    assert not re.search(r"<td>(True|False)</td>", text)
    for header in re.findall(r"<th>([^<]*)</th>", text):  # snake_case only for knob names
        assert "_" not in header or header in KNOBS, header


def test_a_sweep_report_renders_with_its_plots(tmp_path: Path):
    trace = synthesize(SynthSpec("bursty", duration=6 * 3600, step=30))
    report = sweep(trace, GRID).as_dict(all_rows=True)
    page = tmp_path / "day.html"
    page.write_text(render_html(trace, report=report))
    _check_page(page, {"plot-trace", "plot-replay", "plot-pareto"})


def test_a_fleet_report_renders_with_its_plot(tmp_path: Path):
    traces = {f"guest{i}": synthesize(SynthSpec("bursty", duration=7200, step=30, seed=i))
              for i in range(3)}
    fleet = run_fleet(traces, FleetSpec(GRID))
    page = tmp_path / "fleet.html"
    assert write_reports(fleet, traces, None, fleet_html=page) == [page]
    _check_page(page, {"plot-fleet"})


@pytest.mark.parametrize(("duration", "unit"), [
    (60, "time (seconds)"), (1800, "time (minutes)"), (86400, "time (hours)"),
    (7 * 86400, "time (days)")])
def test_the_time_axis_is_in_a_readable_unit(duration: int, unit: str):
    assert _time_axis(synthesize(SynthSpec("steady", duration=duration, step=10)))[1] == unit
