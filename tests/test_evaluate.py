"""`imgsim evaluate`: labelled retrieval, the near-duplicate benchmark and the report.

The metrics are checked against a direct numpy computation on the same vectors; the benchmark's
bookkeeping runs with the fake model (fast), and with VGG16 on the shared photos (marker `model`,
in test_cli.py's clip-art run). The report is opened in Chromium when the machine has it.
"""
import csv
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

import imgsim
from fakes import FakeEmbedder
from imgsim.cli import main
from imgsim.config.flags import ConfigError
from imgsim.embed.decode import DecodeConfig
from imgsim.quality.near_duplicates import SWEEP, near_duplicate_benchmark
from imgsim.quality.perturb import KINDS, perturbations
from imgsim.quality.retrieval import evaluate_retrieval
from test_index import clustered

CHROMIUM = shutil.which("chromium")


def numpy_metrics(vectors, labels):
    """The textbook computation, written independently of imgsim.quality."""
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")
    same = labels[order] == labels[:, None]
    relevant = np.array([(labels == label).sum() - 1 for label in labels])
    ap = [np.sum(same[q, :10] * np.cumsum(same[q, :10]) / np.arange(1, 11)) / min(10, relevant[q])
          for q in range(len(labels))]
    return {"precision_at_1": same[:, 0].mean(), "precision_at_5": same[:, :5].mean(),
            "precision_at_10": same[:, :10].mean(), "map_at_10": float(np.mean(ap))}


@pytest.fixture
def labelled(tmp_path):
    """An index of 240 labelled vectors (labelled by their nearest of 12 centres), and 20 unlabelled."""
    vectors = clustered(260, dim=24, clusters=12, seed=3, spread=0.9)
    ids = [f"item-{i}" for i in range(260)]
    centres = clustered(12, dim=24, clusters=12, seed=3, spread=0.0)
    truth = np.argmax(vectors @ centres.T, axis=1)
    labels = {ids[i]: f"class-{truth[i]}" for i in range(240)}
    imgsim.build_index(str(tmp_path / "out"), ids=ids, vectors=vectors, run_id="r1")
    path = tmp_path / "labels.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "label"])
        writer.writerows(labels.items())
        writer.writerow(["not-in-the-index", "class-0"])
    return {"out": str(tmp_path / "out"), "labels": str(path), "vectors": vectors[:240],
            "names": np.array([labels[i] for i in ids[:240]]), "by_id": labels}


def test_retrieval_metrics_match_a_direct_numpy_computation(labelled, capsys, tmp_path):
    assert main(["evaluate", "--index", labelled["out"], "--labels", labelled["labels"],
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    printed = capsys.readouterr().out
    result = json.loads(printed)
    expected = numpy_metrics(labelled["vectors"], labelled["names"])
    for key, value in expected.items():  # printed to 4 places: metrics, not float noise
        assert result[key] == round(value, 4), key
    assert not re.search(r"\d\.\d{5,}", printed), "unrounded floats in the printed report"
    assert result["labelled"] == 240 and result["missing"] == 1 and result["singletons"] == 0
    assert set(result["per_label"]) == set(labelled["names"]) and len(result["per_label"]) > 5
    counts = [v["count"] for v in result["per_label"].values()]
    assert sum(counts) == 240
    assert np.average([v["precision_at_5"] for v in result["per_label"].values()], weights=counts) == pytest.approx(
        result["precision_at_5"], abs=1e-4)
    assert result["confused_pairs"] and all(len(set(p["labels"])) == 2 for p in result["confused_pairs"])


def test_singleton_labels_are_not_queried_and_nothing_to_evaluate_is_refused():
    vectors = clustered(6, dim=4)
    report = evaluate_retrieval([f"i{n}" for n in range(6)], vectors,
                                {"i0": "a", "i1": "a", "i2": "a", "i3": "b"})
    assert report["labelled"] == 3 and report["singletons"] == 1
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluate_retrieval(["i0", "i1"], vectors[:2], {"i0": "a", "i1": "b"})


def test_compare_evaluates_two_artifacts_side_by_side(labelled, tmp_path):
    noisy = labelled["vectors"] + np.random.default_rng(0).normal(scale=0.5, size=labelled["vectors"].shape)
    imgsim.build_index(str(tmp_path / "other"), ids=list(labelled["by_id"]), vectors=noisy, run_id="r2")
    result = imgsim.evaluate(labelled["out"], labels=labelled["labels"], compare=str(tmp_path / "other"),
                             report=str(tmp_path / "report.html"), cache_dir=str(tmp_path / "cache"))
    assert result["compare"]["run_id"] == "r2"
    assert result["difference"]["precision_at_5"] == pytest.approx(
        result["compare"]["precision_at_5"] - result["precision_at_5"], abs=1e-6)
    assert result["difference"]["precision_at_5"] < 0  # noise makes neighbours worse
    page = (tmp_path / "report.html").read_text()
    assert page.count('class="series"') == 2 and "Precision@5 by label" in page


def test_perturbations_are_seeded_and_cover_every_kind(photos):
    image = Image.open(io.BytesIO(photos["dog"])).convert("RGB")
    first = perturbations(image, np.random.default_rng(7))
    again = perturbations(image, np.random.default_rng(7))
    other = perturbations(image, np.random.default_rng(8))
    assert [k for k, _, _ in first] == list(KINDS)
    assert [p for _, _, p in first] == [p for _, _, p in again] != [p for _, _, p in other]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for (_, a, _), (_, b, _) in zip(first, again))
    params = {k: p for k, _, p in first}
    assert 0.05 <= params["crop"]["removed"] <= 0.20 and 30 <= params["jpeg"]["quality"] <= 90
    assert 2 <= abs(params["rotate"]["degrees"]) <= 5 and 0.25 <= params["downscale"]["factor"] <= 0.5
    assert np.asarray(dict((k, c) for k, c, _ in first)["greyscale"]).std(axis=2).max() == 0


def small_jpeg(data: bytes) -> bytes:
    image = Image.open(io.BytesIO(data))
    image.thumbnail((256, 256))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_near_duplicate_benchmark_bookkeeping(photos):
    """With the fake model (pixel thumbnails): every number is consistent with the copies made."""
    originals = [(name, small_jpeg(data)) for name, data in sorted(photos.items())]
    result = near_duplicate_benchmark(originals, FakeEmbedder(192), DecodeConfig(), threshold=0.95, seed=1)
    assert result["originals"] == 7 and result["copies"] == 7 * len(KINDS) == len(result["perturbations"])
    assert {p["kind"] for p in result["perturbations"]} == set(KINDS)
    assert 0 <= result["near_duplicate_recall_at_1"] <= 1
    missed = len(result["misses"])
    assert result["near_duplicate_recall_at_1"] == pytest.approx(1 - missed / result["copies"])
    assert [p["threshold"] for p in result["curve"]] == list(SWEEP)
    recalls = [p["recall"] for p in result["curve"]]
    assert recalls == sorted(recalls, reverse=True)  # a higher threshold never finds more pairs
    best = max(result["curve"], key=lambda p: (p["f1"], p["threshold"]))
    assert result["recommended_threshold"] == best["threshold"]
    again = near_duplicate_benchmark(originals, FakeEmbedder(192), DecodeConfig(), threshold=0.95, seed=1)
    assert again["perturbations"] == result["perturbations"] and again["curve"] == result["curve"]


def test_evaluate_needs_something_to_measure(tmp_path):
    with pytest.raises(ConfigError, match="give --labels, --near-duplicates or both"):
        imgsim.evaluate(str(tmp_path))
    assert main(["evaluate", "--index", str(tmp_path), "--labels", str(tmp_path / "none.csv")]) == 2


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (installed by .ci/run)")
def test_the_report_opens_in_a_browser(labelled, tmp_path):
    report = tmp_path / "report.html"
    imgsim.evaluate(labelled["out"], labels=labelled["labels"], report=str(report), cache_dir=str(tmp_path / "c"))
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                          "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120).stdout
    bars = len(set(labelled["names"]))
    assert "<svg" in dom and dom.count('class="bar"') == bars and "precision_at_5" in dom
