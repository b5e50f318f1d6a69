"""End to end in real headless Chromium: `streamlit run app.py` on a free localhost port
(FPQ_HOME in a tmp dir, FPQ_APP_MODEL=tiny unless FPQ_E2E_MODEL says otherwise), open every page,
start a quantize job from the browser, wait for it, and screenshot each page.

Screenshots go to docs/screenshots/ only with FPQ_SAVE_SCREENSHOTS=1 (else a tmp dir). Skipped
cleanly when chromium / chromedriver / selenium are missing."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser
REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver")
if not (CHROMIUM and DRIVER):
    pytest.skip("chromium / chromedriver not installed", allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402

PAGES = [("", "home", "FP-Quant Studio"), ("Formats", "formats", "FP4 format playground"),
         ("Layer_explorer", "layer_explorer", "Layer explorer"), ("Quantize", "quantize", "Quantize"),
         ("Evaluate_compare", "evaluate_compare", "Evaluate & compare"), ("Export", "export", "Export & download")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("fpq_e2e_home")
    port = _free_port()
    env = {**os.environ, "FPQ_HOME": str(home), "FPQ_APP_MODEL": os.environ.get("FPQ_E2E_MODEL", "tiny")}
    log = open(home / "streamlit.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true",
                             "--browser.gatherUsageStats", "false"], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("streamlit did not start: " + (home / "streamlit.log").read_text()[-2000:])
        yield url, home
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1400,1500", "--hide-scrollbars"):
        opts.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="fpq-chromium-")
    opts.add_argument(f"--user-data-dir={profile}")
    drv = webdriver.Chrome(service=Service(DRIVER), options=opts)
    drv.set_page_load_timeout(120)
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _shots_dir(tmp_path_factory) -> Path:
    if os.environ.get("FPQ_SAVE_SCREENSHOTS") == "1":
        d = REPO / "docs" / "screenshots"
        d.mkdir(parents=True, exist_ok=True)
        return d
    return tmp_path_factory.mktemp("shots")


def _settle(drv, text: str, timeout: float = 180.0) -> None:
    """Wait until `text` is on the page, no exception box is shown and the app stopped running."""
    t_end = time.time() + timeout
    quiet_since = None
    while time.time() < t_end:
        body = drv.find_element(By.TAG_NAME, "body").text
        running = drv.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"] [data-testid="stStatusWidgetRunningIcon"]') \
            or drv.find_elements(By.CSS_SELECTOR, '[data-testid="stSpinner"]') or "Running..." in body
        if text in body and not running:
            quiet_since = quiet_since or time.time()
            if time.time() - quiet_since > 1.5:
                assert not drv.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]'), body[-1500:]
                return
        else:
            quiet_since = None
        time.sleep(0.3)
    raise AssertionError(f"{text!r} did not settle; page text: {body[-1500:]}")


def _shot(drv, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    drv.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
    return path


def test_every_page_and_a_quantize_job(server, browser, tmp_path_factory):
    url, home = server
    shots = _shots_dir(tmp_path_factory)
    drv = browser

    drv.get(url + "/")
    _settle(drv, "Quantizable Linears")
    _shot(drv, shots, "home")
    for path, name, title in PAGES[1:3]:
        drv.get(f"{url}/{path}")
        _settle(drv, title if name != "layer_explorer" else "Mean rel. MSE")
        _shot(drv, shots, name)

    # start a GPTQ job from the browser
    drv.get(f"{url}/Quantize")
    _settle(drv, "Start quantization job")
    btn = next(b for b in drv.find_elements(By.TAG_NAME, "button") if "Start quantization job" in b.text)
    btn.click()
    _settle(drv, "queued job")
    from fpq_core.jobs import Registry

    reg = Registry(home)
    job = reg.jobs()[0]
    done = reg.wait(job.id, timeout=300)
    assert done.status == "done", done.error
    time.sleep(3)  # the live fragment refreshes every 1.5 s
    _settle(drv, "Linears quantized")
    _shot(drv, shots, "quantize")

    # evaluate it (perplexity, 2 windows) through the API, then show the comparison page
    je = reg.submit("evaluate", done.run_id, {"ppl_windows": 2, "sequence_length": 128})
    assert reg.wait(je, timeout=300).status == "done"
    drv.get(f"{url}/Evaluate_compare")
    _settle(drv, "The paper's published numbers")
    _shot(drv, shots, "evaluate_compare")

    jx = reg.submit("export", done.run_id, {"kind": "w4a16"})
    assert reg.wait(jx, timeout=300).status == "done", reg.job(jx).error
    drv.get(f"{url}/Export")
    _settle(drv, "Verification")
    _shot(drv, shots, "export")
    for f in shots.glob("*.png"):
        assert f.stat().st_size < 500_000, f
