//! The RC responder against Linux rxe's: the requests of `tests/data/rxe/rc_responses.pcap`
//! (a SEND, a SEND finding no receive buffer, a 2500-byte READ, FETCH_ADD, COMPARE_SWAP, a
//! WRITE, a SEND ten PSNs ahead, the WRITE again, a WRITE with a bad R_Key) replayed into a
//! [`Responder`] set up as the VM's rxe QP was, must draw the answers rxe gave, field for
//! field: opcodes, PSNs, AETH syndromes and MSNs, atomic original values, read data.

use super::rc::{MemoryTable, Pkt, RcParams, RemoteAccess, Responder};
use super::wire::interop_tests::{read_pcap, rxe_pcaps};
use super::wire::{Frame, Op};

fn pkt(f: &Frame<'_>) -> Pkt {
    Pkt {
        bth: f.packet.bth,
        ext: f.packet.ext,
        payload: f.packet.payload.to_vec(),
    }
}

#[test]
fn responder_answers_as_rxe_did() {
    let (dir, files) = rxe_pcaps();
    let Some(file) = files.iter().find(|f| f.ends_with("rc_responses.pcap")) else {
        eprintln!("SKIP: no rc_responses.pcap in {}", dir.display());
        return;
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
    let bytes = mem.bytes_mut(read.rkey).unwrap();
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = i as u8;
    }
    let w = (atomic_va - base) as usize;
    bytes[w..w + 8].copy_from_slice(&41u64.to_le_bytes());

    let p = RcParams {
        dest_qp: rxe[0].bth.dest_qp,
        recv_psn: requests[0].bth.psn,
        mtu: 1024,
        min_rnr_timer: 12, // kbypass.rdma's PathParams default, which the VM's QP was given
        ..RcParams::default()
    };
    let mut r = Responder::new(p, mem);
    r.post_recv(1, 256);
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
