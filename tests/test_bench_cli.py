import json
import os
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


def test_bench_rejects_bad_arguments() -> None:
    from kbypass.cli import main

    if os.geteuid() != 0:
        assert main(["bench"]) == 1
        return
    assert main(["bench", "--batches", "0"]) == 2
    assert main(["bench", "--batches", "x"]) == 2
    assert main(["bench", "--size", "10"]) == 2
