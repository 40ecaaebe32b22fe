//! The address handle (`ibv_ah`): the route to a remote port, for UD sends.

use std::sync::Arc;

use super::ffi::{self, VerbsPtr};
use super::pd::PdInner;
use super::qp::Endpoint;
use crate::error::{Error, Result};

/// An address handle for UD (`ibv_ah`).
pub struct AddressHandle {
    pub(super) ptr: VerbsPtr<ffi::ibv_ah>,
    pd: Arc<PdInner>,
}
impl Drop for AddressHandle {
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
            ptr,
            pd: pd.clone(),
        })
    }
}
