"""The benchmark suite's helpers run (tiny sizes), so `python -m benchmarks.run` does not rot."""
import io

import numpy as np
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
