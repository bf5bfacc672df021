"""What a consumer trusts: only what the manifest (and LATEST's pin on it) covers, on real artifacts.

Each test tampers with a real published artifact the way an attacker with write access to
the output, or a broken copy, could, and checks that `ImageIndex.open`, `imgsim query` and
`imgsim verify` refuse it in one line instead of following it.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from imgsim.cli import main
from imgsim.index import artifact
from imgsim.index import build as indexer
from imgsim.index.artifact import ArtifactError
from imgsim.index.consumer import ImageIndex, local_copy_dir
from imgsim.index.latest import read_latest
from imgsim.storage import ObjectStore, sha256_file
from test_index import clustered, embeddings_table, publish_table


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """One real published output root (LATEST at run r1), built once; tests tamper with copies."""
    out = str(tmp_path_factory.mktemp("pristine") / "out")
    publish_table(embeddings_table(clustered(200, seed=4)), out, "r1")
    return out


@pytest.fixture
def out(pristine, tmp_path):
    copy = str(tmp_path / "out")
    shutil.copytree(pristine, copy, symlinks=True)
    return copy


def index_dir(out, run="r1"):
    return os.path.join(out, "runs", run, "index")


def load_manifest(out):
    with open(os.path.join(index_dir(out), "manifest.json")) as f:
        return json.load(f)


def save_manifest(out, manifest):
    with open(os.path.join(index_dir(out), "manifest.json"), "w") as f:
        json.dump(manifest, f)


def relist(out, manifest, *names):
    """Make the manifest's entries for names match the files as they are now (an attacker's edit)."""
    for name in names:
        path = os.path.join(index_dir(out), *name.split("/"))
        manifest["files"][name] = {"sha256": sha256_file(path), "bytes": os.path.getsize(path)}
    save_manifest(out, manifest)


def assert_one_line_refusals(location, tmp_path, capsys, match, run_id=None):
    """`imgsim query` (exit 2) and `imgsim verify` (exit 1) refuse with one line naming the problem."""
    flags = ["--run-id", run_id] if run_id else []
    code = main(["query", "--index", location, "--id", "item-1", "--cache-dir", str(tmp_path / "qc"), *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("imgsim query: error:"), err
    assert match in err
    code = main(["verify", "--index", location, *flags])
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and match in err, err
    assert json.loads(captured.out)["verified"] is False


# symbolic links ---------------------------------------------------------------------------------

@pytest.mark.parametrize("linked", ["ids.parquet", "scann"])
def test_a_symlink_inside_a_local_artifact_is_refused_not_followed(out, tmp_path, capsys, linked):
    """The link points at an identical copy outside the artifact, so every checksum would pass."""
    inside = os.path.join(index_dir(out), linked)
    outside = str(tmp_path / "elsewhere" / linked)
    os.makedirs(os.path.dirname(outside))
    shutil.move(inside, outside)
    os.symlink(outside, inside)
    with pytest.raises(ArtifactError, match="symbolic link"):
        ImageIndex.open(out, cache_dir=str(tmp_path / "cache"))
    assert not os.path.exists(tmp_path / "cache" / "ids.parquet")
    assert_one_line_refusals(out, tmp_path, capsys, "symbolic link")


@pytest.mark.parametrize("via", ["LATEST", "run id"])
def test_a_run_directory_that_links_into_another_output_root_is_refused(out, pristine, tmp_path, capsys, via):
    """runs/r2 links to another root's complete, valid run: LATEST's pin would match it, so only the
    link itself can give it away."""
    other = str(tmp_path / "other")
    shutil.copytree(pristine, other, symlinks=True)
    os.symlink(os.path.join(other, "runs", "r1"), os.path.join(out, "runs", "r2"))
    if via == "LATEST":
        latest = json.load(open(os.path.join(out, "LATEST")))
        json.dump({**latest, "run_id": "r2", "index": "runs/r2/index"}, open(os.path.join(out, "LATEST"), "w"))
    run_id = None if via == "LATEST" else "r2"
    with pytest.raises(ArtifactError, match=r"runs/r2 in .* is a symbolic link"):
        ImageIndex.open(out, run_id=run_id, cache_dir=str(tmp_path / "cache"))
    assert_one_line_refusals(out, tmp_path, capsys, "is a symbolic link", run_id=run_id)
    assert main(["rollback", "--output", out, "--run-id", "r2"]) == 2
    assert "is a symbolic link" in capsys.readouterr().err


def test_a_symlink_in_the_cache_is_replaced_never_written_through(out, tmp_path):
    """A link planted in the cache must not make open() write the artifact over the file it names."""
    cache = tmp_path / "cache"
    first = ImageIndex.open(out, cache_dir=str(cache))
    local = first.local_dir
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    os.unlink(os.path.join(local, "ids.parquet"))
    os.symlink(victim, os.path.join(local, "ids.parquet"))
    outside_dir = tmp_path / "outside-scann"
    outside_dir.mkdir()
    shutil.rmtree(os.path.join(local, "scann"))
    os.symlink(outside_dir, os.path.join(local, "scann"))

    index = ImageIndex.open(out, cache_dir=str(cache))
    assert index.local_dir == local and index.similar("item-7", k=1, include_self=True)[0].id == "item-7"
    assert victim.read_bytes() == b"precious" and os.listdir(outside_dir) == []
    assert not os.path.islink(os.path.join(local, "ids.parquet"))
    assert not os.path.islink(os.path.join(local, "scann"))


# scann_assets.pbtxt -----------------------------------------------------------------------------

def swapped_dataset(out, tmp_path) -> str:
    """A dataset.npy outside the artifact whose rows are permuted: items no longer find themselves."""
    data = np.load(os.path.join(index_dir(out), "scann", "dataset.npy"))
    path = str(tmp_path / "evil" / "dataset.npy")
    os.makedirs(os.path.dirname(path))
    np.save(path, np.roll(data, 1, axis=0))
    return path


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "unlisted"])
def test_scann_assets_may_only_name_files_the_manifest_lists(out, tmp_path, capsys, kind):
    evil = swapped_dataset(out, tmp_path)
    scann = os.path.join(index_dir(out), "scann")
    if kind == "absolute":
        named = evil
    elif kind == "dotdot":
        named = os.path.relpath(evil, scann)
    else:
        shutil.copyfile(evil, os.path.join(scann, "other.npy"))  # inside, but no checksum covers it
        named = "other.npy"
    pbtxt = os.path.join(scann, "scann_assets.pbtxt")
    with open(pbtxt) as f:
        text = f.read()
    assert '"dataset.npy"' in text
    with open(pbtxt, "w") as f:
        f.write(text.replace('"dataset.npy"', json.dumps(named)))
    relist(out, load_manifest(out), "scann/scann_assets.pbtxt")  # every listed checksum verifies

    with pytest.raises(ArtifactError, match="scann_assets.pbtxt"):
        ImageIndex.open(index_dir(out), cache_dir=str(tmp_path / "cache"))
    assert_one_line_refusals(index_dir(out), tmp_path, capsys, "scann_assets.pbtxt")


@pytest.mark.parametrize("text", [
    'assets {\n  asset_type: DATASET_NPY\n  asset_path: "/etc/dataset.npy"\n}\n',
    'assets {\n  asset_type: DATASET_NPY\n  asset_path: "a/../../dataset.npy"\n}\n',
    'assets {\n  asset_type: DATASET_NPY\n  asset_path: "\\057etc\\057dataset.npy"\n}\n',  # escapes
    'assets {\n  asset_type: DATASET_NPY\n  asset_path: \'dataset.npy\'\n}\n',  # other quoting
    'assets {\n  asset_type: DATASET_NPY\n  asset_path: "dataset.npy"\n  asset_path: "/x.npy"\n}\n',
    'assets { asset_type: DATASET_NPY }\n',
    '# a comment\nassets {\n  asset_type: DATASET_NPY\n  asset_path: "dataset.npy"\n}\n',
    'assets: <asset_type: DATASET_NPY asset_path: "dataset.npy">\n',
    'something_else: "x"\n',
])
def test_the_assets_reader_refuses_anything_but_plain_relative_names(text):
    with pytest.raises(ArtifactError, match="scann_assets.pbtxt"):
        artifact.check_scann_assets(text, {"scann/dataset.npy"})


def test_the_assets_reader_reads_what_scann_writes():
    text = ('assets {\n  asset_type: AH_CENTERS\n  asset_path: "ah_codebook.pb"\n}\n'
            'assets {\n  asset_type: DATASET_NPY\n  asset_path: "dataset.npy"\n}\n')
    assert artifact.check_scann_assets(text, {"scann/ah_codebook.pb", "scann/dataset.npy"}) == [
        "scann/ah_codebook.pb", "scann/dataset.npy"]


# LATEST -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("index", ["ABSOLUTE", "runs/../../elsewhere/runs/r1/index", "runs/r1/index/../../r2/index",
                                   "runs/r2/index", "runs/r1/index/"])
def test_latest_must_name_its_own_runs_index_directory(out, tmp_path, capsys, index):
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(out, elsewhere)
    shutil.copytree(index_dir(out), index_dir(out, "r2"))
    latest_path = os.path.join(out, "LATEST")
    with open(latest_path) as f:
        latest = json.load(f)
    latest["index"] = str(elsewhere / "runs" / "r1" / "index") if index == "ABSOLUTE" else index
    with open(latest_path, "w") as f:
        json.dump(latest, f)
    with pytest.raises(ArtifactError, match="LATEST"):
        read_latest(ObjectStore(), out)
    with pytest.raises(ArtifactError, match="runs/r1/index"):
        ImageIndex.open(out, cache_dir=str(tmp_path / "cache"))
    assert_one_line_refusals(out, tmp_path, capsys, "LATEST")


@pytest.mark.parametrize("run_id", ["../r1", "/abs", "", "a/b"])
def test_latest_must_name_a_valid_run_id(out, tmp_path, run_id):
    with open(os.path.join(out, "LATEST")) as f:
        latest = json.load(f)
    latest.update(run_id=run_id, index=f"runs/{run_id}/index")
    with open(os.path.join(out, "LATEST"), "w") as f:
        json.dump(latest, f)
    with pytest.raises(ArtifactError, match="LATEST"):
        ImageIndex.open(out, cache_dir=str(tmp_path / "cache"))


def test_opening_through_latest_checks_the_manifest_it_pins(out, tmp_path, capsys):
    """A file replaced together with its manifest entry verifies by the manifest alone; LATEST's
    manifest_sha256 is what catches it."""
    groups = os.path.join(index_dir(out), "groups.parquet")
    shutil.copyfile(os.path.join(index_dir(out), "neighbors.parquet"), groups)
    relist(out, load_manifest(out), "groups.parquet")
    pinned = read_latest(ObjectStore(), out).manifest_sha256
    with open(os.path.join(index_dir(out), "manifest.json"), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() != pinned

    with pytest.raises(ArtifactError, match="manifest_sha256"):
        ImageIndex.open(out, cache_dir=str(tmp_path / "cache"))
    assert_one_line_refusals(out, tmp_path, capsys, "manifest_sha256")
    # a run opened by name is trusted as far as its own manifest: nothing pins it
    assert ImageIndex.open(out, run_id="r1", cache_dir=str(tmp_path / "cache")).run_id == "r1"


# the manifest itself ----------------------------------------------------------------------------

def test_listed_sizes_are_checked(out, tmp_path, capsys):
    manifest = load_manifest(out)
    manifest["files"]["neighbors.parquet"]["bytes"] += 1
    save_manifest(out, manifest)
    with pytest.raises(ArtifactError, match="neighbors.parquet does not match the manifest: it has .* bytes"):
        ImageIndex.open(index_dir(out), cache_dir=str(tmp_path / "cache"))
    assert_one_line_refusals(index_dir(out), tmp_path, capsys, "neighbors.parquet does not match the manifest: it has")


def _entry(manifest):
    return manifest["files"]["ids.parquet"]


MALFORMED = {
    "not an object": lambda m: [m],
    "files is a list": lambda m: {**m, "files": list(m["files"])},
    "files is null": lambda m: {**m, "files": None},
    "files is missing": lambda m: {k: v for k, v in m.items() if k != "files"},
    "entry without sha256": lambda m: {**m, "files": {**m["files"], "ids.parquet": {"bytes": _entry(m)["bytes"]}}},
    "entry without bytes": lambda m: {**m, "files": {**m["files"], "ids.parquet": {"sha256": _entry(m)["sha256"]}}},
    "name ''": lambda m: {**m, "files": {**m["files"], "": _entry(m)}},
    "name '.'": lambda m: {**m, "files": {**m["files"], ".": _entry(m)}},
    "name 'scann/'": lambda m: {**m, "files": {**m["files"], "scann/": _entry(m)}},
    "name 'a//b'": lambda m: {**m, "files": {**m["files"], "a//b": _entry(m)}},
    "name manifest.json": lambda m: {**m, "files": {**m["files"], "manifest.json": _entry(m)}},
    "non-dict entry": lambda m: {**m, "files": {**m["files"], "ids.parquet": "abc"}},
    "sha256 not hex": lambda m: {**m, "files": {**m["files"], "ids.parquet": {**_entry(m), "sha256": "z" * 64}}},
    "sha256 a number": lambda m: {**m, "files": {**m["files"], "ids.parquet": {**_entry(m), "sha256": 5}}},
    "bytes a string": lambda m: {**m, "files": {**m["files"], "ids.parquet": {**_entry(m), "bytes": "12"}}},
    "bytes negative": lambda m: {**m, "files": {**m["files"], "ids.parquet": {**_entry(m), "bytes": -1}}},
    "bytes a boolean": lambda m: {**m, "files": {**m["files"], "ids.parquet": {**_entry(m), "bytes": True}}},
    "ids.parquet unlisted": lambda m: {**m, "files": {k: v for k, v in m["files"].items() if k != "ids.parquet"}},
    "format_version a string": lambda m: {**m, "format_version": "1"},
    "run_id a number": lambda m: {**m, "run_id": 7},
    "model_signature null": lambda m: {**m, "model_signature": None},
    "model_signature incomplete": lambda m: {**m, "model_signature": {"model": "vgg16"}},
    "model_signature dim a string": lambda m: {**m, "model_signature": {**m["model_signature"], "dim": "16"}},
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_manifest_is_refused_in_one_line(out, tmp_path, capsys, case):
    manifest = MALFORMED[case](load_manifest(out))
    with open(os.path.join(index_dir(out), "manifest.json"), "w") as f:
        json.dump(manifest, f)
    with pytest.raises(ArtifactError, match="manifest"):
        ImageIndex.open(index_dir(out), cache_dir=str(tmp_path / "cache"))
    assert_one_line_refusals(index_dir(out), tmp_path, capsys, "manifest")


# the local cache --------------------------------------------------------------------------------

OPENER = textwrap.dedent("""
    import os, sys, time

    from imgsim.index.consumer import ImageIndex

    out, cache_root, me, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    for r in range(rounds):
        # a barrier per round: both processes copy into a fresh cache at the same moment
        open(os.path.join(cache_root, f"ready-{r}-{me}"), "w").close()
        deadline = time.monotonic() + 60
        while len([n for n in os.listdir(cache_root) if n.startswith(f"ready-{r}-")]) < 2:
            assert time.monotonic() < deadline, "the other process never arrived"
            time.sleep(0.0002)
        index = ImageIndex.open(out, cache_dir=os.path.join(cache_root, f"round-{r}"))
        assert index.similar("item-5", k=1, include_self=True)[0].id == "item-5"
    assert "tensorflow" not in sys.modules  # a consumer loads ScaNN without it (imgsim.index.scann_import)
    print("ok")
""")


@pytest.mark.model  # the slow tier
def test_two_processes_opening_one_index_into_one_cache_never_see_a_torn_file(tmp_path):
    """Both processes must succeed, and no file in the cache is ever visible under its own name
    with fewer bytes than the manifest lists (this test process watches while they copy)."""
    out = str(tmp_path / "big")
    publish_table(embeddings_table(clustered(4_000, dim=256, seed=5)), out, "big",
                  indexer.IndexSettings(neighbors_k=1, recall_queries=10))
    with open(os.path.join(index_dir(out, "big"), "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["files"]["scann/dataset.npy"]["bytes"] > 4_000_000
    cache_root = tmp_path / "cache"
    cache_root.mkdir()
    rounds = 4
    expected = {os.path.join(local_copy_dir(index_dir(out, "big"), str(cache_root / f"round-{r}")),
                             *rel.split("/")): meta["bytes"]
                for r in range(rounds) for rel, meta in manifest["files"].items()}
    procs = [subprocess.Popen([sys.executable, "-c", OPENER, out, str(cache_root), str(me), str(rounds)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for me in range(2)]
    torn, seen_whole, running = set(), set(), True
    while running:  # one more look after both have ended
        running = any(p.poll() is None for p in procs)
        if any(p.poll() for p in procs):  # one failed: the other would wait at the barrier
            for p in procs:
                p.kill()
            break
        for path, size in expected.items():
            try:
                seen = os.stat(path).st_size
            except FileNotFoundError:
                continue
            if seen == size:
                seen_whole.add(path)
            else:
                torn.add((os.path.relpath(path, cache_root), seen, size))
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0 and stdout.strip() == "ok", stderr[-3000:]
    assert not torn, sorted(torn)[:5]
    assert seen_whole == set(expected)  # the watcher watched the very files the processes wrote
    leftovers = [name for r in range(rounds) for _, _, files in os.walk(cache_root / f"round-{r}")
                 for name in files if name.startswith(".")]
    assert leftovers == []  # no temporary files left behind


# a sharded artifact (format 2) ------------------------------------------------------------------

@pytest.fixture(scope="module")
def pristine_sharded(tmp_path_factory):
    """A real published sharded index (3 shards), built once in this process; tests tamper with copies."""
    from imgsim.index.sharding import ShardingOptions

    out = str(tmp_path_factory.mktemp("pristine-sharded") / "out")
    publish_table(embeddings_table(clustered(600, seed=9)), out, "r1",
                  indexer.IndexSettings(sharding=ShardingOptions(shards=3)))
    return out


@pytest.fixture
def sharded_out(pristine_sharded, tmp_path):
    copy = str(tmp_path / "sharded")
    shutil.copytree(pristine_sharded, copy, symlinks=True)
    return copy


def test_a_sharded_index_opens_and_answers_as_published(sharded_out, tmp_path, capsys):
    """The baseline the tampering tests below depart from."""
    assert main(["query", "--index", sharded_out, "--id", "item-1", "-k", "2", "--include-self",
                 "--cache-dir", str(tmp_path / "c")]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["id"] == "item-1"
    assert main(["verify", "--index", sharded_out]) == 0
    assert json.loads(capsys.readouterr().out)["shards"] == 3


@pytest.mark.parametrize("damage", ["tampered", "missing"])
@pytest.mark.parametrize("name", ["ids.parquet", "vectors.npy", "scann/scann_config.pb"])
def test_a_tampered_or_missing_shard_file_is_refused(sharded_out, tmp_path, capsys, damage, name):
    """Shard 2's files: ids.parquet is read to find any id, vectors.npy to look item-1 up when it
    lives there, the searcher when a query routes to it; each is checked against the manifest first."""
    manifest = load_manifest(sharded_out)
    member = pq_ids(sharded_out, manifest["shards"][2])[0]
    path = os.path.join(index_dir(sharded_out), "shards", "00002", *name.split("/"))
    if damage == "missing":
        os.unlink(path)
    else:
        with open(path, "r+b") as f:
            f.seek(os.path.getsize(path) // 2)
            f.write(b"tampered")
    expected = "lacks" if damage == "missing" else "does not match the manifest"
    index = ImageIndex.open(sharded_out, cache_dir=str(tmp_path / "cache"))  # lazy: only the manifest so far
    with pytest.raises(ArtifactError, match=expected):
        index.similar(member, k=1)
        index.search(index.vector(member)[None], k=1, shards_to_search=3)
    code = main(["query", "--index", sharded_out, "--id", member, "--cache-dir", str(tmp_path / "qc")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and expected in err, err
    assert main(["verify", "--index", sharded_out]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err


def pq_ids(out, entry):
    import pyarrow.parquet as pq

    return pq.read_table(os.path.join(index_dir(out), *entry["dir"].split("/"), "ids.parquet")).column("id").to_pylist()


SHARD_ESCAPES = {
    "dir outside": (lambda m: m["shards"][1].update(dir="../../elsewhere"), "names the directory"),
    "dir of another shard": (lambda m: m["shards"][1].update(dir="shards/00000"), "names the directory"),
    "file in another shard": (lambda m: m["shards"][1]["files"].update(
        {"shards/00000/ids.parquet": m["shards"][0]["files"]["shards/00000/ids.parquet"]}), "outside its directory"),
    "file leaving its shard": (lambda m: m["shards"][1]["files"].update(
        {"shards/00001/../../../x": m["shards"][0]["files"]["shards/00000/ids.parquet"]}), "will not load"),
    "shard file listed at the top": (lambda m: m["files"].update(
        {"shards/00001/extra.npy": m["shards"][0]["files"]["shards/00000/vectors.npy"]}), "outside its shard's entry"),
    "no neighbours part": (lambda m: m["files"].pop("neighbors/part-00001-00000.parquet"), "does not list"),
}


@pytest.mark.parametrize("case", sorted(SHARD_ESCAPES))
def test_a_shard_path_outside_its_place_is_refused_in_one_line(sharded_out, tmp_path, capsys, case):
    edit, expected = SHARD_ESCAPES[case]
    manifest = load_manifest(sharded_out)
    edit(manifest)
    save_manifest(sharded_out, manifest)
    with pytest.raises(ArtifactError, match=expected):
        ImageIndex.open(index_dir(sharded_out), cache_dir=str(tmp_path / "cache"))
    assert_one_line_refusals(index_dir(sharded_out), tmp_path, capsys, expected)


def test_a_shards_scann_assets_may_only_name_its_own_files(sharded_out, tmp_path, capsys):
    """Shard 1's searcher pointed at shard 0's dataset (listed, checksummed, but not its own)."""
    scann = os.path.join(index_dir(sharded_out), "shards", "00001", "scann")
    pbtxt = os.path.join(scann, "scann_assets.pbtxt")
    text = open(pbtxt).read()
    assert '"dataset.npy"' in text
    with open(pbtxt, "w") as f:
        f.write(text.replace('"dataset.npy"', '"../../00000/scann/dataset.npy"'))
    manifest = load_manifest(sharded_out)
    rel = "shards/00001/scann/scann_assets.pbtxt"
    manifest["shards"][1]["files"][rel] = {"sha256": sha256_file(pbtxt), "bytes": os.path.getsize(pbtxt)}
    save_manifest(sharded_out, manifest)
    index = ImageIndex.open(index_dir(sharded_out), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ArtifactError, match="scann_assets.pbtxt names the asset"):
        index.search(np.ones((1, 16)), k=1, shards_to_search=3)
    code = main(["verify", "--index", index_dir(sharded_out)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "scann_assets.pbtxt" in err
