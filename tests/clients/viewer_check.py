#!/usr/bin/env python3
"""The viewer page (`GET /`) in a real headless browser (Debian's chromium + chromedriver,
driven through WebDriver by selenium).

Starts `medinfer serve` on a free loopback port over a repository holding the shipped cardiac
model (pipeline "cardiac", tract), writes phantom exam 7 with `medinfer phantom cardiac`, and
runs the same file through `medinfer run cardiac --json` as the reference. Then, in the page:
  - the model list shows the cardiac model;
  - upload the phantom's NIfTI through the file input, press Analyse, wait for the job;
  - the LV / RV volumes, EFs and mass shown equal the command line's numbers (as shown, one
    decimal) and the image canvas has the overlay drawn (coloured pixels in the ED slice);
  - scroll slices and phases with the sliders: the labels follow;
  - the "phantom exam" button runs a server-made phantom and shows its truth beside the
    measured LV EF, within 5 EF points of it;
  - a screenshot is kept as a test artefact (target/artifacts/viewer.png).
Every wait is bounded.

Usage: python viewer_check.py MEDINFER   (run by `cargo xtask test` in its own venv)
"""
import os
import socket
import sys
import tempfile
import time

from common import Checks, Server, cardiac_exam_repository
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = os.environ.get("MEDINFER_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("MEDINFER_CHROMEDRIVER", "/usr/bin/chromedriver")


def main():
    medinfer = os.path.abspath(sys.argv[1])
    artefacts = os.path.abspath(os.path.join("target", "artifacts"))
    os.makedirs(artefacts, exist_ok=True)
    work = tempfile.mkdtemp(prefix="medinfer-viewer-")
    repo, nifti, ref = cardiac_exam_repository(medinfer, work, 7, "nifti")

    server = Server(medinfer, repo, work)
    port = server.port
    check = Checks()

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
              "--no-first-run", "--disable-background-networking", "--disable-component-update",
              "--disable-sync", "--disable-dev-shm-usage", "--window-size=1400,1000",
              f"--user-data-dir={os.path.join(work, 'chromium-profile')}"]:
        opts.add_argument(a)
    driver = None
    try:
        deadline = time.time() + 120
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.time() > deadline or server.proc.poll() is not None:
                    raise SystemExit("medinfer serve did not start:\n" + open(server.log).read())
                time.sleep(0.2)
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
        driver.set_page_load_timeout(60)
        wait = WebDriverWait(driver, 120)
        driver.get(f"http://127.0.0.1:{port}/")
        wait.until(lambda d: d.find_element(By.ID, "status").text.startswith("Ready"))
        options = [o.text for o in driver.find_elements(By.CSS_SELECTOR, "#model option")]
        check(options == ["heart (cardiac)"], f"model list {options}")

        driver.find_element(By.ID, "files").send_keys(nifti)
        driver.find_element(By.ID, "run").click()
        wait.until(lambda d: d.find_element(By.ID, "status").text.startswith(("Done", "Job failed"))
                   or "error" in d.find_element(By.ID, "status").get_attribute("class"))
        check(driver.find_element(By.ID, "status").text.startswith("Done"),
              "upload job: " + driver.find_element(By.ID, "status").text)
        shown = {k: driver.find_element(By.ID, k).text for k in
                 ["lv-edv", "lv-esv", "lv-ef", "rv-edv", "rv-esv", "rv-ef", "lv-mass"]}
        want = {
            "lv-edv": ref["lv"]["edv_ml"], "lv-esv": ref["lv"]["esv_ml"],
            "lv-ef": ref["lv"]["ef_pct"], "rv-edv": ref["rv"]["edv_ml"],
            "rv-esv": ref["rv"]["esv_ml"], "rv-ef": ref["rv"]["ef_pct"],
            "lv-mass": ref["lv_mass_g"],
        }
        for k, v in want.items():
            check(shown[k] == f"{v:.1f}", f"{k}: page shows {shown[k]}, command line {v:.1f}")
        ed_es = driver.find_element(By.ID, "ed-es").text
        check(ed_es == f"{ref['ed_phase']} / {ref['es_phase']}", f"ED / ES phase {ed_es}")
        check(driver.find_element(By.ID, "curves").is_displayed(), "volume curves shown")
        # The canvas: image size, and the overlay colours some pixels of the ED slice.
        coloured = driver.execute_script("""
            const c = document.getElementById('canvas');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0;
            for (let i = 0; i < d.length; i += 4) if (d[i] !== d[i + 1] || d[i + 1] !== d[i + 2]) n++;
            return [c.width, c.height, n];""")
        check(coloured[0] > 0 and coloured[2] > 50, f"canvas {coloured[0]}x{coloured[1]}, "
              f"{coloured[2]} overlay pixels")
        phase = driver.find_element(By.ID, "phase-label").text
        check("(ED)" in phase, f"opens at the ED phase ({phase})")
        driver.save_screenshot(os.path.join(artefacts, "viewer.png"))
        # Scroll: slice and phase sliders move the labels.
        driver.execute_script("""
            for (const [id, v] of [['slice', 0], ['phase', arguments[0]]]) {
              const e = document.getElementById(id); e.value = v;
              e.dispatchEvent(new Event('input'));
            }""", ref["es_phase"])
        sl = driver.find_element(By.ID, "slice-label").text
        ph = driver.find_element(By.ID, "phase-label").text
        check(sl.startswith("1 /") and "(ES)" in ph, f"after scrolling: slice {sl}, phase {ph}")

        # The phantom button: a server-made exam with its truth beside the numbers.
        seed = driver.find_element(By.ID, "seed")
        seed.clear()
        seed.send_keys("3")
        driver.find_element(By.ID, "phantom").click()
        time.sleep(0.5)
        wait.until(lambda d: d.find_element(By.ID, "status").text.startswith("Done")
                   or "error" in d.find_element(By.ID, "status").get_attribute("class"))
        row = driver.find_element(By.ID, "row-lv-ef").find_elements(By.TAG_NAME, "td")
        measured, truth = float(row[1].text), float(row[3].text)
        check(abs(measured - truth) < 5.0, f"phantom 3: LV EF {measured} vs truth {truth}")
        driver.save_screenshot(os.path.join(artefacts, "viewer-phantom.png"))
    finally:
        if driver is not None:
            driver.quit()
        server.stop()
    check.finish(server, f"viewer: all checks passed; screenshots in {artefacts}")


if __name__ == "__main__":
    main()
