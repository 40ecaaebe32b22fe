//! The runs of perftest's bandwidth tests on a kbypass QP, as server and as client.

use std::net::{TcpListener, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::{BwReport, Cancel, Keys, Session};
use crate::error::{Error, Result};
use crate::rdma::perf::{op_bandwidth, Bandwidth, Pacing};
use crate::rdma::{
    mtu_bytes, CompletionQueue, Endpoint, MemoryRegion, PathParams, QpType, QueuePair, SendOp,
    WorkCompletion,
};

/// Which perftest tool's test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Test {
    /// `ib_write_bw`: the client RDMA-writes into the server's buffer.
    Write,
    /// `ib_read_bw`: the client RDMA-reads from the server's buffer.
    Read,
    /// `ib_send_bw`: the client sends, the server receives.
    Send,
    /// `ib_atomic_bw` (its default, `-A FETCH_AND_ADD`): the client adds 1 to 8-byte words
    /// of the server's buffer.
    FetchAdd,
    /// `ib_atomic_bw -A CMP_AND_SWAP`: the client compares 8-byte words of the server's
    /// buffer with 0 and swaps in 0.
    CompareSwap,
}

/// perftest's atomic message size.
const ATOMIC_SIZE: usize = 8;

impl Test {
    /// The perftest tool that runs this test (and its options beyond the defaults).
    pub fn tool(self) -> &'static str {
        match self {
            Test::Write => "ib_write_bw",
            Test::Read => "ib_read_bw",
            Test::Send => "ib_send_bw",
            Test::FetchAdd => "ib_atomic_bw",
            Test::CompareSwap => "ib_atomic_bw -A CMP_AND_SWAP",
        }
    }

    /// Reads and atomics announce (and use) outstanding-read credits; write and send one.
    fn reads(self) -> bool {
        matches!(self, Test::Read | Test::FetchAdd | Test::CompareSwap)
    }
}

/// Both roles' steps up to the run: key message, connect, two more key messages. Returns
/// our keys (exposing `mr`) and the peer's. As server our QP serves as many reads/atomics as
/// we announce; as client it initiates no more than the server announced.
fn connect(
    s: &mut Session,
    test: Test,
    qp: &QueuePair,
    mr: &MemoryRegion,
    p: &PathParams,
    local: &Endpoint,
) -> Result<(Keys, Keys)> {
    let out_reads = if test.reads() {
        p.max_rd_atomic.max(1)
    } else {
        1
    };
    let mine = Keys {
        lid: local.lid,
        out_reads: u32::from(out_reads),
        qpn: qp.qp_num(),
        psn: local.psn,
        rkey: mr.rkey(),
        vaddr: mr.addr(),
        gid: local.gid,
        srqn: 0,
    };
    let remote = s.keys(&mine)?;
    let mut path = *p;
    path.mtu = agreed_mtu(path.mtu, s);
    path.max_rd_atomic = if s.client {
        let theirs = u8::try_from(remote.out_reads.max(1)).unwrap_or(u8::MAX);
        out_reads.min(theirs)
    } else {
        out_reads
    };
    qp.connect_cancellable(&path, &remote.endpoint(), local.psn, s.cancel)?;
    s.keys(&mine)?;
    s.keys(&mine)?;
    Ok((mine, remote))
}

/// The bytes in front of a UD receive's payload: the GRH (perftest's `UD_ADDITION`).
const GRH_LEN: usize = crate::rdma::UD_GRH_LEN;

/// The Q_Key perftest's UD QPs use (its `DEFF_QKEY`), whatever ours is set to.
pub const PERFTEST_QKEY: u32 = 0x1111_1111;

/// The path MTU (`enum ibv_mtu`) both sides agree on: the smaller of ours and the peer's.
fn agreed_mtu(mtu: i32, s: &Session) -> i32 {
    mtu.min(s.remote_mtu.max(1))
}

/// Over UD only `ib_send_bw` runs (`-c UD`): writes, reads and atomics are RC's (and UC's, for
/// writes).
fn refuse_ud(test: Test, qp: &QueuePair) -> Result<()> {
    if qp.qp_type() == QpType::Ud && test != Test::Send {
        return Err(Error::Unsupported {
            what: format!("{} over UD", test.tool()),
            fix: "run it over an RC QP (or UC for write); over UD perftest runs only \
                  ib_send_bw -c UD"
                .into(),
        });
    }
    Ok(())
}

/// A UD message is one packet: refuse a `size` larger than the path MTU both sides agree on
/// (our `mtu` and the peer's, `enum ibv_mtu`), as perftest does for a size given with `-s`.
fn check_ud_size(qp: &QueuePair, size: usize, mtu: i32, s: &Session) -> Result<()> {
    let bytes = mtu_bytes(agreed_mtu(mtu, s)).unwrap_or(256) as usize;
    if qp.qp_type() == QpType::Ud && size > bytes {
        return Err(Error::invalid(format!(
            "a UD message is one packet: size must be at most the path MTU, {bytes} bytes, \
             not {size}"
        )));
    }
    Ok(())
}

/// The server's buffer must hold what the client's requests touch: perftest's requests
/// cycle through one cycle buffer (a page) from the address we give.
fn check_server_buffer(s: &Session, test: Test, mr: &MemoryRegion) -> Result<()> {
    let need = s.cycle_buffer as usize;
    if mr.len() < need {
        return Err(Error::invalid(format!(
            "the {} client's requests cover {need} bytes (its cycle buffer) of the server's \
             buffer: register at least that much (plus its message size), not {}",
            test.tool(),
            mr.len()
        )));
    }
    Ok(())
}

/// Be the server of an `ib_write_bw`, `ib_read_bw` or `ib_atomic_bw` client: negotiate on
/// `listener`, expose `mr` (remote-writable, -readable or -atomic as the test needs; at
/// least the client's message size plus a page), bring `qp` (in INIT) to RTS towards the
/// client, wait for its run to end and return the report it sends. For `ib_send_bw` see
/// [`serve_send`]. Every wait ends at `timeout` or when `cancel` says stop.
#[allow(clippy::too_many_arguments)]
pub fn serve(
    listener: &TcpListener,
    test: Test,
    qp: &QueuePair,
    mr: &MemoryRegion,
    p: &PathParams,
    local: &Endpoint,
    timeout: Duration,
    cancel: &Cancel<'_>,
) -> Result<BwReport> {
    if test == Test::Send {
        return Err(Error::invalid(
            "an ib_send_bw server posts receives and counts them: use serve_send",
        ));
    }
    refuse_ud(test, qp)?;
    let mut s = Session::accept(listener, p.mtu, timeout, cancel)?;
    check_server_buffer(&s, test, mr)?;
    let (mine, _) = connect(&mut s, test, qp, mr, p, local)?;
    s.keys(&mine)?; // the client's run ends before this returns
    let theirs = s.reports(&BwReport::default())?;
    s.close(&mine)?;
    Ok(theirs)
}

/// What the server of an `ib_send_bw` run expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendRun {
    /// Message size: each receive takes this many bytes (the client's must not be larger),
    /// and on UD the 40-byte GRH in front of them.
    pub size: usize,
    /// Messages to receive (the client's `-n`).
    pub iterations: u64,
    /// Receives kept posted (at most the QP's receive queue size).
    pub rx_depth: u64,
}

/// Be the server of an `ib_send_bw` client: negotiate, bring `qp` (in INIT) to RTS, post
/// `run.rx_depth` receives of `run.size` bytes into `mr` (on UD, with the GRH's 40 bytes in
/// front), tell the client, and count receives on `cq` (the QP's receive CQ), reposting each,
/// until `run.iterations` came or the client says it is done (its closing key message, sent
/// when all its sends completed: on UC and UD, a send that found no receive posted is dropped,
/// so fewer may come). Returns our own report (the tools exchange none for send): the messages
/// received and their payload bytes, timed from the first to the last. Every wait ends at
/// `timeout` or when `cancel` says stop.
#[allow(clippy::too_many_arguments)]
pub fn serve_send(
    listener: &TcpListener,
    qp: &QueuePair,
    cq: &CompletionQueue,
    mr: &MemoryRegion,
    p: &PathParams,
    local: &Endpoint,
    run: &SendRun,
    timeout: Duration,
    cancel: &Cancel<'_>,
) -> Result<BwReport> {
    if run.iterations == 0 || run.rx_depth == 0 || run.size == 0 {
        return Err(Error::invalid(
            "an ib_send_bw server needs size, iterations and rx_depth > 0",
        ));
    }
    // A UD receive takes the GRH in front of the payload.
    let grh = if qp.qp_type() == QpType::Ud {
        GRH_LEN
    } else {
        0
    };
    let sge = [mr.sge(0, run.size + grh)?];
    let mut s = Session::accept(listener, p.mtu, timeout, cancel)?;
    check_ud_size(qp, run.size, p.mtu, &s)?;
    let (mine, _) = connect(&mut s, Test::Send, qp, mr, p, local)?;
    let depth = run.rx_depth.min(run.iterations);
    for i in 0..depth {
        qp.post_recv(i, &sge)?;
    }
    s.keys(&mine)?; // our receives are posted: the client starts
    let (received, bw) = receive_all(&s, qp, cq, &sge, grh, run.iterations, depth, timeout)?;
    s.close(&mine)?;
    Ok(report(run.size, received, &bw))
}

/// How long receives may pause after the client said it is done before the count is final.
const DRAIN: Duration = Duration::from_millis(200);

/// Reap up to `iterations` receives, keeping `depth` posted, until all came or the client
/// spoke and nothing more came for [`DRAIN`]; returns the count and the time from the first
/// receive to the last. Each receive's first `grh` bytes are not payload (a UD receive's GRH).
#[allow(clippy::too_many_arguments)]
fn receive_all(
    s: &Session,
    qp: &QueuePair,
    cq: &CompletionQueue,
    sge: &[crate::rdma::Sge<'_>],
    grh: usize,
    iterations: u64,
    depth: u64,
    stall: Duration,
) -> Result<(u64, Bandwidth)> {
    let mut wcs = [WorkCompletion::default(); 16];
    let (mut posted, mut received, mut bytes) = (depth, 0u64, 0u64);
    let (mut first, mut last): (Option<Instant>, Option<Instant>) = (None, None);
    let mut progress = Instant::now();
    let mut asked = Instant::now();
    while received < iterations {
        let n = cq.poll(&mut wcs)?;
        for wc in &wcs[..n] {
            wc.check()?;
            first.get_or_insert_with(Instant::now);
            received += 1;
            bytes += u64::from(wc.byte_len).saturating_sub(grh as u64);
            if posted < iterations {
                qp.post_recv(posted, sge)?;
                posted += 1;
            }
        }
        s.cancel.check("ib_send_bw server: receiving")?;
        if n > 0 {
            progress = Instant::now();
            last = Some(progress);
            continue;
        }
        let idle = progress.elapsed();
        if idle > DRAIN && asked.elapsed() > DRAIN {
            asked = Instant::now();
            if s.peer_has_spoken()? {
                break; // the client is done: what did not come was dropped
            }
        }
        if idle > stall {
            return Err(Error::Timeout(format!(
                "ib_send_bw server: {received} of {iterations} messages received, then none \
                 for {stall:?}: is the client alive, and its -n {iterations}?"
            )));
        }
        crate::rdma::perf::nap(cq, idle);
    }
    let seconds = match (first, last) {
        (Some(a), Some(b)) => (b - a).as_secs_f64(),
        _ => 0.0,
    };
    Ok((received, Bandwidth { bytes, seconds }))
}

/// The report of a run of `iterations` messages of `size` bytes (MB/s of 2^20 bytes, as the
/// tools print; one run, so peak and average are the same; 0 for a run too short to time).
fn report(size: usize, iterations: u64, bw: &Bandwidth) -> BwReport {
    let per_s = |x: f64| {
        if bw.seconds > 0.0 {
            x / bw.seconds
        } else {
            0.0
        }
    };
    let mib = per_s(bw.bytes as f64) / f64::from(1u32 << 20);
    BwReport {
        size: size as u64,
        iters: iterations,
        bw_peak: mib,
        bw_avg: mib,
        msg_rate: per_s(iterations as f64) / 1e6,
    }
}

/// Be the client of a perftest server at `addr` running `test`: negotiate, bring `qp` (in
/// INIT) to RTS, run `iterations` requests of `size` bytes (atomics: 8) from `mr` against
/// the server's buffer (128 in flight, a completion every 100, as the tools do; reads land
/// in `mr`, atomics' old values in its first 8 bytes), on `cq` (the QP's send CQ), then send
/// the report (send: none, the server measures its own) and close. Returns our report.
/// Every wait ends at `timeout` or when `cancel` says stop.
#[allow(clippy::too_many_arguments)]
pub fn client(
    addr: impl ToSocketAddrs,
    test: Test,
    qp: &QueuePair,
    cq: &CompletionQueue,
    mr: &MemoryRegion,
    p: &PathParams,
    local: &Endpoint,
    size: usize,
    iterations: u64,
    timeout: Duration,
    cancel: &Cancel<'_>,
) -> Result<BwReport> {
    let atomic = matches!(test, Test::FetchAdd | Test::CompareSwap);
    if atomic && size != ATOMIC_SIZE {
        return Err(Error::invalid(format!(
            "{} moves {ATOMIC_SIZE}-byte words: size must be {ATOMIC_SIZE}, not {size}",
            test.tool()
        )));
    }
    if size == 0 || iterations == 0 {
        return Err(Error::invalid("size and iterations must be positive"));
    }
    refuse_ud(test, qp)?;
    let sge = [mr.sge(0, size)?];
    let mut s = Session::connect(addr, p.mtu, timeout, cancel)?;
    check_ud_size(qp, size, p.mtu, &s)?;
    let (mine, remote) = connect(&mut s, test, qp, mr, p, local)?;
    let (remote_addr, rkey) = (remote.vaddr, remote.rkey);
    // Over UD every send names its destination: an address handle for the server's GID, its
    // QP number and perftest's Q_Key.
    let ah = match qp.qp_type() {
        QpType::Ud => {
            Some(
                qp.pd()
                    .create_ah_cancellable(&remote.endpoint(), p.sgid_index, p.port, cancel)?,
            )
        }
        _ => None,
    };
    let op = match test {
        Test::Write => SendOp::Write { remote_addr, rkey },
        Test::Read => SendOp::Read { remote_addr, rkey },
        Test::Send => match &ah {
            Some(ah) => SendOp::UdSend {
                ah,
                remote_qpn: remote.qpn,
                remote_qkey: PERFTEST_QKEY,
                imm: None,
            },
            None => SendOp::Send,
        },
        Test::FetchAdd => SendOp::FetchAdd {
            remote_addr,
            rkey,
            add: 1,
        },
        Test::CompareSwap => SendOp::CompareSwap {
            remote_addr,
            rkey,
            compare: 0,
            swap: 0,
        },
    };
    if test == Test::Send {
        s.keys(&mine)?; // returns once the server's receives are posted
    }
    let depth = iterations.min(128);
    let pacing = Pacing {
        depth,
        signal_every: depth.min(100),
        stall: timeout,
    };
    let bw = op_bandwidth(qp, cq, op, &sge, iterations, &pacing, cancel)?;
    let rep = report(size, iterations, &bw);
    if test != Test::Send {
        s.keys(&mine)?;
        s.reports(&rep)?;
    }
    s.close(&mine)?;
    Ok(rep)
}

/// The outstanding reads/atomics a kbypass side announces for read and atomic tests: as many
/// as `ctx`'s device both initiates and serves per QP (perftest announces its device's limit).
pub fn out_reads(ctx: &crate::rdma::Context) -> Result<u8> {
    let a = ctx.query_device()?;
    let n = a.max_qp_rd_atom.min(a.max_qp_init_rd_atom).clamp(1, 255);
    Ok(u8::try_from(n).unwrap_or(1))
}
