"""The search service behind `etva serve` (no Serve needed): answers, batches that answer what single queries
answer, bad input as a 4xx naming the problem, files only from the indexed folder; the token checks (401s,
the page's cookie, no token in a URL, token files); who may claim Serve; and the `etva index` /
`etva serve` argument errors (one line, exit 2).

A tiny untrained checkpoint on four generated shapes clips (two in a sub-folder); the index is built in-process with the same
library code the Ray Data job runs (the Serve/Ray path is tests/integration/test_serve.py).
"""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path

import pytest
from fastapi import HTTPException
from starlette.requests import Request

from etva.cli import main
from etva.index.build import load_index_model
from etva.search import update_index
from ray_jobs.serve_app import APP_NAME, MAX_QUERY_CHARS, SearchService, build_app
from ray_jobs.serve_auth import TokenError, check_request, login_response, read_token_file, token_digest
from ray_jobs.serve_driver import serve_conflict
from tests.integration.tiny_checkpoint import tiny_checkpoint

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve-app")
    ckpt, records = tiny_checkpoint(tmp)
    videos = tmp / "videos"
    (videos / "sub").mkdir(parents=True)
    for i, r in enumerate(records[:4]):
        shutil.copy(r.video_path, videos / ("sub" if i % 2 else "") / f"clip{i}.mp4")
    im = load_index_model(ckpt, "etva-x", "3", "models:/etva-x@champion")
    update_index(im, tmp / "index", "folder", videos, progress=False)
    settings = {"ckpt_dir": str(ckpt), "name": "etva-x", "version": "3", "uri": "models:/etva-x@champion",
                "index_dir": str(tmp / "index")}  # fmt: skip
    return SearchService(settings), videos, records


def _ask(svc: SearchService, params: dict) -> dict:
    """One request's answer: parse it, answer it as a batch of one (what a replica does)."""
    return svc.answer([svc.parse(params)])[0]


def test_answers_with_the_model_version_and_links_into_the_folder(service):
    svc, videos, records = service
    got = _ask(svc, {"q": records[0].captions[0], "k": "3"})
    assert (got["model"], got["version"], got["videos"], len(got["results"])) == ("etva-x", "3", 4, 3)
    top = got["results"][0]
    assert top["clip"] == f"/clip/0/{top['video_id']}" and top["thumbnail"].startswith("/thumb/0/")
    scores = [h["score"] for h in got["results"]]
    assert scores == sorted(scores, reverse=True)
    sub = _ask(svc, {"q": "a red circle", "folder": "sub"})
    assert len(sub["results"]) == 2 and all(h["folder"] == "sub" for h in sub["results"])
    assert svc.file(0, "sub/clip1.mp4") == (videos / "sub/clip1.mp4").resolve()


@pytest.mark.parametrize(
    "params, status, message",
    [
        ({"q": "  "}, 400, "empty query"),
        ({"q": "a" * (MAX_QUERY_CHARS + 1)}, 400, f"at most {MAX_QUERY_CHARS}"),
        ({"q": "red", "k": 0}, 400, "out of range"),
        ({"q": "red", "k": 10**9}, 400, "out of range"),
        ({"q": "red", "k": "many"}, 400, "not an integer"),
        ({"q": "red", "colour": "blue"}, 400, "unknown parameter"),
        ({"q": "red", "split": "test"}, 400, "no dataset splits"),
        ({"q": "red", "folder": "elsewhere"}, 400, "no indexed video"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_problem(service, params, status, message):
    with pytest.raises(HTTPException) as e:
        _ask(service[0], params)
    assert e.value.status_code == status and message in e.value.detail
    assert _ask(service[0], {"q": "red"})["results"]  # and it keeps answering


@pytest.mark.parametrize(
    "path", ["../index/manifest.json", "sub/../../index/manifest.json", "nope.mp4", "sub"]
)
def test_files_outside_the_index_are_404(service, path):
    with pytest.raises(HTTPException) as e:
        service[0].file(0, path)
    assert e.value.status_code == 404


def test_a_batch_answers_what_each_request_alone_answers(service):
    svc, _, records = service
    params = [
        {"q": records[0].captions[0], "k": "3"},
        {"q": "a red circle", "folder": "sub", "k": 2},
        {"q": records[1].captions[0], "k": 4},
    ]
    together = svc.answer([svc.parse(p) for p in params])
    for p, got in zip(params, together):
        alone = _ask(svc, p)
        assert [h["video_id"] for h in got["results"]] == [h["video_id"] for h in alone["results"]]
        assert [h["score"] for h in got["results"]] == pytest.approx([h["score"] for h in alone["results"]])


def test_links_quote_the_file_name(service):
    from etva.search import Hit

    svc = service[0]
    root = svc.index.store.manifest.sources[0]["path"]
    got = svc._hit(Hit("<img src=x onerror=1>#?.mp4", "<img src=x onerror=1>#?.mp4", root, "", 0.5, 1))
    assert got["clip"] == "/clip/0/%3Cimg%20src%3Dx%20onerror%3D1%3E%23%3F.mp4"


def test_build_app_rejects_unknown_args_and_a_token_in_its_args(monkeypatch):
    with pytest.raises(ValueError, match="unknown \\['colour'\\]"):
        build_app({"model": "models:/x@champion", "videos": "/v", "colour": "red"})
    with pytest.raises(ValueError, match="token_env"):  # args are shown with the config: never the token
        build_app({"model": "models:/x@champion", "videos": "/v", "token": secrets.token_hex(16)})
    env = "ETVA_TEST_SERVE_TOKEN"
    monkeypatch.delenv(env, raising=False)
    with pytest.raises(ValueError, match=f"{env} is empty"):
        build_app({"model": "models:/x@champion", "videos": "/v", "token_env": env})
    with pytest.raises(TokenError, match="not a loopback address, and no token"):  # no Serve: host unknown
        build_app({"model": "models:/x@champion", "videos": "/v"})


TOKEN, WRONG = secrets.token_urlsafe(24), secrets.token_urlsafe(24)  # made here: no literal secret in files


def _request(headers: dict[str, str] | None = None, query: str = "") -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return Request(
        {"type": "http", "method": "GET", "path": "/search", "headers": raw, "query_string": query.encode()}
    )


@pytest.mark.parametrize(
    "headers, query, ok",
    [
        ({}, "", False),
        ({"Authorization": f"Bearer {WRONG}"}, "", False),
        ({"Authorization": f"Basic {TOKEN}"}, "", False),
        ({"Authorization": f"Bearer {TOKEN}"}, "", True),
        ({"Cookie": f"etva_token={TOKEN}"}, "", True),
        ({"Cookie": "etva_token=wrong"}, "", False),
        ({}, f"token={TOKEN}", False),  # a token in a URL lands in logs: refused even when right
        ({"Authorization": f"Bearer {TOKEN}"}, f"token={TOKEN}", False),
    ],
    ids=["none", "wrong-bearer", "basic", "bearer", "cookie", "wrong-cookie", "url", "bearer-and-url"],
)  # ids without the random token: every pytest process must collect the same names
def test_a_request_proves_the_token_by_header_or_cookie_never_by_url(headers, query, ok):
    digest = token_digest(TOKEN)
    if ok:
        check_request(_request(headers, query), digest)
    else:
        with pytest.raises(HTTPException) as e:
            check_request(_request(headers, query), digest)
        assert e.value.status_code == 401
    check_request(_request(headers, query), "")  # no token configured (loopback): everyone passes


def test_login_sets_an_httponly_strict_cookie_for_the_right_token_only():
    digest = token_digest(TOKEN)
    cookie = login_response({"token": TOKEN}, digest, secure=True).headers["set-cookie"]
    assert cookie.startswith(f"etva_token={TOKEN};") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Secure" in cookie and "Path=/" in cookie
    assert "Secure" not in login_response({"token": TOKEN}, digest, secure=False).headers["set-cookie"]
    for body in ({"token": WRONG}, {}, [TOKEN], None):
        with pytest.raises(HTTPException) as e:
            login_response(body, digest, secure=False)
        assert e.value.status_code == 401


def test_token_file_must_be_private_and_long_enough(tmp_path):
    f = tmp_path / "token"
    f.write_text(TOKEN + "\n")
    f.chmod(0o600)
    assert read_token_file(f) == TOKEN
    f.chmod(0o644)
    with pytest.raises(TokenError, match="readable by others"):
        read_token_file(f)
    f.write_text("short")
    f.chmod(0o600)
    with pytest.raises(TokenError, match="at least 16"):
        read_token_file(f)
    with pytest.raises(TokenError, match="No such file"):
        read_token_file(tmp_path / "missing")


def test_who_may_claim_serve():
    assert serve_conflict(None, [], "127.0.0.1", 8000) == ""  # Serve not running: start it
    assert serve_conflict(("127.0.0.1", 8000), ["other-app"], "127.0.0.1", 8000) == ""
    wider = serve_conflict(("127.0.0.1", 8000), [], "0.0.0.0", 8000)
    assert "already runs on this Ray head at http://127.0.0.1:8000/" in wider and "serve shutdown" in wider
    assert "--replace" in serve_conflict(("127.0.0.1", 8000), [], "127.0.0.1", 9000)
    taken = serve_conflict(("127.0.0.1", 8000), [APP_NAME], "127.0.0.1", 8000)
    assert f"'{APP_NAME}' already runs" in taken and "--replace" in taken


@pytest.mark.parametrize(
    "argv, env, message",
    [
        (["index", "--model", "/m", "--videos", "/v"], {}, "no Ray head"),
        (["serve", "--model", "/m", "--videos", "/nonexistent-v"], {"RAY_ADDRESS": "127.0.0.1:1"}, "no such file"),
        (["serve", "--model", "/m", "--videos", ".", "--host", "0.0.0.0"], {"RAY_ADDRESS": "127.0.0.1:1"},
         "needs a token"),
        (["serve", "--model", "/m", "--videos", ".", "--token", "s3cr3t-token-value"], {}, "visible to every user"),
        (["index", "--model", "/nonexistent-ckpt", "--videos", "."], {"RAY_ADDRESS": "127.0.0.1:1"},
         "not a checkpoint directory"),
        (["index", "--model", "models:/x@champion", "--videos", "."], {"RAY_ADDRESS": "127.0.0.1:1"},
         "needs a tracking server"),
    ],
)  # fmt: skip
def test_index_and_serve_argument_errors_are_one_line(argv, env, message, monkeypatch, capsys):
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "ETVA_SERVE_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_rayservice_serve_config_is_valid_and_takes_the_token_from_the_secret():
    """The manifest's serveConfigV2 parses as Serve's own deploy schema, its args are build_app's, the
    token comes from the Secret through token_env, and the replicas are sized as docs/serving.md says."""
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from ray_jobs.serve_app import ARGS
    from ray_jobs.serve_cluster import MAX_ONGOING

    manifest = yaml.safe_load((REPO / "cluster/kuberay/rayservice-search.yaml").read_text())
    config = ServeDeploySchema.model_validate(yaml.safe_load(manifest["spec"]["serveConfigV2"]))
    (app,) = config.applications
    assert app.import_path == "ray_jobs.serve_app:build_app" and set(app.args) <= set(ARGS)
    assert "token" not in app.args and app.args["token_env"] == "ETVA_SERVE_TOKEN"
    env = manifest["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    secret = next(e for e in env if e["name"] == "ETVA_SERVE_TOKEN")["valueFrom"]["secretKeyRef"]
    assert secret == {"name": "etva-serve-token", "key": "token"}
    (dep,) = app.deployments
    assert dep.max_ongoing_requests == MAX_ONGOING and dep.ray_actor_options.num_cpus == app.args["threads"]
