"""The job graph translates for DataflowRunner (Beam's --dry_run: built, not submitted)."""
import pytest

from imgsim.pipelines.embed_pipeline import run_with
from imgsim.pipelines.launcher import find_setup_file, prepare_options
from imgsim.pipelines.options import ConfigError, RunConfig

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


def test_the_graph_translates_for_dataflow(gs_inputs):
    argv = DATAFLOW + ["--input", gs_inputs["input"], "--output", gs_inputs["output"],
                       "--weights", gs_inputs["weights"], "--layer", "pool"]
    options = prepare_options(argv)
    assert options.get_all_options()["setup_file"] == find_setup_file()  # filled in for the workers
    config = RunConfig.from_options(options, remote_workers=True)
    result, _ = run_with(options, config)
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
    with pytest.raises(ConfigError, match=f"{flag} .*Dataflow workers cannot read"):
        RunConfig.from_options(prepare_options(argv), remote_workers=True)


def test_unknown_flags_fail_fast():
    with pytest.raises(ConfigError, match="unknown option.*--layr"):
        prepare_options(["--input", "cma", "--layr", "pool"])
