"""``etva serve``: text->video search for a registered model alias as a Ray Serve application.

One deployment (FastAPI ingress) whose replicas each hold ONE model version and the index built by that
version (digest checked on load), so an answer never mixes a model and another model's index:

    GET  /search?q=...&k=10[&folder=sub/dir | &split=test]   POST /search {"q": ..., "k": ..., "split": ...}
         folder: sub-folder of an indexed folder; split: dataset split of a feature-store video
    POST /login {"token": ...}                    sets the search page's cookie (ray_jobs/serve_auth.py)
    GET  /health                                  {"status": "ok"} and nothing else
    GET  /                                        search page: results as contact-sheet thumbnails
    GET  /thumb/<source>/<path>, /clip/<source>/<path>   only files of the indexed folders

With a token every route but ``/``, ``/health`` and ``/login`` needs it. Concurrent queries are batched on
the replica (:mod:`ray_jobs.serve_batching`): one text-encoder pass and one matrix product per
availability pattern for the whole batch (:func:`etva.search.search_batch`). The driver lives in
:mod:`ray_jobs.serve_driver`.
"""

# no `from __future__ import annotations`: FastAPI must see the real `Request` type of the routes under
# Serve's ingress (string annotations made it a required query parameter)

import logging
import os
import urllib.parse
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from ray import serve

from etva.index.build import default_index_dir, digest_of, load_index_model
from etva.search import Query, SearchError, load_index, search_batch
from ray_jobs.index_job import ResolvedModel, build_index, resolve_model
from ray_jobs.serve_auth import check_request, login_response, require_token_for, token_digest
from ray_jobs.serve_batching import MicroBatcher
from ray_jobs.serve_cluster import (
    BATCH_WAIT_S,
    MAX_BATCH,
    MAX_ONGOING,
    replica_threads,
    running_http,
    threads_for,
)
from ray_jobs.serve_page import PAGE

__all__ = ["APP_NAME", "MAX_QUERY_CHARS", "MAX_K", "SearchService", "SearchDeployment", "build_app"]

log = logging.getLogger(__name__)

APP_NAME = "etva-search"
MAX_QUERY_CHARS = 500
MAX_K = 1000
FILTERS = ("folder", "split")
ARGS = (
    "model",
    "videos",
    "store",
    "index_root",
    "actors",
    "batch_size",
    "replicas",
    "threads",
    "token_env",
    "revision",
)
api = FastAPI(title="etva search")


def _bad(message: str, status: int = 400) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


class SearchService:
    """One model version + its index; validates queries and answers batches of them (no Serve in here)."""

    def __init__(self, settings: dict) -> None:
        self.settings = settings
        self.threads = replica_threads(int(settings.get("threads", 1)))  # torch (and faiss) threads
        self.im = load_index_model(
            settings["ckpt_dir"], settings["name"], settings["version"], settings["uri"]
        )
        self.index = load_index(self.im, settings["index_dir"])  # refuses another model's index
        self.files = {(int(s), p) for s, p in zip(self.index.sources, self.index.paths) if p}
        self.source_of = {s["path"]: i for i, s in enumerate(self.index.store.manifest.sources)}

    def about(self) -> dict:
        """What every answer says about the model that gave it."""
        mid = self.im.id
        return {
            "model": mid.name,
            "version": mid.version,
            "digest": mid.digest[:12],
            "videos": len(self.index.keys),
        }

    def parse(self, params: dict) -> Query:
        """A checked query: 400 naming the problem for a bad parameter or a filter the index cannot answer."""
        unknown = sorted(set(params) - {"q", "k", *FILTERS})
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
            self.index.rows_in(folder, split)
        except SearchError as e:
            raise _bad(str(e)) from None
        return Query(q, k, folder, split)

    def answer(self, queries: list[Query]) -> list[dict]:
        """The answers of a batch of parsed queries (one encoder pass, one product per pattern)."""
        about = self.about()
        hits = search_batch(self.im, self.index, queries)
        return [
            {**about, "query": q.text, "k": q.k, "results": [self._hit(h) for h in hs]}
            for q, hs in zip(queries, hits)
        ]

    def _hit(self, h) -> dict:
        link = f"{self.source_of[h.root]}/{urllib.parse.quote(h.path)}" if h.root and h.path else ""
        return {
            "rank": h.rank,
            "video_id": h.key,
            "score": h.score,
            "folder": h.group if h.root else None,
            "split": None if h.root else (h.group or None),
            "clip": f"/clip/{link}" if link else None,
            "thumbnail": f"/thumb/{link}" if link else None,
        }

    def file(self, source: int, path: str) -> Path:
        """The indexed file ``path`` of ``source``; 404 for anything else (no path outside the folders)."""
        if (source, path) not in self.files:
            raise _bad(f"no indexed video '{path}' in source {source}", 404)
        root = Path(self.index.store.manifest.sources[source]["path"]).resolve()
        full = (root / path).resolve()
        if root not in full.parents or not full.is_file():
            raise _bad(f"no indexed video '{path}' in source {source}", 404)
        return full


async def _json_body(request: Request) -> dict:
    try:
        body = await request.json()
    except ValueError:
        raise _bad('body: expected a JSON object {"q": ..., "k": ...}') from None
    if not isinstance(body, dict):
        raise _bad('body: expected a JSON object {"q": ..., "k": ...}')
    return body


# max_surge_percent=100: on an update the new replicas start first; the old ones answer until they are ready.
# max_ongoing_requests above the batch size: the router hands a replica every waiting request at once (at
# Serve's default of 5 it backs off and retries a full replica: the likely cause of the collapse at 32
# clients, docs/serving.md).
@serve.deployment(
    name="search",
    graceful_shutdown_timeout_s=30,
    max_surge_percent=100,
    max_ongoing_requests=MAX_ONGOING,
    ray_actor_options={"num_cpus": 0.25},
)
@serve.ingress(api)
class SearchDeployment:
    def __init__(self, settings: dict) -> None:
        self.svc = SearchService(settings)
        self.batcher = MicroBatcher(self.svc.answer, MAX_BATCH, BATCH_WAIT_S)
        self.digest = str(settings.get("token_sha256", ""))  # the token's SHA-256, never the token

    @api.get("/health")
    def health(self) -> dict:
        return {"status": "ok"}

    @api.post("/login")
    async def login(self, request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            body = None
        return login_response(body, self.digest, request.url.scheme == "https")

    @api.get("/search")
    async def get_search(self, request: Request) -> dict:
        check_request(request, self.digest)
        return await self.answer(self.svc.parse(dict(request.query_params)))

    @api.post("/search")
    async def post_search(self, request: Request) -> dict:
        check_request(request, self.digest)
        return await self.answer(self.svc.parse(await _json_body(request)))

    async def answer(self, query: Query) -> dict:
        # batched with the requests that queued while the previous batch computed (not @serve.batch:
        # ray_jobs/serve_batching.py says why); the batch computes in a thread, off the event loop
        return await self.batcher.submit(query)

    @api.get("/clip/{source}/{path:path}")
    def clip(self, source: int, path: str, request: Request) -> FileResponse:
        check_request(request, self.digest)
        return FileResponse(self.svc.file(source, path))

    @api.get("/thumb/{source}/{path:path}")
    def thumb(self, source: int, path: str, request: Request) -> Response:
        from etva.viz.contact_sheet import png_bytes, thumbnail_strip  # lazy: PyAV + matplotlib

        check_request(request, self.digest)
        strip = thumbnail_strip(self.svc.file(source, path))
        if strip is None:
            raise _bad(f"no preview for '{path}'", 404)
        return Response(png_bytes(strip), media_type="image/png")

    @api.get("/", response_class=HTMLResponse)
    def page(self) -> HTMLResponse:
        return HTMLResponse(PAGE)


def _token_of(args: dict, token: str | None) -> str:
    """The token: ``token`` when the caller (``etva serve``) gives one, else the environment variable that
    ``args["token_env"]`` names (a RayService: the Secret in the pods), else none."""
    if token is not None:
        return token
    name = str(args.get("token_env") or "")
    if name and not os.environ.get(name):
        raise ValueError(
            f"serve args token_env={name}: ${name} is empty where the application is built "
            "(the manifest fills it from the Secret etva-serve-token)"
        )
    return os.environ.get(name, "") if name else ""


def _check_args(args: dict) -> None:
    unknown = sorted(set(args) - set(ARGS))
    if "token" in args:
        raise ValueError(
            "serve args: a token in the application's args is shown with its config; give "
            "token_env: <environment variable> (a Kubernetes Secret) instead"
        )
    if unknown or "model" not in args or not (args.get("videos") or args.get("store")):
        raise ValueError(
            f"serve args {sorted(args)}: expected model, videos|store, index_root "
            f"[actors, batch_size, replicas, threads, token_env, revision]; unknown {unknown}"
        )


def build_app(args: dict, model: ResolvedModel | None = None, token: str | None = None):
    """The application over ``model``'s up-to-date index: the Serve config entry point (``import_path:
    ray_jobs.serve_app:build_app``, e.g. a KubeRay RayService) and what ``etva serve`` deploys.

    ``args``: model (``models:/<name>@<alias>``), videos or store, index_root, and optionally actors,
    batch_size, replicas, threads (per replica; default: the cluster's CPUs over the replicas),
    token_env (the environment variable holding the token). The alias is resolved when the application
    is (re)deployed, unless ``model`` is the version the caller resolved already (``etva serve``, which
    also passes ``token``). Refuses a non-loopback bind without a token before any work.
    """
    _check_args(args)
    digest = token_digest(_token_of(args, token))
    http = running_http()
    require_token_for(http[0] if http else "unknown (Serve is not running)", digest, "serve application")
    replicas = int(args.get("replicas", 1))
    kind, root = ("folder", args["videos"]) if args.get("videos") else ("store", args["store"])
    index_root = args.get("index_root") or "runs/index"
    model = model or resolve_model(args["model"], Path(index_root) / "models")
    index_dir = default_index_dir(root, digest_of(model.ckpt_dir), index_root)
    counts = build_index(
        model,
        index_dir,
        kind,
        root,
        actors=int(args.get("actors", 1)),
        batch_size=int(args.get("batch_size", 8)),
    )
    log.info("application for %s v%s (index build: %s)", model.name, model.version, counts)
    settings = {
        "ckpt_dir": model.ckpt_dir,
        "name": model.name,
        "version": model.version,
        "uri": model.uri,
        "index_dir": str(Path(index_dir).resolve()),
        "token_sha256": digest,
        "threads": int(args.get("threads") or threads_for(replicas)),
    }
    return SearchDeployment.options(num_replicas=replicas).bind(settings)
