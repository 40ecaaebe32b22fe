//! Queue pairs (`ibv_qp`): creation, the state machine (RESET → INIT → RTR → RTS, ERROR) with
//! the connection parameters it needs ([`Endpoint`], [`PathParams`]), and posting.

use std::ffi::c_int;
use std::ptr;
use std::sync::Arc;

use super::cancel::Cancel;
use super::cq::{CompletionQueue, Cq, CqInner};
use super::device::Gid;
use super::ffi::{self, VerbsPtr};
use super::mr::{Access, Sge};
use super::pd::{Pd, PdInner, ProtectionDomain};
use super::srq::{SharedReceiveQueue, Srq};
use super::user::{self, UserQp};
use super::wr::{send_wr, RecvPath, SendFlags, SendOp};
use crate::error::{Error, Result};

/// Transport of a queue pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QpType {
    /// Reliable connected.
    Rc,
    /// Unreliable connected.
    Uc,
    /// Unreliable datagram.
    Ud,
}

impl QpType {
    fn raw(self) -> c_int {
        match self {
            QpType::Rc => ffi::QPT_RC,
            QpType::Uc => ffi::QPT_UC,
            QpType::Ud => ffi::QPT_UD,
        }
    }
}

/// Queue sizes of a QP (`ibv_qp_cap`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpCaps {
    /// Outstanding send work requests.
    pub max_send_wr: u32,
    /// Outstanding receive work requests.
    pub max_recv_wr: u32,
    /// SGEs per send.
    pub max_send_sge: u32,
    /// SGEs per receive.
    pub max_recv_sge: u32,
    /// Largest inline send.
    pub max_inline_data: u32,
}

impl Default for QpCaps {
    fn default() -> Self {
        QpCaps {
            max_send_wr: 128,
            max_recv_wr: 128,
            max_send_sge: 4,
            max_recv_sge: 4,
            max_inline_data: 64,
        }
    }
}

/// What a peer needs to connect to a QP (exchanged out of band).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// QP number.
    pub qpn: u32,
    /// Initial packet sequence number (24 bits).
    pub psn: u32,
    /// GID of the port.
    pub gid: Gid,
    /// LID (0 on RoCE).
    pub lid: u16,
}

/// Path and retry parameters for the INIT→RTR→RTS transitions, with the usual defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathParams {
    /// Port number (from 1).
    pub port: u8,
    /// Local GID index (the RoCEv2 IPv4 one, see [`Context::default_gid_index`](super::Context::default_gid_index)).
    pub sgid_index: u8,
    /// `enum ibv_mtu` (3 = 1024).
    pub mtu: i32,
    /// Local ACK timeout exponent (4.096 µs · 2^timeout).
    pub timeout: u8,
    /// Transport retries.
    pub retry_cnt: u8,
    /// RNR retries (7 = infinite).
    pub rnr_retry: u8,
    /// Minimum RNR NAK timer code.
    pub min_rnr_timer: u8,
    /// Outstanding RDMA reads/atomics, both directions.
    pub max_rd_atomic: u8,
    /// Service level.
    pub sl: u8,
    /// Q_Key for UD.
    pub qkey: u32,
}

impl Default for PathParams {
    fn default() -> Self {
        PathParams {
            port: 1,
            sgid_index: 0,
            mtu: 3,
            timeout: 14,
            retry_cnt: 7,
            rnr_retry: 7,
            min_rnr_timer: 12,
            max_rd_atomic: 1,
            sl: 0,
            qkey: 0x1111_1111,
        }
    }
}

/// A queue pair (`ibv_qp`, or the user-space engine's).
pub struct QueuePair {
    imp: Qp,
    qp_type: QpType,
    max_inline: u32,
}

enum Qp {
    Verbs(VerbsQp),
    User(UserQp),
}

/// The libibverbs half: the `ibv_qp`, its data-path entries, and the objects it uses.
struct VerbsQp {
    ptr: VerbsPtr<ffi::ibv_qp>,
    post_send: ffi::PostSendFn,
    recv: RecvPath<ffi::ibv_qp>,
    pd: Arc<PdInner>,
    _send_cq: Arc<CqInner>,
    _recv_cq: Arc<CqInner>,
    _srq: Option<Arc<SharedReceiveQueue>>,
}
impl Drop for VerbsQp {
    fn drop(&mut self) {
        // SAFETY: created by ibv_create_qp; destroyed once, before its CQs and PD (Arcs).
        unsafe { (self.pd.ctx.v.destroy_qp)(self.ptr.as_ptr()) };
    }
}

impl QueuePair {
    /// Create a QP on `pd` with the given CQs (they may be the same).
    pub fn create(
        pd: &ProtectionDomain,
        qp_type: QpType,
        send_cq: &CompletionQueue,
        recv_cq: &CompletionQueue,
        caps: QpCaps,
    ) -> Result<Self> {
        Self::create_with_srq(pd, qp_type, send_cq, recv_cq, caps, None)
    }

    /// Create a QP whose receives come from `srq` (when given) instead of its own queue.
    pub fn create_with_srq(
        pd: &ProtectionDomain,
        qp_type: QpType,
        send_cq: &CompletionQueue,
        recv_cq: &CompletionQueue,
        caps: QpCaps,
        srq: Option<&Arc<SharedReceiveQueue>>,
    ) -> Result<Self> {
        let mixed = || {
            Error::invalid("the CQs and SRQ of a QP must come from its protection domain's context")
        };
        let (pd, send_cq, recv_cq) = match (&pd.inner, &send_cq.inner, &recv_cq.inner) {
            (Pd::Verbs(pd), Cq::Verbs(s), Cq::Verbs(r)) => (pd, s, r),
            (Pd::User(pd), Cq::User(s), Cq::User(r)) => {
                let srq = match srq.map(|q| &q.imp) {
                    None => None,
                    Some(Srq::User(q)) => Some(q),
                    Some(Srq::Verbs(_)) => return Err(mixed()),
                };
                return Ok(QueuePair {
                    imp: Qp::User(pd.create_qp(qp_type, s, r, caps, srq)?),
                    qp_type,
                    max_inline: caps.max_inline_data,
                });
            }
            _ => return Err(mixed()),
        };
        let ctx = &pd.ctx;
        let ops = ctx.ops();
        let (Some(post_send), Some(post_recv)) = (ops.post_send, ops.post_recv) else {
            return Err(ctx.no_data_path(
                "post_send/post_recv",
                "use a device whose provider implements the classic verbs data path",
            ));
        };
        let same_context = |other: &Arc<super::context::ContextInner>| Arc::ptr_eq(other, ctx);
        let srq_ptr = match srq.map(|q| &q.imp) {
            None => ptr::null_mut(),
            Some(Srq::Verbs(q)) if same_context(&q.pd.ctx) => q.ptr.as_ptr(),
            Some(_) => return Err(mixed()),
        };
        if !same_context(&send_cq.ctx) || !same_context(&recv_cq.ctx) {
            return Err(mixed());
        }
        let mut attr = ffi::ibv_qp_init_attr {
            qp_context: ptr::null_mut(),
            send_cq: send_cq.ptr.as_ptr(),
            recv_cq: recv_cq.ptr.as_ptr(),
            srq: srq_ptr.cast(),
            cap: ffi::ibv_qp_cap {
                max_send_wr: caps.max_send_wr,
                max_recv_wr: caps.max_recv_wr,
                max_send_sge: caps.max_send_sge,
                max_recv_sge: caps.max_recv_sge,
                max_inline_data: caps.max_inline_data,
            },
            qp_type: qp_type.raw(),
            sq_sig_all: 0,
        };
        // SAFETY: valid PD, CQs of the same context, initialised attributes.
        let qp = unsafe { (ctx.v.create_qp)(pd.ptr.as_ptr(), &mut attr) };
        let ptr = VerbsPtr::new(qp).ok_or_else(|| {
            Error::last_os(
                format!("ibv_create_qp({qp_type:?}, {caps:?})"),
                "lower the queue sizes?",
            )
        })?;
        Ok(QueuePair {
            imp: Qp::Verbs(VerbsQp {
                ptr,
                post_send,
                // SAFETY: `post_recv` is the post_recv of the context that created this QP,
                // and the path lives in the QP, which destroys the queue only when dropped.
                recv: unsafe {
                    RecvPath::new(
                        ptr,
                        post_recv,
                        "post_recv",
                        "receive queue full or QP in RESET",
                    )
                },
                pd: pd.clone(),
                _send_cq: send_cq.clone(),
                _recv_cq: recv_cq.clone(),
                _srq: srq.cloned(),
            }),
            qp_type,
            // ibv_create_qp writes the sizes it granted back into `attr.cap`.
            max_inline: attr.cap.max_inline_data,
        })
    }

    /// True on a user-space context.
    pub fn is_userspace(&self) -> bool {
        matches!(self.imp, Qp::User(_))
    }

    /// The libibverbs half, or the error saying `what` is libibverbs-only.
    fn verbs(&self, what: &str) -> Result<&VerbsQp> {
        match &self.imp {
            Qp::Verbs(q) => Ok(q),
            Qp::User(_) => Err(user::unsupported(what)),
        }
    }

    /// The QP number.
    pub fn qp_num(&self) -> u32 {
        match &self.imp {
            // SAFETY: valid QP.
            Qp::Verbs(q) => unsafe { q.ptr.as_ref().qp_num },
            Qp::User(q) => q.qp_num(),
        }
    }

    /// The protection domain the QP was created in (address handles for its UD sends come
    /// from it).
    pub fn pd(&self) -> ProtectionDomain {
        ProtectionDomain {
            inner: match &self.imp {
                Qp::Verbs(q) => Pd::Verbs(Arc::clone(&q.pd)),
                Qp::User(q) => Pd::User(q.pd()),
            },
        }
    }

    /// The transport.
    pub fn qp_type(&self) -> QpType {
        self.qp_type
    }

    /// The largest [`SendFlags::INLINE`] payload the provider granted at creation.
    pub fn max_inline_data(&self) -> u32 {
        self.max_inline
    }

    /// Refuse inline sends the provider would read past (too long) or that verbs does not
    /// define (anything but SEND and RDMA WRITE).
    fn check_inline(&self, op: &SendOp<'_>, sg: &[Sge<'_>]) -> Result<()> {
        if op.writes_local() {
            return Err(Error::invalid(
                "INLINE is only for SEND and RDMA WRITE: post READ and atomics without it",
            ));
        }
        let total: u64 = sg.iter().map(|s| u64::from(s.length())).sum();
        if total > u64::from(self.max_inline) {
            return Err(Error::invalid(format!(
                "an inline send of {total} bytes exceeds this QP's max_inline_data ({}): send it without INLINE or create the QP with a larger max_inline_data",
                self.max_inline
            )));
        }
        Ok(())
    }

    /// The current state (`enum ibv_qp_state`: 0 RESET, 1 INIT, 2 RTR, 3 RTS, 6 ERR), queried.
    pub fn state(&self) -> Result<i32> {
        let q = match &self.imp {
            Qp::Verbs(q) => q,
            Qp::User(q) => return Ok(q.state()),
        };
        let mut attr = ffi::ibv_qp_attr::default();
        // SAFETY: ibv_qp_init_attr is plain data; zero is a valid value.
        let mut init: ffi::ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        // SAFETY: valid QP and out-structs.
        let rc =
            unsafe { (q.pd.ctx.v.query_qp)(q.ptr.as_ptr(), &mut attr, ffi::QP_STATE, &mut init) };
        if rc != 0 {
            return Err(Error::os("ibv_query_qp", rc, ""));
        }
        Ok(attr.qp_state)
    }

    /// `ibv_modify_qp` with a raw attribute struct and mask.
    pub fn modify(&self, attr: &mut ffi::ibv_qp_attr, mask: c_int) -> Result<()> {
        let q =
            self.verbs("ibv_modify_qp with a raw attribute struct (use to_init/to_rtr/to_rts)")?;
        // SAFETY: valid QP; the attribute struct is fully initialised.
        let rc = unsafe { (q.pd.ctx.v.modify_qp)(q.ptr.as_ptr(), attr, mask) };
        if rc != 0 {
            return Err(Error::os(
                format!("ibv_modify_qp(to state {})", attr.qp_state),
                rc,
                "check the transition order RESET→INIT→RTR→RTS and the peer's endpoint",
            ));
        }
        Ok(())
    }

    /// RESET→INIT with `access` rights for remote peers (RC/UC) or the Q_Key (UD).
    pub fn to_init(&self, p: &PathParams, access: Access) -> Result<()> {
        if let Qp::User(q) = &self.imp {
            return q.to_init(p, access);
        }
        let mut a = ffi::ibv_qp_attr {
            qp_state: ffi::QPS_INIT,
            pkey_index: 0,
            port_num: p.port,
            ..Default::default()
        };
        let mut mask = ffi::QP_STATE | ffi::QP_PKEY_INDEX | ffi::QP_PORT;
        if self.qp_type == QpType::Ud {
            a.qkey = p.qkey;
            mask |= ffi::QP_QKEY;
        } else {
            a.qp_access_flags = access.0 as u32;
            mask |= ffi::QP_ACCESS_FLAGS;
        }
        self.modify(&mut a, mask)
    }

    /// INIT→RTR towards `remote` (ignored for UD, which only needs the state).
    pub fn to_rtr(&self, p: &PathParams, remote: &Endpoint) -> Result<()> {
        self.to_rtr_cancellable(p, remote, &Cancel::never())
    }

    /// [`to_rtr`](Self::to_rtr) whose wait (a user-space QP's resolution of the peer's MAC
    /// address, up to the context's `neigh_timeout`) ends with [`Error::Interrupted`] as soon
    /// as `cancel` says stop; the QP stays in INIT then.
    pub fn to_rtr_cancellable(
        &self,
        p: &PathParams,
        remote: &Endpoint,
        cancel: &Cancel<'_>,
    ) -> Result<()> {
        if let Qp::User(q) = &self.imp {
            return q.to_rtr(p, remote, cancel);
        }
        let mut a = ffi::ibv_qp_attr {
            qp_state: ffi::QPS_RTR,
            ..Default::default()
        };
        let mut mask = ffi::QP_STATE;
        if self.qp_type != QpType::Ud {
            a.path_mtu = p.mtu;
            a.dest_qp_num = remote.qpn;
            a.rq_psn = remote.psn & 0xff_ffff;
            a.ah_attr = ffi::ibv_ah_attr {
                grh: ffi::ibv_global_route {
                    dgid: ffi::ibv_gid { raw: remote.gid.0 },
                    sgid_index: p.sgid_index,
                    hop_limit: 1,
                    ..Default::default()
                },
                dlid: remote.lid,
                sl: p.sl,
                is_global: u8::from(!remote.gid.is_zero()),
                port_num: p.port,
                ..Default::default()
            };
            mask |= ffi::QP_AV | ffi::QP_PATH_MTU | ffi::QP_DEST_QPN | ffi::QP_RQ_PSN;
            if self.qp_type == QpType::Rc {
                a.max_dest_rd_atomic = p.max_rd_atomic;
                a.min_rnr_timer = p.min_rnr_timer;
                mask |= ffi::QP_MAX_DEST_RD_ATOMIC | ffi::QP_MIN_RNR_TIMER;
            }
        }
        self.modify(&mut a, mask)
    }

    /// RTR→RTS with our send PSN.
    pub fn to_rts(&self, p: &PathParams, psn: u32) -> Result<()> {
        if let Qp::User(q) = &self.imp {
            return q.to_rts(p, psn);
        }
        let mut a = ffi::ibv_qp_attr {
            qp_state: ffi::QPS_RTS,
            sq_psn: psn & 0xff_ffff,
            ..Default::default()
        };
        let mut mask = ffi::QP_STATE | ffi::QP_SQ_PSN;
        if self.qp_type == QpType::Rc {
            a.timeout = p.timeout;
            a.retry_cnt = p.retry_cnt;
            a.rnr_retry = p.rnr_retry;
            a.max_rd_atomic = p.max_rd_atomic;
            mask |=
                ffi::QP_TIMEOUT | ffi::QP_RETRY_CNT | ffi::QP_RNR_RETRY | ffi::QP_MAX_QP_RD_ATOMIC;
        }
        self.modify(&mut a, mask)
    }

    /// INIT→RTR→RTS towards `remote` in one call (after [`to_init`](Self::to_init)).
    pub fn connect(&self, p: &PathParams, remote: &Endpoint, local_psn: u32) -> Result<()> {
        self.connect_cancellable(p, remote, local_psn, &Cancel::never())
    }

    /// [`connect`](Self::connect) whose wait for the peer's MAC address (user-space QPs)
    /// ends with [`Error::Interrupted`] as soon as `cancel` says stop.
    pub fn connect_cancellable(
        &self,
        p: &PathParams,
        remote: &Endpoint,
        local_psn: u32,
        cancel: &Cancel<'_>,
    ) -> Result<()> {
        self.to_rtr_cancellable(p, remote, cancel)?;
        self.to_rts(p, local_psn)
    }

    /// Move to the error state: outstanding work requests complete with WR_FLUSH_ERR.
    pub fn to_error(&self) -> Result<()> {
        if let Qp::User(q) = &self.imp {
            return q.to_error();
        }
        let mut a = ffi::ibv_qp_attr {
            qp_state: ffi::QPS_ERR,
            ..Default::default()
        };
        self.modify(&mut a, ffi::QP_STATE)
    }

    /// Back to RESET (from any state), ready for `to_init` again.
    pub fn to_reset(&self) -> Result<()> {
        if let Qp::User(q) = &self.imp {
            return q.to_reset();
        }
        let mut a = ffi::ibv_qp_attr {
            qp_state: ffi::QPS_RESET,
            ..Default::default()
        };
        self.modify(&mut a, ffi::QP_STATE)
    }

    /// Post one send work request. Does not allocate.
    ///
    /// With [`SendFlags::INLINE`] the provider copies the SGEs' bytes into the work request
    /// during this call (verbs does not check the lkey then): they come from memory regions
    /// the elements borrow, at most [`max_inline_data`](Self::max_inline_data) bytes in all,
    /// and only for SEND and RDMA WRITE (verbs defines inline for nothing else).
    pub fn post_send(
        &self,
        wr_id: u64,
        op: SendOp<'_>,
        sg: &[Sge<'_>],
        flags: SendFlags,
    ) -> Result<()> {
        if flags.0 & SendFlags::INLINE.0 != 0 {
            self.check_inline(&op, sg)?;
        }
        let ud = matches!(op, SendOp::UdSend { .. });
        if ud && self.qp_type != QpType::Ud {
            return Err(Error::invalid("UdSend needs a UD queue pair"));
        }
        let q = match &self.imp {
            Qp::Verbs(q) => q,
            Qp::User(q) => return q.post_send(wr_id, op, sg, flags),
        };
        let mut wr = send_wr(wr_id, op, sg, flags)?;
        let mut bad: *mut ffi::ibv_send_wr = ptr::null_mut();
        // SAFETY: the provider's post_send for this QP; `wr` and the SGE array it points to
        // live until the call returns (the provider copies them into its queue).
        let rc = unsafe { (q.post_send)(q.ptr.as_ptr(), &mut wr, &mut bad) };
        if rc != 0 {
            return Err(Error::os(
                "post_send",
                rc,
                "send queue full (poll the CQ) or QP not in RTS",
            ));
        }
        Ok(())
    }

    /// Post one receive work request.
    pub fn post_recv(&self, wr_id: u64, sg: &[Sge<'_>]) -> Result<()> {
        match &self.imp {
            Qp::Verbs(q) => q.recv.post(wr_id, sg),
            Qp::User(q) => q.post_recv(wr_id, sg),
        }
    }
}
