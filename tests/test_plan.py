"""`imgsim plan`: an input counted as the run reads it, and time and cost from the measured rates
and a price table, checked by hand against a table with round numbers."""
import json
import re
from pathlib import Path

import pytest

from catalogue_server import CatalogueServer
from imgsim.cli import main
from imgsim.planning.costs import PROFILES, Measured, Prices, estimate
from pipeline_helpers import cma_api, write_manifest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def round_prices(tmp_path):
    """One currency unit a vCPU-hour and nothing else; jobs start at once; a GPU does 100 images/s."""
    table = json.loads((ROOT / "imgsim" / "planning" / "prices.json").read_text())
    table.update(vcpu_hour=1.0, memory_gb_hour=0.0, disk_gb_hour=0.0, job_start_minutes=0, gpu_hour={"nvidia-tesla-t4": 2.0},
                 gpu_images_per_second={"nvidia-tesla-t4": {"value": 100, "basis": "a round number"}})
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(table))
    return str(path)


def test_a_manifest_is_counted_as_the_run_reads_it_and_priced_by_the_table(tmp_path, round_prices, capsys):
    rows = [{"id": f"r{i}", "url": f"https://images.example.org/{i}.jpg"} for i in range(7200)]
    rows[5]["url"] = ""  # refused before any download: costs nothing
    manifest = write_manifest(tmp_path / "m.csv", rows)
    assert main(["plan", "--input", manifest, "--prices", round_prices, "--workers", "2", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["count"]["images"] == 7199 and plan["count"]["refused"] == 1
    measured = Measured.packaged()
    by = {e["precision"]: e for e in plan["estimates"]}
    assert list(by) == ["fp32", "bf16", "int8", "gpu"]
    fp32 = by["fp32"]  # n1-standard-4: 4 vCPUs at the measured rate per vCPU
    rate = 4 * measured.images_per_second["fp32"] / measured.vcpus
    assert fp32["images_per_second_per_worker"] == pytest.approx(rate, abs=0.01)
    hours = 7199 / (rate * 2) / 3600
    assert fp32["wall_hours"] == pytest.approx(hours, abs=1e-3)
    assert fp32["vcpu_hours"] == pytest.approx(2 * 4 * hours, abs=0.01)
    assert fp32["cost"] == pytest.approx(2 * 4 * hours * 1.0, abs=0.01)  # a vCPU-hour costs 1 here
    gpu = by["gpu"]  # n1-standard-8 and a T4 at 100 images/s: 8 vCPUs and the GPU's 2 an hour
    assert gpu["images_per_second_per_worker"] == 100
    assert gpu["cost"] == pytest.approx(2 * (8 + 2.0) * 7199 / 200 / 3600, abs=0.01)
    assert by["int8"]["wall_hours"] < by["bf16"]["wall_hours"] < fp32["wall_hours"]

    assert main(["plan", "--input", manifest, "--precision", "int8", "--limit", "100", "--prices", round_prices]) == 0
    table = capsys.readouterr().out
    assert table.startswith("99 images (rows of") and "; 1 row the run would refuse" in table  # of the first 100
    assert "n2-standard-8" in table and len(table.splitlines()) == 4  # the count, the header, int8, the sources


def test_the_museum_api_is_asked_for_its_total(shared, round_prices, capsys):
    server = CatalogueServer().start()
    try:
        api = cma_api(server, shared, [server.url("/x.jpg")])
        assert main(["plan", "--input", "cma", "--cma-api-url", api, "--cma-type", "Painting",
                     "--allow-private-addresses", "--prices", round_prices, "--json"]) == 0
    finally:
        server.stop()
    records = json.loads((Path(shared) / "data" / "cma" / "artworks_page.json").read_text())["data"]
    plan = json.loads(capsys.readouterr().out)
    assert plan["count"]["images"] == sum(r["type"] == "Painting" for r in records)
    assert "the API's total" in plan["count"]["how"]


@pytest.mark.parametrize("args, message", [
    (["--machine-type", "z9-huge-512"], "machine type 'z9-huge-512' is not in the price table"),
    (["--prices", "PRICES_BROKEN"], "not a price table"),
    (["--input", "nowhere.csv"], "cannot open the manifest"),
])
def test_bad_plans_fail_in_one_line(args, message, tmp_path, capsys):
    broken = tmp_path / "broken.json"
    broken.write_text('{"currency": "EUR"}')
    manifest = write_manifest(tmp_path / "m.csv", [{"id": "a", "url": "https://x.org/a.jpg"}])
    argv = ["plan", "--input", manifest, *[str(broken) if a == "PRICES_BROKEN" else a for a in args]]
    if "--input" in args:
        argv = ["plan", *args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_the_measured_rates_are_the_benchmarks_own():
    reference = json.loads((ROOT / "benchmarks" / "reference-results.json").read_text())
    measured = Measured.packaged()
    assert measured.images_per_second == {"fp32": reference["end_to_end_marginal_ips"],
                                          "bf16": reference["end_to_end_bf16_marginal_ips"],
                                          "int8": reference["end_to_end_int8_marginal_ips"]}
    assert measured.vcpus == reference["machine"]["cores"] and measured.measured == reference["end_to_end_date"]


def test_the_runbooks_cost_table_is_what_plan_computes():
    text = (ROOT / "infra" / "RUNBOOK.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| ([\d,]+) \| (\w+) \| ([\w-]+) \| (\d+)h(\d\d)m \| ([\d,]+) \| ([\d,.]+) \|$", text, re.M)
    assert len(rows) == 3 * len(PROFILES)
    prices, measured = Prices.load(), Measured.packaged()
    for images, precision, machine, h, m, vcpu_hours, cost in rows:
        e = estimate(int(images.replace(",", "")), precision, 10, prices, measured)
        assert e.machine_type == machine and round(e.wall_hours * 60) == int(h) * 60 + int(m)
        assert f"{e.vcpu_hours:,.0f}" == vcpu_hours and f"{e.cost:,.2f}" == cost
