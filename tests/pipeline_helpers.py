"""Running the pipeline on DirectRunner in the test process and reading its outputs back."""
from __future__ import annotations

import copy
import csv
import json
import os
from pathlib import Path
from typing import Iterable

import pyarrow as pa

from imgsim.runs.outputs import read_tables, signature_of
from imgsim.storage import ObjectStore, join


def write_manifest(path, rows: Iterable[dict], columns=None) -> str:
    rows = list(rows)
    columns = columns or list(rows[0])
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def run_pipeline(*args: str, handler=None, allow_private_addresses: bool = True, after_preflight=None) -> dict:
    """Run `imgsim run` in-process on DirectRunner and return what it wrote.

    handler: a model handler instead of VGG16 (tests.fakes.FakeModelHandler), for tests of
    everything but the model. after_preflight(plan): called between preflight and the run, to
    change the world the way it can change while a job starts."""
    from imgsim.config.parser import parse_run_args
    from imgsim.config.preflight import preflight
    from imgsim.pipelines.beam_options import pipeline_options
    from imgsim.pipelines.embed_pipeline import run_plan

    argv = ["--runner", "DirectRunner", "--progress-interval", "0", *args]
    if allow_private_addresses:  # the tests' servers are on 127.0.0.1
        argv.append("--allow-private-addresses")
    options, beam_args = parse_run_args(argv)
    store = ObjectStore()
    plan = preflight(options, store, check_weights_fit=handler is None)
    if after_preflight is not None:
        after_preflight(plan)
    result = run_plan(plan, pipeline_options(beam_args), store, handler=handler)
    result.wait_until_finish()
    out = read_run(plan.layout.output, plan.layout.run_id)
    out["metrics"] = counters(result)
    out["plan"] = plan
    return out


def cma_api(server, shared, image_urls, edit=None) -> str:
    """Replays the real CMA records with the API's paging and type filter; images point at the test server.

    edit(records): change the records first (to serve the odd ones a real API may send)."""
    records = json.loads((Path(shared) / "data" / "cma" / "artworks_page.json").read_text())["data"]
    for i, record in enumerate(records):
        record["images"]["web"]["url"] = image_urls[i % len(image_urls)]
    if edit is not None:
        edit(records)

    def respond(h):
        q = h.query
        assert q.get("has_image") == "1"
        chosen = [r for r in records if not q.get("type") or r["type"] == q["type"]]
        skip, limit = int(q.get("skip", 0)), int(q.get("limit", 1000))
        h.send_json({"info": {"total": len(chosen), "parameters": q}, "data": copy.deepcopy(chosen[skip:skip + limit])})

    return server.route("/api/artworks/", respond)


def counters(result) -> dict:
    """Committed Beam counter values by name (summed over steps)."""
    totals = {}
    try:
        metrics = result.metrics()
    except NotImplementedError:  # Dask: no metrics
        return totals
    for counter in metrics.query()["counters"]:
        name = counter.key.metric.name
        totals[name] = totals.get(name, 0) + counter.committed
    return totals


def read_run(output: str, run_id: str) -> dict:
    """A run's embeddings, failures and summary, from a local directory or gs://."""
    run_dir = join(output, "runs", run_id)
    embeddings = _read_dir(join(run_dir, "embeddings"))
    failures = _read_dir(join(run_dir, "failures"))
    summary = json.loads(ObjectStore().read_bytes(join(run_dir, "summary.json")))
    return {"embeddings": embeddings, "failures": failures, "summary": summary,
            "signature": signature_of(embeddings.schema), "run_dir": run_dir}


def _read_dir(path: str) -> pa.Table:
    files = ObjectStore().glob(join(path, "*.parquet"))
    assert files, f"no Parquet files in {path}"
    return pa.concat_tables(read_tables(files, ObjectStore()))


def by_id(table: pa.Table) -> dict:
    return {row["id"]: row for row in table.to_pylist()}


def site_data(page: str, path: str = "data/site.json") -> str:
    """Where a file of the build an explorer entry page names lives, relative to the site."""
    from imgsim.explorer import site_format

    build = site_format.build_of(page)
    assert build, "the page names no build"
    return site_format.build_dir(build) + path


def local_site_json(site: str) -> dict:
    with open(os.path.join(site, "index.html"), encoding="utf-8") as f:
        return json.load(open(os.path.join(site, site_data(f.read()))))
