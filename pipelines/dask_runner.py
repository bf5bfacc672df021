"""Beam on a Dask cluster: Beam's DaskRunner with the translations imgsim's pipeline needs.

    imgsim run ... --runner imgsim.pipelines.dask_runner.DaskRunner --dask_client_address tcp://HOST:8786

Beam 2.77's DaskRunner (apache_beam.runners.dask) turns Create, ParDo, GroupByKey and Flatten
into Dask bags, but: a ParDo's tagged outputs all land in one bag (a consumer of the failures
output also gets the rows); what a DoFn emits in finish_bundle is dropped (BatchElements,
RunInference, every per-bundle writer); a side input is computed again inside each task that
reads it (side effects twice); and only the last transform's bag is computed, so branches that
end elsewhere never run. This runner keeps Beam's options, overrides and result, and translates
anew: every bag holds (tag, value) pairs that consumers select by tag; a ParDo runs Beam's own
DoFnRunner over a partition, finish_bundle included; side inputs are task dependencies of the
same graph (computed once); every leaf is computed. Global windows only, as imgsim uses; a
primitive it does not know fails before anything runs. Metrics are not collected (Beam's
DaskRunner has none either): progress is in the run's summary.
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.pipeline import AppliedPTransform, PipelineVisitor
from apache_beam.runners.common import DoFnRunner, DoFnState, Receiver
from apache_beam.runners.dask import dask_runner as beam_dask
from apache_beam.runners.dask.overrides import _Create, _Flatten, _GroupByKeyOnly, dask_overrides
from apache_beam.runners.runner import PipelineState
from apache_beam.transforms.sideinputs import SideInputMap
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils import counters
from apache_beam.utils.windowed_value import WindowedValue

_PARTITION_SIZE = 16  # elements per partition of a Create: a manifest's rows spread over the workers


class DaskRunner(beam_dask.DaskRunner):
    """Runs a batch pipeline on the Dask cluster at --dask_client_address."""

    def run_pipeline(self, pipeline, options):
        import dask.distributed as ddist

        dask_options = options.view_as(beam_dask.DaskOptions).get_all_options(drop_default=True, current_only=True)
        bag_kwargs = beam_dask.DaskOptions._extract_bag_kwargs(dask_options)
        pipeline.replace_all(dask_overrides())
        client = ddist.Client(**dask_options)
        spread = 2 * sum(client.nthreads().values()) or 2  # partitions after a Reshuffle: two per worker thread
        translator = _Translator(bag_kwargs, spread)
        try:
            pipeline.visit(translator)
        except BaseException:
            client.close()
            raise
        return _Result(client, client.compute(translator.leaves()))


class _Result(beam_dask.DaskRunnerResult):
    """Beam's result, which also closes its client once the job has ended."""

    def wait_until_finish(self, duration=None) -> str:
        try:
            return super().wait_until_finish(duration)
        finally:
            if self.state in (PipelineState.DONE, PipelineState.FAILED, PipelineState.CANCELLED):
                self.client.close()


class _Translator(PipelineVisitor):
    def __init__(self, bag_kwargs: dict, spread: int):
        self.bag_kwargs = bag_kwargs
        self.spread = spread
        self.bags: dict[AppliedPTransform, Any] = {}
        self.consumed: set[AppliedPTransform] = set()

    def visit_transform(self, node: AppliedPTransform) -> None:
        transform = node.transform
        if isinstance(transform, _Create):
            self.bags[node] = self._create(transform.values)
        elif isinstance(transform, beam.ParDo):
            self.bags[node] = self._par_do(node)
        elif isinstance(transform, _GroupByKeyOnly):
            self.bags[node] = self._input(node.inputs[0]).groupby(_key).map(_grouped)
        elif isinstance(transform, _Flatten):
            import dask.bag as db

            parts = [self._input(p) for p in node.inputs]
            self.bags[node] = (db.concat(parts) if parts else self._create([])).map(_tagged, None)
            return
        elif type(transform).__name__ == "_Reshuffle":  # Beam's primitive Reshuffle: spread the elements
            bag = self._input(node.inputs[0]).map(_tagged, None)
            self.bags[node] = bag.repartition(npartitions=max(bag.npartitions, self.spread))
        else:
            raise NotImplementedError(f"imgsim's DaskRunner cannot run {node.full_label} "
                                      f"({type(transform).__name__})")

    def leaves(self) -> list:
        return [bag for node, bag in self.bags.items() if node not in self.consumed]

    def _create(self, values):
        import dask.bag as db

        values = list(values)
        kwargs = self.bag_kwargs or {"partition_size": _PARTITION_SIZE}
        return db.from_sequence(values or [], **kwargs).map(_tagged, None) if values else \
            db.from_sequence([(None, None)], npartitions=1).filter(_never)

    def _input(self, pcoll: pvalue.PCollection):
        """The values of one PCollection: its producer's bag, selected by the output's tag."""
        producer = pcoll.producer
        self.consumed.add(producer)
        return self.bags[producer].filter(functools.partial(_has_tag, pcoll.tag)).map(_untagged)  # main: tag None

    def _par_do(self, node: AppliedPTransform):
        import dask

        transform = node.transform
        (main,) = node.main_inputs.values()
        sides = []
        for side in node.side_inputs:
            values = self._input(side.pvalue)
            sides.append(dask.delayed(_concat)(values.to_delayed()))
        specs = [(type(side), side._view_options()) for side in node.side_inputs]
        bag = self._input(main)
        run = functools.partial(_run_dofn, transform.fn, list(transform.args), dict(transform.kwargs), specs,
                                main.windowing, node.full_label)
        return bag.map_partitions(run, *sides)


# --- what runs on the workers (plain functions: Dask pickles them) ---------------------------------

def _tagged(value, tag):
    return tag, value


def _untagged(pair):
    return pair[1]


def _has_tag(tag, pair) -> bool:
    return pair[0] == tag


def _never(_) -> bool:
    return False


def _key(pair):
    return pair[0]


def _grouped(group):
    key, pairs = group
    return None, (key, [value for _, value in pairs])


def _concat(partitions) -> list:
    return [value for partition in partitions for value in partition]


class _Collected(Receiver):
    def __init__(self, tag: Optional[str], out: list):
        self.tag = tag
        self.out = out

    def receive(self, windowed_value: WindowedValue) -> None:
        self.out.append((self.tag, windowed_value.value))


class _Receivers(dict):
    def __init__(self):
        super().__init__()
        self.out: list = []

    def __missing__(self, tag):
        receiver = self[tag] = _Collected(tag, self.out)
        return receiver


def _run_dofn(fn, args, kwargs, specs, windowing, label, items, *sides) -> list:
    """One bundle: Beam's DoFnRunner over a partition, setup to teardown, finish_bundle's output kept."""
    receivers = _Receivers()
    side_inputs = [SideInputMap(view, options, [_windowed(v) for v in values])
                   for (view, options), values in zip(specs, sides)]
    runner = DoFnRunner(fn, args, kwargs, side_inputs, windowing, tagged_receivers=receivers, step_name=label,
                        state=DoFnState(counters.CounterFactory()))
    runner.setup()
    runner.start()
    for item in items:
        runner.process(_windowed(item))
    runner.finish()
    runner.teardown()
    return receivers.out


def _windowed(value) -> WindowedValue:
    return WindowedValue(value, 0, (GlobalWindow(),))
