"""`mlenv serve` in a real browser: Debian's headless Chromium, driven by selenium, clicks from
the front page to an environment, a version and a diff, and sees what a person sees; hostile
registry values show as text and run nothing; a 590-package graph is drawn; and the registry
and MLENV_HOME are byte for byte what they were. The screenshots go to $MLENV_SCREENSHOTS
(the README's are made with MLENV_SCREENSHOTS=docs/screenshots), else to the test's directory.

Needs `chromium` and `chromium-driver` (the README's test-setup block installs them): without
them these tests fail, never skip."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.conftest import tree_hashes
from tests.web_helpers import (
    EVIL_DESCRIPTION,
    EVIL_LABELS,
    EVIL_PACKAGE,
    EVIL_VALUE,
    home_at,
    register_demo,
    register_hostile,
    register_samples,
    serving,
)

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,1180", "--hide-scrollbars")


@pytest.fixture
def browser(tmp_path: Path):  # -> Iterator[WebDriver]
    chromium, driver = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver")
    if not os.path.exists(chromium) or driver is None:
        pytest.fail("headless Chromium is not installed: apt-get install chromium chromium-driver "
                    "(the README's test-setup block)", pytrace=False)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is not installed: pip install '.[test]'", pytrace=False)
    options = Options()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    session = webdriver.Chrome(service=Service(driver), options=options)
    session.set_page_load_timeout(60)
    try:
        yield session
    finally:
        session.quit()


def screenshots(tmp_path: Path) -> Path:
    where = Path(os.environ.get("MLENV_SCREENSHOTS") or tmp_path / "screenshots")
    where.mkdir(parents=True, exist_ok=True)
    return where


def test_front_page_to_an_environment_a_version_and_a_diff(tmp_path: Path, channel: Path, pip_index: str,
                                                           shared_data: Path, browser) -> None:  # noqa: ANN001
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    home = home_at(tmp_path / "home")
    register_demo(home, tmp_path, channel, pip_index)
    register_hostile(home, tmp_path, channel)
    register_samples(home)
    before, registry = tree_hashes(home.path), home.registry.read_bytes()
    shots = screenshots(tmp_path)
    d = browser

    def text(css: str) -> str:
        return d.find_element(By.CSS_SELECTOR, css).text

    with serving(home) as server:
        d.get(server.url + "/")
        assert d.title == "Environments · mlenv"
        rows = [row.text for row in d.find_elements(By.CSS_SELECTOR, "#environments tbody tr")]
        assert [row.split()[0] for row in rows] == ["fraud-train", "hostile", "samples"]
        assert "latest → v2" in rows[0] and "prod → v2" in rows[0] and "Training environment of the fraud model" in rows[0]

        d.find_element(By.LINK_TEXT, "fraud-train").click()
        assert text("h1") == "fraud-train"
        versions = d.find_elements(By.CSS_SELECTOR, "#versions tbody tr")
        assert [row.text.split()[0] for row in versions] == ["v2", "v1"]
        assert "latest prod" in versions[0].text and "fraud-train:" in versions[0].text

        d.find_element(By.LINK_TEXT, "v2").click()
        assert d.current_url == server.url + "/environments/fraud-train/2"
        assert text("h1") == "fraud-train v2 latest prod"
        variables = text("#variables")
        assert "OMP_NUM_THREADS 8" in variables and "WANDB_API_KEY secret: its value is never stored" in variables
        assert "mlenv install fraud-train:2" in text("pre.commands")
        assert "numpy 1.26.*" in text("#definition") and "mlenv-util" in text("#definition")
        numpy_row = d.find_element(By.ID, "p-conda-numpy")
        assert numpy_row.text.split()[:4] == ["numpy", "1.26.4", "py311h0_0", "conda"]
        assert "BSD-3-Clause" in numpy_row.text
        assert "mlenv-tiny" in d.find_element(By.ID, "p-pip-mlenv-util").text  # what mlenv-util depends on

        # the graph: numpy's node lights up what it depends on
        node_id = numpy_row.find_element(By.CSS_SELECTOR, "a.to-graph").get_attribute("href").rsplit("#", 1)[1]
        python_id = d.find_element(By.ID, "p-conda-python").find_element(By.CSS_SELECTOR, "a.to-graph") \
            .get_attribute("href").rsplit("#", 1)[1]
        d.execute_script("document.getElementById('graph-title').scrollIntoView()")
        d.find_element(By.ID, node_id).click()
        assert text("#graph-selection") == ("numpy 1.26.4 (conda): 2 dependencies, 0 packages depend on it · "
                                            "details in the table ↓")
        assert "dep" in d.find_element(By.ID, python_id).get_attribute("class").split()
        assert "on" in d.find_element(By.ID, node_id).get_attribute("class").split()
        d.execute_script("window.scrollTo(0, 0)")
        d.save_screenshot(str(shots / "version.png"))
        d.find_element(By.CSS_SELECTOR, "#graph-selection a.details").click()
        assert d.current_url.endswith("#p-conda-numpy")

        d.find_element(By.ID, "compare-previous").click()
        assert d.current_url == server.url + "/environments/fraud-train/diff/1/2"
        assert text("h1") == "fraud-train: v1 → v2"
        changes = {tuple(row.text.split(maxsplit=3)[:3]): row.text
                   for row in d.find_elements(By.CSS_SELECTOR, "#package-changes tbody tr")}
        assert changes[("linux-64", "conda", "numpy")].endswith("changed 1.25.2 py311h0_0 1.26.4 py311h0_0")
        assert changes[("osx-arm64", "conda", "mlenv-hello")].endswith("changed 1.0.0 0 1.1.0 0")
        assert changes[("linux-64", "conda", "python-dateutil")].endswith("added 2.8.2 pyhd8ed1ab_0")
        assert changes[("osx-arm64", "conda", "six")].endswith("added 1.16.0 pyh6c4a22f_0")
        assert 'OMP_NUM_THREADS "4" → "8"' in text("#variables")
        definition = text("#definition")
        assert '- "numpy 1.25.*"' in definition and '+ "numpy 1.26.*"' in definition and "OMP" not in definition
        d.save_screenshot(str(shots / "diff.png"))
        d.find_element(By.ID, "swap").click()
        assert text("h1") == "fraud-train: v2 → v1"

        # hostile values are text, and run nothing (the page's CSP would stop them anyway)
        d.get(server.url + "/")
        assert EVIL_DESCRIPTION in text("#environments") and EVIL_LABELS[0] in text("#environments")
        d.get(server.url + "/environments/hostile/1")
        assert d.find_element(By.CSS_SELECTOR, "#variables td").text == EVIL_VALUE
        assert all(label in text("h1") for label in EVIL_LABELS)
        d.get(server.url + "/environments/hostile/2")
        assert EVIL_PACKAGE in text("#package-table") and EVIL_PACKAGE in d.find_element(By.CSS_SELECTOR, "#graph").text
        for path in ("/environments/hostile", "/environments/hostile/2", "/environments/hostile/diff/1/2"):
            d.get(server.url + path)
            with pytest.raises(NoAlertPresentException):
                d.switch_to.alert  # noqa: B018
            assert d.title != "1"
            assert d.execute_script("return document.querySelectorAll('[onerror], [onload], script:not([src])').length") == 0

        # ~590 packages: every one drawn, and clickable
        d.get(server.url + "/environments/samples/2?platform=linux-64")
        assert len(d.find_elements(By.CSS_SELECTOR, "#graph a.node")) == 593
        timing = d.execute_script(
            "const n = performance.getEntriesByType('navigation')[0]; return [n.responseEnd, n.loadEventEnd];")
        print(f"590-package version page: response {timing[0]:.0f} ms, loaded {timing[1]:.0f} ms after navigation")
        listing = d.find_element(By.ID, "package-list")
        assert listing.get_attribute("open") is None  # a long table starts closed: the graph leads
        d.find_element(By.ID, "g0").click()
        assert "packages depend on it" in text("#graph-selection")
        d.find_element(By.CSS_SELECTOR, "#graph-selection a.details").click()
        assert listing.get_attribute("open") == "true"
        row = d.current_url.rsplit("#", 1)[1]
        assert d.find_element(By.ID, row).is_displayed()

        problems = [entry["message"] for entry in d.get_log("browser")
                    if entry["level"] == "SEVERE" or "Content Security Policy" in entry["message"]]
        assert not problems, problems
    # it wrote nothing: not the registry, not a cache, not a version's directory
    assert home.registry.read_bytes() == registry
    assert tree_hashes(home.path) == before
