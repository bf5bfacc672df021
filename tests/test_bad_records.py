"""Bad catalogue records through the real graph (fake model): the run finishes, accounts for every
row, and fails each bad one alone with its reason; a damaged manifest fails fast or loudly.

Lone surrogates, values of the wrong JSON type and over-long lines used to crash the whole job
(Beam's coder, the Parquet sinks) with nothing published; here each is one row's failure."""
import gzip
import json

import pytest

from fakes import FakeModelHandler
from imgsim.cli import main
from imgsim.storage import ObjectStore, join
from pipeline_helpers import by_id, cma_api, run_pipeline


def outcome(result) -> dict:
    """id -> "embedded" or the failure's (stage, reason), over the whole run."""
    done = {row_id: "embedded" for row_id in result["embeddings"].column("id").to_pylist()}
    for failure in result["failures"].to_pylist():
        done[failure["id"]] = (failure["stage"], failure["reason"])
    return done


def test_a_jsonl_manifest_with_lone_surrogates_and_bad_lines(server, photos, notop_weights, tmp_path):
    dog, eagle = server.file("/dog.jpg", photos["dog"]), server.file("/eagle.jpg", photos["eagle"])
    lines = [json.dumps({"id": "dog", "url": dog, "title": "caf\ud800 au lait", "tags": ["a\udc00", 1]}),
             json.dumps({"id": "bad\ud800id", "url": eagle, "title": "its id is not Unicode"}),
             json.dumps({"id": "eagle", "url": eagle, "title": {"en": "eagle\udfff"}}).encode(),
             b'{"id": "latin1", "url": "' + eagle.encode() + b'", "title": "caf\xe9"}',
             json.dumps({"id": "long", "url": eagle, "title": "x" * 5000})]
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"\n".join(line if isinstance(line, bytes) else line.encode() for line in lines) + b"\n")
    result = run_pipeline("--input", str(path), "--output", str(tmp_path / "out"), "--run-id", "surrogates",
                          "--layer", "pool", "--weights", notop_weights,
                          "--max-metadata-bytes", "4096", handler=FakeModelHandler())
    assert result["summary"]["accounted"] and result["summary"]["counts"]["input_rows"] == 5
    assert result["summary"]["index"]["published"]
    assert outcome(result) == {"dog": "embedded", "eagle": "embedded", "bad\\ud800id": ("read", "invalid_record"),
                               "latin1": ("read", "invalid_record"), None: ("read", "invalid_record")}
    rows = by_id(result["embeddings"])
    assert rows["dog"]["title"] == "caf\ufffd au lait" and rows["dog"]["tags"] == '["a\ufffd", 1]'
    assert rows["eagle"]["title"] == '{"en": "eagle\ufffd"}'
    details = {f["id"]: f["detail"] for f in result["failures"].to_pylist()}
    assert "line 5" in details[None] and "over --max-metadata-bytes (4,096)" in details[None]


def test_the_museum_api_with_records_of_the_wrong_types(server, shared, photos, notop_weights, tmp_path):
    urls = [server.file(f"/cdn/{name}.jpg", photos[name]) for name in ("dog", "eagle", "scream")]

    def odd(records):
        records[0]["creators"] = 5
        records[1]["creators"] = [{"description": 7, "role": "artist"}]
        records[2]["images"]["web"]["url"] = 5
        records[3]["title"] = "Nathaniel\ud800 Hurd"
        records[4]["accession_number"] = "1916\ud800"
        records[5]["title"], records[5]["type"] = {"en": "a title", "fr": ["un", "titre"]}, True
        records[6]["technique"] = "oil on canvas " * 400  # 5,600 bytes
        records[7]["creators"] = {"description": "a lone creator object"}

    api = cma_api(server, shared, urls, edit=odd)
    result = run_pipeline("--input", "cma", "--cma-api-url", api, "--cma-page-size", "4", "--limit", "10",
                          "--output", str(tmp_path / "out"), "--run-id", "odd", "--layer", "pool",
                          "--weights", notop_weights,
                          "--max-metadata-bytes", "4096", "--no-index", handler=FakeModelHandler())
    records = json.loads((shared / "data" / "cma" / "artworks_page.json").read_text())["data"][:10]
    ids = [r["accession_number"] for r in records]
    assert result["summary"]["accounted"] and result["summary"]["counts"]["input_rows"] == 10
    done = outcome(result)
    failed = {ids[2]: done[ids[2]], "1916\\ud800": done["1916\\ud800"], ids[6]: done[ids[6]]}
    assert failed == {ids[2]: ("download", "invalid_url"), "1916\\ud800": ("read", "invalid_record"),
                      ids[6]: ("read", "invalid_record")}
    assert all(done[i] == "embedded" for n, i in enumerate(ids) if n not in (2, 4, 6)), done
    rows = by_id(result["embeddings"])
    assert rows[ids[0]]["creators"] == ["5"] and rows[ids[1]]["creators"] == ["7"]
    assert rows[ids[7]]["creators"] == ["a lone creator object"]
    assert rows[ids[3]]["title"] == "Nathaniel\ufffd Hurd"
    assert rows[ids[5]]["title"] == '{"en": "a title", "fr": ["un", "titre"]}' and rows[ids[5]]["type"] == "true"
    technique = next(f for f in result["failures"].to_pylist() if f["id"] == ids[6])
    assert "'technique' is 5,600 bytes, over --max-metadata-bytes (4,096)" in technique["detail"]


def csv_gz(rows: int = 20000) -> bytes:
    return gzip.compress(b"id,url\n" + b"".join(b"r%d,http://127.0.0.1:9/%d.jpg\n" % (i, i) for i in range(rows)))


def damaged(data: bytes, how: str) -> bytes:
    if how == "truncated":
        return data[: len(data) * 2 // 3]
    corrupt = bytearray(data)
    for i in range(len(corrupt) // 2, len(corrupt) // 2 + 64):
        corrupt[i] ^= 0x55
    return bytes(corrupt)


@pytest.mark.parametrize("how", ["truncated", "corrupt"])
def test_a_damaged_compressed_manifest_is_one_line_before_any_work(how, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.csv.gz").write_bytes(damaged(csv_gz(), how))
    assert main(["run", "--input", "m.csv.gz", "--output", "out"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("imgsim run: error: m.csv.gz: the compressed manifest is truncated or "
                                               "corrupt") and err[0].endswith("re-create or re-upload it"), err
    assert not (tmp_path / "out" / "LATEST").exists()


def test_a_manifest_damaged_after_preflight_fails_the_job_and_publishes_nothing(notop_weights, tmp_path):
    path = tmp_path / "m.csv.gz"
    path.write_bytes(csv_gz())

    def damage(plan):
        path.write_bytes(damaged(path.read_bytes(), "truncated"))

    with pytest.raises(Exception, match="m.csv.gz: the compressed manifest is truncated or corrupt"):
        run_pipeline("--input", str(path), "--output", str(tmp_path / "out"), "--run-id", "damaged", "--layer", "pool",
                     "--weights", notop_weights,
                     "--download-deadline", "1", after_preflight=damage, handler=FakeModelHandler())
    store = ObjectStore()
    assert not store.exists(join(str(tmp_path / "out"), "runs", "damaged", "summary.json"))
    assert not store.exists(join(str(tmp_path / "out"), "LATEST"))
