import re
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from embedsearch.cli import cli
from embedsearch.report.html import markdown_to_html, svg_confusion

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_markdown_to_html_tables_and_lists():
    out = markdown_to_html("## T\n\n- a `x`\n\n| m | v |\n|---|---|\n| knn | 1 |\n")
    assert "<h3>T</h3>" in out and "<li>a x</li>" in out and "<th>m</th>" in out and "<td>knn</td>" in out


def test_confusion_svg_has_one_cell_per_pair():
    svg = svg_confusion([[3, 1], [0, 4]], ["a", "b"], "cm")
    assert svg.count("<rect") == 4 and "true a, predicted b: 1" in svg


def _chromium(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", *args, url], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (installed by .ci/run)")
def test_report_and_contact_sheet_load_in_chromium_with_their_images(index_root, tmp_path):
    r = CliRunner()
    assert r.invoke(cli, ["-q", "index", "digits", "-b", "pixels:8", "-n", "d", "--workers", "0"]).exit_code == 0
    res = r.invoke(cli, ["-q", "eval", "d", "-m", "prototypes,knn,fewshot", "--html", str(tmp_path / "r.html")])
    assert res.exit_code == 0, res.output
    res = r.invoke(cli, ["-q", "search", "d", "--id", "3", "-k", "5", "--html", str(tmp_path / "s.html")])
    assert res.exit_code == 0, res.output
    for page, min_images in (("r.html", 30), ("s.html", 6)):
        url = (tmp_path / page).as_uri()
        p = _chromium(url, "--dump-dom")
        m = re.search(r'data-images="(\w+) (\d+)"', p.stdout)
        assert m and m.group(1) == "ok" and int(m.group(2)) >= min_images, (page, m and m.group(0))
        assert not re.search(r"CONSOLE.*(error|Uncaught)", p.stderr, re.I), p.stderr[-2000:]
        shot = tmp_path / f"{page}.png"
        _chromium(url, f"--screenshot={shot}", "--window-size=1200,1600")
        assert shot.stat().st_size > 10_000 and shot.read_bytes()[:4] == b"\x89PNG"
