"""`imgsim index` and `imgsim query`: the artifact commands that need no Beam.

The index flags are declared once here and shared with `imgsim run`.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from typing import Optional

from imgsim import artifact, indexer
from imgsim.index_config import MODES, REORDER_TYPES, IndexOptions
from imgsim.layout import RunLayout, new_run_id
from imgsim.storage import ObjectStore


def add_index_arguments(parser) -> None:
    """The index flags, for `imgsim run` (Beam options) and `imgsim index` alike."""
    g = parser.add_argument_group("imgsim index")
    g.add_argument("--index-mode", dest="index_mode", default="auto",
                   help=f"ScaNN configuration: {', '.join(MODES)} (auto: by collection size)")
    g.add_argument("--index-leaves", dest="index_leaves", type=int, default=None)
    g.add_argument("--index-leaves-to-search", dest="index_leaves_to_search", type=int, default=None)
    g.add_argument("--index-reorder", dest="index_reorder", type=int, default=None,
                   help="candidates re-scored exactly (default max(100, 10k))")
    g.add_argument("--index-reorder-type", dest="index_reorder_type", default="float32",
                   help=f"precision of the re-ordering data: {', '.join(REORDER_TYPES)}")
    g.add_argument("--neighbors-k", dest="neighbors_k", type=int, default=20,
                   help="neighbours per item in neighbors.parquet")
    g.add_argument("--min-recall", dest="min_recall", type=float, default=0.95,
                   help="refuse to publish an index whose recall@10 is lower")
    g.add_argument("--recall-queries", dest="recall_queries", type=int, default=1000)
    g.add_argument("--duplicate-threshold", dest="duplicate_threshold", type=float, default=0.95,
                   help="cosine similarity above which two items join a near-duplicate group")
    g.add_argument("--keep-runs", dest="keep_runs", type=int, default=None,
                   help="after publishing, delete all but the N most recent runs")


def index_settings(ns) -> indexer.IndexSettings:
    options = IndexOptions(mode=ns.index_mode, num_leaves=ns.index_leaves,
                           leaves_to_search=ns.index_leaves_to_search, reorder=ns.index_reorder,
                           reorder_type=ns.index_reorder_type)
    return indexer.IndexSettings(options=options, neighbors_k=ns.neighbors_k, min_recall=ns.min_recall,
                                 recall_queries=ns.recall_queries, duplicate_threshold=ns.duplicate_threshold,
                                 keep_runs=ns.keep_runs)


def build_and_publish(tables, settings: indexer.IndexSettings, layout: RunLayout, expected_generation: int,
                      input_description: dict, counts: dict, store: Optional[ObjectStore] = None) -> dict:
    """Stage, validate and publish an index; returns the report the summary and CLI print."""
    table, signature, repeated = indexer.combine_embeddings(tables)
    staging = tempfile.mkdtemp(prefix="imgsim-index-")
    try:
        manifest = indexer.build_artifact(table, signature, staging, settings, run_id=layout.run_id,
                                          input_description=input_description,
                                          counts={**counts, "indexed": table.num_rows, "repeated_ids": repeated})
        result = artifact.publish(staging, layout.output, layout.run_id, layout.index_dir, expected_generation,
                                  store=store, keep_runs=settings.keep_runs)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"published": True, "index": result.index_dir, "count": manifest["count"],
            "recall": manifest["recall"], "scann": manifest["scann"], "groups": manifest["groups"],
            "latest_updated": result.latest_updated, "latest": result.latest_detail}


def index_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="imgsim index",
                                     description="Build and publish an index from existing embeddings.")
    parser.add_argument("--embeddings", required=True, help="glob of embeddings Parquet files (local or gs://)")
    parser.add_argument("--output", required=True, help="output root to publish under (local or gs://)")
    parser.add_argument("--run-id", dest="run_id", default=None)
    add_index_arguments(parser)
    ns = parser.parse_args(argv)
    store = ObjectStore()
    try:
        settings = index_settings(ns)
        layout = RunLayout(ns.output, ns.run_id or new_run_id())
        latest = artifact.read_latest(store, ns.output)
        files = store.glob(ns.embeddings)
        if not files:
            raise ValueError(f"--embeddings {ns.embeddings!r} matches no files")
        from imgsim.outputs import read_tables
        tables = read_tables(files, store)
        report = build_and_publish(tables, settings, layout, latest.generation if latest else 0,
                                   {"kind": "embeddings", "pattern": ns.embeddings, "files": len(files)},
                                   {"embedded": sum(t.num_rows for t in tables)}, store)
    except (ValueError, artifact.ArtifactError, indexer.IndexInputError) as e:
        print(f"imgsim index: error: {e}", file=sys.stderr)
        return 2
    except indexer.RecallTooLow as e:
        print(f"imgsim index: {e}", file=sys.stderr)
        print(json.dumps({"published": False, **e.report}))
        return 1
    print(json.dumps(report))
    return 0 if report["latest_updated"] else 1


def query_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="imgsim query", description="Query a published index.")
    parser.add_argument("--index", required=True, help="output root (follows LATEST) or index directory")
    parser.add_argument("--run-id", dest="run_id", default=None, help="a given run instead of LATEST")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--id", dest="item_id", help="find items like this id")
    what.add_argument("--image", help="find items like this image file (local or gs://)")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--weights", default=None,
                        help="for --image: the weights file, when the manifest's is not reachable here")
    parser.add_argument("--cache-dir", dest="cache_dir", default=None)
    ns = parser.parse_args(argv)
    from imgsim.consumer import ImageIndex, ModelMismatch

    try:
        index = ImageIndex.open(ns.index, run_id=ns.run_id, cache_dir=ns.cache_dir)
        if ns.item_id is not None:
            matches = index.similar(ns.item_id, ns.k)
        else:
            matches = index.search_image(ns.image, ns.k, weights=ns.weights)
    except (artifact.ArtifactError, ModelMismatch, KeyError, ValueError, FileNotFoundError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"imgsim query: error: {message}", file=sys.stderr)
        return 2
    for match in matches:
        print(json.dumps(match.to_dict(), default=str, ensure_ascii=False))
    return 0
