"""``etva serve``: text->video search for a registered model alias as a Ray Serve application.

One deployment (FastAPI ingress) whose replicas each hold ONE model version and the index built by that
version (digest checked on load), so an answer never mixes a model and another model's index:

    GET  /search?q=...&k=10[&folder=sub/dir | &split=test]   POST /search {"q": ..., "k": ..., "split": ...}
         folder: sub-folder of an indexed folder; split: dataset split of a feature-store video
    GET  /health                                  model name, version, digest, number of videos
    GET  /                                        search page: results as contact-sheet thumbnails
    GET  /thumb/<source>/<path>, /clip/<source>/<path>   only files of the indexed folders

The driver (:func:`main`) resolves the alias to a version, builds that version's index with the Ray Data
job when it is missing or stale (:func:`ray_jobs.index_job.build_index`), deploys, then polls the alias:
when it moves, the new index is built first and ``serve.run`` updates the deployment in place (Serve
replaces the replicas; requests in flight finish on the old ones). Bad input is a 4xx naming the problem.
"""

# no `from __future__ import annotations`: FastAPI must see the real `Request` type of the routes under
# Serve's ingress (string annotations made it a required query parameter)

import argparse
import html
import logging
import os
import time
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from ray import serve

from etva.index.build import default_index_dir, digest_of, load_index_model
from etva.search import SearchError, load_index, search
from ray_jobs.index_job import ResolvedModel, build_index, resolve_model

__all__ = ["APP_NAME", "MAX_QUERY_CHARS", "MAX_K", "SearchDeployment", "Deployer", "build_app", "main"]

log = logging.getLogger(__name__)

APP_NAME = "etva-search"
MAX_QUERY_CHARS = 500
MAX_K = 1000
FILTERS = ("folder", "split")
api = FastAPI(title="etva search")


def _bad(message: str, status: int = 400) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


class SearchService:
    """One model version + its index; validates and answers queries (no Serve in here)."""

    def __init__(self, settings: dict) -> None:
        import torch

        torch.set_num_threads(1)
        self.settings = settings
        self.im = load_index_model(settings["ckpt_dir"], settings["name"], settings["version"], settings["uri"])
        self.index = load_index(self.im, settings["index_dir"])  # refuses another model's index
        self.files = {(int(s), p) for s, p in zip(self.index.sources, self.index.paths) if p}

    def health(self) -> dict:
        mid = self.im.id
        return {"status": "ok", "model": mid.name, "version": mid.version, "digest": mid.digest[:12],
                "videos": len(self.index.keys)}  # fmt: skip

    def query(self, params: dict) -> dict:
        unknown = sorted(set(params) - {"q", "k", "token", *FILTERS})
        if unknown:
            raise _bad(f"unknown parameter(s) {unknown}: expected q, k and the filters {list(FILTERS)}")
        q = str(params.get("q", "")).strip()
        if not q:
            raise _bad("q: empty query")
        if len(q) > MAX_QUERY_CHARS:
            raise _bad(f"q: {len(q)} characters, at most {MAX_QUERY_CHARS}")
        try:
            k = int(params.get("k", 10))
        except (TypeError, ValueError):
            raise _bad(f"k: '{params.get('k')}' is not an integer") from None
        if not 1 <= k <= MAX_K:
            raise _bad(f"k: {k} is out of range 1..{MAX_K}")
        folder, split = (str(params.get(f) or "") for f in FILTERS)
        try:  # a filter the index cannot answer (a split no video has, folder on a store...) is a 400
            hits = search(self.im, self.index, [q], k, folder, split)[0]
        except SearchError as e:
            raise _bad(str(e)) from None
        return {**self.health(), "query": q, "k": k, "results": [self._hit(h) for h in hits]}

    def _hit(self, h) -> dict:
        source = next(i for i, s in enumerate(self.index.store.manifest.sources) if s["path"] == h.root) if h.root else -1
        link = f"{source}/{h.path}" if h.path else ""
        return {"rank": h.rank, "video_id": h.key, "score": h.score, "folder": h.group if h.root else None,
                "split": None if h.root else (h.group or None),
                "clip": f"/clip/{link}" if link else None, "thumbnail": f"/thumb/{link}" if link else None}  # fmt: skip

    def file(self, source: int, path: str) -> Path:
        """The indexed file ``path`` of ``source``; 404 for anything else (no path outside the folders)."""
        if (source, path) not in self.files:
            raise _bad(f"no indexed video '{path}' in source {source}", 404)
        root = Path(self.index.store.manifest.sources[source]["path"]).resolve()
        full = (root / path).resolve()
        if root not in full.parents or not full.is_file():
            raise _bad(f"no indexed video '{path}' in source {source}", 404)
        return full


def _check_token(request: Request, token: str) -> None:
    if not token:
        return
    got = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if got != token and request.query_params.get("token") != token:
        raise _bad("missing or wrong token (Authorization: Bearer <token>, or ?token=)", 401)


# Defined before the deployment class: Serve pickles an ingress class by value, with the module globals
# that exist when it is decorated (a name defined below it is missing in the replica: NameError, a 500).
PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>etva search</title>
<style>body{font-family:sans-serif} .hit{display:inline-block;margin:4px;font-size:12px;vertical-align:top}
img{display:block}</style></head><body><h1>etva search <small>{{model}}</small></h1>
<form id="f"><input id="q" name="q" size="50" placeholder="a red circle moves left">
<input id="k" name="k" type="number" value="8" min="1" max="100"><button id="go">search</button></form>
<p id="status"></p><div id="results"></div>
<script>
const token = new URLSearchParams(location.search).get("token") || "";
const tq = token ? "?token=" + encodeURIComponent(token) : "";
document.getElementById("f").onsubmit = async (ev) => {
  ev.preventDefault();
  const q = document.getElementById("q").value, k = document.getElementById("k").value;
  const r = await fetch("/search", {method: "POST", headers: {"Content-Type": "application/json",
    ...(token ? {"Authorization": "Bearer " + token} : {})}, body: JSON.stringify({q: q, k: Number(k)})});
  const data = await r.json(), out = document.getElementById("results");
  out.innerHTML = "";
  if (!r.ok) { document.getElementById("status").textContent = "error: " + data.detail; return; }
  document.getElementById("status").textContent = data.results.length + " results (" + data.model + " v" + data.version + ")";
  for (const h of data.results) {
    const d = document.createElement("div"); d.className = "hit";
    const img = h.thumbnail ? '<img class="thumb" src="' + h.thumbnail + tq + '">' : "(no preview)";
    const a = h.clip ? '<a class="clip" href="' + h.clip + tq + '">' + h.video_id + "</a>" : h.video_id;
    d.innerHTML = img + "#" + h.rank + " " + h.score.toFixed(3) + "<br>" + a;
    out.appendChild(d);
  }
};
</script></body></html>
"""


# max_surge_percent=100: on an update the new replicas start first; the old ones answer until they are ready
@serve.deployment(
    name="search", graceful_shutdown_timeout_s=30, max_surge_percent=100, ray_actor_options={"num_cpus": 0.25}
)
@serve.ingress(api)
class SearchDeployment:
    def __init__(self, settings: dict) -> None:
        self.svc = SearchService(settings)
        self.token = os.environ.get("ETVA_SERVE_TOKEN", "") if settings.get("auth") else ""

    @api.get("/health")
    def health(self) -> dict:
        return self.svc.health()

    @api.get("/search")
    def get_search(self, request: Request) -> dict:
        _check_token(request, self.token)
        return self.svc.query(dict(request.query_params))

    @api.post("/search")
    async def post_search(self, request: Request) -> dict:
        _check_token(request, self.token)
        try:
            body = await request.json()
        except ValueError:
            raise _bad("body: expected a JSON object {\"q\": ..., \"k\": ...}") from None
        if not isinstance(body, dict):
            raise _bad("body: expected a JSON object {\"q\": ..., \"k\": ...}")
        return self.svc.query(body)

    @api.get("/clip/{source}/{path:path}")
    def clip(self, source: int, path: str, request: Request) -> FileResponse:
        _check_token(request, self.token)
        return FileResponse(self.svc.file(source, path))

    @api.get("/thumb/{source}/{path:path}")
    def thumb(self, source: int, path: str, request: Request) -> Response:
        from etva.viz.contact_sheet import png_bytes, thumbnail_strip

        _check_token(request, self.token)
        strip = thumbnail_strip(self.svc.file(source, path))
        if strip is None:
            raise _bad(f"no preview for '{path}'", 404)
        return Response(png_bytes(strip), media_type="image/png")

    @api.get("/", response_class=HTMLResponse)
    def page(self) -> HTMLResponse:
        name = html.escape(f"{self.svc.im.id.name} v{self.svc.im.id.version}")
        return HTMLResponse(PAGE.replace("{{model}}", name))


def build_app(args: dict, model: ResolvedModel | None = None):
    """The application over ``model``'s up-to-date index: the Serve config entry point (``import_path:
    ray_jobs.serve_app:build_app``, e.g. a KubeRay RayService) and what ``etva serve`` deploys.

    ``args``: model (``models:/<name>@<alias>``), videos or store, index_root, and optionally actors,
    batch_size, replicas. The alias is resolved when the application is (re)deployed, unless ``model``
    is the version the caller resolved already (``etva serve``).
    """
    known = {"model", "videos", "store", "index_root", "actors", "batch_size", "replicas", "revision"}
    unknown = sorted(set(args) - known)  # revision: any new value redeploys (re-resolves the alias)
    if unknown or "model" not in args or not (args.get("videos") or args.get("store")):
        raise ValueError(f"serve args {sorted(args)}: expected model, videos|store, index_root "
                         f"[actors, batch_size, replicas]; unknown {unknown}")  # fmt: skip
    kind, root = ("folder", args["videos"]) if args.get("videos") else ("store", args["store"])
    index_root = args.get("index_root") or "runs/index"
    model = model or resolve_model(args["model"], Path(index_root) / "models")
    index_dir = default_index_dir(root, digest_of(model.ckpt_dir), index_root)
    counts = build_index(model, index_dir, kind, root, actors=int(args.get("actors", 1)),
                         batch_size=int(args.get("batch_size", 8)))  # fmt: skip
    log.info("application for %s v%s (index build: %s)", model.name, model.version, counts)
    settings = {"ckpt_dir": model.ckpt_dir, "name": model.name, "version": model.version, "uri": model.uri,
                "index_dir": str(Path(index_dir).resolve()), "auth": bool(os.environ.get("ETVA_SERVE_TOKEN"))}  # fmt: skip
    return SearchDeployment.options(num_replicas=int(args.get("replicas", 1))).bind(settings)


class Deployer:
    """Driver side: resolve the alias, build the version's index, deploy; redeploy when the alias moves."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.current: ResolvedModel | None = None

    def resolve(self) -> ResolvedModel:
        models = Path(self.args.index_root) / "models"
        return resolve_model(self.args.model, models, self.args.tracking_uri)

    def deploy(self, model: ResolvedModel) -> None:
        """Build (or bring up to date) ``model``'s index, then deploy/update the application with it."""
        a = self.args
        args = {"model": a.model, "videos": a.videos, "store": a.store, "index_root": a.index_root,
                "actors": a.actors, "batch_size": a.batch_size, "replicas": a.replicas}  # fmt: skip
        serve.run(build_app(args, model), name=APP_NAME, route_prefix="/")
        self.current = model
        log.info("serving %s v%s", model.name, model.version)

    def poll_once(self) -> bool:
        """Redeploy when the alias names another version; True when it did."""
        model = self.resolve()
        if self.current is not None and model.version == self.current.version:
            return False
        self.deploy(model)
        return True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ray_jobs.serve_app", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--videos", default="")
    src.add_argument("--store", default="")
    p.add_argument("--index-root", default="runs/index")
    p.add_argument("--address", default="")
    p.add_argument("--tracking-uri", default="")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--actors", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--poll-s", type=float, default=30.0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Start Serve on the Ray head, deploy the alias's version, follow the alias until interrupted."""
    import ray

    args = parse_args(argv)
    ray.init(address=args.address or os.environ.get("RAY_ADDRESS") or None, log_to_driver=False)
    serve.start(http_options={"host": args.host, "port": args.port})
    deployer = Deployer(args)
    deployer.poll_once()
    print(f"serving {args.model} at http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)
    try:
        while True:
            time.sleep(args.poll_s)
            try:
                deployer.poll_once()
            except Exception as e:  # an MLflow outage or a failed build: keep serving the current version
                log.warning("alias check failed, still serving v%s: %s", deployer.current.version, e)
    except KeyboardInterrupt:
        pass
    finally:
        serve.delete(APP_NAME)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
