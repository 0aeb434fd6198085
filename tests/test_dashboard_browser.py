"""The dashboard in a real browser: Debian's Chromium, headless, driven by selenium through
Debian's chromedriver (both installed by `make test`; nothing downloads a browser), against
visualize/dashboard.py serving the real stack. Searches, sees the thumbnails load, opens an
image, and finds no key in any page's source."""
from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from imgpipe.cli import printable
from imgpipe.settings import REPO_ROOT
from tests import dashboard_data
from tests.helpers import script_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1000")


@pytest.fixture
def dashboard(settings, tmp_path):
    """(base URL, DashboardIndex): the dashboard as `make dashboard` runs it, reading with the
    search-only key (no master or admin key in its environment), over the isolated index."""
    data = dashboard_data.build(settings)
    port = dashboard_data.free_port()
    log = open(tmp_path / "dashboard.log", "wb")
    process = subprocess.Popen([sys.executable, str(REPO_ROOT / "visualize" / "dashboard.py"), "--port", str(port),
                                "--mapreduce-dir", str(tmp_path / "none"), "--consumer-summary",
                                str(tmp_path / "none.json")],
                               env=script_env(settings, MEILI_MASTER_KEY="", MEILI_ADMIN_KEY=""), cwd=REPO_ROOT,
                               stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{base}/static/style.css", timeout=2).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the dashboard did not start: " + (tmp_path / "dashboard.log").read_text())
            time.sleep(0.2)
    yield base, data
    process.terminate()
    process.wait(timeout=15)
    log.close()


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    assert not missing, f"{', '.join(missing)} missing: `make test` installs Debian's chromium and chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def loaded_images(driver, selector: str) -> list[tuple[str, int]]:
    """(src, naturalWidth) of the images under `selector`, once every image finished (or failed)."""
    from selenium.webdriver.support.ui import WebDriverWait

    script = f"return [...document.querySelectorAll({selector!r})].every(i => i.complete)"
    WebDriverWait(driver, 20).until(lambda d: d.execute_script(script))
    return [tuple(x) for x in driver.execute_script(
        f"return [...document.querySelectorAll({selector!r})].map(i => [i.getAttribute('src'), i.naturalWidth])")]


def click_and_wait(driver, element) -> None:
    """Click what navigates, then wait until the next page replaced this one and finished loading.
    A form's submission is scheduled, not done, when the click returns: reading the grid right
    after it once read the old page's 24 thumbnails, all loaded, instead of the results."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.expected_conditions import staleness_of
    from selenium.webdriver.support.ui import WebDriverWait

    page = driver.find_element(By.TAG_NAME, "html")
    element.click()
    WebDriverWait(driver, 20).until(staleness_of(page))
    WebDriverWait(driver, 20).until(lambda d: d.execute_script("return document.readyState") == "complete")


def assert_no_key(driver, settings) -> None:
    source = driver.page_source
    assert not [s for s in dashboard_data.keys_of(settings) if s in source], driver.current_url


def test_a_search_shows_its_thumbnails_and_opens_an_image(dashboard, browser, settings):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    base, data = dashboard
    browser.get(base + "/")
    assert browser.title == "Search · imgpipe"
    assert len(loaded_images(browser, "#grid img")) == 24  # the first page of 32
    assert_no_key(browser, settings)

    box = browser.find_element(By.NAME, "q")
    box.clear()
    box.send_keys("photo")
    Select(browser.find_element(By.NAME, "image_format")).select_by_visible_text("jpeg")
    Select(browser.find_element(By.NAME, "sort")).select_by_visible_text("timestamp:asc")
    click_and_wait(browser, browser.find_element(By.CSS_SELECTOR, "form.search button"))
    jpegs = [d for d in data.docs if d["format"] == "jpeg" and d["file_name"].startswith("photo")]
    images = loaded_images(browser, "#grid img")
    assert [src for src, _ in images] == [f"/image/{d['id']}/thumbnail.jpg" for d in jpegs]
    # Every thumbnail in S3 loads (256 px wide); the one missing from S3 (document 5) does not.
    assert {src for src, width in images if width == 256} == \
        {f"/image/{d['id']}/thumbnail.jpg" for d in jpegs if d["id"] in data.thumbnails}
    assert dict(images)[f"/image/{data.docs[5]['id']}/thumbnail.jpg"] == 0
    assert browser.find_element(By.ID, "summary").text.startswith(f"{len(jpegs)} of about {len(jpegs)} images")
    assert_no_key(browser, settings)

    first = jpegs[0]
    click_and_wait(browser, browser.find_element(By.CSS_SELECTOR, "#grid .card a.name"))
    assert browser.current_url == f"{base}/image/{first['id']}"
    assert browser.find_element(By.ID, "file-name").text == first["file_name"]
    pictures = dict(loaded_images(browser, ".pictures img"))
    assert pictures == {f"/image/{first['id']}/thumbnail.jpg": 256, f"/image/{first['id']}/grayscale.jpg": 128}
    rows = {row.find_element(By.TAG_NAME, "th").text: row.find_element(By.TAG_NAME, "td").text
            for row in browser.find_elements(By.CSS_SELECTOR, "#fields tr")}
    assert rows["key"] == first["key"] and rows["sha256"] == first["sha256"]
    assert len(loaded_images(browser, "#similar img")) == 8
    assert_no_key(browser, settings)


def test_hostile_keys_bad_filters_charts_and_dead_letters_in_the_browser(dashboard, browser, settings):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    base, data = dashboard
    dashboard_data.write_dead_letters(settings, [(f"{settings.s3_raw_prefix}a.jpg", "decode", "not an image"),
                                                 (f"{settings.s3_raw_prefix}<img src=x>\x1b.jpg", "guard", "too big")])
    hostile = data.hostile
    browser.get(f"{base}/image/{hostile['id']}")
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # the <script> in the key did not run
    assert browser.find_element(By.ID, "file-name").text == printable(hostile["file_name"])
    assert browser.find_elements(By.TAG_NAME, "script") == []
    assert dict(loaded_images(browser, ".pictures img"))[f"/image/{hostile['id']}/thumbnail.jpg"] == 256
    assert_no_key(browser, settings)

    browser.get(f"{base}/?filter=faces%20%3E%3E%202")
    assert browser.find_element(By.TAG_NAME, "h1").text == "400 · Bad request"
    assert browser.find_element(By.ID, "error-message").text.startswith("invalid filter:")
    assert_no_key(browser, settings)

    browser.get(f"{base}/charts")
    charts = loaded_images(browser, "#charts img")
    assert [src for src, _ in charts] == [f"/charts/{n}.png" for n in
                                          ("size_distribution", "processing_hours", "formats", "faces")]
    assert all(width == 900 for _, width in charts)
    totals = {row.find_element(By.TAG_NAME, "th").text: row.find_element(By.TAG_NAME, "td").text
              for row in browser.find_elements(By.CSS_SELECTOR, "#totals tr")}
    assert totals["images"] == str(len(data.docs))
    assert_no_key(browser, settings)

    browser.get(f"{base}/dead-letters")
    rows = browser.find_elements(By.CSS_SELECTOR, "#dead-letters tbody tr")
    assert [r.find_element(By.CSS_SELECTOR, "td.stage").text for r in rows] == ["guard", "decode"]
    assert rows[0].find_element(By.CSS_SELECTOR, "td.key").text == printable(f"{settings.s3_raw_prefix}<img src=x>\x1b.jpg")
    assert browser.find_elements(By.CSS_SELECTOR, "#dead-letters img") == []
    assert_no_key(browser, settings)

    browser.get(f"{base}/status")
    assert "--metrics-port 9464" in browser.find_element(By.ID, "no-metrics").text
    assert_no_key(browser, settings)


def test_face_boxes_are_drawn_over_the_thumbnail_where_the_faces_are(dashboard, browser, settings):
    """The enricher's face_boxes (fractions of the image) on the image page: an SVG over the
    thumbnail, each box where its fractions put it (the page's CSP allows no inline style)."""
    from selenium.webdriver.common.by import By

    from imgpipe import meili

    base, data = dashboard
    doc = next(d for d in data.docs if d["id"] in data.thumbnails)
    client = meili.client(settings, key=settings.meili_master_key)
    task = client.index(settings.meili_index).update_documents([{
        "id": doc["id"], "faces": 1, "face_boxes": [{"x": 0.25, "y": 0.1, "w": 0.5, "h": 0.4, "confidence": 0.9}],
        "text": "Invoice 4711", "text_lines": [{"text": "Invoice 4711", "box": [0.1, 0.8, 0.5, 0.1], "confidence": 0.99}]}])
    meili.wait_for_task(client, settings, task.task_uid, "adding the enrichment")
    browser.get(f"{base}/image/{doc['id']}")
    loaded_images(browser, ".pictures img")
    picture = browser.find_element(By.ID, "thumbnail").rect
    face = browser.find_element(By.CSS_SELECTOR, "#face-boxes rect.face").rect
    assert face["x"] == pytest.approx(picture["x"] + 0.25 * picture["width"], abs=2)
    assert face["y"] == pytest.approx(picture["y"] + 0.1 * picture["height"], abs=2)
    assert face["width"] == pytest.approx(0.5 * picture["width"], abs=2)
    assert face["height"] == pytest.approx(0.4 * picture["height"], abs=2)
    assert browser.find_element(By.ID, "text-lines").text.startswith("Invoice 4711")
