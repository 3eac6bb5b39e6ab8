"""`etva index` + `etva serve` on the session's local Ray head and MLflow server, queried over HTTP.

Two tiny checkpoints (untrained, different seeds: two digests) are logged as runs and registered the way
`etva best` does; v1 is `champion`. The real `etva index` command builds v1's index with the Ray Data job;
the real `etva serve` command (a subprocess, free port, 127.0.0.1, a token in a 0600 file) serves it: no
token / a wrong token is a 401 and the right one a 200 on /search (GET and POST), /clip and /thumb; the
top-1 of a caption equals the engine's own top-1 (``model.similarity`` over every clip), bad input is a
4xx naming the problem while the server keeps serving, clip links serve indexed files only, requests sent
together (batched on the replica) get what each gets alone; a second
`etva serve` asking for another host is refused and the first keeps serving. A headless Chromium signs in
on the search page once and finds a clip whose file name is markup shown as text (no script runs). Then
the alias moves to v2: a client keeps querying during the switch, every answer succeeds and comes from
one consistent version, and the answers end up from v2 with v2's engine top-1; the server's log has one
summary line per checkpoint download, no progress bar. Serve is shut down at the end so the session head
is clean.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from benchmarks.serve_setup import stop_group
from etva.index.build import digest_of
from etva.index.store import IndexStore
from etva.inference import encode_records, encode_texts, load_trained
from ray_jobs import tracking
from tests.integration.conftest import free_ports
from tests.integration.test_mlflow_ui import CHROME_FLAGS, CHROMEDRIVER, CHROMIUM
from tests.integration.tiny_checkpoint import tiny_checkpoint
from tuning.best import register

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
MODEL = "etva-serve"
NUM_VIDEOS = 12
CRAFTED = (
    "<img src=x onerror=window.pwned=1>.mp4"  # a file name that is markup: the page must show it as text
)
TOKEN = secrets.token_urlsafe(24)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
torch.set_num_threads(2)


def _wait(cond, what: str, timeout: float = 300.0, proc: subprocess.Popen | None = None):
    """Poll ``cond()`` until truthy (the machine is loaded: wait on state, with a generous deadline)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: the server exited with {proc.returncode}")
        got = cond()
        if got:
            return got
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


def _get(url: str, timeout: float = 60.0, headers: dict | None = None, body: bytes | None = None):
    """(status, body) of a GET (a POST with ``body``), with the token unless ``headers`` say otherwise."""
    headers = AUTH if headers is None else headers
    if body is not None:
        headers = {**headers, "Content-Type": "application/json"}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, bytes]:
    return _get(url, headers=headers, body=body)


def _engine_top1(ckpt: Path, videos: Path, caption: str) -> str:
    """The clip the engine's own scoring (model.similarity over every clip) ranks first."""
    from etva.data.records import ClipRecord

    model, cfg, tok = load_trained(ckpt)
    names = sorted(p.name for p in videos.glob("*.mp4"))
    enc = encode_records(model, [ClipRecord(n, str(videos / n), [], "") for n in names], cfg.data)
    with torch.no_grad():
        text = encode_texts(model, tok, [caption], cfg.data.max_text_len)
        sim = model.similarity(text, enc.video)["fused"][0]
    return [names[i] for i in enc.kept][int(sim.argmax())]


def _etva(cluster, *args: str, **kw) -> subprocess.CompletedProcess:
    env = {**cluster.subprocess_env(), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "etva", *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=600, **kw)  # fmt: skip


@pytest.fixture(scope="module")
def models(local_cluster, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    ckpt1, records = tiny_checkpoint(tmp)
    ckpt2, _ = tiny_checkpoint(tmp, "model.alignment=global")  # another model: another digest
    assert digest_of(ckpt1) != digest_of(ckpt2)
    videos = tmp / "videos"
    videos.mkdir()
    clips = {Path(r.video_path) for r in records}  # the captions' clips, plus others up to NUM_VIDEOS
    clips |= set(sorted(Path(records[0].video_path).parent.glob("*.mp4"))[: NUM_VIDEOS - len(clips)])
    for clip in clips:
        shutil.copy(clip, videos / clip.name)
    spare = sorted(c.name for c in clips - {Path(r.video_path) for r in records})[0]
    (videos / spare).rename(videos / CRAFTED)  # no caption names it: the top-1 checks are unchanged
    client = tracking.get_client(local_cluster.mlflow_uri)
    exp = tracking.experiment_id(client, "etva-serve")
    runs = []
    for name, ckpt in (("v1", ckpt1), ("v2", ckpt2)):
        run_id = client.create_run(exp, run_name=name).info.run_id
        tracking.finish_run(client, run_id, {"val/t2v_R1": 1.0, "epoch": 0}, str(ckpt), "FINISHED")
        runs.append(client.get_run(run_id))
    assert register(client, runs[0], MODEL)[0] == "1"
    return {"tmp": tmp, "videos": videos, "records": records, "ckpts": (ckpt1, ckpt2),
            "client": client, "runs": runs}  # fmt: skip


@pytest.fixture(scope="module")
def server(local_cluster, models):
    (port,) = free_ports(1)
    root = models["tmp"] / "indexes"
    uri = f"models:/{MODEL}@champion"
    built = _etva(local_cluster, "index", "--model", uri, "--videos", str(models["videos"]),
                  "--index", str(root / "by-hand"))  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    env = {**local_cluster.subprocess_env(), "PYTHONPATH": str(REPO)}
    env.pop("ETVA_SERVE_TOKEN", None)
    token_file = models["tmp"] / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    log = open(models["tmp"] / "serve.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "etva", "serve", "--model", uri, "--videos", str(models["videos"]),
         "--index-root", str(root), "--port", str(port), "--poll-s", "1", "--token-file", str(token_file)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _up(base), "the server", 600, proc)
        yield {
            "base": base,
            "proc": proc,
            "root": root,
            "log": models["tmp"] / "serve.log",
            "uri": uri,
            "port": port,
            "token_file": token_file,
            **models,
        }
    finally:
        stop_group(proc)
        log.close()
        stop = "import ray; from ray import serve; ray.init(log_to_driver=False); serve.shutdown()"
        subprocess.run([sys.executable, "-c", stop], env=env, cwd=REPO, timeout=300, check=True)


def _up(base: str) -> bool:
    try:
        return _get(f"{base}/health", 5, headers={})[0] == 200
    except OSError:
        return False


def _search(base: str, q: str, k: int = 5) -> dict:
    status, body = _get(f"{base}/search?" + urllib.parse.urlencode({"q": q, "k": k}))
    assert status == 200, body
    return json.loads(body)


def test_index_command_writes_the_champions_vectors(server):
    store = IndexStore.read(server["root"] / "by-hand")
    assert store.manifest.model.name == MODEL and store.manifest.model.version == "1"
    assert store.manifest.model.digest == digest_of(server["ckpts"][0])
    assert store.table().num_rows == NUM_VIDEOS and store.manifest.sources[0]["kind"] == "folder"


def test_every_data_route_needs_the_token(server):
    """No token or a wrong one: 401; the right one: 200 — /search (GET, POST), /clip, /thumb. A token in the
    URL is refused; /health says only that the server is up."""
    base, wrong = server["base"], {"Authorization": f"Bearer {secrets.token_urlsafe(24)}"}
    hit = _search(base, server["records"][0].captions[0], 1)["results"][0]
    routes = [
        ("/search?q=red&k=2", None),
        ("/search", json.dumps({"q": "red", "k": 2}).encode()),
        (hit["clip"], None),
        (hit["thumbnail"], None),
    ]
    for path, body in routes:
        got = [_get(base + path, headers=h, body=body)[0] for h in ({}, wrong, AUTH)]
        assert got == [401, 401, 200], (path, got)
    assert _get(f"{base}/search?q=red&token={TOKEN}", headers={})[0] == 401
    status, body = _get(f"{base}/health", headers={})
    assert (status, json.loads(body)) == (200, {"status": "ok"})


def test_top1_is_the_engines_top1_and_bad_input_is_a_4xx(server):
    base, caption = server["base"], server["records"][3].captions[0]
    got = _search(base, caption)
    assert (got["model"], got["version"], len(got["results"])) == (MODEL, "1", 5)
    assert got["results"][0]["video_id"] == _engine_top1(server["ckpts"][0], server["videos"], caption)
    post = json.loads(_post(f"{base}/search", json.dumps({"q": caption, "k": 5}).encode())[1])
    assert post["results"] == got["results"]
    for query, status, message in [
        ("q=", 400, "empty query"),
        ("q=" + "a" * 600, 400, "at most 500"),
        ("q=red&k=0", 400, "out of range"),
        ("q=red&k=1000000", 400, "out of range"),
        ("q=red&k=ten", 400, "not an integer"),
        ("q=red&colour=blue", 400, "unknown parameter"),
        ("q=red&split=test", 400, "no dataset splits"),
        ("q=red&folder=nowhere", 400, "no indexed video"),
    ]:
        code, body = _get(f"{base}/search?{query}")
        assert code == status and message in json.loads(body)["detail"], (query, body)
    assert _post(f"{base}/search", b"[1, 2]")[0] == 400
    clip = got["results"][0]["clip"]
    code, data = _get(base + clip)
    assert code == 200 and data == (server["videos"] / got["results"][0]["video_id"]).read_bytes()
    assert _get(base + got["results"][0]["thumbnail"])[1].startswith(b"\x89PNG")
    for bad in ("/clip/0/../serve.log", "/clip/0/%2e%2e/serve.log", "/clip/0/missing.mp4", "/clip/7/x.mp4"):
        assert _get(base + bad)[0] == 404, bad
    assert _get(f"{base}/health")[0] == 200  # still serving


def test_concurrent_requests_are_answered_each_as_alone(server):
    """Requests that arrive together are batched on the replica (one encoder pass, one product per
    pattern); each still gets the answer it gets alone, with its own k."""
    base, records = server["base"], server["records"]
    params = [(records[i % len(records)].captions[0], k) for i, k in enumerate(range(1, 9))]
    alone = [[h["video_id"] for h in _search(base, q, k)["results"]] for q, k in params]
    with ThreadPoolExecutor(len(params)) as pool:
        together = list(pool.map(lambda p: [h["video_id"] for h in _search(base, *p)["results"]], params))
    assert together == alone and [len(r) for r in together] == list(range(1, 9))


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium (cluster/install_browser.sh) via Selenium; missing pieces FAIL the test."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail(f"{CHROMIUM} / {CHROMEDRIVER} missing: run `bash cluster/install_browser.sh` first")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = str(CHROMIUM)
    for flag in (*CHROME_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def test_search_page_in_a_headless_browser(server, browser):
    """The page's search box posts the query and shows the hits as thumbnails linking to the clips."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server["base"] + "/")
    assert 'id="q"' in browser.page_source, browser.page_source[:800]
    box = browser.find_element(By.ID, "q")
    box.send_keys(server["records"][2].captions[0])
    k = browser.find_element(By.ID, "k")
    k.clear()
    k.send_keys(str(NUM_VIDEOS))  # every clip, the crafted name among them
    browser.find_element(By.ID, "go").click()  # no cookie yet: a 401, and the page asks for the token
    WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "token").is_displayed())
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "signin").click()  # sets the cookie, then runs the search again
    WebDriverWait(browser, 120).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "img.thumb")) == NUM_VIDEOS
    )
    loaded = "return [...document.images].every(i => i.complete && i.naturalWidth > 0)"
    WebDriverWait(browser, 120).until(lambda d: d.execute_script(loaded))  # the cookie reaches <img> too
    links = browser.find_elements(By.CSS_SELECTOR, "a.clip")
    assert len(links) == NUM_VIDEOS and all("/clip/0/" in a.get_attribute("href") for a in links)
    assert CRAFTED in [a.text for a in links]  # the file name is text ...
    assert browser.execute_script("return window.pwned === undefined && document.images.length") == NUM_VIDEOS
    assert "etva_token" not in browser.execute_script("return document.cookie")  # HttpOnly
    assert (
        "v1" in browser.find_element(By.ID, "status").text
        and not browser.find_element(By.ID, "token").is_displayed()
    )
    box.clear()
    browser.find_element(By.ID, "go").click()  # an empty query: the page shows the server's 400 message
    WebDriverWait(browser, 60).until(lambda d: "empty query" in d.find_element(By.ID, "status").text)
    shots = Path(os.environ.get("ETVA_UI_SHOTS", REPO / "test-artifacts" / "ui-shots"))
    shots.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(shots / "serve-search-page.png"))


def test_a_second_serve_with_another_host_is_refused(server, local_cluster):
    """Serve keeps its first host and port: a second `etva serve` asking for 0.0.0.0 is refused, naming
    where Serve listens, and the first one's application keeps answering."""
    got = _etva(
        local_cluster,
        "serve",
        "--model",
        server["uri"],
        "--videos",
        str(server["videos"]),
        "--index-root",
        str(server["root"]),
        "--host",
        "0.0.0.0",
        "--port",
        str(server["port"]),
        "--token-file",
        str(server["token_file"]),
    )
    assert got.returncode == 2, got.stderr[-2000:]
    assert f"Serve already runs on this Ray head at http://127.0.0.1:{server['port']}/" in got.stderr
    assert _search(server["base"], "a red circle")["version"] == "1"


def test_alias_move_switches_without_failed_requests(server):
    base, caption = server["base"], server["records"][1].captions[0]
    seen: list[tuple[int, str]] = []
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            try:
                status, body = _get(f"{base}/search?" + urllib.parse.urlencode({"q": caption, "k": 3}))
                seen.append((status, json.loads(body).get("version", "") if status == 200 else body.decode()))
            except OSError as e:
                seen.append((0, str(e)))

    worker = threading.Thread(target=hammer, daemon=True)
    worker.start()
    try:
        _wait(lambda: len(seen) >= 2, "queries before the switch")
        assert register(server["client"], server["runs"][1], MODEL)[0] == "2"  # the alias moves
        _wait(lambda: seen and seen[-1][1] == "2", "answers from v2", 600, server["proc"])
        _wait(lambda: len(seen) >= 3 and seen[-3][1] == "2", "more answers from v2", 120)
    finally:
        stop.set()
        worker.join(60)
    assert all(status == 200 for status, _ in seen), [s for s in seen if s[0] != 200][:3]
    versions = [v for _, v in seen]
    assert set(versions) == {"1", "2"} and versions.index("2") > 0
    got = _search(base, caption)
    assert got["version"] == "2" and got["digest"] == digest_of(server["ckpts"][1])[:12]
    assert got["results"][0]["video_id"] == _engine_top1(server["ckpts"][1], server["videos"], caption)
    log = server["log"].read_text()  # one summary line per checkpoint download, no progress bar
    assert f"downloaded models:/{MODEL}/2" in log and "Downloading artifacts" not in log
