"""The job graph translates for DataflowRunner (Beam's --dry_run: built, not submitted)."""
import pytest

from imgsim.config.flags import ConfigError
from imgsim.config.parser import parse_run_args
from imgsim.config.preflight import preflight
from imgsim.pipelines.beam_options import find_setup_file, pipeline_options
from imgsim.pipelines.embed_pipeline import run_plan
from imgsim.storage import ObjectStore

DATAFLOW = ["--runner", "DataflowRunner", "--dry_run=True", "--project", "imgsim-test",
            "--region", "us-central1", "--temp_location", "gs://imgsim-test/tmp"]


@pytest.fixture
def gs_inputs(gcs, notop_weights, weights_cache):
    from gcs_emulator import client

    bucket = client().bucket(gcs.bucket)
    bucket.blob("in/catalogue.csv").upload_from_string("id,url,title\na,https://example.org/a.jpg,A\n")
    bucket.blob("models/notop.weights.h5").upload_from_filename(notop_weights)
    return {"input": f"gs://{gcs.bucket}/in/catalogue.csv", "weights": f"gs://{gcs.bucket}/models/notop.weights.h5",
            "output": f"gs://{gcs.bucket}/out"}


def dataflow_plan(argv):
    options, beam_args = parse_run_args(argv)
    beam_options = pipeline_options(beam_args)
    return preflight(options, ObjectStore(), remote_workers=True), beam_options


@pytest.mark.model  # preflight builds VGG16 once to check that the weights file fits the layer
def test_the_graph_translates_for_dataflow(gs_inputs):
    argv = DATAFLOW + ["--input", gs_inputs["input"], "--output", gs_inputs["output"],
                       "--weights", gs_inputs["weights"], "--layer", "pool"]
    plan, beam_options = dataflow_plan(argv)
    assert beam_options.get_all_options()["setup_file"] == find_setup_file()  # filled in for the workers
    result = run_plan(plan, beam_options, ObjectStore())
    transforms = {t.unique_name for t in result.job.proto_pipeline.components.transforms.values()}
    for name in ("ReadCatalogue", "DeduplicateIds", "DownloadImages",
                 "EmbedImages/RunInference", "WriteEmbeddings", "WriteFailures", "WriteRunSummary"):
        assert any(t == name or t.startswith((name + "/", name + "[")) for t in transforms), name
    assert result.job.proto.type_.name == "JOB_TYPE_BATCH"


@pytest.mark.parametrize("flag, value", [("--input", "local.csv"), ("--output", "out/"),
                                         ("--weights", "/tmp/w.weights.h5")])
def test_local_paths_are_refused_for_dataflow(gs_inputs, flag, value):
    args = {"--input": gs_inputs["input"], "--output": gs_inputs["output"], "--weights": gs_inputs["weights"]}
    args[flag] = value
    argv = DATAFLOW + [item for pair in args.items() for item in pair]
    with pytest.raises(ConfigError, match=f"{flag} .*this runner.s workers cannot read"):
        dataflow_plan(argv)


def test_unknown_flags_fail_fast():
    options, beam_args = parse_run_args(["--input", "cma", "--output", "o", "--layr", "pool"])
    with pytest.raises(ConfigError, match="unknown option.*--layr"):
        pipeline_options(beam_args)
