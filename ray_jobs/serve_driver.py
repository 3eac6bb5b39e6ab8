"""The driver of ``etva serve`` (``python -m ray_jobs.serve_driver``): claim Serve, deploy, follow the alias.

:func:`main` reads the token in its own process (``--token-file`` or ``$ETVA_SERVE_TOKEN`` of the user's
shell: ``etva serve`` runs it in-process) and hands it to ``build_app`` as an argument, refuses a non-loopback ``--host`` without one, then connects to the Ray head
and claims Serve: when Serve already runs there with other HTTP options (they would be ignored: Serve
keeps its first host and port), or another ``etva serve`` runs the application, it stops with a message
saying where Serve listens and how to stop it, unless ``--replace`` asks to restart Serve / take the
application over. It resolves the alias to a version, builds that version's index with the Ray Data job
when it is missing or stale (:func:`ray_jobs.serve_app.build_app`), deploys, then polls the alias: when it
moves, the new index is built first and ``serve.run`` updates the deployment in place (Serve replaces
the replicas; requests in flight finish on the old ones). On exit it deletes the application only while
it is still the one this driver deployed.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import ray
from ray import serve

from ray_jobs.index_job import ResolvedModel, resolve_model
from ray_jobs.serve_app import APP_NAME, build_app
from ray_jobs.serve_auth import (
    ENV_VARIABLE,
    check_token_value,
    read_token_file,
    require_token_for,
    token_digest,
)
from ray_jobs.serve_cluster import deployed_at, running_apps, running_http

__all__ = ["ServeConflict", "serve_conflict", "Deployer", "read_token", "main"]

log = logging.getLogger(__name__)


class ServeConflict(RuntimeError):
    """Serve on this Ray head is somebody else's: other HTTP options, or the application already runs."""


def serve_conflict(running: tuple[str, int] | None, apps: list[str], host: str, port: int) -> str:
    """Why this driver must not deploy ('' when it may): Serve listening elsewhere, or the app running."""
    stop = "Ctrl-C the `etva serve` that started it, or `serve shutdown -y` on the head"
    if running is not None and running != (host, port):
        h, p = running
        return (
            f"Serve already runs on this Ray head at http://{h}:{p}/ and keeps those HTTP options: "
            f"--host {host} --port {port} would not apply. Stop it first ({stop}), pass --host {h} "
            f"--port {p}, or --replace to restart Serve (stops every application on it)"
        )
    if APP_NAME in apps:
        return (
            f"the application '{APP_NAME}' already runs on this Serve (another `etva serve`?) at "
            f"http://{host}:{port}/; stop it first ({stop}) or pass --replace to take it over"
        )
    return ""


def claim_serve(host: str, port: int, replace: bool) -> None:
    """Start Serve on ``host:port``, or use the running one when it is free for this driver.

    Raises:
        ServeConflict: Serve runs with other HTTP options or runs the application, without ``replace``.
    """
    running = running_http()
    problem = serve_conflict(running, list(running_apps()), host, port)
    if problem and not replace:
        raise ServeConflict(problem)
    if problem and running != (host, port):
        log.warning("--replace: shutting Serve down at %s:%s to restart it at %s:%s", *running, host, port)
        serve.shutdown()
    serve.start(http_options={"host": host, "port": port})


class Deployer:
    """Driver side: resolve the alias, build the version's index, deploy; redeploy when the alias moves."""

    def __init__(self, args: argparse.Namespace, token: str) -> None:
        self.args, self.token = args, token
        self.current: ResolvedModel | None = None
        self.deployed: float | None = None  # when this driver last deployed (tells its app from another's)

    def resolve(self) -> ResolvedModel:
        models = Path(self.args.index_root) / "models"
        return resolve_model(self.args.model, models, self.args.tracking_uri)

    def deploy(self, model: ResolvedModel) -> None:
        """Build (or bring up to date) ``model``'s index, then deploy/update the application with it."""
        a = self.args
        args = {
            "model": a.model,
            "videos": a.videos,
            "store": a.store,
            "index_root": a.index_root,
            "actors": a.actors,
            "batch_size": a.batch_size,
            "replicas": a.replicas,
            "threads": a.threads,
        }
        serve.run(build_app(args, model, self.token), name=APP_NAME, route_prefix="/")
        self.current, self.deployed = model, deployed_at(APP_NAME)
        log.info("serving %s v%s", model.name, model.version)

    def poll_once(self) -> bool:
        """Redeploy when the alias names another version; True when it did."""
        model = self.resolve()
        if self.current is not None and model.version == self.current.version:
            return False
        self.deploy(model)
        return True

    def release(self) -> None:
        """Delete the application if it is still this driver's (another may have taken it over)."""
        if self.deployed is not None and deployed_at(APP_NAME) == self.deployed:
            serve.delete(APP_NAME)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ray_jobs.serve_driver", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--videos", default="")
    src.add_argument("--store", default="")
    p.add_argument("--index-root", default="runs/index")
    p.add_argument("--address", default="")
    p.add_argument("--tracking-uri", default="")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token-file", default="", help=f"the bearer token (default: ${ENV_VARIABLE})")
    p.add_argument("--replace", action="store_true", help="restart Serve / take the application over")
    p.add_argument("--actors", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="per replica (default: cluster CPUs / replicas)")
    p.add_argument("--poll-s", type=float, default=30.0)
    return p.parse_args(argv)


def read_token(token_file: str) -> str:
    """The token of this driver: ``token_file`` (owner-only), else ``$ETVA_SERVE_TOKEN``, else ''."""
    if token_file:
        return read_token_file(token_file)
    return check_token_value(os.environ.get(ENV_VARIABLE, ""), f"${ENV_VARIABLE}")


def main(argv: list[str] | None = None) -> int:
    """Claim Serve on the Ray head, deploy the alias's version, follow the alias until interrupted.

    Raises:
        serve_auth.TokenError: a bad token file, or a non-loopback ``--host`` without a token.
        ServeConflict: Serve on the head belongs to somebody else (see :func:`serve_conflict`).
    """
    args = parse_args(argv)
    token = read_token(args.token_file)
    require_token_for(args.host, token_digest(token), f"--host {args.host}")
    ray.init(address=args.address or os.environ.get("RAY_ADDRESS") or None, log_to_driver=False)
    claim_serve(args.host, args.port, args.replace)
    deployer = Deployer(args, token)
    try:
        deployer.poll_once()
        print(f"serving {args.model} at http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)
        while True:
            time.sleep(args.poll_s)
            try:
                deployer.poll_once()
            except Exception as e:  # an MLflow outage or a failed build: keep serving the current version
                log.warning("alias check failed, still serving v%s: %s", deployer.current.version, e)
    except KeyboardInterrupt:
        pass
    finally:
        deployer.release()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
