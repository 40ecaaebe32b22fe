import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from _privileges import as_nobody, hugepages
from kbypass import cli, info

REQUIRED = {
    "kernel",
    "privileges",
    "af_xdp",
    "bpf",
    "hugepages",
    "thp",
    "cpus",
    "interfaces",
    "rdma",
}
root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges / reserve")


def _is_str_list(v: object) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _is_int_list(v: object) -> bool:
    return isinstance(v, list) and all(isinstance(x, int) for x in v)


def test_report_has_every_section_with_the_right_types() -> None:
    r = info.collect()
    assert REQUIRED <= set(r)
    for name, data in r.items():
        assert "section_error" not in data, (name, data)
        assert _is_str_list(data["fixes"]), name
    assert r["kernel"]["release"] == os.uname().release
    p = r["privileges"]
    assert p["root"] is (os.geteuid() == 0)
    assert set(p["capabilities"]) >= {"CAP_NET_ADMIN", "CAP_BPF", "CAP_IPC_LOCK"}
    assert all(isinstance(v, bool) for v in p["capabilities"].values())
    assert p["memlock_limit"] is None or isinstance(p["memlock_limit"], int)
    assert isinstance(r["af_xdp"]["socket"], bool)
    b = r["bpf"]
    assert b["check"] == "load" and isinstance(b["may_load"], bool)
    for k in ("prog_load", "xdp_link", "frags", "live_frames"):
        assert isinstance(b[k]["ok"], bool) and isinstance(b[k]["detail"], str)
    assert _is_str_list(b["bpffs_mounts"])
    for size in r["hugepages"]["sizes"].values():
        for k in ("total", "free", "reserved", "page_size"):
            assert isinstance(size[k], int)
        assert _is_str_list(size["mounts"])
    assert r["thp"]["mode"] in ("always", "madvise", "never", None)
    c = r["cpus"]
    for k in ("online", "allowed", "isolated"):
        assert _is_int_list(c[k])
    assert set(c["node_of_cpu"]) == {str(x) for x in c["online"]}
    names = {i["name"] for i in r["interfaces"]["interfaces"]}
    assert names == {p.name for p in Path("/sys/class/net").iterdir()}
    for i in r["interfaces"]["interfaces"]:
        assert isinstance(i["rx_queues"], int) and isinstance(i["tx_queues"], int)
        assert isinstance(i["mtu"], int)
        assert i["numa_node"] is None or isinstance(i["numa_node"], int)
        assert i["xdp_modes"]["generic"] is True
        assert i["xdp_modes"]["native"] in (True, False, "unknown")
    lo = next(i for i in r["interfaces"]["interfaces"] if i["name"] == "lo")
    assert lo["virtual"] and lo["xdp_modes"]["native"] is False
    rd = r["rdma"]
    assert isinstance(rd["loadable"], bool) and _is_str_list(rd["devices"])
    if not rd["loadable"]:
        assert "apt-get install rdma-core ibverbs-providers" in rd["fixes"]
    json.dumps(r)


def test_every_no_comes_with_a_fix() -> None:
    r = info.collect()
    hp = r["hugepages"]["sizes"]
    if not any(s["free"] for s in hp.values()):
        assert any("echo 64 > /proc/sys/vm/nr_hugepages" in f for f in r["hugepages"]["fixes"])
    if not r["af_xdp"]["socket"]:
        assert r["af_xdp"]["fixes"]
    if not r["bpf"]["bpffs_mounts"]:
        assert any("mount -t bpf" in f for f in r["bpf"]["fixes"])
    if r["thp"]["mode"] == "never":
        assert r["thp"]["fixes"]


@root
def test_reserved_hugepages_show_up() -> None:
    with hugepages(2048, 2) as ok:
        assert ok
        s = info.collect(["hugepages"])["hugepages"]["sizes"]["2048kB"]
        assert s["total"] >= 2 and s["free"] >= 2


@root
def test_without_root_the_report_says_what_to_do() -> None:
    r = as_nobody(info.collect)
    p = r["privileges"]
    assert p["root"] is False
    assert not any(p["capabilities"].values())
    assert any("run as root" in f for f in p["fixes"])
    assert any("ulimit -l" in f for f in p["fixes"])
    assert r["af_xdp"]["socket"] is False
    assert r["af_xdp"]["fixes"] == ["AF_XDP sockets need CAP_NET_RAW: run as root"]
    assert r["af_xdp"]["error"]
    assert r["bpf"]["may_load"] is False and r["bpf"]["prog_load"]["ok"] is False
    assert any("run as root" in f for f in r["bpf"]["fixes"])


@root
def test_as_root_the_probes_load_attach_and_run_programs() -> None:
    r = info.collect(["af_xdp", "bpf"])
    assert r["af_xdp"]["socket"] is True and r["af_xdp"]["fixes"] == []
    b = r["bpf"]
    # Kernel 5.18+ (CI and this machine run 6.x): every probe works.
    assert all(b[k]["ok"] for k in ("prog_load", "xdp_link", "frags", "live_frames")), b
    assert b["may_load"] is True and b["redirect_form"]
    assert not [f for f in b["fixes"] if "kernel" in f or "root" in f]


def test_rdma_section_reports_devices_or_the_install_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kbypass import rdma

    r = info.collect(["rdma"])["rdma"]
    assert r["devices"] == [d["name"] for d in r["device_details"]]
    if r["loadable"] and not r["devices"]:
        assert any("rdma_rxe" in f or "ibverbs-providers" in f for f in r["fixes"])

    def missing() -> list[Any]:
        raise FileNotFoundError("no libibverbs: apt-get install rdma-core ibverbs-providers")

    monkeypatch.setattr(rdma, "devices", missing)
    r = info.collect(["rdma"])["rdma"]
    assert r["loadable"] is False and "no libibverbs" in r["error"]
    assert r["fixes"] == ["apt-get install rdma-core ibverbs-providers"]
    assert "loadable=no" in info.render_text({"rdma": r})


def test_sections_are_a_registry() -> None:
    @info.section("test_extra", "extra", lambda d: f"value={d['value']}")
    def extra() -> dict[str, Any]:
        return {"value": 3, "fixes": ["do x"]}

    @info.section("test_broken", "broken", lambda d: "")
    def broken() -> dict[str, Any]:
        raise RuntimeError("probe exploded")

    try:
        r = info.collect(["kernel", "test_extra", "test_broken"])
        assert list(r) == ["kernel", "test_extra", "test_broken"]
        assert r["test_extra"]["value"] == 3
        assert "probe exploded" in r["test_broken"]["section_error"]
        text = info.render_text(r)
        assert "value=3" in text and "fix: do x" in text and "probe failed" in text
    finally:
        del info.SECTIONS["test_extra"], info.SECTIONS["test_broken"]
    with pytest.raises(ValueError, match="unknown section"):
        info.collect(["nope"])


def test_text_report_names_every_section() -> None:
    text = info.render_text(info.collect())
    for s in info.SECTIONS.values():
        assert s.title in text
    assert "what this machine can do" in text.splitlines()[0]


def test_cli_main(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["info", "--json", "--section", "kernel", "--section", "thp"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"kernel", "thp"}
    assert cli.main(["info", "--section", "nope"]) == 2
    assert "unknown section" in capsys.readouterr().err
    assert cli.main([]) == 2
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0


def test_console_script_json_parses() -> None:
    script = Path(sys.executable).parent / "kbypass"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "kbypass.cli"]
    r = subprocess.run([*cmd, "info", "--json"], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert REQUIRED <= set(json.loads(r.stdout))
    r = subprocess.run([*cmd, "info"], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert "hugepages" in r.stdout


def test_import_kbypass_stays_cheap() -> None:
    code = (
        "import sys, kbypass; "
        # (ctypes is not in the list: numpy, which kbypass needs for its arrays, loads it)
        "print(sorted(m for m in ('kbypass.info', 'kbypass.cli', 'argparse', 'json') "
        "if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
