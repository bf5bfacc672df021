"""Query semantics: filters and ranges against exact filtered search at three selectivities, more
like these and not those, the least similar, outliers, and the same answers over Python, the
command line and HTTP (one searcher and shards)."""
import json

import numpy as np
import pyarrow as pa
import pytest

import imgsim
from benchmarks.shapes import shaped
from imgsim.cli import main
from imgsim.index.consumer import ImageIndex
from imgsim.index.exact import top_k
from imgsim.index.filters import FilterError

N, DIM, K = 4000, 32, 10


def metadata(n: int, seed: int = 0) -> pa.Table:
    """type: 'common' for half the items, 'rare' for 5%, 'unique' for 0.1% (4); year 1800-1999;
    made: ISO dates of mixed precision; tags: lists; in_stock: booleans."""
    rng = np.random.default_rng(seed)
    kinds = np.array(["other"] * n, dtype=object)
    order = rng.permutation(n)
    kinds[order[:n // 2]] = "common"
    kinds[order[n // 2:n // 2 + n // 20]] = "rare"
    kinds[order[n // 2 + n // 20:n // 2 + n // 20 + n // 1000]] = "unique"
    years = rng.integers(1800, 2000, n)
    made = [f"{y}" if i % 3 == 0 else f"{y}-{1 + i % 12:02d}" if i % 3 == 1 else f"{y}-{1 + i % 12:02d}-15"
            for i, y in enumerate(years.tolist())]
    made[7] = None
    tags = [["a", "b"] if i % 4 == 0 else ["b"] if i % 4 == 1 else [] for i in range(n)]
    return pa.table({"type": pa.array(kinds.tolist(), pa.string()), "year": pa.array(years, pa.int64()),
                     "made": pa.array(made, pa.string()), "tags": pa.array(tags, pa.list_(pa.string())),
                     "in_stock": pa.array((np.arange(n) % 2 == 0).tolist(), pa.bool_())})


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    vectors = shaped(N, DIM, "narrow", clusters=40, seed=5)
    vectors[-3:] = np.random.default_rng(9).normal(size=(3, DIM)).astype(np.float32)  # three isolated items
    vectors[-3:] /= np.linalg.norm(vectors[-3:], axis=1, keepdims=True)
    meta = metadata(N)
    ids = [f"item-{i}" for i in range(N)]
    root = tmp_path_factory.mktemp("queries")
    outs = {}
    for kind, options in (("one", {"index_mode": "tree_ah"}), ("sharded", {"index_shards": 3})):
        outs[kind] = str(root / kind)
        imgsim.build_index(outs[kind], ids=ids, vectors=vectors, metadata=meta, run_id="q1", **options)
    return {"vectors": vectors, "meta": meta, "out": outs, "root": root}


def open_index(collection, kind, exact_max=None):
    index = ImageIndex.open(collection["out"][kind], cache_dir=str(collection["root"] / f"cache-{kind}"))
    if exact_max is not None:
        index.exact_filtered_max = exact_max
    return index


def exact(vectors, query, allowed, k=K, exclude=()):
    sims = vectors @ query
    sims[~allowed] = -np.inf
    sims[list(exclude)] = -np.inf
    idx, vals = top_k(sims[None, :], k)
    return [f"item-{i}" for i, v in zip(idx[0], vals[0]) if np.isfinite(v)]


@pytest.mark.parametrize("kind", ["one", "sharded"])
@pytest.mark.parametrize("value,share", [("common", 0.5), ("rare", 0.05), ("unique", 0.001)])
def test_filters_agree_with_exact_filtered_search_at_every_selectivity(collection, kind, value, share):
    vectors, meta = collection["vectors"], collection["meta"]
    allowed = np.array(meta.column("type").to_pylist()) == value
    assert allowed.mean() == pytest.approx(share, abs=1e-3)
    # exact_max 100: past 100 allowed rows the searcher is asked (over-fetching), below it rows are scored
    index = open_index(collection, kind, exact_max=100)
    queries = np.random.default_rng(2).choice(N, 40, replace=False)
    hits = total = 0
    for q in queries.tolist():
        got = index.similar(f"item-{q}", k=K, filters={"type": [value]})
        assert all(m.metadata["type"] == value for m in got) and f"item-{q}" not in [m.id for m in got]
        truth = exact(vectors, vectors[q], allowed, exclude=[q])
        assert len(got) == len(truth)
        hits += len({m.id for m in got} & set(truth))
        total += len(truth)
    assert hits / total >= 0.95, hits / total


def test_values_of_a_column_are_or_ed_and_columns_and_ed(collection):
    index = open_index(collection, "one")
    meta = collection["meta"]
    types, stock = np.array(meta.column("type").to_pylist()), np.array(meta.column("in_stock").to_pylist())
    tags = meta.column("tags").to_pylist()
    got = index.similar("item-1", k=50, filters={"type": ["rare", "unique"], "in_stock": [True], "tags": "a"})
    assert got and all(m.metadata["type"] in ("rare", "unique") and m.metadata["in_stock"] is True
                       and "a" in m.metadata["tags"] for m in got)
    allowed = np.isin(types, ["rare", "unique"]) & stock & np.array(["a" in t for t in tags])
    assert [m.id for m in got] == exact(collection["vectors"], collection["vectors"][1], allowed, 50, exclude=[1])


def test_ranges_on_numbers_and_iso_dates(collection):
    index = open_index(collection, "sharded")
    assert index.filterable["year"] == {"kind": "range", "type": "number"}
    assert index.filterable["made"]["range"] == "date"
    got = index.similar("item-3", k=30, ranges={"year": (1900, 1949)})
    assert len(got) == 30 and all(1900 <= m.metadata["year"] <= 1949 for m in got)
    # a date end covers its whole period: ..1950 includes 1950-12-15; 1950-03.. starts in March 1950
    got = index.similar("item-3", k=40, ranges={"made": ("1950-03", "1950")})
    assert got and all("1950-03" <= m.metadata["made"][:7] <= "1950-12" for m in got)
    made = collection["meta"].column("made").to_pylist()  # "1950" alone is 1950-01-01: before March
    expected = {f"item-{i}" for i, v in enumerate(made) if v and v.startswith("1950-") and v[5:7] >= "03"}
    assert {m.id for m in index.similar("item-3", k=N, ranges={"made": ("1950-03", "1950")})} == expected - {"item-3"}
    open_ended = index.similar("item-3", k=20, ranges={"year": (1990, None)})
    assert open_ended and all(m.metadata["year"] >= 1990 for m in open_ended)


@pytest.mark.parametrize("filters,ranges,match", [
    ({"nope": ["x"]}, None, r"column 'nope' cannot be filtered in this index \(filterable: in_stock, made, tags, "
                            r"type, year"),
    (None, {"year": ("19x0", None)}, r"range year: '19x0' is not a number"),
    (None, {"made": ("1950-13", None)}, r"range made: '1950-13' is not an ISO 8601 date"),
    (None, {"type": ("a", "b")}, r"column 'type' holds text, not numbers or ISO dates: filter it with filter=type:"),
    (None, {"year": (1950, 1900)}, r"range year: 1950 is after 1900"),
])
def test_an_unknown_column_or_a_malformed_value_is_one_line_naming_it(collection, filters, ranges, match):
    index = open_index(collection, "one")
    with pytest.raises(FilterError, match=match):
        index.similar("item-1", filters=filters, ranges=ranges)


def test_more_like_these_and_not_those(collection):
    vectors = collection["vectors"]
    index = open_index(collection, "one")
    a = vectors[10]
    cluster_a = np.argsort(-(vectors @ a))[:40]
    positives = [f"item-{i}" for i in cluster_a[:3]]
    plain = index.recommend(positives, k=20)
    assert not set(positives) & {m.id for m in plain} and [m.rank for m in plain] == list(range(1, 21))
    # a negative example: the results move away from it
    negative = [f"item-{int(np.argsort(-(vectors @ vectors[cluster_a[0]]))[25])}"]
    pushed = index.recommend(positives, negative, k=20)
    assert not (set(positives) | set(negative)) & {m.id for m in pushed}
    far = lambda matches: np.mean([vectors[int(m.id.split("-")[1])] @ vectors[int(negative[0].split("-")[1])]
                                   for m in matches])  # noqa: E731
    assert far(pushed) < far(plain)
    with pytest.raises(ValueError, match="at least one positive"):
        index.recommend([], k=3)


@pytest.mark.parametrize("exact_max", [None, 100], ids=["scored exactly", "searched, widened"])
def test_the_least_similar_in_order(collection, exact_max):
    vectors = collection["vectors"]
    for kind in ("one", "sharded"):
        index = open_index(collection, kind, exact_max)
        got = index.similar("item-5", k=10, order="least")
        sims = vectors @ vectors[5]
        truth = [f"item-{i}" for i in np.argsort(sims, kind="stable")[:10]]
        assert len(set(m.id for m in got) & set(truth)) >= 9 and [m.rank for m in got] == list(range(1, 11))
        assert [m.score for m in got] == sorted(m.score for m in got)  # rank 1 = the least similar
        assert got[0].score == pytest.approx(float(sims.min()), abs=1e-4)


def test_outliers_find_the_isolated_items(collection):
    for kind in ("one", "sharded"):
        index = open_index(collection, kind)
        got = index.outliers(k=5)
        assert {m.id for m in got[:3]} == {f"item-{N - 3}", f"item-{N - 2}", f"item-{N - 1}"}
        assert [m.score for m in got] == sorted((m.score for m in got), reverse=True)
        assert index.manifest["outliers"]["kept"] == N
        filtered = index.outliers(k=5, filters={"type": ["common"]})
        assert all(m.metadata["type"] == "common" for m in filtered)


def test_strengths_are_percentiles_of_the_collections_own_neighbour_scores(collection):
    """A match's strength is where its score falls among every item's table neighbour scores (here
    recomputed exactly), labelled by that percentile; the same for one searcher and shards."""
    vectors = collection["vectors"]
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    told = {}
    for kind in ("one", "sharded"):
        index = open_index(collection, kind)
        k = index.manifest["neighbors"]["k"]
        every = np.sort(np.partition(sims, -k, axis=1)[:, -k:].ravel())
        got = index.similar("item-11", k=20)
        for m in got:
            share = 100.0 * np.searchsorted(every, m.score, side="right") / every.size
            assert m.strength["percentile"] == pytest.approx(share, abs=1.5), (m.score, share)
            floor = {"very strong": 90, "strong": 70, "moderate": 40, "weak": 0}[m.strength["label"]]
            assert floor <= m.strength["percentile"] + 1e-9
        assert [m.strength["percentile"] for m in got] == sorted((m.strength["percentile"] for m in got), reverse=True)
        assert all(m.strength is None for m in index.outliers(k=3))  # isolation is not a similarity
        told[kind] = [m.strength["label"] for m in got]
    assert told["one"] == told["sharded"]
    least = open_index(collection, "one").similar("item-11", k=3, order="least")
    assert {m.strength["label"] for m in least} == {"weak"} and least[0].strength["percentile"] == 0.0


def test_the_same_answers_over_python_the_command_line_and_http(collection, capsys):
    from fastapi.testclient import TestClient

    from imgsim.service.server import ServeSettings, prepare

    out = collection["out"]["sharded"]
    index = open_index(collection, "sharded")
    python = [m.to_dict() for m in index.similar("item-8", k=5, filters={"type": ["common"]},
                                                 ranges={"year": ("1850", "1950")})]
    assert main(["query", "--index", out, "--id", "item-8", "-k", "5", "--filter", "type:common", "--range",
                 "year:1850..1950", "--cache-dir", str(collection["root"] / "cli")]) == 0
    cli = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    app, _, _ = prepare(ServeSettings(index=out, cache_dir=str(collection["root"] / "http")))
    client = TestClient(app, base_url="http://localhost")
    http = client.get("/api/similar/item-8", params={"k": 5, "filter": "type:common",
                                                     "range": "year:1850..1950"}).json()["results"]
    assert python == cli == http and len(python) == 5

    recommended = [m.id for m in index.recommend(["item-8", "item-9"], ["item-1"], k=5)]
    assert main(["query", "--index", out, "--id", "item-8", "--id", "item-9", "--not-id", "item-1", "-k", "5",
                 "--cache-dir", str(collection["root"] / "cli")]) == 0
    assert [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()] == recommended
    answer = client.post("/api/recommend", json={"positive": ["item-8", "item-9"], "negative": ["item-1"], "k": 5})
    assert [r["id"] for r in answer.json()["results"]] == recommended

    least = [m.id for m in index.similar("item-8", k=3, order="least")]
    assert [r["id"] for r in client.get("/api/similar/item-8", params={"k": 3, "order": "least"}).json()["results"]] \
        == least
    isolated = [m.id for m in index.outliers(k=4)]
    assert [r["id"] for r in client.get("/api/outliers", params={"k": 4}).json()["results"]] == isolated
    assert main(["query", "--index", out, "--outliers", "-k", "4", "--cache-dir", str(collection["root"] / "cli")]) == 0
    assert [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()] == isolated

    # refusals: a JSON 400 naming the column, a one-line CLI error, 404 for an unknown id
    bad = client.get("/api/similar/item-8", params={"filter": "nope:x"})
    assert bad.status_code == 400 and "column 'nope' cannot be filtered" in bad.json()["error"]
    assert client.get("/api/similar/item-8", params={"filter": "nocolon"}).json()["error"] == \
        "filter 'nocolon': write COLUMN:VALUE"
    assert client.post("/api/recommend", json={"positive": ["nope"]}).status_code == 404
    assert client.post("/api/recommend", json={"positive": "item-1"}).status_code == 400
    assert main(["query", "--index", out, "--id", "item-8", "--range", "year:x..", "--cache-dir",
                 str(collection["root"] / "cli")]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("imgsim")]
    assert err == ["imgsim query: error: range year: 'x' is not a number"]
