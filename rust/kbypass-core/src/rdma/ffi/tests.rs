//! The ABI structs against the sizes and offsets gcc prints for rdma-core 44's headers.

use super::*;
use std::mem::{align_of, offset_of, size_of};

// Expected values: sizeof/offsetof printed by gcc for rdma-core 44's verbs.h on x86-64.
#[test]
fn rdma_cm_layouts() {
    // rdma_cma.h on x86-64: the event's union starts at 24; conn_param is 24 bytes.
    assert_eq!(offset_of!(rdma_cm_event, status), 20);
    assert_eq!(size_of::<rdma_cm_event>(), 24);
    assert_eq!(offset_of!(rdma_conn_param, srq), 14);
    assert_eq!(offset_of!(rdma_conn_param, qp_num), 16);
    assert_eq!(size_of::<rdma_conn_param>(), 24);
}

#[test]
fn device_and_context_layout() {
    assert_eq!(size_of::<ibv_device>(), 664);
    assert_eq!(offset_of!(ibv_device, node_type), 16);
    assert_eq!(offset_of!(ibv_device, name), 24);
    assert_eq!(offset_of!(ibv_device, dev_name), 88);
    assert_eq!(offset_of!(ibv_device, dev_path), 152);
    assert_eq!(offset_of!(ibv_device, ibdev_path), 408);
    assert_eq!(size_of::<ibv_context_ops>(), 256);
    assert_eq!(offset_of!(ibv_context_ops, poll_cq), 88);
    assert_eq!(offset_of!(ibv_context_ops, req_notify_cq), 96);
    assert_eq!(offset_of!(ibv_context_ops, post_srq_recv), 160);
    assert_eq!(offset_of!(ibv_context_ops, post_send), 200);
    assert_eq!(offset_of!(ibv_context_ops, post_recv), 208);
    assert_eq!(size_of::<ibv_context>(), 328);
    assert_eq!(offset_of!(ibv_context, ops), 8);
    assert_eq!(offset_of!(ibv_context, cmd_fd), 264);
    assert_eq!(offset_of!(ibv_context, num_comp_vectors), 272);
    assert_eq!(offset_of!(ibv_context, mutex), 280);
    assert_eq!(offset_of!(ibv_context, abi_compat), 320);
}

#[test]
fn attribute_layouts() {
    assert_eq!(size_of::<ibv_device_attr>(), 232);
    assert_eq!(offset_of!(ibv_device_attr, node_guid), 64);
    assert_eq!(offset_of!(ibv_device_attr, max_mr_size), 80);
    assert_eq!(offset_of!(ibv_device_attr, vendor_id), 96);
    assert_eq!(offset_of!(ibv_device_attr, max_qp), 108);
    assert_eq!(offset_of!(ibv_device_attr, device_cap_flags), 116);
    assert_eq!(offset_of!(ibv_device_attr, max_cqe), 132);
    assert_eq!(offset_of!(ibv_device_attr, atomic_cap), 164);
    assert_eq!(offset_of!(ibv_device_attr, max_srq_sge), 220);
    assert_eq!(offset_of!(ibv_device_attr, max_pkeys), 224);
    assert_eq!(offset_of!(ibv_device_attr, phys_port_cnt), 227);
    assert_eq!(size_of::<ibv_port_attr>(), 52);
    assert_eq!(offset_of!(ibv_port_attr, gid_tbl_len), 12);
    assert_eq!(offset_of!(ibv_port_attr, pkey_tbl_len), 32);
    assert_eq!(offset_of!(ibv_port_attr, lid), 34);
    assert_eq!(offset_of!(ibv_port_attr, lmc), 38);
    assert_eq!(offset_of!(ibv_port_attr, phys_state), 45);
    assert_eq!(offset_of!(ibv_port_attr, link_layer), 46);
    assert_eq!(offset_of!(ibv_port_attr, flags), 47);
    assert_eq!(offset_of!(ibv_port_attr, port_cap_flags2), 48);
    assert_eq!((size_of::<ibv_gid>(), align_of::<ibv_gid>()), (16, 8));
}

#[test]
fn object_layouts() {
    assert_eq!(size_of::<ibv_pd>(), 16);
    assert_eq!(size_of::<ibv_mr>(), 48);
    assert_eq!(offset_of!(ibv_mr, addr), 16);
    assert_eq!(offset_of!(ibv_mr, length), 24);
    assert_eq!(offset_of!(ibv_mr, handle), 32);
    assert_eq!(offset_of!(ibv_mr, lkey), 36);
    assert_eq!(offset_of!(ibv_mr, rkey), 40);
    assert_eq!(size_of::<ibv_cq>(), 128);
    assert_eq!(offset_of!(ibv_cq, channel), 8);
    assert_eq!(offset_of!(ibv_cq, cqe), 28);
    assert_eq!(offset_of!(ibv_cq, mutex), 32);
    assert_eq!(offset_of!(ibv_cq, cond), 72);
    assert_eq!(offset_of!(ibv_cq, comp_events_completed), 120);
    assert_eq!(size_of::<ibv_comp_channel>(), 16);
    assert_eq!(offset_of!(ibv_comp_channel, fd), 8);
    assert_eq!(size_of::<ibv_qp>(), 160);
    assert_eq!(offset_of!(ibv_qp, pd), 16);
    assert_eq!(offset_of!(ibv_qp, srq), 40);
    assert_eq!(offset_of!(ibv_qp, qp_num), 52);
    assert_eq!(offset_of!(ibv_qp, state), 56);
    assert_eq!(offset_of!(ibv_qp, qp_type), 60);
    assert_eq!(offset_of!(ibv_qp, mutex), 64);
    assert_eq!(offset_of!(ibv_qp, cond), 104);
    assert_eq!(offset_of!(ibv_qp, events_completed), 152);
    assert_eq!(size_of::<ibv_ah>(), 24);
    assert_eq!(size_of::<ibv_srq>(), 128);
    assert_eq!(offset_of!(ibv_srq, handle), 24);
    assert_eq!(size_of::<ibv_srq_attr>(), 12);
    assert_eq!(size_of::<ibv_srq_init_attr>(), 24);
    assert_eq!(offset_of!(ibv_srq_init_attr, attr), 8);
    // verbs.h: a union of four pointers and an int, then the enum
    assert_eq!(size_of::<ibv_async_event>(), 16);
    assert_eq!(offset_of!(ibv_async_event, event_type), 8);
    assert_eq!(event_name(EVENT_SRQ_LIMIT_REACHED), "SRQ_LIMIT_REACHED");
    assert_eq!(event_name(EVENT_SRQ_ERR), "SRQ_ERR");
    assert_eq!(event_name(19), "WQ_FATAL");
    assert_eq!(event_name(20), "UNKNOWN");
    assert_eq!(event_name(-1), "UNKNOWN");
}

#[test]
fn qp_attribute_layouts() {
    assert_eq!(size_of::<ibv_qp_cap>(), 20);
    assert_eq!(size_of::<ibv_qp_init_attr>(), 64);
    assert_eq!(offset_of!(ibv_qp_init_attr, cap), 32);
    assert_eq!(offset_of!(ibv_qp_init_attr, qp_type), 52);
    assert_eq!(offset_of!(ibv_qp_init_attr, sq_sig_all), 56);
    assert_eq!(size_of::<ibv_global_route>(), 24);
    assert_eq!(offset_of!(ibv_global_route, flow_label), 16);
    assert_eq!(offset_of!(ibv_global_route, sgid_index), 20);
    assert_eq!(offset_of!(ibv_global_route, hop_limit), 21);
    assert_eq!(offset_of!(ibv_global_route, traffic_class), 22);
    assert_eq!(size_of::<ibv_ah_attr>(), 32);
    assert_eq!(offset_of!(ibv_ah_attr, dlid), 24);
    assert_eq!(offset_of!(ibv_ah_attr, sl), 26);
    assert_eq!(offset_of!(ibv_ah_attr, static_rate), 28);
    assert_eq!(offset_of!(ibv_ah_attr, is_global), 29);
    assert_eq!(offset_of!(ibv_ah_attr, port_num), 30);
    assert_eq!(size_of::<ibv_qp_attr>(), 144);
    assert_eq!(offset_of!(ibv_qp_attr, qkey), 16);
    assert_eq!(offset_of!(ibv_qp_attr, rq_psn), 20);
    assert_eq!(offset_of!(ibv_qp_attr, sq_psn), 24);
    assert_eq!(offset_of!(ibv_qp_attr, dest_qp_num), 28);
    assert_eq!(offset_of!(ibv_qp_attr, qp_access_flags), 32);
    assert_eq!(offset_of!(ibv_qp_attr, cap), 36);
    assert_eq!(offset_of!(ibv_qp_attr, ah_attr), 56);
    assert_eq!(offset_of!(ibv_qp_attr, alt_ah_attr), 88);
    assert_eq!(offset_of!(ibv_qp_attr, pkey_index), 120);
    assert_eq!(offset_of!(ibv_qp_attr, max_rd_atomic), 126);
    assert_eq!(offset_of!(ibv_qp_attr, max_dest_rd_atomic), 127);
    assert_eq!(offset_of!(ibv_qp_attr, min_rnr_timer), 128);
    assert_eq!(offset_of!(ibv_qp_attr, port_num), 129);
    assert_eq!(offset_of!(ibv_qp_attr, timeout), 130);
    assert_eq!(offset_of!(ibv_qp_attr, retry_cnt), 131);
    assert_eq!(offset_of!(ibv_qp_attr, rnr_retry), 132);
    assert_eq!(offset_of!(ibv_qp_attr, alt_timeout), 134);
    assert_eq!(offset_of!(ibv_qp_attr, rate_limit), 136);
}

#[test]
fn work_request_and_completion_layouts() {
    assert_eq!(size_of::<ibv_sge>(), 16);
    assert_eq!(size_of::<ibv_send_wr>(), 128);
    assert_eq!(offset_of!(ibv_send_wr, next), 8);
    assert_eq!(offset_of!(ibv_send_wr, sg_list), 16);
    assert_eq!(offset_of!(ibv_send_wr, num_sge), 24);
    assert_eq!(offset_of!(ibv_send_wr, opcode), 28);
    assert_eq!(offset_of!(ibv_send_wr, send_flags), 32);
    assert_eq!(offset_of!(ibv_send_wr, imm_data), 36);
    // wr.rdma.remote_addr / wr.atomic.remote_addr / wr.ud.ah at 40; rkey (rdma),
    // compare_add (atomic) and remote_qpn (ud) at 48; swap 56; atomic rkey 64.
    assert_eq!(offset_of!(ibv_send_wr, wr), 40);
    assert_eq!(offset_of!(ibv_send_wr, wr) + offset_of!(send_wr_wr, w1), 48);
    assert_eq!(offset_of!(ibv_send_wr, wr) + offset_of!(send_wr_wr, w2), 56);
    assert_eq!(offset_of!(ibv_send_wr, wr) + offset_of!(send_wr_wr, w3), 64);
    assert_eq!(offset_of!(ibv_send_wr, qp_type), 72);
    assert_eq!(offset_of!(ibv_send_wr, _bind_mw), 80);
    assert_eq!(size_of::<ibv_recv_wr>(), 32);
    assert_eq!(size_of::<ibv_wc>(), 48);
    assert_eq!(offset_of!(ibv_wc, status), 8);
    assert_eq!(offset_of!(ibv_wc, opcode), 12);
    assert_eq!(offset_of!(ibv_wc, vendor_err), 16);
    assert_eq!(offset_of!(ibv_wc, byte_len), 20);
    assert_eq!(offset_of!(ibv_wc, imm_data), 24);
    assert_eq!(offset_of!(ibv_wc, qp_num), 28);
    assert_eq!(offset_of!(ibv_wc, src_qp), 32);
    assert_eq!(offset_of!(ibv_wc, wc_flags), 36);
    assert_eq!(offset_of!(ibv_wc, pkey_index), 40);
    assert_eq!(offset_of!(ibv_wc, slid), 42);
    assert_eq!(offset_of!(ibv_wc, sl), 44);
    assert_eq!(offset_of!(ibv_wc, dlid_path_bits), 45);
}
