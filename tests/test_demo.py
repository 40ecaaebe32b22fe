import os
import re
import subprocess
import sys

import pytest


@pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: the demo creates namespaces and AF_XDP sockets"
)
def test_demo_runs_both_paths_and_cleans_up() -> None:
    p = subprocess.Popen(
        [sys.executable, "-m", "kbypass.cli", "demo", "--seconds", "0.5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = p.communicate(timeout=120)
    r = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    assert r.returncode == 0, r.stderr
    rows = {
        m.group(1): int(m.group(2).replace(",", ""))
        for m in re.finditer(r"^(kbypass AF_XDP|kernel UDP socket)\s+([\d,]+)", r.stdout, re.M)
    }
    assert set(rows) == {"kbypass AF_XDP", "kernel UDP socket"}, r.stdout
    assert rows["kbypass AF_XDP"] > 0 and rows["kernel UDP socket"] > 0, r.stdout
    assert "x the kernel socket's rate" in r.stdout
    left = os.listdir("/var/run/netns") if os.path.isdir("/var/run/netns") else []
    # VethPair names its namespaces kbx-<pid>-<n>-a/-b: none of the demo's may remain
    assert not [n for n in left if n.startswith(f"kbx-{p.pid}-")], "the demo left namespaces"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges to nobody")
def test_demo_refuses_without_root_with_the_fix() -> None:
    from _privileges import as_nobody

    def attempt() -> tuple[int, str]:
        import contextlib
        import io

        from kbypass.cli import main

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(["demo"])
        return code, err.getvalue()

    code, err = as_nobody(attempt)
    assert code == 1
    assert "run it as root" in err
