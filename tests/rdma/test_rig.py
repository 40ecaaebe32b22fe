"""The soft-RoCE rig itself: the VM boots, rxe0 is a working verbs device, tools interoperate."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from kbypass.testing.rxe_vm import (
    GUEST_ADDRESS,
    CommandResult,
    RxeVm,
    RxeVmError,
    _Cpio,
    extract_vmlinux,
    guest_shares,
    hidden_in_guest,
    python_paths,
)

REPO = Path(__file__).resolve().parents[2]


def retry(cmd: str, tries: int = 50, pause: float = 0.2) -> str:
    """Shell loop running a client until its server listens (clients do not wait by themselves)."""
    return f"for i in $(seq {tries}); do {cmd} && exit 0; sleep {pause}; done; exit 1"


def ok(r: CommandResult) -> CommandResult:
    assert r.returncode == 0, f"{r.command!r} exited {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


# --- the VM ---------------------------------------------------------------------------------


def test_rxe0_link_is_active(rxe_vm: RxeVm) -> None:
    out = ok(rxe_vm.run("rdma link show")).stdout
    assert re.search(r"link rxe0/1 state ACTIVE physical_state LINK_UP netdev eth0", out), out


def test_ibv_devices_and_devinfo_list_rxe0(rxe_vm: RxeVm) -> None:
    assert re.search(r"^\s+rxe0\s+[0-9a-f]{16}$", ok(rxe_vm.run("ibv_devices")).stdout, re.M)
    info = ok(rxe_vm.run("ibv_devinfo -d rxe0")).stdout
    assert "transport:\t\t\tInfiniBand" in info
    assert re.search(r"state:\s+PORT_ACTIVE", info), info
    assert re.search(r"active_mtu:\s+1024", info), info
    assert re.search(r"link_layer:\s+Ethernet", info), info


def test_gid_index_1_is_the_ipv4_mapped_rocev2_gid(rxe_vm: RxeVm) -> None:
    port = "/sys/class/infiniband/rxe0/ports/1"
    r = ok(rxe_vm.run(f"cat {port}/gids/1 {port}/gid_attrs/types/1"))
    gid, kind = r.stdout.splitlines()
    a, b, c, d = (int(x) for x in GUEST_ADDRESS.split("/")[0].split("."))
    assert gid == f"0000:0000:0000:0000:0000:ffff:{a:02x}{b:02x}:{c:02x}{d:02x}"
    assert kind == "RoCE v2"


def test_rc_pingpong_loopback(rxe_vm: RxeVm) -> None:
    pp = "timeout 60 ibv_rc_pingpong -d rxe0 -g 1 -n 200"
    server = rxe_vm.start(pp, timeout=90)
    client = ok(rxe_vm.run(retry(f"{pp} 127.0.0.1"), timeout=90))
    srv = ok(server.wait())
    for out in (client.stdout, srv.stdout):
        assert "200 iters in" in out, out
        assert "GID ::ffff:198.18.0.15" in out, out


def test_ib_write_bw_loopback(rxe_vm: RxeVm) -> None:
    # A fixed number of iterations, not a duration: under TCG a 1-s window can end before the
    # first iteration completes (seen once: "65536 0 0.00 0.00").
    bw = "timeout 60 ib_write_bw -d rxe0 -F -x 1 -n 200"
    server = rxe_vm.start(bw, timeout=90)
    client = ok(rxe_vm.run(retry(f"{bw} 127.0.0.1", pause=0.5), timeout=90))
    ok(server.wait())
    row = re.search(r"^\s*65536\s+(\d+)\s+[\d.]+\s+([\d.]+)", client.stdout, re.M)
    assert row is not None, client.stdout
    assert int(row.group(1)) == 200 and float(row.group(2)) > 0, row.group(0)


# --- the rig's own contract -------------------------------------------------------------------


def test_exit_status_output_env_and_cwd(rxe_vm: RxeVm) -> None:
    r = rxe_vm.run(
        'echo "$GREETING from $(pwd)"; echo oops >&2; exit 7', env={"GREETING": "hi"}, cwd="/usr"
    )
    assert (r.returncode, r.stdout, r.stderr) == (7, "hi from /usr\n", "oops\n")
    assert rxe_vm.run(["printf", "%s|", "a b", "c"]).stdout == "a b|c|"
    with pytest.raises(subprocess.CalledProcessError):
        rxe_vm.run("false", check=True)
    with pytest.raises(ValueError, match="not valid"):
        rxe_vm.start("true", env={"BAD-NAME": "x"})


def test_command_timeout_kills_it(rxe_vm: RxeVm) -> None:
    r = rxe_vm.run("sleep 30", timeout=1)
    assert r.returncode == 137 and r.seconds < 20, r


def test_checkout_is_shared_writable_and_tmp_is_fresh(rxe_vm: RxeVm) -> None:
    name = f".rxe-vm-probe-{uuid.uuid4().hex}"
    try:
        ok(rxe_vm.run(f"echo from-vm > {name}; test ! -e /tmp/{name}", cwd=REPO))
        assert (REPO / name).read_text() == "from-vm\n"
    finally:
        (REPO / name).unlink(missing_ok=True)
    # The rest of the host root is read-only underneath; writes land in a discarded overlay.
    ok(rxe_vm.run("touch /etc/kbypass-rxe-probe && test -e /etc/kbypass-rxe-probe"))
    assert not Path("/etc/kbypass-rxe-probe").exists()


def test_concurrent_jobs(rxe_vm: RxeVm) -> None:
    jobs = [rxe_vm.start(f"sleep 1; echo {i}") for i in range(4)]
    results = [j.wait() for j in jobs]
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(4)]


def test_a_virtual_environment_and_checkout_in_tmp_run_in_the_vm(tmp_path: Path) -> None:
    """CI layouts put the venv in /tmp, which the guest replaces with a fresh tmpfs.

    A venv made in /tmp (seeing kbypass and numpy through a .pth file, wherever they are)
    runs ``python -m kbypass.testing.rxe_vm run`` from a working folder in /tmp: the VM gets
    both shared read-only and runs that same interpreter on a script in that folder.
    """
    from kbypass.testing.rxe_vm import missing_host_tools

    if missing_host_tools():
        pytest.skip("the soft-RoCE VM needs: " + ", ".join(missing_host_tools()))
    import kbypass

    with tempfile.TemporaryDirectory(prefix="kbx-venv-", dir="/tmp") as venv, \
            tempfile.TemporaryDirectory(prefix="kbx-ckout-", dir="/tmp") as ckout:  # fmt: skip
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", "--without-pip", venv], check=True)
        py = Path(venv) / "bin" / "python"
        site = subprocess.run(
            [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        # kbypass and numpy as this interpreter sees them (site-packages or a checkout).
        seen = [str(Path(kbypass.__file__).resolve().parents[1])]
        seen += [p for p in sys.path if p and os.path.isdir(p)]
        Path(site, "kbypass-under-test.pth").write_text("\n".join(seen) + "\n")
        Path(ckout, "probe.py").write_text(
            "import sys, kbypass.rdma\n"
            "print(sys.prefix, [d.name for d in kbypass.rdma.devices()])\n"
        )
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        r = subprocess.run(
            [py, "-m", "kbypass.testing.rxe_vm", "run", "--", str(py), "probe.py"],
            cwd=ckout, capture_output=True, text=True, timeout=400, env=env,
        )  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.split() == [venv, "['rxe0']"], r.stdout + r.stderr
        assert f"sharing {venv} read-only" in r.stderr and f"sharing {ckout}" in r.stderr, r.stderr


# --- host-side pieces, no VM ------------------------------------------------------------------


def test_guest_shares_cover_what_the_guest_would_not_see(tmp_path: Path) -> None:
    assert hidden_in_guest("/tmp/x") and hidden_in_guest("/run/y") and hidden_in_guest("/dev/shm")
    assert hidden_in_guest("/var/tmp") and not hidden_in_guest("/usr/lib")
    assert not hidden_in_guest("/tmpfoo") and not hidden_in_guest("/runner")
    venv = tmp_path / "venv"
    (venv / "lib" / "site").mkdir(parents=True)
    (venv / "bin").mkdir()
    (venv / "bin" / "python").write_text("")
    shares = guest_shares(["/usr/bin", venv / "lib" / "site", venv / "bin" / "python", venv])
    assert shares == [Path(os.path.realpath(venv))]
    with pytest.raises(RxeVmError, match=r"cannot see /proc/.*move it"):
        guest_shares(["/proc/self"])
    # The running interpreter's own folders are all in the list (prefix, executable, kbypass).
    paths = python_paths()
    assert Path(sys.prefix).resolve() in paths and Path(sys.base_prefix).resolve() in paths
    import kbypass

    assert Path(kbypass.__file__).resolve().parents[1] in paths


def test_rxe_vm_shares_hidden_paths_read_only_outer_first(tmp_path: Path) -> None:
    t = tmp_path.resolve()
    assert hidden_in_guest(t), "pytest's tmp_path is below /tmp"
    (t / "a" / "b").mkdir(parents=True)
    vm = RxeVm(share_python=False, shares=[t / "a"], visible=["/usr/share", t / "a" / "b", t])
    assert vm.auto_shares == [t]
    assert vm._mounts() == [(t, True), (t / "a", False)]
    assert RxeVm(share_python=False).auto_shares == []
    assert RxeVm().auto_shares == guest_shares(python_paths())


def test_cpio_is_readable_by_gnu_cpio(tmp_path: Path) -> None:
    cpio = shutil.which("cpio")
    if cpio is None:
        pytest.skip("cpio is missing: apt-get install cpio")
    c = _Cpio()
    c.directory("d")
    c.file("d/f", b"hello", 0o600)
    c.symlink("l", "d/f")
    c.chardev("console", 5, 1)
    listing = subprocess.run(
        [cpio, "-itv", "--quiet"], input=c.finish(), capture_output=True, check=True
    ).stdout.decode()
    lines = listing.splitlines()
    assert len(lines) == 4, listing
    assert lines[0].startswith("drwxr-xr-x") and lines[0].endswith(" d")
    assert lines[1].startswith("-rw-------") and " 5 " in lines[1] and lines[1].endswith(" d/f")
    assert lines[2].startswith("lrwxrwxrwx") and lines[2].endswith("l -> d/f")
    assert lines[3].startswith("crw-------") and re.search(r" 5,\s+1 ", lines[3])


def test_extract_vmlinux_from_a_synthetic_bzimage() -> None:
    import lzma

    elf = b"\x7fELF" + bytes(range(256)) * 64
    payload = lzma.compress(elf, format=lzma.FORMAT_XZ)
    setup_sects = 3
    image = bytearray((setup_sects + 1) * 512)
    image[0x1F1] = setup_sects
    image[0x202:0x206] = b"HdrS"
    image[0x206:0x208] = (0x20F).to_bytes(2, "little")
    image[0x248:0x24C] = (0x40).to_bytes(4, "little")
    image += b"\0" * 0x40 + payload + len(elf).to_bytes(4, "little")
    assert extract_vmlinux(bytes(image)) == elf
    with pytest.raises(RuntimeError, match="no compressed ELF kernel"):
        extract_vmlinux(b"MZ" + b"\0" * 4096)


def test_python_package_sees_rxe0_in_the_vm(rxe_vm: RxeVm) -> None:
    code = (
        "from kbypass import rdma\n"
        "d = rdma.devices()\n"
        "try:\n"
        "    d[0].name = 'x'\n"
        "except AttributeError:\n"
        "    print([(x.name, x.uverbs, x.ibdev_path) for x in d])\n"
    )
    r = ok(rxe_vm.run([sys.executable, "-c", code], cwd=REPO, timeout=120))
    assert r.stdout.strip() == "[('rxe0', 'uverbs0', '/sys/class/infiniband/rxe0')]", r.stdout
