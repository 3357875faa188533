"""The front page and the docs: every relative link and image resolves, and the README stays short."""

import re
from pathlib import Path

from conftest import ROOT

LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_relative_link_resolves():
    broken = [f"{page.relative_to(ROOT)} -> {target}" for page in pages() for target, _ in LINK.findall(page.read_text())
              if not target.startswith(("http://", "https://", "mailto:")) and not (page.parent / target).exists()]
    assert not broken, broken


def test_the_readme_fits_on_a_few_screens_and_the_docs_site_lists_every_page():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250
    nav = (ROOT / "mkdocs.yml").read_text()
    assert all(p.name in nav for p in pages()[1:])


def test_the_docs_site_builds_with_strict_checks(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "site" / "statistics" / "index.html").is_file()
