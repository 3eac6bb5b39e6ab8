"""The best checkpoint as an MLflow model, and one registry flow for the browser and the CLI.

A private MLflow server (no Ray) and a tiny untrained checkpoint. ``ray_jobs.tracking.finish_run`` logs
it as a pyfunc model from code; ``etva best`` (the real command, in a subprocess) ranks, registers (the
way the UI's *Register model* does) and reuses versions; ``mlflow.pyfunc.load_model`` of the registered
version embeds captions and scores them against clips exactly as ``etva.inference`` does; every
``models:/`` form downloads back to the same verified checkpoint.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from etva.inference import encode_records, encode_texts, load_trained
from ray_jobs import tracking
from tests.integration.tiny_checkpoint import tiny_checkpoint

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
EXP, MODEL = "etva-models", "etva-models-reg"
torch.set_num_threads(2)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _finished_run(client, exp_id: str, name: str, ckpt: Path, r1s: list[float]) -> str:
    """A run with per-epoch val metrics (epoch = step) whose best epoch's checkpoint is ``ckpt``."""
    run_id = client.create_run(exp_id, run_name=name).info.run_id
    for step, r1 in enumerate(r1s):
        tracking.log_metrics(client, run_id, {"val/t2v_R1": r1, "val/t2v_MdR": 3.0, "train/loss": 1.0}, step)
    best = max(range(len(r1s)), key=lambda i: r1s[i])
    tracking.finish_run(
        client, run_id, {"val/t2v_R1": r1s[best], "val/t2v_MdR": 3.0, "epoch": best}, str(ckpt), "FINISHED"
    )
    return run_id


@pytest.fixture(scope="module")
def server(local_cluster_factory, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlflow-model")
    ckpt, records = tiny_checkpoint(tmp)
    with local_cluster_factory(1, ray=False, mlflow=True) as cluster:
        client = tracking.get_client(cluster.mlflow_uri)
        exp_id = tracking.experiment_id(client, EXP)
        runs = {
            "low": _finished_run(client, exp_id, "low", ckpt, [5.0, 7.0]),
            "high": _finished_run(client, exp_id, "high", ckpt, [10.0, 30.0, 20.0]),
        }
        yield {"uri": cluster.mlflow_uri, "client": client, "exp": exp_id, "runs": runs, "ckpt": ckpt,
               "records": records, "tmp": tmp}  # fmt: skip


def _etva(server, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": server["uri"], "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "etva", *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=600
    )


def test_experiment_is_a_model_training_experiment(server):
    exp = server["client"].get_experiment(server["exp"])
    assert exp.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert tracking.run_url("http://h", "1", "r").endswith("runs/r?workflowType=machine_learning")


def test_best_checkpoint_is_a_logged_model_with_linked_metrics(server):
    client, run_id = server["client"], server["runs"]["high"]
    run = client.get_run(run_id)
    model_id = run.data.tags[tracking.MODEL_ID_TAG]
    assert run.data.tags[tracking.CHECKPOINT_TAG] == f"models:/{model_id}"
    model = client.get_logged_model(model_id)
    assert model.source_run_id == run_id and model.name == tracking.MODEL_NAME
    linked = {(m.key, m.step): m.value for m in model.metrics}
    assert linked[("val/t2v_R1", 1)] == 30.0  # the selected epoch's metrics, not the last epoch's
    assert linked[("best/t2v_R1", 0)] == 30.0
    assert ("val/t2v_R1", 2) not in linked
    assert [m.step for m in client.get_metric_history(run_id, "val/t2v_R1")] == [0, 1, 2]  # logged once
    names = {a.path for a in client.list_logged_model_artifacts(model_id)}
    assert {"MLmodel", "mlflow_model.py", "artifacts", "code"} <= names  # the code, not a pickle
    assert not any(n.endswith((".pkl", ".cloudpickle")) for n in names)


def test_etva_best_dry_run_registers_nothing(server):
    out = _etva(server, "best", "--experiment", EXP, "--model-name", MODEL, "--dry-run")
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert "dry run: nothing registered" in out.stdout
    assert lines[2].split()[1] == "high" and lines[3].split()[1] == "low"  # ranked by best/t2v_R1
    assert not server["client"].search_registered_models(f"name = '{MODEL}'")


def test_register_reuse_and_the_ui_kind_of_version(server):
    client, runs = server["client"], server["runs"]
    out = _etva(server, "best", "--experiment", EXP, "--model-name", MODEL)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"({'high'}) registered as {MODEL} version 1" in out.stdout
    again = _etva(server, "best", "--run-id", runs["high"], "--model-name", MODEL)
    assert f"already registered as {MODEL} version 1" in again.stdout, again.stdout + again.stderr[-2000:]
    # what the UI's Register model sends for a logged model: source models:/<id>, run id, model id
    low_model = client.get_run(runs["low"]).data.tags[tracking.MODEL_ID_TAG]
    ui = client.create_model_version(MODEL, f"models:/{low_model}", run_id=runs["low"], model_id=low_model)
    out = _etva(server, "best", "--run-id", runs["low"], "--model-name", MODEL)
    assert f"already registered as {MODEL} version {ui.version}" in out.stdout, out.stdout
    assert client.get_model_version_by_alias(MODEL, "champion").version == ui.version
    versions = client.search_model_versions(f"name = '{MODEL}'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    assert {v.source for v in versions} == {
        f"models:/{client.get_run(r).data.tags[tracking.MODEL_ID_TAG]}" for r in runs.values()
    }
    _etva(server, "best", "--run-id", runs["high"], "--model-name", MODEL)  # champion back to the best


def test_pyfunc_of_the_champion_embeds_and_scores(server, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server["uri"])
    pyfunc = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    model, cfg, tok = load_trained(server["ckpt"])
    records = server["records"][:2]
    caption = records[0].captions[0]
    emb = pyfunc.predict(pd.DataFrame({"text": [caption, "a blue square"]}))
    text = encode_texts(model, tok, [caption, "a blue square"], cfg.data.max_text_len)
    want = torch.cat([t.flatten(1) for t in (text.experts, text.local) if t is not None], dim=1)
    assert torch.allclose(torch.tensor(emb["embedding"].tolist()), want, atol=1e-5)
    df = pd.DataFrame(
        {
            "text": [caption, caption, caption],
            "video_path": [records[0].video_path, records[1].video_path, "/nowhere.mp4"],
        }
    )
    scored = pyfunc.predict(df)
    videos = encode_records(model, records, cfg.data).video
    with torch.no_grad():
        sim = model.similarity(text[[0]], videos)["fused"][0]  # (2,)
    assert scored["score"][:2].tolist() == pytest.approx(sim.tolist(), abs=1e-5)
    assert pd.isna(scored["score"][2]) and "/nowhere.mp4" in scored["error"][2]
    with pytest.raises(Exception, match="text"):
        pyfunc.predict(pd.DataFrame({"caption": ["x"]}))


@pytest.mark.parametrize("form", ["alias", "version", "model_id"])
def test_every_models_uri_downloads_the_checkpoint(server, form):
    client = server["client"]
    model_id = client.get_run(server["runs"]["high"]).data.tags[tracking.MODEL_ID_TAG]
    uri = {
        "alias": f"models:/{MODEL}@champion",
        "version": f"models:/{MODEL}/1",
        "model_id": f"models:/{model_id}",
    }[form]
    local = tracking.download_checkpoint(uri, server["tmp"] / f"dl-{form}", server["uri"])
    assert _sha(local / "model.pt") == _sha(server["ckpt"] / "model.pt")
    with pytest.raises(LookupError, match="no such registered model version"):
        tracking.download_checkpoint(f"models:/{MODEL}@nope", server["tmp"] / "dl-x", server["uri"])
