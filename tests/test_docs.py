"""The documentation site builds without a warning, and a real browser shows what it should.

The site is built as ``make docs`` builds it (``sphinx-build -W --keep-going``), into a
temporary folder. Debian's headless Chromium, driven through its chromedriver by
selenium, then opens the built pages with every http(s) request blocked, so that a page
that needs the network (a script or font from a CDN) shows up as a failure. Where
Chromium is missing the browser tests skip, except in CI (``CI`` set), where ``.ci/run``
installs it and a missing browser is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

pytestmark = pytest.mark.slow  # the build imports the whole package and renders 30 pages


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site built with warnings as errors; the build's output is shown on failure."""
    out = tmp_path_factory.mktemp("docs")
    build = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", "-q"]
        + ["-d", str(out / "doctrees"), str(REPO / "docs"), str(out / "html")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        timeout=900,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-6000:]
    assert "WARNING" not in build.stderr, build.stderr[-6000:]
    return out / "html"


def test_every_page_is_built(site):
    for page in (
        "index",
        "installation",
        "quickstart",
        "outputs",
        "large_data",
        "model",
        "tutorials",
        "api",
        "cli",
        "benchmarks",
        "benchmark_results",
        "tuning",
        "changelog",
        "generated/pyro_scvae.api",
        "generated/pyro_scvae.elbo",
        *(f"notebooks/{nb.stem}" for nb in sorted((REPO / "notebooks").glob("*.ipynb"))),
    ):
        assert (site / f"{page}.html").is_file(), page


def test_command_line_reference_is_generated_from_the_parsers(site):
    import argparse
    import re

    from pyro_scvae import fit, predict

    text = (site / "cli.html").read_text()
    listed = re.findall(r"<dt><kbd>([^<]+)</kbd></dt>", text)  # one per option shown
    expected = [
        ", ".join(action.option_strings)
        for parser in (fit.build_parser(), predict.build_parser())
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction)
    ]
    assert sorted(listed) == sorted(expected)


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        message = (
            f"{CHROMIUM} and {CHROMEDRIVER} are needed (apt-get install chromium chromium-driver)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = Path(os.environ.get("TMPDIR", "/tmp")) / f"pyro_scvae-chromium-{os.getpid()}"
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1280,1600",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["http://*", "https://*"]})
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def open_page(browser, site: Path, page: str) -> None:
    browser.get((site / f"{page}.html").as_uri())
    wait_for(browser, "return document.readyState === 'complete'")


def wait_for(browser, script: str, seconds: float = 30.0):
    deadline = time.monotonic() + seconds
    while not (value := browser.execute_script(script)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return value


def test_api_page_lists_pyroscvae(browser, site):
    open_page(browser, site, "api")
    assert browser.title.startswith("API reference")
    body = browser.find_element("tag name", "main").text
    assert "class pyro_scvae.PyroSCVAE" in body
    for method in ("setup_anndata(", "fit(", "predict(", "get_latent_representation(", "save("):
        assert method in body, method
    open_page(browser, site, "generated/pyro_scvae.api")
    signature = browser.find_element("id", "pyro_scvae.api.PyroSCVAE")
    assert signature.is_displayed() and "PyroSCVAE" in signature.text


def images_on(browser) -> list[dict]:
    """Every image of the page's notebook outputs: loaded? size as decoded and as shown."""
    return browser.execute_script(
        """return Array.from(document.querySelectorAll('main .cell_output img')).map(i => ({
            src: i.getAttribute('src'), complete: i.complete, natural: i.naturalWidth,
            shown: i.getBoundingClientRect().width}));"""
    )


@pytest.mark.parametrize("notebook", sorted(p.stem for p in (REPO / "notebooks").glob("*.ipynb")))
def test_notebook_figures_are_shown(browser, site, notebook):
    committed = json.loads((REPO / "notebooks" / f"{notebook}.ipynb").read_text())
    n_figures = sum(
        "image/png" in output.get("data", {})
        for cell in committed["cells"]
        for output in cell.get("outputs", [])
    )
    assert n_figures >= 3  # the notebooks are committed with the outputs of a full run
    open_page(browser, site, f"notebooks/{notebook}")
    wait_for(browser, "return Array.from(document.images).every(i => i.complete)")
    images = images_on(browser)
    assert len(images) == n_figures, images
    for image in images:
        assert image["complete"] and image["natural"] > 0, image  # decoded, not a broken icon
        assert image["shown"] > 100, image  # laid out at a readable size


def test_model_page_renders_its_mathematics_offline(browser, site):
    open_page(browser, site, "model")
    # MathJax, served by the site itself, replaces each formula by an mjx-container.
    n_formulas = wait_for(browser, "return document.querySelectorAll('mjx-container').length")
    assert n_formulas >= 50
    # A TeX error would be drawn as an mjx-merror element, with the faulty source in red.
    assert browser.execute_script("return document.querySelectorAll('mjx-merror').length") == 0
    body = browser.find_element("tag name", "main").text
    for heading in ("The generative model", "The guide", "The objective: the ELBO, term by term"):
        assert heading in body


def test_pages_need_no_network(browser, site):
    """No page asks for anything beyond the site (a blocked request still leaves its entry)."""
    for page in ("index", "model", "api", "cli", "notebooks/01_quickstart", "benchmarks"):
        open_page(browser, site, page)
        wait_for(browser, "return document.querySelectorAll('mjx-container').length", 2.0)
        requested = browser.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        assert [url for url in requested if not url.startswith("file:")] == [], page
