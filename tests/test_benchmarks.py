"""The benchmark suite's helpers run (tiny sizes), so `python -m benchmarks.run` does not rot."""
import io

import numpy as np
import pytest
from PIL import Image

from benchmarks import catalogue, index_speed


def test_catalogue_images_are_unique_realistic_jpegs(shared, tmp_path):
    paths = catalogue.build(shared, 4, tmp_path, workers=1)
    sizes = [Image.open(p).size for p in paths]
    assert all(1000 <= max(s) <= 3000 for s in sizes)
    assert len({p.read_bytes() for p in paths}) == 4
    assert Image.open(io.BytesIO(paths[0].read_bytes())).format == "JPEG"
    assert catalogue.build(shared, 4, tmp_path, workers=1) == paths  # cached


def test_index_benchmark_reports_recall_speed_and_size():
    row = index_speed.benchmark(3000, 32, queries=200, brute_queries=100)
    assert row["config"]["mode"] == "brute_force" and row["recall@10"] > 0.99
    assert row["qps"] > 0 and row["brute_force_qps"] > 0 and row["serialised_mb"] > 0


def test_clustered_queries_share_themes_but_not_points():
    data = index_speed.clustered(100, 8, 5, seed=0, point_seed=1)
    queries = index_speed.clustered(10, 8, 5, seed=0, point_seed=2)
    np.testing.assert_allclose(np.linalg.norm(data, axis=1), 1, atol=1e-5)
    assert not np.isclose(data[:10], queries).all()


@pytest.mark.model  # the slow tier: three pipelines on worker processes
def test_growth_benchmark_grows_and_compares_with_a_full_rebuild(tmp_path):
    from benchmarks.growth import benchmark

    result = benchmark(4000, 16, 2, 0.02, tmp_path)
    assert result["grown"]["build"]["grown_from"] == "base" and result["grown"]["build"]["new"] == 80
    assert result["full"]["build"]["built_whole"] == "nothing published yet"
    assert 0 < result["grown"]["cpu_seconds"] and 0 < result["grown_cpu_share_of_full"]
    assert result["grown_recall@10"] >= 0.9 and result["tables_agree@10"] >= 0.9
    rerun = benchmark(4000, 16, 2, 0.02, tmp_path)  # the base is reused: LATEST rolled back to it
    assert "base" not in rerun and rerun["grown"]["build"]["grown_from"] == "base"
