"""The documentation site: generated pages match their sources, and `mkdocs build --strict` passes offline."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_generated_pages_match_the_settings_and_the_bench_results() -> None:
    # A setting or a results file changed without `python -m scripts.docsgen`: the docs would show stale text.
    result = subprocess.run([sys.executable, "-m", "scripts.docsgen", "--check"], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr


def test_the_configuration_reference_names_every_section_and_its_environment_variables() -> None:
    from proxy.settings import RapportSettings
    from scripts.docsgen.config_reference import render

    text = render()
    for name in RapportSettings.model_fields:
        assert f"`{name}`" in text, name
    assert "`RAPPORT_SERVER__PORT`" in text
    assert "`RAPPORT_DATABASE_URL`" in text
    # The why-comment above a field is its documentation.
    assert "Seconds an idle keep-alive connection stays open" in text


def test_the_site_builds_strictly_and_loads_nothing_from_the_network(tmp_path: Path) -> None:
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    result = subprocess.run(
        [sys.executable, "-m", "scripts.docsgen", "--build", "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    pages = list(site.rglob("*.html"))
    assert len(pages) >= 12
    for page in pages:
        html = page.read_text(errors="replace")
        for host in ("fonts.googleapis.com", "fonts.gstatic.com", "cdn.jsdelivr.net", "unpkg.com"):
            assert host not in html, f"{page.relative_to(site)} loads from {host}"
    reference = (site / "reference" / "configuration" / "index.html").read_text()
    assert "recording_wait_ms" in reference
    assert (site / "assets" / "bench" / "locomo_recall.png").exists()


@pytest.mark.parametrize("name", ["README.md", "mkdocs.yml"])
def test_no_file_names_a_path_of_one_machine(name: str) -> None:
    text = (ROOT / name).read_text()
    for marker in ("/work/", "/tmp/", "/root/", "/home/"):
        assert marker not in text, f"{name} names {marker}"


def test_the_readme_is_a_front_page_whose_links_resolve() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 200
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if target.startswith("http"):
            continue
        assert (ROOT / target).exists(), f"README links to {target}, which is not there"
