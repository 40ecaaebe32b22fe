//! The wire format against independent readers and writers: Wireshark's InfiniBand
//! dissector (tshark) decoding what the builder writes, and packets Linux rxe sent, captured
//! to pcap files.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::tests::{build, payload_of, spec, v4, v6};
use super::*;

/// A classic pcap file (Ethernet link type) of `frames`.
fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    let mut b = Vec::new();
    b.extend_from_slice(&0xa1b2_c3d4_u32.to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&4u16.to_le_bytes());
    for v in [0u32, 0, 65535, 1] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    for (i, f) in frames.iter().enumerate() {
        for v in [i as u32, 0, f.len() as u32, f.len() as u32] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(f);
    }
    std::fs::write(path, b).unwrap();
}

/// Reads a classic pcap file (microsecond or nanosecond, either byte order) into frames.
pub(in crate::rdma::roce) fn read_pcap(bytes: &[u8]) -> Vec<Vec<u8>> {
    let magic = u32::from_le_bytes(bytes[0..4].try_into().unwrap());
    let le = matches!(magic, 0xa1b2_c3d4 | 0xa1b2_3c4d);
    assert!(
        le || matches!(magic.swap_bytes(), 0xa1b2_c3d4 | 0xa1b2_3c4d),
        "not a pcap file"
    );
    let u32at = |at: usize| {
        let a: [u8; 4] = bytes[at..at + 4].try_into().unwrap();
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    assert_eq!(u32at(20), 1, "link type is Ethernet");
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let len = u32at(at + 8) as usize;
        out.push(bytes[at + 16..at + 16 + len].to_vec());
        at += 16 + len;
    }
    out
}

fn tshark() -> Option<PathBuf> {
    let out = Command::new("tshark").arg("--version").output().ok()?;
    out.status.success().then(|| PathBuf::from("tshark"))
}

fn num(s: &str) -> u64 {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).unwrap(),
        None => s.parse().unwrap_or_else(|_| panic!("tshark field {s:?}")),
    }
}

/// Wireshark's InfiniBand dissector, an independent reader, decodes every opcode the builder
/// writes as the builder meant it. (Wireshark shows the ICRC but does not verify it, so
/// this checks where the ICRC sits, not its value.)
#[test]
fn wireshark_decodes_what_the_builder_writes() {
    let Some(tshark) = tshark() else {
        // CI installs tshark (.ci/install-system-deps) and must not skip this.
        assert!(
            std::env::var_os("CI").is_none(),
            "tshark is not installed: run .ci/install-system-deps"
        );
        eprintln!("skipped: tshark is not installed (.ci/install-system-deps installs it)");
        return;
    };
    let mut frames = Vec::new();
    let mut specs = Vec::new();
    for (i, opcode) in Opcode::all().enumerate() {
        for ip in [v4(), v6()] {
            let i = i as u64;
            let s = spec(
                opcode,
                ip,
                None,
                [i << 36 | i << 12 | 0x77, i * 0x1_0001, i * 3, !i],
            );
            let len = if opcode.has_payload() {
                1 + i as usize * 5
            } else {
                0
            };
            let payload = payload_of(len, i as u8);
            frames.push(build(&s, &payload));
            specs.push((s, payload));
        }
    }
    let dir = std::env::temp_dir().join(format!("kbypass-roce-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("built.pcap");
    write_pcap(&path, &frames);
    let fields = [
        "infiniband.bth.opcode",
        "infiniband.bth.se",
        "infiniband.bth.m",
        "infiniband.bth.padcnt",
        "infiniband.bth.p_key",
        "infiniband.bth.destqp",
        "infiniband.bth.a",
        "infiniband.bth.psn",
        "infiniband.reth.va",
        "infiniband.reth.r_key",
        "infiniband.reth.dmalen",
        "infiniband.aeth.syndrome",
        "infiniband.aeth.msn",
        "infiniband.deth.q_key",
        "infiniband.deth.srcqp",
        "infiniband.atomiceth.swapdt",
        "infiniband.atomiceth.cmpdt",
        "infiniband.atomicacketh.origremdt",
        "infiniband.invariant.crc",
    ];
    let mut cmd = Command::new(tshark);
    cmd.args(["-n", "-r"]).arg(&path).args([
        "-T",
        "fields",
        "-E",
        "separator=;",
        "-E",
        "occurrence=f",
    ]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        out.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), specs.len());
    for (line, (s, payload)) in lines.iter().zip(&specs) {
        let v: Vec<&str> = line.split(';').collect();
        let get = |i: usize| -> Option<u64> { (!v[i].is_empty()).then(|| num(v[i])) };
        let flag = |i: usize| get(i).map(|x| x != 0);
        let b = &s.bth;
        let ctx = format!("{:?}: {line}", b.opcode);
        assert_eq!(get(0), Some(u64::from(b.opcode.as_u8())), "{ctx}");
        assert_eq!(flag(1), Some(b.solicited), "{ctx}");
        assert_eq!(flag(2), Some(b.migreq), "{ctx}");
        assert_eq!(get(3), Some(((4 - payload.len() % 4) % 4) as u64), "{ctx}");
        assert_eq!(get(4), Some(u64::from(b.pkey)), "{ctx}");
        assert_eq!(get(5), Some(u64::from(b.dest_qp)), "{ctx}");
        assert_eq!(flag(6), Some(b.ack_req), "{ctx}");
        assert_eq!(get(7), Some(u64::from(b.psn)), "{ctx}");
        let e = &s.ext;
        // Wireshark files the AtomicETH's address and key under the RETH's fields.
        let va = e.reth.map(|r| r.va).or(e.atomic.map(|a| a.va));
        let rkey = e.reth.map(|r| r.rkey).or(e.atomic.map(|a| a.rkey));
        assert_eq!(get(8), va, "{ctx}");
        assert_eq!(get(9), rkey.map(u64::from), "{ctx}");
        assert_eq!(get(10), e.reth.map(|r| u64::from(r.dma_len)), "{ctx}");
        assert_eq!(get(11), e.aeth.map(|a| u64::from(a.syndrome)), "{ctx}");
        assert_eq!(get(12), e.aeth.map(|a| u64::from(a.msn)), "{ctx}");
        assert_eq!(get(13), e.deth.map(|d| u64::from(d.qkey)), "{ctx}");
        assert_eq!(get(14), e.deth.map(|d| u64::from(d.src_qp)), "{ctx}");
        assert_eq!(get(15), e.atomic.map(|a| a.swap_add), "{ctx}");
        assert_eq!(get(16), e.atomic.map(|a| a.compare), "{ctx}");
        assert_eq!(get(17), e.atomic_ack, "{ctx}");
        let f = build(s, payload);
        let icrc: [u8; 4] = f[f.len() - 4..].try_into().unwrap();
        // Wireshark shows the ICRC as its own field only after a packet without payload
        // (otherwise the payload field ends at the frame's end).
        let icrc = u64::from(u32::from_be_bytes(icrc));
        if b.opcode.has_payload() {
            assert!(get(18).is_none() || get(18) == Some(icrc), "{ctx}");
        } else {
            assert_eq!(get(18), Some(icrc), "{ctx}");
        }
    }
}

/// The pcap files of packets Linux rxe sent (captured by `tests/rdma/rxe_fixtures.py` into
/// `tests/data/rxe/`; `KBYPASS_ROCE_PCAPS` names another directory).
pub(in crate::rdma::roce) fn rxe_pcaps() -> (PathBuf, Vec<PathBuf>) {
    let dir = std::env::var_os("KBYPASS_ROCE_PCAPS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/rxe"),
        PathBuf::from,
    );
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.ends_with(".pcap") && !name.ends_with(".tmp.pcap")
        })
        .collect();
    files.sort();
    (dir, files)
}

/// Every RoCE packet rxe put on the wire parses, with its ICRC verified, and builds back
/// byte for byte from what was parsed (IPv4 header, UDP, headers, pad and ICRC).
#[test]
fn parses_packets_sent_by_linux_rxe() {
    let (dir, files) = rxe_pcaps();
    assert!(
        !files.is_empty(),
        "no rxe captures in {} (tests/rdma/rxe_fixtures.py makes them)",
        dir.display()
    );
    for file in files {
        let frames = read_pcap(&std::fs::read(&file).unwrap());
        let mut roce = 0;
        for (i, f) in frames.iter().enumerate() {
            let ctx = format!("{} frame {}", file.display(), i + 1);
            let p = match Frame::parse(f) {
                Ok(p) => p,
                Err(WireError::NotRoce(_)) => continue,
                Err(e) => panic!("{ctx}: {e}"),
            };
            roce += 1;
            let s = FrameSpec {
                eth_dst: p.eth_dst,
                eth_src: p.eth_src,
                vlan_tci: p.vlan_tci,
                ip: p.ip,
                udp_src: p.udp_src,
                bth: p.packet.bth,
                ext: p.packet.ext,
            };
            let rebuilt = build(&s, p.packet.payload);
            let n = rebuilt.len();
            // rxe sends IPv4 with DF and a zero UDP checksum, as the builder does. On IPv6 the
            // UDP checksum may differ (the builder computes it; the ICRC does not cover it).
            let l3 = if p.vlan_tci.is_some() { 18 } else { 14 };
            let csum = match p.ip {
                IpHeader::V4 { .. } => n..n,
                IpHeader::V6 { .. } => l3 + 46..l3 + 48,
            };
            assert_eq!(
                &rebuilt[..csum.start],
                &f[..csum.start],
                "{ctx}: rebuilt frame differs"
            );
            assert_eq!(
                &rebuilt[csum.end..],
                &f[csum.end..n],
                "{ctx}: rebuilt frame differs"
            );
        }
        assert!(roce > 0, "{}: no RoCE packet in it", file.display());
        eprintln!("{}: {roce} RoCE packets checked", file.display());
    }
}
