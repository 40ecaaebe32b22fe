//! The RC state machines against Linux rxe's captured packets.
//!
//! Responder: the requests of `tests/data/rxe/rc_responses.pcap`
//! (a SEND, a SEND finding no receive buffer, a 2500-byte READ, FETCH_ADD, COMPARE_SWAP, a
//! WRITE, a SEND ten PSNs ahead, the WRITE again, a WRITE with a bad R_Key) replayed into a
//! [`Responder`] set up as the VM's rxe QP was, must draw the answers rxe gave, field for
//! field: opcodes, PSNs, AETH syndromes and MSNs, atomic original values, read data.
//!
//! The same for a SEND with invalidate rxe refused (`rc_send_inv_responses.pcap`), the
//! receive completions included.
//!
//! Requester: the messages rxe's requests carry in the other captures (IPv4 and IPv6),
//! posted to a [`Requester`] (and to a [`UcSender`] for UC), must come out as the packets
//! rxe sent; the IPv6 ones' headers are those [`IpHeader::for_gids`] makes of their GIDs.

use super::rc::{MemoryTable, Pkt, RcParams, RemoteAccess, Requester, Responder, WorkRequest};
use super::rc::{Srq, Status};
use super::uc::{UcRequest, UcSender};
use super::wire::interop_tests::{read_pcap, rxe_pcaps};
use super::wire::{Frame, IpHeader, Op, Position, Transport};

fn pkt(f: &Frame<'_>) -> Pkt {
    Pkt {
        bth: f.packet.bth,
        ext: f.packet.ext,
        payload: f.packet.payload.to_vec().into(),
    }
}

#[test]
fn responder_answers_as_rxe_did() {
    let (dir, files) = rxe_pcaps();
    let Some(file) = files.iter().find(|f| f.ends_with("rc_responses.pcap")) else {
        panic!(
            "no rc_responses.pcap in {} (tests/rdma/rxe_fixtures.py makes it)",
            dir.display()
        );
    };
    let frames = read_pcap(&std::fs::read(file).unwrap());
    let parsed: Vec<Pkt> = frames
        .iter()
        .map(|f| pkt(&Frame::parse(f).unwrap()))
        .collect();
    let (requests, rxe): (Vec<&Pkt>, Vec<&Pkt>) =
        parsed.iter().partition(|p| p.bth.opcode.is_request());
    let find = |op: Op| requests.iter().find(|p| p.bth.opcode.op() == op).unwrap();
    // The VM's region (vm_responder.py): 4096 bytes of 0..=255 repeated at an address the
    // READ starts 0..7 bytes into, the 8-byte word of the atomics holding 41.
    let read = find(Op::ReadRequest).ext.reth.unwrap();
    let atomic_va = find(Op::FetchAdd).ext.atomic.unwrap().va;
    let first_response = rxe
        .iter()
        .find(|p| p.bth.opcode.op() == Op::ReadResponseFirst)
        .unwrap();
    let base = read.va - u64::from(first_response.payload[0]);
    let mut mem = MemoryTable::new();
    mem.register(read.rkey, base, 4096, RemoteAccess::ALL);
    let mut bytes: Vec<u8> = (0..4096).map(|i| i as u8).collect();
    let w = (atomic_va - base) as usize;
    bytes[w..w + 8].copy_from_slice(&41u64.to_le_bytes());
    assert!(mem.fill(read.rkey, 0, &bytes));

    let p = RcParams {
        dest_qp: rxe[0].bth.dest_qp,
        recv_psn: requests[0].bth.psn,
        mtu: 1024,
        min_rnr_timer: 12, // kbypass.rdma's PathParams default, which the VM's QP was given
        ..RcParams::default()
    };
    let mut r = Responder::new(p, mem);
    r.post_recv(1, 256).unwrap();
    let mut ours = Vec::new();
    for q in &requests {
        r.on_packet(q);
        ours.extend(std::iter::from_fn(|| r.poll_tx()));
    }
    assert_eq!(ours.len(), rxe.len(), "as many answers as rxe gave");
    for (i, (a, b)) in ours.iter().zip(&rxe).enumerate() {
        assert_eq!(a, *b, "answer {i}: ours, then rxe's");
    }
    let word = &r.memory().bytes(read.rkey).unwrap()[w..w + 8];
    assert_eq!(
        u64::from_le_bytes(word.try_into().unwrap()),
        7,
        "41 + 5, then swapped to 7"
    );
    assert!(
        r.is_error(),
        "the bad R_Key moved the responder to the error state"
    );
    assert_eq!(
        (r.rnr_naks, r.duplicates, r.out_of_sequence, r.refused),
        (1, 1, 1, 1)
    );
}

/// A field of a JSON object's text, as text.
fn json_field(obj: &str, key: &str) -> String {
    let at = obj.find(&format!("\"{key}\"")).expect("the key is there") + key.len() + 2;
    let rest = obj[at..].trim_start().trim_start_matches(':').trim_start();
    let end = rest.find([',', '}', '\n']).unwrap_or(rest.len());
    rest[..end].trim().trim_matches('"').to_string()
}

/// The `(wr_id, status)` pairs (`ibv_wc_status` numbers) of a `*.wc.json` completion log of
/// vm_responder.py or vm_mw_responder.py.
fn wc_log(text: &str) -> Vec<(u64, u32)> {
    text.split('{')
        .skip(1)
        .map(|obj| {
            let wr_id = json_field(obj, "wr_id").parse().unwrap();
            (wr_id, json_field(obj, "status").parse().unwrap())
        })
        .collect()
}

/// A SEND with invalidate naming the VM responder's own MR (not remotely invalidatable),
/// between two SENDs: rxe ACKs it without counting it in the MSN, fails its receive with
/// REM_INV_REQ_ERR (class J), goes to the error state (the next SEND draws nothing) and
/// flushes the last receive. The replayed [`Responder`] must answer and complete the same.
/// The requests and rxe's answers in capture `name`, and the capture's path.
fn responses(name: &str) -> (std::path::PathBuf, Vec<Pkt>, Vec<Pkt>) {
    let (dir, files) = rxe_pcaps();
    let Some(file) = files.iter().find(|f| f.ends_with(name)) else {
        panic!("no {name} in {}", dir.display());
    };
    let frames = read_pcap(&std::fs::read(file).unwrap());
    let (requests, rxe) = frames
        .iter()
        .map(|f| pkt(&Frame::parse(f).unwrap()))
        .partition(|p| p.bth.opcode.is_request());
    (file.clone(), requests, rxe)
}

/// Replays `requests` into `r`, requiring rxe's answers field for field, then its receive
/// completions those of the capture's `.wc.json` log.
fn replay_as_rxe(r: &mut Responder, file: &std::path::Path, requests: &[Pkt], rxe: &[Pkt]) {
    let mut ours = Vec::new();
    for q in requests {
        r.on_packet(q);
        ours.extend(std::iter::from_fn(|| r.poll_tx()));
    }
    assert_eq!(ours.len(), rxe.len(), "as many answers as rxe gave");
    for (i, (a, b)) in ours.iter().zip(rxe).enumerate() {
        assert_eq!(a, b, "answer {i}: ours, then rxe's");
    }
    let log = std::fs::read_to_string(file.with_extension("wc.json")).unwrap();
    let theirs = wc_log(&log);
    // ibv_wc_status numbers.
    let number = |s: Status| match s {
        Status::Success => 0,
        Status::Flushed => 5,
        Status::RemoteInvalidRequest => 9,
        Status::RemoteAccessError => 10,
        _ => 99,
    };
    let first = log.split('{').nth(1).unwrap_or("");
    let ours: Vec<(u64, u32)> = std::iter::from_fn(|| r.poll_completion())
        .map(|c| {
            if let Some(k) = c.invalidated_rkey {
                let theirs: u32 = json_field(first, "invalidated_rkey").parse().unwrap();
                assert_eq!(k, theirs, "the invalidated key, ours then rxe's: {log}");
            }
            (c.wr_id, number(c.status))
        })
        .collect();
    assert_eq!(ours, theirs, "our completions, then rxe's");
}

#[test]
fn responder_refuses_send_with_invalidate_as_rxe_did() {
    let (file, requests, rxe) = responses("rc_send_inv_responses.pcap");
    let inv = requests
        .iter()
        .find(|p| p.bth.opcode.op() == Op::SendOnlyInv)
        .unwrap();
    let rkey = inv.ext.ieth.unwrap();
    let mut mem = MemoryTable::new();
    mem.register(rkey, 0x1000, 4096, RemoteAccess::ALL); // an MR: not invalidatable
    let p = RcParams {
        dest_qp: rxe[0].bth.dest_qp,
        recv_psn: requests[0].bth.psn,
        mtu: 1024,
        ..RcParams::default()
    };
    let mut r = Responder::new(p, mem);
    for id in 1..=3 {
        r.post_recv(id, 256).unwrap();
    }
    replay_as_rxe(&mut r, &file, &requests, &rxe);
    assert!(r.is_error() && r.memory().is_valid(rkey));
}

/// rxe with a type 2 memory window bound over its region (pyverbs): a SEND with invalidate
/// naming the window's R_Key is ACKed (the MSN counts it) and its receive completes with the
/// key invalidated; a WRITE through that key then draws a remote access error NAK, and the
/// other receive is flushed. A [`Responder`] whose table lets the key be invalidated must
/// answer and complete the same.
#[test]
fn responder_invalidates_a_memory_window_as_rxe_did() {
    let (file, requests, rxe) = responses("rc_send_inv_mw_responses.pcap");
    let mw = requests[0].ext.ieth.unwrap();
    let write = requests[1].ext.reth.unwrap();
    assert_eq!(write.rkey, mw);
    let mut mem = MemoryTable::new();
    mem.register(mw, write.va - 512, 4096, RemoteAccess::ALL);
    assert!(mem.allow_remote_invalidate(mw));
    let p = RcParams {
        dest_qp: rxe[0].bth.dest_qp,
        recv_psn: requests[0].bth.psn,
        mtu: 1024,
        ..RcParams::default()
    };
    let mut r = Responder::new(p, mem);
    r.post_recv(1, 256).unwrap();
    r.post_recv(2, 256).unwrap();
    replay_as_rxe(&mut r, &file, &requests, &rxe);
    assert!(!r.memory().is_valid(mw) && r.is_error());
}

/// A responder like the pyverbs one in the VM (vm_mw_responder.py): `max_dest_rd_atomic`
/// resources, a 4096-byte region of bytes 0..=255 repeated under the window's R_Key at
/// `va`, two receives.
fn pyverbs_responder(rxe: &[Pkt], requests: &[Pkt], max_dest_rd_atomic: u8, va: u64) -> Responder {
    let rkey = requests[0].ext.reth.unwrap().rkey;
    let mut mem = MemoryTable::new();
    mem.register(rkey, va, 4096, RemoteAccess::ALL);
    let bytes: Vec<u8> = (0..4096).map(|i| i as u8).collect();
    assert!(mem.fill(rkey, 0, &bytes));
    let p = RcParams {
        dest_qp: rxe[0].bth.dest_qp,
        recv_psn: requests[0].bth.psn,
        mtu: 1024,
        max_dest_rd_atomic,
        ..RcParams::default()
    };
    let mut r = Responder::new(p, mem);
    r.post_recv(1, 256).unwrap();
    r.post_recv(2, 256).unwrap();
    r
}

/// rxe with `max_dest_rd_atomic` 2: three READs answered, then the second again (its
/// resource still held: answered again) and the first again (its resource recycled by the
/// third: dropped).
#[test]
fn responder_answers_duplicate_reads_from_held_resources_as_rxe_did() {
    let (file, requests, rxe) = responses("rc_rd_atomic_responses.pcap");
    let va = requests[0].ext.reth.unwrap().va;
    let mut r = pyverbs_responder(&rxe, &requests, 2, va);
    replay_as_rxe(&mut r, &file, &requests, &rxe);
    assert_eq!((rxe.len(), r.duplicates, r.dropped), (4, 2, 1));
}

/// rxe with `max_dest_rd_atomic` 0 NAKs a READ as an invalid request and goes to the error
/// state: the SEND after it draws nothing and both receives are flushed.
#[test]
fn responder_without_read_resources_naks_a_read_as_rxe_did() {
    let (file, requests, rxe) = responses("rc_no_rd_atomic_responses.pcap");
    let va = requests[0].ext.reth.unwrap().va;
    let mut r = pyverbs_responder(&rxe, &requests, 0, va);
    replay_as_rxe(&mut r, &file, &requests, &rxe);
    assert!(r.is_error());
}

/// An rxe QP on a shared receive queue holding two receives: two SENDs take them (ACKs),
/// the third finds the SRQ empty (RNR NAK). A [`Responder`] on an [`Srq`] must do the same.
#[test]
fn responder_on_an_srq_answers_as_rxe_did() {
    let (file, requests, rxe) = responses("rc_srq_responses.pcap");
    let p = RcParams {
        dest_qp: rxe[0].bth.dest_qp,
        recv_psn: requests[0].bth.psn,
        mtu: 1024,
        ..RcParams::default()
    };
    let srq = Srq::new(16);
    srq.post_recv(1, 256).unwrap();
    srq.post_recv(2, 256).unwrap();
    let mut r = Responder::with_srq(p, MemoryTable::new(), srq.clone());
    replay_as_rxe(&mut r, &file, &requests, &rxe);
    assert_eq!((r.rnr_naks, srq.len()), (1, 0));
}

/// The work requests that `packets` (one message after another, retransmissions removed)
/// carry.
fn messages(packets: &[Pkt]) -> Vec<WorkRequest> {
    let mut out = Vec::new();
    let mut data = Vec::new();
    let mut reth = None;
    for p in packets {
        let op = p.bth.opcode.op();
        if matches!(p.bth.opcode.position(), Position::First | Position::Only) {
            data.clear();
            reth = p.ext.reth;
        }
        data.extend_from_slice(&p.payload);
        if !matches!(p.bth.opcode.position(), Position::Last | Position::Only) {
            continue;
        }
        let imm = p.ext.imm;
        out.push(match op {
            Op::ReadRequest => {
                let r = p.ext.reth.unwrap();
                WorkRequest::Read {
                    va: r.va,
                    rkey: r.rkey,
                    len: r.dma_len,
                }
            }
            Op::FetchAdd => {
                let a = p.ext.atomic.unwrap();
                WorkRequest::FetchAdd {
                    va: a.va,
                    rkey: a.rkey,
                    add: a.swap_add,
                }
            }
            Op::CompareSwap => {
                let a = p.ext.atomic.unwrap();
                WorkRequest::CompareSwap {
                    va: a.va,
                    rkey: a.rkey,
                    compare: a.compare,
                    swap: a.swap_add,
                }
            }
            Op::WriteLast | Op::WriteLastImm | Op::WriteOnly | Op::WriteOnlyImm => {
                let r = reth.unwrap();
                WorkRequest::Write {
                    data: data.clone().into(),
                    va: r.va,
                    rkey: r.rkey,
                    imm,
                }
            }
            _ => match p.ext.ieth {
                Some(invalidate_rkey) => WorkRequest::SendInv {
                    data: data.clone().into(),
                    invalidate_rkey,
                },
                None => WorkRequest::Send {
                    data: data.clone().into(),
                    imm,
                },
            },
        });
    }
    out
}

#[test]
fn requester_sends_what_rxe_sent() {
    let (dir, files) = rxe_pcaps();
    let mut checked = 0;
    let mut checked_v6 = 0;
    for file in &files {
        let name = file.file_name().unwrap().to_str().unwrap();
        if name.ends_with("responses.pcap") {
            continue; // both directions: the responder tests replay them
        }
        let frames = read_pcap(&std::fs::read(file).unwrap());
        for f in &frames {
            let ip = Frame::parse(f).unwrap().ip;
            if let IpHeader::V6 { .. } = ip {
                // rxe over IPv6 GIDs: the header IpHeader::for_gids makes of the GIDs.
                let (src, dst) = ip.gids();
                assert_eq!(IpHeader::for_gids(src, dst), Ok(ip), "{name}");
                checked_v6 += 1;
            }
        }
        let mut rxe: Vec<Pkt> = frames
            .iter()
            .map(|f| pkt(&Frame::parse(f).unwrap()))
            .collect();
        // Retransmissions repeat a PSN: keep the first of each.
        let mut seen = std::collections::HashSet::new();
        rxe.retain(|p| seen.insert(p.bth.psn));
        let first = &rxe[0].bth;
        let ours: Vec<Pkt> = match first.opcode.transport() {
            Transport::Rc => {
                let mut q = Requester::new(RcParams {
                    dest_qp: first.dest_qp,
                    send_psn: first.psn,
                    mtu: 1024,
                    ..RcParams::default()
                });
                for (i, wr) in messages(&rxe).into_iter().enumerate() {
                    q.post(i as u64, wr);
                }
                std::iter::from_fn(|| q.poll_tx(0)).collect()
            }
            Transport::Uc => {
                let mut s = UcSender::new(first.dest_qp, first.psn, 1024).unwrap();
                for (i, wr) in messages(&rxe).into_iter().enumerate() {
                    let WorkRequest::Send { data, imm } = wr else {
                        panic!("{name}: UC send expected")
                    };
                    s.post(i as u64, UcRequest::Send { data, imm });
                }
                std::iter::from_fn(|| s.poll_tx()).collect()
            }
            Transport::Ud => continue, // ud.rs builds the one packet; ud_send is checked below
        };
        assert_eq!(ours.len(), rxe.len(), "{name}");
        for (i, (a, b)) in ours.iter().zip(&rxe).enumerate() {
            assert_eq!(a, b, "{name} packet {i}: ours, then rxe's");
        }
        checked += 1;
    }
    assert!(checked > 0, "no rxe request captures in {}", dir.display());
    assert!(checked_v6 > 0, "no IPv6 rxe captures in {}", dir.display());
    let ud = files.iter().filter(|f| {
        let name = f.file_name().unwrap().to_str().unwrap();
        name.starts_with("ud_send")
    });
    for file in ud {
        let frames = read_pcap(&std::fs::read(file).unwrap());
        let rxe = pkt(&Frame::parse(&frames[0]).unwrap());
        let deth = rxe.ext.deth.unwrap();
        let mut s = super::ud::UdSender::new(deth.src_qp, 1024).unwrap();
        let dest = super::ud::UdDest {
            qpn: rxe.bth.dest_qp,
            qkey: deth.qkey,
        };
        let mut ours = s.send(dest, &rxe.payload, rxe.ext.imm).unwrap();
        ours.bth.psn = rxe.bth.psn; // the PSN of a UD QP's first send is rxe's choice
        assert_eq!(ours, rxe);
    }
}

/// rxe's requester with `max_rd_atomic` 2 and four 8-byte READs posted
/// (`rc_read_credits.pcap`) sends two, retransmits them after its timeout and never sends the
/// third; a [`Requester`] with the same credits must send the same packets.
#[test]
fn requester_keeps_its_read_credits_as_rxe_did() {
    let (dir, files) = rxe_pcaps();
    let Some(file) = files.iter().find(|f| f.ends_with("rc_read_credits.pcap")) else {
        panic!("no rc_read_credits.pcap in {}", dir.display());
    };
    let rxe: Vec<Pkt> = read_pcap(&std::fs::read(file).unwrap())
        .iter()
        .map(|f| pkt(&Frame::parse(f).unwrap()))
        .collect();
    let first = rxe[0].ext.reth.unwrap();
    let p = RcParams {
        dest_qp: rxe[0].bth.dest_qp,
        send_psn: rxe[0].bth.psn,
        mtu: 1024,
        timeout: 14,
        max_rd_atomic: 2,
        ..RcParams::default()
    };
    let mut q = Requester::new(p);
    for i in 0..4u64 {
        let wr = WorkRequest::Read {
            va: first.va + 8 * i,
            rkey: first.rkey,
            len: 8,
        };
        q.post(i, wr);
    }
    let mut ours: Vec<Pkt> = std::iter::from_fn(|| q.poll_tx(0)).collect();
    q.tick(p.timeout_ns());
    ours.extend(std::iter::from_fn(|| q.poll_tx(p.timeout_ns())));
    assert_eq!(ours, rxe, "ours, then rxe's");
    assert_eq!((q.rd_atomic_outstanding(), q.outstanding()), (2, 4));
}
