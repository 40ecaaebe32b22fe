//! The address handle (`ibv_ah`): the route to a remote port, for UD sends.

use std::sync::Arc;

use super::ffi::{self, VerbsPtr};
use super::pd::PdInner;
use super::qp::Endpoint;
use super::roce::engine::AddressHandle as EngineAh;
use super::user::UserAh;
use crate::error::{Error, Result};

/// An address handle for UD (`ibv_ah`, or the user-space engine's: the peer's IP and MAC).
pub struct AddressHandle {
    imp: Ah,
}

enum Ah {
    Verbs(VerbsAh),
    User(UserAh),
}

struct VerbsAh {
    ptr: VerbsPtr<ffi::ibv_ah>,
    pd: Arc<PdInner>,
}
impl Drop for VerbsAh {
    fn drop(&mut self) {
        // SAFETY: created by ibv_create_ah, destroyed once, before its PD.
        unsafe { (self.pd.ctx.v.destroy_ah)(self.ptr.as_ptr()) };
    }
}

impl AddressHandle {
    /// `ibv_create_ah` towards `dest` ([`ProtectionDomain::create_ah`](super::ProtectionDomain::create_ah)).
    pub(super) fn create(
        pd: &Arc<PdInner>,
        dest: &Endpoint,
        sgid_index: u8,
        port: u8,
    ) -> Result<Self> {
        let mut attr = ffi::ibv_ah_attr {
            grh: ffi::ibv_global_route {
                dgid: ffi::ibv_gid { raw: dest.gid.0 },
                sgid_index,
                hop_limit: 1,
                ..Default::default()
            },
            dlid: dest.lid,
            is_global: u8::from(!dest.gid.is_zero()),
            port_num: port,
            ..Default::default()
        };
        // SAFETY: valid PD and attribute struct.
        let ah = unsafe { (pd.ctx.v.create_ah)(pd.ptr.as_ptr(), &mut attr) };
        let ptr = VerbsPtr::new(ah).ok_or_else(|| Error::last_os("ibv_create_ah", ""))?;
        Ok(AddressHandle {
            imp: Ah::Verbs(VerbsAh {
                ptr,
                pd: pd.clone(),
            }),
        })
    }

    /// An address handle of the user-space engine.
    pub(super) fn user(ah: UserAh) -> Self {
        AddressHandle { imp: Ah::User(ah) }
    }

    /// The `ibv_ah` for a libibverbs QP's UD send.
    pub(super) fn verbs_ptr(&self) -> Result<*mut ffi::ibv_ah> {
        match &self.imp {
            Ah::Verbs(a) => Ok(a.ptr.as_ptr()),
            Ah::User(_) => Err(Error::invalid(
                "this address handle belongs to a user-space context: create it on the \
                 libibverbs QP's protection domain",
            )),
        }
    }

    /// The engine's address handle, for a user-space QP's UD send.
    pub(crate) fn engine_half(&self) -> Result<&EngineAh> {
        match &self.imp {
            Ah::Verbs(_) => Err(Error::invalid(
                "this address handle belongs to a libibverbs device: create it on the \
                 user-space QP's protection domain",
            )),
            Ah::User(a) => Ok(&a.0),
        }
    }
}
