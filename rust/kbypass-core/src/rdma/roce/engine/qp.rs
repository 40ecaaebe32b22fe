//! Queue pairs: creation, the INIT → RTR → RTS transitions, posting.

use std::sync::Arc;

use super::context::Engine;
use super::objects::{CompletionQueue, ProtectionDomain};
use super::srq::SharedReceiveQueue;
use super::transport::{Peer, Posted, QpEntry};
use super::work::{gather, resolve, wc_opcode, SendWqe, Sge};
use super::{Access, Endpoint, PathParams, QpCaps, QpType, SendFlags, SendOp};
use crate::error::{Error, Result};
use crate::rdma::mtu_bytes;
use crate::rdma::roce::rc::{RemoteAccess, WorkRequest};
use crate::rdma::roce::uc::UcRequest;
use crate::rdma::roce::ud::UdDest;
use crate::rdma::roce::wire::PSN_MASK as PSN_MASK_RC;
use crate::rdma::Cancel;

/// A QP's state (`enum ibv_qp_state`, the values [`QpState::raw`] gives).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QpState {
    /// Just created.
    Reset,
    /// Receives may be posted.
    Init,
    /// Ready to receive.
    Rtr,
    /// Ready to send.
    Rts,
    /// Failed; every work request completes as flushed.
    Error,
}

impl QpState {
    /// The `IBV_QPS_*` value.
    pub fn raw(self) -> i32 {
        match self {
            QpState::Reset => 0,
            QpState::Init => 1,
            QpState::Rtr => 2,
            QpState::Rts => 3,
            QpState::Error => 6,
        }
    }
}

/// A queue pair of the engine; dropping it destroys it (nothing more is sent or completed
/// for it; a peer's packets to it are counted as `wrong_qpn`).
pub struct QueuePair {
    engine: Arc<Engine>,
    pd: ProtectionDomain,
    _send_cq: CompletionQueue,
    _recv_cq: CompletionQueue,
    _srq: Option<Arc<SharedReceiveQueue>>,
    qpn: u32,
    qp_type: QpType,
    sq_sig_all: bool,
    caps: QpCaps,
}

impl Drop for QueuePair {
    fn drop(&mut self) {
        self.engine.shared().lock().remove(self.qpn);
    }
}

impl ProtectionDomain {
    /// A QP of `qp_type` completing sends on `send_cq` and receives on `recv_cq`, with queues
    /// of `caps`' sizes; with `sq_sig_all` every send completes, else only those posted with
    /// [`SendFlags::SIGNALED`] (and failures).
    pub fn create_qp(
        &self,
        qp_type: QpType,
        send_cq: &CompletionQueue,
        recv_cq: &CompletionQueue,
        caps: QpCaps,
        sq_sig_all: bool,
    ) -> Result<QueuePair> {
        self.create_qp_inner(qp_type, send_cq, recv_cq, caps, sq_sig_all, None)
    }

    /// [`create_qp`](Self::create_qp) for a QP that takes its receives from `srq` (of this
    /// protection domain).
    pub fn create_qp_with_srq(
        &self,
        qp_type: QpType,
        send_cq: &CompletionQueue,
        recv_cq: &CompletionQueue,
        caps: QpCaps,
        sq_sig_all: bool,
        srq: &Arc<SharedReceiveQueue>,
    ) -> Result<QueuePair> {
        if !Arc::ptr_eq(&srq.pd().inner, &self.inner) {
            return Err(Error::invalid(
                "the SRQ belongs to another protection domain: create it on this one",
            ));
        }
        self.create_qp_inner(qp_type, send_cq, recv_cq, caps, sq_sig_all, Some(srq))
    }

    fn create_qp_inner(
        &self,
        qp_type: QpType,
        send_cq: &CompletionQueue,
        recv_cq: &CompletionQueue,
        caps: QpCaps,
        sq_sig_all: bool,
        srq: Option<&Arc<SharedReceiveQueue>>,
    ) -> Result<QueuePair> {
        let engine = Arc::clone(self.engine());
        for cq in [send_cq, recv_cq] {
            if !Arc::ptr_eq(&cq.engine, &engine) {
                return Err(Error::invalid(
                    "the CQ belongs to another engine: create it on this QP's engine",
                ));
            }
        }
        if caps.max_send_wr == 0 && caps.max_recv_wr == 0 {
            return Err(Error::invalid(
                "a QP needs max_send_wr or max_recv_wr above 0",
            ));
        }
        let qpn = {
            let mut core = engine.shared().lock();
            let qpn = core.alloc_qpn();
            core.insert(QpEntry::new(
                qpn,
                qp_type,
                Arc::clone(&send_cq.shared),
                Arc::clone(&recv_cq.shared),
                self.inner.table.clone(),
                caps,
                srq.map(|s| Arc::clone(&s.inner)),
            ));
            qpn
        };
        Ok(QueuePair {
            engine,
            pd: self.clone(),
            _send_cq: send_cq.clone(),
            _recv_cq: recv_cq.clone(),
            _srq: srq.cloned(),
            qpn,
            qp_type,
            sq_sig_all,
            caps,
        })
    }
}

impl QueuePair {
    /// The QP number.
    pub fn qp_num(&self) -> u32 {
        self.qpn
    }

    /// The transport.
    pub fn qp_type(&self) -> QpType {
        self.qp_type
    }

    /// The current state.
    pub fn state(&self) -> QpState {
        self.with(|q| Ok(q.state)).unwrap_or(QpState::Error)
    }

    /// What a peer needs to connect to this QP: its number, `psn` and the engine's GID.
    pub fn endpoint(&self, psn: u32) -> Endpoint {
        Endpoint {
            qpn: self.qpn,
            psn: psn & PSN_MASK_RC,
            gid: self.engine.gid(),
            lid: 0,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut QpEntry) -> Result<R>) -> Result<R> {
        let mut core = self.engine.shared().lock();
        let q = core
            .qp(self.qpn)
            .ok_or_else(|| Error::State(format!("QP {} is gone", self.qpn)))?;
        f(q)
    }

    /// RESET → INIT with the remote rights `access` allows on this QP (`REMOTE_WRITE`,
    /// `REMOTE_READ`, `REMOTE_ATOMIC`: a request needs its right from both the QP and the
    /// memory region). A UD QP takes its Q_Key from `p.qkey`.
    pub fn to_init(&self, p: &PathParams, access: Access) -> Result<()> {
        let access = RemoteAccess {
            write: access.0 & Access::REMOTE_WRITE.0 != 0,
            read: access.0 & Access::REMOTE_READ.0 != 0,
            atomic: access.0 & Access::REMOTE_ATOMIC.0 != 0,
        };
        self.with(|q| {
            if q.state != QpState::Reset {
                return Err(Error::State(format!(
                    "to_init needs the QP in RESET (it is in {:?})",
                    q.state
                )));
            }
            q.qkey = p.qkey;
            q.access = access;
            q.state = QpState::Init;
            Ok(())
        })
    }

    /// INIT → RTR towards `remote` (RC and UC: its QPN, first PSN and GID, whose MAC address
    /// is resolved here, a wait that ends with [`Error::Interrupted`] as soon as `cancel`
    /// says stop, the QP staying in INIT; UD ignores `remote`). The path MTU is `p.mtu`
    /// capped at the engine's.
    pub fn to_rtr(&self, p: &PathParams, remote: &Endpoint, cancel: &Cancel<'_>) -> Result<()> {
        let mtu = mtu_bytes(p.mtu).ok_or_else(|| {
            Error::invalid(format!(
                "path MTU code {} is not 1..5 (256..4096 bytes)",
                p.mtu
            ))
        })? as usize;
        let mtu = mtu.min(self.engine.max_mtu());
        let peer = if self.qp_type == QpType::Ud {
            None
        } else {
            let ip = self.engine.peer_ip(&remote.gid)?;
            Some(Peer {
                mac: self.engine.resolve_mac(ip, cancel)?,
                ip,
            })
        };
        self.with(|q| {
            if q.state != QpState::Init {
                return Err(Error::State(format!(
                    "to_rtr needs the QP in INIT (it is in {:?})",
                    q.state
                )));
            }
            q.peer = peer;
            q.params.dest_qp = remote.qpn;
            q.params.recv_psn = remote.psn & PSN_MASK_RC;
            q.params.mtu = mtu;
            q.params.min_rnr_timer = p.min_rnr_timer;
            q.params.max_dest_rd_atomic = p.max_rd_atomic;
            q.start_receiving()
        })
    }

    /// RTR → RTS, sending from `psn`, with `p`'s timeout and retry counts.
    pub fn to_rts(&self, p: &PathParams, psn: u32) -> Result<()> {
        if p.retry_cnt > 7 || p.rnr_retry > 7 || p.timeout > 31 {
            return Err(Error::invalid(
                "retry_cnt and rnr_retry are 0..7 and timeout is 0..31",
            ));
        }
        self.with(|q| {
            if q.state != QpState::Rtr {
                return Err(Error::State(format!(
                    "to_rts needs the QP in RTR (it is in {:?})",
                    q.state
                )));
            }
            q.params.send_psn = psn & PSN_MASK_RC;
            // Timeout 0 means "wait forever" in verbs; the state machine needs a timer, so
            // it gets the longest.
            q.params.timeout = if p.timeout == 0 { 31 } else { p.timeout };
            q.params.retry_cnt = p.retry_cnt;
            q.params.rnr_retry = p.rnr_retry;
            q.params.max_rd_atomic = p.max_rd_atomic;
            q.start_sending()
        })
    }

    /// RESET → INIT → RTR → RTS in one call.
    pub fn connect(&self, p: &PathParams, remote: &Endpoint, local_psn: u32) -> Result<()> {
        if self.state() == QpState::Reset {
            self.to_init(p, Access::ALL)?;
        }
        self.to_rtr(p, remote, &Cancel::never())?;
        self.to_rts(p, local_psn)
    }

    /// Any state → ERROR: outstanding work requests complete as flushed.
    pub fn to_error(&self) -> Result<()> {
        self.with(|q| {
            q.fail();
            Ok(())
        })
    }

    /// Any state → RESET: outstanding work requests are discarded without completions; the
    /// QP can then go through INIT, RTR and RTS again.
    pub fn to_reset(&self) -> Result<()> {
        self.with(|q| {
            q.reset();
            Ok(())
        })
    }

    /// Posts one receive of the SGEs' bytes (which need `LOCAL_WRITE`).
    pub fn post_recv(&self, wr_id: u64, sg: &[Sge]) -> Result<()> {
        check_sges(sg.len(), self.caps.max_recv_sge, "max_recv_sge")?;
        self.with(|q| {
            let spans = resolve(q.mem(), sg, true)?;
            q.post_recv(wr_id, spans)
        })?;
        self.engine.kick();
        Ok(())
    }

    /// Posts one send work request. The bytes to send are copied when posted; a read's or
    /// atomic's result lands in the SGEs (which need `LOCAL_WRITE`; 8 bytes for an atomic)
    /// when it completes.
    pub fn post_send(
        &self,
        wr_id: u64,
        op: SendOp<'_>,
        sg: &[Sge],
        flags: SendFlags,
    ) -> Result<()> {
        check_sges(sg.len(), self.caps.max_send_sge, "max_send_sge")?;
        let signaled = self.sq_sig_all || flags.0 & SendFlags::SIGNALED.0 != 0;
        let solicited = flags.0 & SendFlags::SOLICITED.0 != 0;
        let ud = matches!(op, SendOp::UdSend { .. });
        if ud != (self.qp_type == QpType::Ud) {
            return Err(Error::invalid(
                "a UD QP posts UdSend only, and UdSend needs a UD QP",
            ));
        }
        if self.qp_type == QpType::Uc && op.writes_local() {
            return Err(Error::invalid("UC has sends and writes only"));
        }
        // The SGEs are resolved (and the QP's state and room checked) under the engine's lock,
        // and the bytes to send gathered after it is let go (each span holds its region's
        // memory alive), so a large message's copy does not hold up the poll thread; the post
        // itself checks again.
        let spans = self.with(|q| {
            q.check_post_send()?;
            resolve(q.mem(), sg, op.writes_local())
        })?;
        let len: usize = spans.iter().map(|s| s.len).sum();
        if matches!(op, SendOp::CompareSwap { .. } | SendOp::FetchAdd { .. }) && len != 8 {
            return Err(Error::invalid(
                "an atomic's SGEs take its 8-byte original value: give exactly 8 bytes",
            ));
        }
        if len > 1 << 31 {
            return Err(Error::invalid("a message is at most 2 GiB"));
        }
        let (data, dest) = if op.writes_local() {
            (Vec::new(), spans)
        } else {
            (gather(&spans), Vec::new())
        };
        self.with(|q| {
            let wqe = SendWqe {
                wr_id,
                opcode: wc_opcode(&op),
                signaled,
                dest,
                byte_len: len as u32,
            };
            let what = posted(q.qp_type, op, data, len)?;
            q.post_send(wqe, what, solicited)
        })?;
        self.engine.kick();
        Ok(())
    }

    /// The protection domain.
    pub fn pd(&self) -> &ProtectionDomain {
        &self.pd
    }
}

fn check_sges(n: usize, max: u32, what: &str) -> Result<()> {
    if n > max as usize {
        return Err(Error::invalid(format!(
            "{n} SGEs, the QP was created with {what} {max}: create it with more"
        )));
    }
    Ok(())
}

/// The transport's form of `op`.
fn posted(t: QpType, op: SendOp<'_>, data: Vec<u8>, len: usize) -> Result<Posted> {
    Ok(match (t, op) {
        (
            QpType::Ud,
            SendOp::UdSend {
                ah,
                remote_qpn,
                remote_qkey,
                imm,
            },
        ) => Posted::Ud {
            dest: UdDest {
                qpn: remote_qpn,
                qkey: remote_qkey,
            },
            peer: {
                let ah = ah.engine_half()?;
                Peer {
                    mac: ah.mac,
                    ip: ah.ip,
                }
            },
            data,
            imm,
        },
        (QpType::Uc, SendOp::Send) => Posted::Uc(UcRequest::Send {
            data: data.into(),
            imm: None,
        }),
        (QpType::Uc, SendOp::SendImm(i)) => Posted::Uc(UcRequest::Send {
            data: data.into(),
            imm: Some(i),
        }),
        (QpType::Uc, SendOp::Write { remote_addr, rkey }) => Posted::Uc(UcRequest::Write {
            data: data.into(),
            va: remote_addr,
            rkey,
            imm: None,
        }),
        (
            QpType::Uc,
            SendOp::WriteImm {
                remote_addr,
                rkey,
                imm,
            },
        ) => Posted::Uc(UcRequest::Write {
            data: data.into(),
            va: remote_addr,
            rkey,
            imm: Some(imm),
        }),
        (QpType::Rc, op) => Posted::Rc(match op {
            SendOp::Send => WorkRequest::Send {
                data: data.into(),
                imm: None,
            },
            SendOp::SendImm(i) => WorkRequest::Send {
                data: data.into(),
                imm: Some(i),
            },
            SendOp::SendInv { invalidate_rkey } => WorkRequest::SendInv {
                data: data.into(),
                invalidate_rkey,
            },
            SendOp::Write { remote_addr, rkey } => WorkRequest::Write {
                data: data.into(),
                va: remote_addr,
                rkey,
                imm: None,
            },
            SendOp::WriteImm {
                remote_addr,
                rkey,
                imm,
            } => WorkRequest::Write {
                data: data.into(),
                va: remote_addr,
                rkey,
                imm: Some(imm),
            },
            SendOp::Read { remote_addr, rkey } => WorkRequest::Read {
                va: remote_addr,
                rkey,
                len: len as u32,
            },
            SendOp::CompareSwap {
                remote_addr,
                rkey,
                compare,
                swap,
            } => WorkRequest::CompareSwap {
                va: remote_addr,
                rkey,
                compare,
                swap,
            },
            SendOp::FetchAdd {
                remote_addr,
                rkey,
                add,
            } => WorkRequest::FetchAdd {
                va: remote_addr,
                rkey,
                add,
            },
            SendOp::UdSend { .. } => {
                return Err(Error::invalid("UdSend needs a UD QP"));
            }
        }),
        _ => {
            return Err(Error::invalid(
                "this operation is not one this QP type performs",
            ))
        }
    })
}
