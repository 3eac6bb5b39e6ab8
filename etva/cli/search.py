"""``etva search "a red circle moves left" --model models:/etva-shapes@champion --videos DIR``.

A light module: torch, the model and PyAV are imported when the command runs; an MLflow model URI is
downloaded by ``ray_jobs.evaluate.fetch_checkpoint`` through :mod:`etva.cli.seam` (etva/ never imports
mlflow).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from etva.cli import seam
from etva.cli.errors import UsageError
from etva.cli.jobs import MLFLOW_HINT, check_url
from etva.config import settings

__all__ = ["add_parser", "run", "resolve_checkpoint", "model_name_version"]

MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the top-level ``search`` command."""
    p = subparsers.add_parser(
        "search",
        help="find the clips of an index (or a video folder) that match a text query",
        description="Rank the videos of an index built by 'etva index' for each text query and print the "
        "top-k clips and scores; with --videos or --store the index is brought up to date first in this "
        "process (new or changed videos encoded, deleted ones dropped); optionally write an HTML contact "
        "sheet.",
    )
    p.add_argument("queries", nargs="*", help="text queries (or --queries-file)")
    p.add_argument(
        "--model", required=True, help="checkpoint dir, models:/<name>@<alias> or models:/<model id>"
    )
    p.add_argument("--videos", default="", help="folder of videos to index first (searched recursively)")
    p.add_argument("--store", default="", help="Parquet feature store to index first (instead of --videos)")
    p.add_argument("--index", default="", help="index directory (default with --videos/--store: "
                   "runs/index/<folder>-<model digest>)")  # fmt: skip
    p.add_argument("--queries-file", default="", help="one query per line")
    p.add_argument("--top-k", type=int, default=5, help="results per query (default 5)")
    p.add_argument("--folder", default="", help="only videos in this sub-folder of the indexed folder")
    p.add_argument("--split", default="", help="only feature-store videos of this split of the model's dataset "
                   "(e.g. test)")  # fmt: skip
    p.add_argument("--approximate", default="", metavar="FAISS_SPEC",
                   help="approximate search with this faiss index (e.g. IVF1024,PQ64x4fs), its candidates "
                   "re-ranked with the exact score; default exact")  # fmt: skip
    p.add_argument("--html", default="", help="write an HTML contact sheet here")
    p.add_argument("--thumbnails", choices=("inline", "files"), default="inline",
                   help="contact sheet images as data URIs (default) or PNG files next to the page")  # fmt: skip
    p.add_argument("--json", default="", help="write the results as JSON here")
    p.add_argument("--batch-size", type=int, default=8, help="videos per encoder batch (default 8)")
    p.add_argument("--workers", type=int, default=2, help="decode threads (default 2)")
    p.add_argument(
        "--tracking-uri", default="", help="MLflow server for models:/ URIs (default: $MLFLOW_TRACKING_URI)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (there is none unless stderr "
                   "is a terminal: a log gets the summary line only)")  # fmt: skip
    p.set_defaults(handler=run)


def _queries(args: argparse.Namespace) -> list[str]:
    queries = [q for q in args.queries if q.strip()]
    if args.queries_file:
        try:
            lines = Path(args.queries_file).read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise UsageError(f"--queries-file {args.queries_file}: {e.strerror}") from e
        queries += [line.strip() for line in lines if line.strip()]
    if not queries:
        raise UsageError("no query given", 'etva search "a red circle moves left" --model ... --videos DIR')
    if args.top_k < 1:
        raise UsageError(f"--top-k {args.top_k}: must be >= 1")
    if args.videos and args.store:
        raise UsageError("--videos and --store: pass one source per call")
    if not (args.videos or args.store or args.index):
        raise UsageError(
            "nothing to search", "pass --index DIR (from 'etva index'), --videos DIR or --store PATH"
        )
    return queries


def resolve_checkpoint(model: str, tmp: Path, tracking_uri: str = "") -> Path:
    """A local checkpoint directory for a path or an MLflow URI (downloaded into ``tmp``)."""
    if not model.startswith(MLFLOW_SCHEMES):
        path = Path(model).expanduser()
        if not (path / "model.pt").is_file():
            raise UsageError(f"--model {model}: not a checkpoint directory (no model.pt)",
                             "pass an epoch_NNNN folder of a run or models:/<name>@champion")  # fmt: skip
        return path
    uri = settings.tracking_uri(tracking_uri)
    if not uri:
        raise UsageError(f"--model {model}: an MLflow URI needs a tracking server",
                         "set MLFLOW_TRACKING_URI (source runs/local/env.sh) or pass --tracking-uri")  # fmt: skip
    check_url(f"{uri.rstrip('/')}/health", f"the MLflow server ({uri})", MLFLOW_HINT)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        return seam.fetch_checkpoint(model, tmp)
    except UsageError:
        raise
    except Exception as e:  # MLflow raises its own types (unknown model, alias, run)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"--model {model}: cannot download it ({first})",
                         "list models in the MLflow UI; etva best registers '<name>@champion'") from e  # fmt: skip


def format_results(queries: list[str], results: list[list]) -> str:
    """A plain-text table per query: rank, score, video."""
    lines = []
    for q, hits in zip(queries, results):
        lines += [f"query: {q}", f"{'rank':>4}  {'score':>7}  video"]
        lines += [f"{h.rank:>4}  {h.score:>7.4f}  {h.path or h.key}" for h in hits]
        lines.append("")
    return "\n".join(lines)


def model_name_version(model: str) -> tuple[str, str]:
    """(registered name, version) spelled in a ``models:/`` URI ('' where the URI does not say)."""
    if not model.startswith("models:/"):
        return "", ""
    body = model.removeprefix("models:/").strip("/")
    if "@" in body:
        return body.split("@", 1)[0], ""
    name, _, version = body.rpartition("/")
    return (name, version) if name else ("", "")


def run(args: argparse.Namespace) -> int:
    """Handler of ``etva search``: prints the top-k clips per query; 0 on success."""
    import torch

    from etva.index.build import default_index_dir, load_index_model
    from etva.index.vectors import EXACT
    from etva.search import load_index, search, update_index
    from etva.viz.contact_sheet import write_contact_sheet

    queries = _queries(args)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), args.workers)))
    with tempfile.TemporaryDirectory(prefix="etva-search-") as tmp:
        name, version = model_name_version(args.model)
        ckpt = resolve_checkpoint(args.model, Path(tmp), args.tracking_uri)
        im = load_index_model(ckpt, name, version, args.model)
    kind, source = ("folder", args.videos) if args.videos else ("store", args.store)
    index_dir = Path(args.index) if args.index else default_index_dir(source, im.id.digest)
    if args.videos or args.store:
        stats = update_index(im, index_dir, kind, source, batch_size=args.batch_size, workers=args.workers,
                             progress=not args.no_progress and sys.stderr.isatty())  # fmt: skip
        print(
            f"index {index_dir}: {stats.reused + stats.encoded} videos ({stats.reused} cached, "
            f"{stats.encoded} encoded, {stats.dropped} dropped, {stats.failed} undecodable"
            + (f", {stats.no_split} in no split of the model's dataset)" if stats.no_split else ")"),
            file=sys.stderr,
        )
    index = load_index(im, index_dir, args.approximate or EXACT)
    results = search(im, index, queries, args.top_k, args.folder, args.split)
    sys.stdout.write(format_results(queries, results))
    if args.html:
        page = write_contact_sheet(args.html, queries, results, inline=args.thumbnails == "inline")
        print(f"contact sheet: {page}", file=sys.stderr)
    if args.json:
        rows = [{"query": q, "hits": [vars(h) for h in hits]} for q, hits in zip(queries, results)]
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0
