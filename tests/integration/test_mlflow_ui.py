"""The MLflow UI, in a real headless Chromium, shows a run, its metrics and the pictures we log.

A private MLflow server (no Ray); a tiny untrained ETVA checkpoint on a tiny generated shapes dataset;
the real :mod:`ray_jobs.pictures` code encodes the validation split and logs the PNGs; metrics come
from the same real scores. The browser (Debian ``chromium`` + ``chromium-driver``, installed by
``cluster/install_browser.sh``) is driven by Selenium. Without the browser this test FAILS (CI must
install it). Screenshots go to the test's tmp dir, and a copy to ``$ETVA_UI_SHOTS`` (default
``test-artifacts/ui-shots`` in the repository, gitignored; CI keeps it as the test's artifacts).

The whole flow (:func:`test_register_alias_in_the_browser_then_eval`): a real `etva train` job on the
local Ray + MLflow cluster; the browser opens the run (its *Source*, *Logged models* and *Datasets*), goes
to the logged model, registers it with *Register model*, sets the alias ``champion`` on the version page;
then `etva eval --checkpoint models:/<name>@champion` evaluates that version.
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

from etva.eval.metrics import retrieval_metrics
from etva.viz.figures import GT_RGB
from ray_jobs.pictures import PICTURES, load_trained, log_pictures, make_pictures, score_split
from tests.integration.tiny_checkpoint import tiny_checkpoint

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SHOTS = Path(os.environ.get("ETVA_UI_SHOTS", REPO / "test-artifacts" / "ui-shots"))
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
    # the artifact tree lists every picture (it fills in after the page's first render: wait for all)
    text = _open(browser, url, lambda t: f"pictures/{name}" in t and all(p in t for p in PICTURES),
                 f"artifact view of {name} with every picture in the tree")  # fmt: skip
    assert all(other in text for other in PICTURES)
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


# ------------------------------------------------------------------ the whole flow, from training to eval
FLOW_EXPERIMENT, FLOW_MODEL = "etva-ui-flow", "etva-ui-flow-model"


def _etva(cluster, *args: str, timeout: float = 600):
    import subprocess
    import sys

    env = {**cluster.subprocess_env(), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "etva", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, (
        f"etva {args[0]}: rc={proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    )
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def trained(local_cluster, data_dir):
    """A real 2-epoch training run (tiny config) submitted with `etva train`; its run page URL."""
    import re

    from etva.config import load_config
    from etva.data.synth import generate_dataset

    data = data_dir / "flow-shapes"
    generate_dataset(data, 24, 0, cfg=load_config(REPO / "ray_jobs/configs/tiny.yaml").data.synth, workers=1,
                     progress=False)  # fmt: skip
    out = _etva(local_cluster, "train", "--config", "ray_jobs/configs/tiny.yaml", "--run-name", "ui-flow",
                f"data.root={data}", f"ray.storage_path={data_dir / 'runs'}", f"mlflow.experiment={FLOW_EXPERIMENT}")  # fmt: skip
    url = re.search(r"MLflow run: (\S+)", out).group(1)
    return {"url": url, "run_id": url.split("/runs/")[1].split("?")[0], "data": data}


def _click(driver, css: str = "", text: str = "", timeout: float = 20.0):
    """Click the first visible element matching ``css`` (and whose text is ``text``), waiting for it."""
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for el in driver.find_elements(By.CSS_SELECTOR, css or "button, a"):
            if el.is_displayed() and (not text or el.text.strip() == text):
                el.click()
                return el
        time.sleep(0.25)
    raise AssertionError(f"nothing to click: css={css!r} text={text!r}")


def _wait_text(driver, ready, what: str, timeout: float = 30.0) -> str:
    deadline, text = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        text = driver.execute_script("return document.body ? document.body.innerText : ''") or ""
        if ready(text):
            return text
        time.sleep(0.25)
    raise AssertionError(f"{what}: not shown in {timeout:.0f} s; page text:\n{text[:2000]}")


def test_register_alias_in_the_browser_then_eval(browser, local_cluster, trained, tmp_path):
    import re

    from selenium.webdriver.common.keys import Keys

    from ray_jobs.tracking import get_client

    client = get_client(local_cluster.mlflow_uri)
    # 1. the run page, in the model-training view: source, logged model, datasets
    text = _open(browser, trained["url"], lambda t: "ui-flow" in t and "Logged models" in t, "run page")
    assert "Model training" in text and "Evaluation runs" not in text, "the UI opened its GenAI view"
    _wait_text(browser, lambda t: "ray_jobs.train" in t and "msrvtt-1k-A-train" in t, "source + datasets")
    tags = client.get_run(trained["run_id"]).data.tags  # `etva train` hands the commit to the job
    assert len(tags["mlflow.source.git.commit"]) == 40 and tags["mlflow.user"]
    _click(browser, "[data-component-id='mlflow.assistant.chat_panel.close']")  # room for the run's details
    _shot(browser, tmp_path, "flow_1_run")
    # 2. the run's logged model -> Register model -> a new registered model
    _click(browser, "a[href*='/models/m-']", text="model")
    if len(browser.window_handles) > 1:  # the UI opens model links in a new tab
        browser.switch_to.window(browser.window_handles[-1])
    _wait_text(browser, lambda t: "Register model" in t and "Not registered" in t, "logged model page")
    _shot(browser, tmp_path, "flow_2_logged_model")
    _click(browser, "button", text="Register model")
    _click(browser, "#selectedModel")
    _click(browser, ".du-bois-light-select-item-option", text="Create New Model")
    _click(browser, "[role=dialog] input#modelName").send_keys(FLOW_MODEL)  # waits for the dialog
    _shot(browser, tmp_path, "flow_3_register_dialog")
    _click(browser, "[data-testid=confirm-register-model]")
    deadline = time.monotonic() + 30
    while not client.search_model_versions(f"name = '{FLOW_MODEL}'"):
        assert time.monotonic() < deadline, "the browser's registration did not reach the registry"
        time.sleep(0.5)
    (version,) = client.search_model_versions(f"name = '{FLOW_MODEL}'")
    model_id = client.get_run(trained["run_id"]).data.tags["etva.model_id"]
    assert version.source == f"models:/{model_id}" and version.run_id == trained["run_id"]
    # 3. the version page -> Aliases: Add -> champion -> Save aliases
    uri = local_cluster.mlflow_uri
    _open(
        browser,
        f"{uri}/#/models/{FLOW_MODEL}/versions/{version.version}",
        lambda t: "Aliases" in t,
        "version page",
    )
    _click(browser, "[data-component-id$='modelversionviewaliaseditor.tsx_29']")
    alias_input = _click(browser, "[role=dialog] input")  # the dialog opens after the click: wait for it
    alias_input.send_keys("champion", Keys.ENTER)
    _shot(browser, tmp_path, "flow_4_alias_dialog")
    _click(browser, "[data-component-id='mlflow.edit-aliases-modal.save-button']")
    _wait_text(
        browser, lambda t: "@ champion" in t or "champion" in t.split("Aliases")[1][:80], "alias on the page"
    )
    _shot(browser, tmp_path, "flow_5_champion")
    assert client.get_model_version_by_alias(FLOW_MODEL, "champion").version == version.version
    # 4. `etva best` sees the browser's version as the run's own (no second version)
    out = _etva(local_cluster, "best", "--run-id", trained["run_id"], "--model-name", FLOW_MODEL)
    assert f"already registered as {FLOW_MODEL} version {version.version}" in out
    # 5. `etva eval` of the champion: the selected checkpoint again, so the run's numbers again
    ev = _etva(local_cluster, "eval", "--checkpoint", f"models:/{FLOW_MODEL}@champion", "--split", "test",
               f"data.root={trained['data']}")  # fmt: skip
    r1 = float(re.search(r"text->video\s+(\d+\.\d+)", ev).group(1))
    assert r1 == pytest.approx(client.get_run(trained["run_id"]).data.metrics["best/t2v_R1"], abs=0.051), ev
