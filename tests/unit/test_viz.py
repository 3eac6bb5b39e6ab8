"""etva.viz.figures: valid PNGs, sizes that follow the inputs, the gallery frames the right clip, curves match metrics."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from etva.eval.metrics import retrieval_metrics
from etva.viz.figures import (
    GT_RGB,
    expert_mixture_bars,
    png_bytes,
    ranks_from_similarity,
    recall_at_k,
    recall_curve,
    retrieval_gallery,
    word_cluster_heatmap,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _image(fig) -> np.ndarray:
    data = png_bytes(fig)
    assert data.startswith(PNG_MAGIC)
    img = Image.open(io.BytesIO(data))
    img.verify()
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _gallery(q=2, k=5, gt=((0, 2), (1, 4))):
    thumbs = np.full((q, k, 24, 24, 3), 128, np.uint8)
    marks = np.zeros((q, k), bool)
    for i, j in gt:
        marks[i, j] = True
    scores = np.sort(np.random.default_rng(0).random((q, k)))[:, ::-1]
    caps = [f"a red square moves left number {i}" for i in range(q)]
    return retrieval_gallery(caps, thumbs, marks, scores, gt_ranks=[3, 5][:q]), marks


def _green_pixels_per_thumb(fig, img: np.ndarray) -> dict[tuple[int, int], int]:
    """Count ground-truth-green pixels inside (a few px around) every thumbnail's axes box."""
    fig.canvas.draw()
    h = img.shape[0]
    green = np.all(np.abs(img.astype(int) - np.array(GT_RGB)) <= 10, axis=-1)
    out = {}
    for ax in fig.axes:
        gid = ax.get_gid()
        if not gid or not gid.startswith("thumb-"):
            continue
        _, i, j = gid.split("-")
        b = ax.get_window_extent()
        x0, x1 = int(b.x0) - 4, int(np.ceil(b.x1)) + 4
        y0, y1 = h - int(np.ceil(b.y1)) - 4, h - int(b.y0) + 4
        out[(int(i), int(j))] = int(green[max(0, y0) : y1, max(0, x0) : x1].sum())
    return out


def test_gallery_frames_exactly_the_ground_truth_column():
    fig, marks = _gallery()
    img = _image(fig)
    counts = _green_pixels_per_thumb(fig, img)
    assert len(counts) == 10
    for (i, j), n in counts.items():
        if marks[i, j]:
            assert n > 100, f"ground truth thumb ({i},{j}) has no green frame ({n} px)"
        else:
            assert n == 0, f"non-ground-truth thumb ({i},{j}) has {n} green px"


def test_gallery_grows_with_rows_and_columns_and_checks_shapes():
    small = _image(_gallery(q=1, gt=((0, 0),))[0])
    big = _image(_gallery(q=2)[0])
    assert big.shape[0] > small.shape[0] and big.shape[1] == small.shape[1]
    with pytest.raises(ValueError, match="topk_thumbs"):
        retrieval_gallery(["a"], np.zeros((1, 5, 8, 8)), np.zeros((1, 5), bool), np.zeros((1, 5)))
    with pytest.raises(ValueError, match="gt_marks"):
        retrieval_gallery(["a"], np.zeros((1, 5, 8, 8, 3)), np.zeros((1, 4), bool), np.zeros((1, 5)))


def test_word_cluster_heatmap_colours_follow_weights():
    tokens = [["[CLS]", "▁a", "▁red", "▁square", "[SEP]"], ["[CLS]", "▁blue", "[SEP]"]]
    w0 = np.zeros((5, 4))
    w0[2, 3] = 1.0  # "red" fully in cluster 3
    w1 = np.full((3, 4), 0.25)
    fig = word_cluster_heatmap(tokens, [w0, w1], titles=["a red square", "blue"])
    img = _image(fig)
    assert img.shape[0] > 100 and img.shape[1] > 400
    panel = fig.axes[0]
    labels = [t.get_text() for t in panel.get_yticklabels()]
    assert labels == tokens[0]
    arr = panel.get_images()[0].get_array()
    assert arr.shape == (5, 4) and arr[2, 3] == 1.0
    with pytest.raises(ValueError, match=r"weights\[1\]"):
        word_cluster_heatmap(tokens, [w0, np.zeros((2, 4))])


def test_expert_mixture_bars_lengths_are_the_weights():
    w = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    fig = expert_mixture_bars(["q one", "q two"], w, ["appearance", "motion", "audio"])
    _image(fig)
    bars = [p.get_width() for p in fig.axes[0].patches]
    np.testing.assert_allclose(sorted(bars), sorted(w.ravel()))
    with pytest.raises(ValueError, match="at most 1"):
        expert_mixture_bars(["q"], np.array([[0.9, 0.9, 0.1]]), ["a", "b", "c"])


def test_recall_curve_points_equal_retrieval_metrics():
    rng = np.random.default_rng(1)
    sim = rng.normal(size=(30, 12))
    qv = np.arange(30) % 12
    ranks = ranks_from_similarity(sim, qv)
    want = retrieval_metrics(sim, qv)
    for d, n in (("t2v", 12), ("v2t", 30)):
        ks, rec = recall_at_k(ranks[d], n)
        for k in (1, 5, 10):
            assert rec[k - 1] == pytest.approx(want[f"{d}_R{k}"])
        assert rec[-1] == 100.0 and np.all(np.diff(rec) >= 0)
    img = _image(recall_curve(ranks, {"t2v": 12, "v2t": 30}))
    assert img.shape == (420, 600, 3)


def test_ranks_of_a_perfect_matrix_are_zero():
    ranks = ranks_from_similarity(np.eye(6), np.arange(6))
    assert np.all(ranks["t2v"] == 0) and np.all(ranks["v2t"] == 0)
