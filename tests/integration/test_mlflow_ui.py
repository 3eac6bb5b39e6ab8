"""The MLflow UI, in a real headless Chromium, shows a run, its metrics and the pictures we log.

A private MLflow server (no Ray); a tiny untrained ETVA checkpoint on a tiny generated shapes dataset;
the real :mod:`ray_jobs.pictures` code encodes the validation split and logs the PNGs; metrics come
from the same real scores. The browser (Debian ``chromium`` + ``chromium-driver``, installed by
``cluster/install_browser.sh``) is driven by Selenium. Without the browser this test FAILS (CI must
install it). Screenshots go to the test's tmp dir, and a copy to ``$ETVA_UI_SHOTS`` (default
``/tmp/etva-ui-shots``).
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from etva.metrics import retrieval_metrics
from etva.viz import GT_RGB
from ray_jobs.pictures import PICTURES, load_trained, log_pictures, make_pictures, score_split
from tests.integration.tiny_checkpoint import tiny_checkpoint

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parents[2]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SHOTS = Path(os.environ.get("ETVA_UI_SHOTS", "/tmp/etva-ui-shots"))
RUN_NAME = "ui-pictures-run"
CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1600",
)
torch.set_num_threads(2)


def _checkpoint(tmp: Path, *overrides: str) -> tuple[Path, list]:
    return tiny_checkpoint(tmp, *overrides)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ui-data")


@pytest.fixture(scope="module")
def logged_run(local_cluster_factory, data_dir):
    """MLflow server + one finished run with val metrics (3 steps) and the pictures."""
    from mlflow.tracking import MlflowClient

    ckpt, records = _checkpoint(data_dir)
    model, cfg, tok = load_trained(ckpt)
    scores = score_split(model, cfg, tok, records)
    metrics = retrieval_metrics(scores.sim, scores.query_to_video)
    with local_cluster_factory(1, ray=False, mlflow=True) as cluster:
        client = MlflowClient(cluster.mlflow_uri)
        exp_id = client.create_experiment("etva-ui")
        run_id = client.create_run(exp_id, run_name=RUN_NAME).info.run_id
        for step in range(3):
            for k, v in metrics.items():
                client.log_metric(run_id, f"val/{k}", v, step=step)
        logged = log_pictures(client, run_id, ckpt, records)
        client.set_terminated(run_id)
        yield {"uri": cluster.mlflow_uri, "exp": exp_id, "run": run_id, "logged": logged, "client": client}


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium via Selenium and chromedriver. Missing pieces FAIL the test (never skip)."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail(f"{CHROMIUM} / {CHROMEDRIVER} missing: run `bash cluster/install_browser.sh` first")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError as e:
        pytest.fail(f"selenium is not installed in the venv ({e}); it is a dev dependency")
    profile = tempfile.mkdtemp(prefix="etva-chromium-")
    opts = Options()
    opts.binary_location = str(CHROMIUM)
    for flag in (*CHROME_FLAGS, f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _open(driver, url: str, ready, what: str, timeout: float = 30.0) -> str:
    """Load ``url`` (fresh page load) and wait until ``ready(page_text)``; return the page text."""
    driver.get("about:blank")
    driver.get(url)
    deadline, text = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        text = driver.execute_script("return document.body ? document.body.innerText : ''") or ""
        if ready(text):
            return text
        time.sleep(0.25)
    raise AssertionError(f"{what}: the page never showed it in {timeout:.0f} s; page text:\n{text[:2000]}")


def _shot(driver, tmp_path: Path, name: str) -> np.ndarray:
    """Save a screenshot under tmp_path and SHOTS; return it as an RGB array."""
    from PIL import Image

    path = tmp_path / f"{name}.png"
    driver.save_screenshot(str(path))
    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, SHOTS / path.name)
    return np.asarray(Image.open(path).convert("RGB"))


def _png_size(data: bytes) -> tuple[int, int]:
    return struct.unpack(">II", data[16:24])


def test_pictures_are_run_artifacts(logged_run):
    assert logged_run["logged"] == [f"pictures/{n}" for n in PICTURES]
    listed = {a.path for a in logged_run["client"].list_artifacts(logged_run["run"], "pictures")}
    assert listed == {f"pictures/{n}" for n in PICTURES}


def test_run_page_shows_run_and_metrics(browser, logged_run, tmp_path):
    url = f"{logged_run['uri']}/#/experiments/{logged_run['exp']}/runs/{logged_run['run']}"
    text = _open(browser, url, lambda t: RUN_NAME in t and "val/t2v_R1" in t, "run name + metrics table")
    _shot(browser, tmp_path, "run_overview")
    assert logged_run["run"] in text  # the run id on the overview
    for metric in ("val/t2v_R1", "val/t2v_MdR", "val/v2t_R5"):
        assert metric in text
    assert "Finished" in text


@pytest.mark.parametrize("name", PICTURES)
def test_artifact_view_shows_the_picture(browser, logged_run, tmp_path, name):
    url = f"{logged_run['uri']}/#/experiments/{logged_run['exp']}/runs/{logged_run['run']}/artifacts/pictures/{name}"
    text = _open(browser, url, lambda t: f"pictures/{name}" in t, f"artifact view of {name}")
    for other in PICTURES:  # the artifact tree lists every picture
        assert other in text
    want_w, want_h = _png_size(
        Path(logged_run["client"].download_artifacts(logged_run["run"], f"pictures/{name}")).read_bytes()
    )
    deadline, sizes = time.monotonic() + 20, []
    while time.monotonic() < deadline:
        sizes = browser.execute_script(
            "return Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0)"
            ".map(i => [i.naturalWidth, i.naturalHeight])"
        )
        if [want_w, want_h] in sizes:
            break
        time.sleep(0.25)
    assert [want_w, want_h] in sizes, f"no loaded <img> of {want_w}x{want_h} for {name}: {sizes}"
    shot = _shot(browser, tmp_path, f"artifact_{Path(name).stem}")
    if name == "retrieval_gallery.png":  # <= 5 val videos: every ground truth is framed, so it is on screen
        green = np.all(np.abs(shot.astype(int) - np.array(GT_RGB)) <= 12, axis=-1)
        assert green.sum() > 200, "the gallery's green ground-truth frames are not visible in the screenshot"


def test_global_only_model_has_no_word_cluster_picture(data_dir, tmp_path):
    ckpt, records = _checkpoint(data_dir, "model.alignment=global")
    names = [p.name for p in make_pictures(ckpt, records, tmp_path / "pics", num_queries=2)]
    assert names == ["retrieval_gallery.png", "expert_mixture.png", "recall_curve.png"]
