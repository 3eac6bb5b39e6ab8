"""An HTML contact sheet of search results: per query, a row of the top clips (a strip of frames each).

Thumbnails are PNGs (encoded with Pillow), embedded as data URIs or written as files next to the HTML
page.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

from etva.data.decode import DecodeError, decode_clip

__all__ = ["png_bytes", "thumbnail_strip", "write_contact_sheet"]

log = logging.getLogger(__name__)


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode a uint8 (H, W, 3) RGB image as PNG."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"png_bytes: expected uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb), mode="RGB").save(buf, format="PNG")  # 8-bit RGB, no alpha
    return buf.getvalue()


def thumbnail_strip(path: str | os.PathLike, frames: int = 3, size: int = 96) -> np.ndarray | None:
    """``frames`` frames of a video side by side, uint8 (size, frames * size, 3); None if undecodable."""
    try:
        clip = decode_clip(path, frames, size, audio_rate=None)
    except (DecodeError, OSError) as e:
        log.warning("no thumbnail for %s: %s", path, e)
        return None
    return np.concatenate(list(clip.frames), axis=1)


def _img_src(strip: np.ndarray | None, out_html: Path, name: str, inline: bool) -> str:
    if strip is None:
        return ""
    data = png_bytes(strip)
    if inline:
        return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    folder = out_html.with_name(out_html.stem + "_thumbs")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    return f"{folder.name}/{name}"


def write_contact_sheet(
    out_html: str | os.PathLike,
    queries: list[str],
    results: list[list],
    *,
    inline: bool = True,
    frames: int = 3,
    size: int = 96,
) -> Path:
    """Write the page; ``results[i]`` are the hits of ``queries[i]`` (``etva.search.Hit``: the file is
    ``.root``/``.path``; a hit without a file, from a feature store, gets no preview)."""
    out = Path(out_html)
    out.parent.mkdir(parents=True, exist_ok=True)
    strips: dict[str, str] = {}  # video path -> img src (each video thumbnailed once)
    rows = []
    for q, hits in zip(queries, results):
        cells = []
        for hit in hits:
            name = hit.path or hit.key
            if name not in strips:
                strip = thumbnail_strip(Path(hit.root) / hit.path, frames, size) if hit.path else None
                strips[name] = _img_src(strip, out, f"{len(strips):05d}.png", inline)
            src = strips[name]
            img = f'<img src="{html.escape(src)}" alt="{html.escape(name)}">' if src else "(no preview)"
            cells.append(
                f"<td>{img}<br><b>#{hit.rank}</b> {hit.score:.3f}<br><code>{html.escape(name)}</code></td>"
            )
        rows.append(f"<h2>{html.escape(q)}</h2>\n<table><tr>{''.join(cells)}</tr></table>")
    style = (
        "body{font-family:sans-serif} td{vertical-align:top;padding:4px;font-size:12px} img{display:block}"
    )
    out.write_text(
        f"<!doctype html>\n<html><head><meta charset='utf-8'><title>etva search</title>"
        f"<style>{style}</style></head><body>\n" + "\n".join(rows) + "\n</body></html>\n",
        encoding="utf-8",
    )
    return out
