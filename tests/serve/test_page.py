"""The web page end to end in headless Chromium (issue 15, item 4): upload DICOM and 16-bit PNG, ask, draw, edit.

Needs Debian's chromium and chromium-driver (`.ci/run` installs them). Set UNIMEDVL_SCREENSHOT_DIR to keep
the screenshot (docs/images/serve-page.png is made that way).
"""

from __future__ import annotations

import base64
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from serve_helpers import running_server

from unimedvl.assets import SAMPLES, default_checkpoint
from unimedvl.imaging.reader import ReadOptions, read_medical_image
from unimedvl.inference.engine import UniMedVL
from unimedvl.serve.settings import ServerSettings

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):  # noqa: ANN201
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.fail("the browser test needs Debian's chromium and chromium-driver (apt-get install chromium "
                    "chromium-driver; .ci/run does it)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1100",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


def _wait(driver, condition, timeout: float = 60.0):  # noqa: ANN001, ANN202
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: condition(d))


def _preview(driver) -> Image.Image:  # noqa: ANN001
    src = driver.find_element("id", "preview").get_attribute("src")
    return Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB")


def test_page_reads_scans_asks_draws_and_edits(browser, tmp_path: Path) -> None:  # noqa: ANN001
    from selenium.webdriver.support.ui import Select

    model = UniMedVL.from_pretrained(default_checkpoint())
    with running_server(model, ServerSettings.tiny()) as (url, _):
        browser.get(url)
        _wait(browser, lambda d: "unimedvl-tiny" in d.find_element("id", "model-info").text)
        assert "64 / 128 px" in browser.find_element("id", "model-info").text  # the trained sizes are shown
        # empty guidance fields: the model's recommendation (sampling_config.json) is what is sent and shown
        _wait(browser, lambda d: d.find_element("id", "cfg-text").get_attribute("placeholder") == "6 / 4")
        assert browser.find_element("id", "cfg-text").get_attribute("value") == ""

        ct = get_testdata_file("CT_small.dcm")
        browser.find_element("id", "file").send_keys(ct)
        _wait(browser, lambda d: (d.find_element("id", "preview").get_attribute("src") or "").startswith("data:image"))
        assert "dicom" in browser.find_element("id", "meta").text
        assert np.array_equal(np.asarray(_preview(browser)), np.asarray(read_medical_image(ct).image))
        before = browser.find_element("id", "preview").get_attribute("src")
        Select(browser.find_element("id", "window")).select_by_visible_text("lung")
        _wait(browser, lambda d: d.find_element("id", "preview").get_attribute("src") != before)
        lung = read_medical_image(ct, options=ReadOptions(window="lung")).image
        assert np.array_equal(np.asarray(_preview(browser)), np.asarray(lung))

        browser.find_element("id", "ask").click()
        _wait(browser, lambda d: d.find_element("id", "answer").text.strip() != "")

        steps = browser.find_element("id", "steps")
        steps.clear()
        steps.send_keys("4")
        browser.find_element("id", "generate").click()
        _wait(browser, lambda d: len(d.find_elements("css selector", "#gallery figure")) == 1)
        progress = browser.find_element("id", "progress")
        assert progress.get_attribute("value") == progress.get_attribute("max") == "3"  # 4 timesteps, 3 calls
        browser.find_element("id", "edit").click()
        _wait(browser, lambda d: len(d.find_elements("css selector", "#gallery figure")) == 2)
        assert browser.find_element("id", "status").text == ""

        # The bundled brain MRI is a real 16-bit PNG: a plain 8-bit conversion clips it to a white blob
        # (30% of pixels at 255); the page shows the reader's rendering.
        mri16 = SAMPLES / "brain_mri_msd.png"
        Select(browser.find_element("id", "window")).select_by_index(0)
        browser.find_element("id", "file").send_keys(str(mri16))
        _wait(browser, lambda d: "I;16" in d.find_element("id", "meta").text)
        shown = np.asarray(_preview(browser))
        assert np.array_equal(shown, np.asarray(read_medical_image(mri16).image))
        assert (np.asarray(Image.open(mri16).convert("L")) == 255).mean() > 0.25
        assert (shown == 255).mean() < 0.05 and shown.std() > 20

        shot = tmp_path / "serve-page.png"
        assert browser.save_screenshot(str(shot))
        picture = Image.open(shot)
        assert picture.size[0] >= 1000 and np.asarray(picture.convert("L")).std() > 10  # a rendered page
        if os.environ.get("UNIMEDVL_SCREENSHOT_DIR"):
            shutil.copy(shot, Path(os.environ["UNIMEDVL_SCREENSHOT_DIR"]) / shot.name)
