import json
import os
import shutil
import subprocess
import sys

import pytest


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: kbypass bench builds a veth bench")
def test_bench_measures_every_batch_size_and_the_kernel_and_plots(tmp_path) -> None:
    png = tmp_path / "out.png"
    r = subprocess.run(
        [sys.executable, "-m", "kbypass.cli", "bench", "--seconds", "0.3", "--batches", "1,64",
         "--json", "--plot", str(png)],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [(x["path"], x["batch"]) for x in rows] == [
        ("kbypass Pipeline", 1),
        ("kbypass Pipeline", 64),
        ("kernel UDP socket", 64),
    ]
    assert all(x["packets"] > 0 and x["pps"] > 0 for x in rows), rows
    assert rows[0]["mean_batch"] <= 1.0 and rows[1]["mean_batch"] <= 64.0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: kbypass bench builds a veth bench")
def test_bench_with_an_empty_handler_measures_the_pipelines_own_cost() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "kbypass.cli", "bench", "--seconds", "0.3", "--batches", "1",
         "--handler", "empty", "--json"],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [(x["path"], x["batch"]) for x in rows] == [
        ("kbypass Pipeline", 1),
        ("kernel UDP socket", 64),
    ]
    one = rows[0]
    assert one["packets"] > 0 and one["mean_batch"] == 1.0
    assert 0 < one["batch_latency_us"] < 1000  # receive to verdicts applied, per batch


def test_bench_rejects_bad_arguments() -> None:
    from kbypass.cli import main

    if os.geteuid() != 0:
        assert main(["bench"]) == 1
        return
    assert main(["bench", "--batches", "0"]) == 2
    assert main(["bench", "--batches", "x"]) == 2
    assert main(["bench", "--size", "10"]) == 2
    with pytest.raises(SystemExit):
        main(["bench", "--handler", "numpy"])  # argparse: not one of flows, empty


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: kbypass bench builds a veth bench")
def test_bench_latency_compares_pipeline_modes_with_the_kernel_server_and_plots(tmp_path) -> None:
    if shutil.which("sockperf") is None:
        pytest.skip("sockperf is not installed: bash .ci/install-system-deps (or apt-get it)")
    png = tmp_path / "latency.png"
    r = subprocess.run(
        [sys.executable, "-m", "kbypass.cli", "bench", "--latency", "--seconds", "2",
         "--modes", "adaptive,busy", "--json", "--plot", str(png)],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [x["server"] for x in rows] == [
        "kernel UDP (sockperf server)",
        "kbypass Pipeline (adaptive)",
        "kbypass Pipeline (busy)",
        "in-kernel XDP echo (XDP_TX, the floor)",
    ]
    for x in rows:
        (m,) = x["rounds"]  # one round
        assert 0 < m["rtt_p50_us"] <= m["rtt_p99_us"] <= m["rtt_p999_us"], m
        assert m["pingpong_msgs_per_s"] > 0 and m["load_msgs_per_s"] > 0, m
        # The capacity run: the generator's requests were answered, counted at the client.
        cap = m["extra"]["capacity"]
        assert 0 < cap["answers"] <= cap["offered"], cap
        assert m["capacity_aps"] == pytest.approx(cap["answers"] / cap["seconds"])
        assert m["capacity_offered_per_s"] >= m["capacity_aps"] > 0, m
        lo, mid, hi = x["ratio_rtt_p50_us"]
        assert lo == mid == hi > 0
    kernel = rows[0]["rounds"][0]
    assert rows[0]["ratio_rtt_p50_us"] == [1.0, 1.0, 1.0]
    for x in rows[1:]:
        m = x["rounds"][0]
        # The ratio is against the kernel's measurement of the same round.
        assert x["ratio_rtt_p50_us"][1] == pytest.approx(m["rtt_p50_us"] / kernel["rtt_p50_us"])
        assert x["ratio_capacity_aps"][1] == pytest.approx(
            m["capacity_aps"] / kernel["capacity_aps"]
        )
        if x["server"].startswith("in-kernel"):
            continue  # no Pipeline: no worker statistics
        w = m["extra"]
        assert w["tx"] > 0 and w["handler_errors"] == 0, w
    assert rows[2]["rounds"][0]["extra"]["idle_waits"] == 0  # busy never sleeps
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_latency_rejects_bad_arguments() -> None:
    from kbypass.cli import main

    if os.geteuid() != 0:
        assert main(["bench", "--latency"]) == 1
        return
    assert main(["bench", "--latency", "--modes", "fast"]) == 2
    assert main(["bench", "--latency", "--modes", ""]) == 2
    assert main(["bench", "--latency", "--rounds", "0"]) == 2
    assert main(["bench", "--latency", "--offered", "0"]) == 2
