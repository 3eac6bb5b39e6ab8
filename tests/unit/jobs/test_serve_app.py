"""The search service behind `etva serve` (no Serve needed): answers, bad input as a 4xx naming the problem,
files only from the indexed folder; and the `etva index` / `etva serve` argument errors (one line, exit 2).

A tiny untrained checkpoint on four generated shapes clips (two in a sub-folder); the index is built in-process with the same
library code the Ray Data job runs (the Serve/Ray path is tests/integration/test_serve.py).
"""

from __future__ import annotations

import shutil

import pytest
from fastapi import HTTPException

from etva.cli import main
from etva.index.build import load_index_model
from etva.search import update_index
from ray_jobs.serve_app import MAX_QUERY_CHARS, SearchService, build_app
from tests.integration.tiny_checkpoint import tiny_checkpoint


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


def test_answers_with_the_model_version_and_links_into_the_folder(service):
    svc, videos, records = service
    got = svc.query({"q": records[0].captions[0], "k": "3"})
    assert (got["model"], got["version"], got["videos"], len(got["results"])) == ("etva-x", "3", 4, 3)
    top = got["results"][0]
    assert top["clip"] == f"/clip/0/{top['video_id']}" and top["thumbnail"].startswith("/thumb/0/")
    scores = [h["score"] for h in got["results"]]
    assert scores == sorted(scores, reverse=True)
    sub = svc.query({"q": "a red circle", "folder": "sub"})
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
        service[0].query(params)
    assert e.value.status_code == status and message in e.value.detail
    assert service[0].query({"q": "red"})["results"]  # and it keeps answering


@pytest.mark.parametrize("path", ["../index/manifest.json", "sub/../../index/manifest.json", "nope.mp4", "sub"])
def test_files_outside_the_index_are_404(service, path):
    with pytest.raises(HTTPException) as e:
        service[0].file(0, path)
    assert e.value.status_code == 404


def test_build_app_rejects_unknown_args():
    with pytest.raises(ValueError, match="unknown \\['colour'\\]"):
        build_app({"model": "models:/x@champion", "videos": "/v", "colour": "red"})


@pytest.mark.parametrize(
    "argv, env, message",
    [
        (["index", "--model", "/m", "--videos", "/v"], {}, "no Ray head"),
        (["serve", "--model", "/m", "--videos", "/nonexistent-v"], {"RAY_ADDRESS": "127.0.0.1:1"}, "no such file"),
        (["serve", "--model", "/m", "--videos", ".", "--host", "0.0.0.0"], {"RAY_ADDRESS": "127.0.0.1:1"},
         "needs a token"),
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
