"""`imgsim run --site`: the explorer built beside the index just published, on a worker.

It waits for the index step's report. When the index was published, it builds
the static site into runs/RUN_ID/site/ (imgsim.explorer) and, if LATEST still
points at this run, points OUT/site/index.html at it, so a scheduled run
refreshes the explorer together with LATEST. With --site-output the site is
built there instead (a public website bucket), only while LATEST points at
this run. A site that cannot be built is reported in the summary, never a
reason to fail a run whose index is good.
"""
from __future__ import annotations

import logging
from typing import Optional

import apache_beam as beam

from imgsim.explorer.build import ExploreSettings, build_site
from imgsim.explorer.forward import point_site_at
from imgsim.explorer.source import IndexContents
from imgsim.index.latest import read_latest
from imgsim.runs.layout import RunLayout
from imgsim.storage import ObjectStore

_LOG = logging.getLogger("imgsim.explorer")


class BuildSite(beam.PTransform):
    """index reports -> one site report dict."""

    def __init__(self, layout: RunLayout, settings: ExploreSettings = ExploreSettings(),
                 site_output: Optional[str] = None):
        super().__init__()
        self._layout = layout
        self._settings = settings
        self._site_output = site_output

    def expand(self, index_reports):
        return (index_reports.pipeline
                | "Once" >> beam.Create([None])
                | "BuildExplorer" >> beam.ParDo(_BuildSiteFn(self._layout, self._settings, self._site_output), reports=beam.pvalue.AsList(index_reports)))


class _BuildSiteFn(beam.DoFn):
    def __init__(self, layout: RunLayout, settings: ExploreSettings, site_output: Optional[str]):
        self._layout = layout
        self._settings = settings
        self._site_output = site_output

    def setup(self):
        self._store = ObjectStore()

    def process(self, _, reports):
        report = reports[0] if reports else {}
        if not report.get("published"):
            yield {"built": False, "reason": "no index was published"}
            return
        layout = self._layout
        latest = read_latest(self._store, layout.output) if self._site_output else None
        if self._site_output and (latest is None or latest.run_id != layout.run_id):
            yield {"built": False, "reason": "LATEST points at another run: --site-output shows the latest run only"}
            return
        try:
            contents = IndexContents.open(layout.index_dir, store=self._store)
            built = build_site(contents, self._site_output or layout.site_dir, self._settings, self._store)
        except Exception as e:  # the run's data and index are good whatever happens here
            _LOG.exception("the explorer could not be built")
            yield {"built": False, "reason": f"{type(e).__name__}: {e}"[:500]}
            return
        stable = True if self._site_output else point_site_at(self._store, layout.output, layout.run_id)
        yield {"built": True, "site": built["site"], "build": built["build"], "count": built["count"],
               "thumbnails": built["thumbnails"], "files": built["files"], "stable_site_updated": stable}
