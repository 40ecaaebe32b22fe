// SPDX-License-Identifier: MIT OR Apache-2.0
//
// xsk_ref: the C reference for kbypass's AF_XDP benchmarks, on Debian's libxdp (xdp/xsk.h:
// UMEM, socket creation, ring operations) and libbpf (map, program load, bpf_link attach).
//
//   xsk_ref rxdrop  -i IF [-q QUEUE] [-d SECONDS] [-b BATCH] [-g]
//   xsk_ref l2fwd   -i IF [-q QUEUE] [-d SECONDS] [-b BATCH] [-g]
//   xsk_ref udpecho -i IF [-q QUEUE] [-d SECONDS] [-b BATCH] [-g]
//   xsk_ref txflood -i IF -f FRAME_FILE [-q QUEUE] [-n COUNT] [-d SECONDS] [-b BATCH]
//
// rxdrop: attach a 6-instruction XDP program (redirect to the queue's socket, else XDP_PASS;
//         native mode, -g for generic) through a bpf_link, bind a copy-mode socket with
//         need_wakeup, and give every received frame straight back to the FILL ring.
// l2fwd: as rxdrop, but swap the MAC addresses of every frame and send it back out.
// udpecho: as rxdrop, but answer sockperf's UDP requests over IPv4 as `sockperf server` does
//          (requests that ask for an answer and are not warm-up messages get it: the client flag
//          cleared, the UDP checksum computed, MACs, IPs and ports swapped, sent back out; every
//          other frame goes back to the FILL ring). Spins on the rings, never sleeps.
// txflood: bind a copy-mode socket and send the frame read from FRAME_FILE as fast as the TX
//          and COMPLETION rings allow.
// Same geometry as kbypass's defaults: 4096 frames of 2048 bytes, rings of 2048 entries.
// Prints one line: "packets=N bytes=B elapsed=SECONDS pps=RATE" followed by the socket's
// XDP_STATISTICS (rx_dropped, rx_ring_full, fill_ring_empty, tx_invalid). For rxdrop, elapsed runs from
// the first to the last received frame (like kbypass's rx_drop); for txflood, from the start to
// the last completion.
//
// Build: gcc -O2 -o xsk_ref xsk_ref.c -lxdp -lbpf

#include <errno.h>
#include <getopt.h>
#include <linux/bpf.h>
#include <linux/if_link.h>
#include <linux/if_xdp.h>
#include <net/if.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <xdp/xsk.h>

#define NUM_FRAMES 4096
#define FRAME_SIZE 2048
#define RING_SIZE 2048
#define MAX_BATCH 1024

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig) {
    (void)sig;
    stop_requested = 1;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(const char *what, int err) {
    fprintf(stderr, "xsk_ref: %s: %s (errno %d)\n", what, strerror(err), err);
    exit(1);
}

struct ctx {
    void *area;
    struct xsk_umem *umem;
    struct xsk_socket *xsk;
    struct xsk_ring_prod fill;
    struct xsk_ring_cons comp;
    struct xsk_ring_cons rx;
    struct xsk_ring_prod tx;
    int map_fd, prog_fd, link_fd;
};

static void setup_umem(struct ctx *c) {
    size_t len = (size_t)NUM_FRAMES * FRAME_SIZE;
    c->area = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE,
                   -1, 0);
    if (c->area == MAP_FAILED) die("mmap UMEM", errno);
    struct xsk_umem_config cfg = {
        .fill_size = RING_SIZE,
        .comp_size = RING_SIZE,
        .frame_size = FRAME_SIZE,
        .frame_headroom = 0,
        .flags = 0,
    };
    int r = xsk_umem__create(&c->umem, c->area, len, &c->fill, &c->comp, &cfg);
    if (r) die("xsk_umem__create", -r);
}

// The default AF_XDP program: return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS).
static void load_program(struct ctx *c) {
    c->map_fd = bpf_map_create(BPF_MAP_TYPE_XSKMAP, "xsk_ref_map", 4, 4, 64, NULL);
    if (c->map_fd < 0) die("bpf_map_create(XSKMAP)", errno);
    struct bpf_insn insns[] = {
        {.code = BPF_LDX | BPF_MEM | BPF_W, .dst_reg = 2, .src_reg = 1, .off = 16},
        {.code = BPF_LD | BPF_DW | BPF_IMM, .dst_reg = 1, .src_reg = BPF_PSEUDO_MAP_FD,
         .imm = c->map_fd},
        {0},
        {.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = 3, .imm = XDP_PASS},
        {.code = BPF_JMP | BPF_CALL, .imm = BPF_FUNC_redirect_map},
        {.code = BPF_JMP | BPF_EXIT},
    };
    c->prog_fd = bpf_prog_load(BPF_PROG_TYPE_XDP, "xsk_ref", "GPL", insns,
                               sizeof(insns) / sizeof(insns[0]), NULL);
    if (c->prog_fd < 0) die("bpf_prog_load", errno);
}

static void attach_program(struct ctx *c, int ifindex, int generic) {
    LIBBPF_OPTS(bpf_link_create_opts, opts,
                .flags = generic ? XDP_FLAGS_SKB_MODE : XDP_FLAGS_DRV_MODE);
    // A bpf_link: the kernel detaches the program when this process exits, however it exits.
    c->link_fd = bpf_link_create(c->prog_fd, ifindex, BPF_XDP, &opts);
    if (c->link_fd < 0) die("bpf_link_create(XDP)", errno);
}

static void create_socket(struct ctx *c, const char *ifname, int queue, int rx, int tx) {
    struct xsk_socket_config cfg = {
        .rx_size = RING_SIZE,
        .tx_size = RING_SIZE,
        .libxdp_flags = XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD,
        .xdp_flags = 0,
        .bind_flags = XDP_COPY | XDP_USE_NEED_WAKEUP,
    };
    // A queue can stay busy for ~100 ms after the previous socket on it closed.
    double deadline = now_s() + 2.0;
    for (;;) {
        int r = xsk_socket__create(&c->xsk, ifname, queue, c->umem, rx ? &c->rx : NULL,
                                   tx ? &c->tx : NULL, &cfg);
        if (r == 0) return;
        if (r != -EBUSY || now_s() > deadline) die("xsk_socket__create", -r);
        usleep(10000);
    }
}

static void report(int fd, unsigned long long packets, unsigned long long bytes,
                   double elapsed) {
    struct xdp_statistics st = {0};
    socklen_t optlen = sizeof(st);
    if (getsockopt(fd, SOL_XDP, XDP_STATISTICS, &st, &optlen) != 0) memset(&st, 0, sizeof(st));
    printf("packets=%llu bytes=%llu elapsed=%.6f pps=%.1f rx_dropped=%llu rx_ring_full=%llu "
           "fill_ring_empty=%llu tx_invalid=%llu\n",
           packets, bytes, elapsed, elapsed > 0 ? (double)packets / elapsed : 0.0,
           (unsigned long long)st.rx_dropped, (unsigned long long)st.rx_ring_full,
           (unsigned long long)st.rx_fill_ring_empty_descs,
           (unsigned long long)st.tx_invalid_descs);
    fflush(stdout);
}

static void rxdrop(struct ctx *c, int fd, double duration, unsigned batch) {
    uint32_t idx;
    // Hand every frame to the kernel: the FILL ring holds RING_SIZE, the rest wait their turn.
    unsigned n = xsk_ring_prod__reserve(&c->fill, RING_SIZE, &idx);
    for (unsigned i = 0; i < n; i++)
        *xsk_ring_prod__fill_addr(&c->fill, idx + i) = (uint64_t)i * FRAME_SIZE;
    xsk_ring_prod__submit(&c->fill, n);

    unsigned long long packets = 0, bytes = 0;
    double start = now_s(), first = 0, last = 0;
    unsigned idle = 0;
    while (!stop_requested) {
        uint32_t idx_rx, idx_fq;
        unsigned got = xsk_ring_cons__peek(&c->rx, batch, &idx_rx);
        if (!got) {
            if (xsk_ring_prod__needs_wakeup(&c->fill))
                recvfrom(fd, NULL, 0, MSG_DONTWAIT, NULL, NULL);
            if ((++idle & 63) == 0 && now_s() - start >= duration) break;
            continue;
        }
        idle = 0;
        while (xsk_ring_prod__reserve(&c->fill, got, &idx_fq) != got) {
            if (xsk_ring_prod__needs_wakeup(&c->fill))
                recvfrom(fd, NULL, 0, MSG_DONTWAIT, NULL, NULL);
        }
        for (unsigned i = 0; i < got; i++) {
            const struct xdp_desc *d = xsk_ring_cons__rx_desc(&c->rx, idx_rx + i);
            bytes += d->len;
            *xsk_ring_prod__fill_addr(&c->fill, idx_fq + i) = xsk_umem__extract_addr(d->addr);
        }
        xsk_ring_prod__submit(&c->fill, got);
        xsk_ring_cons__release(&c->rx, got);
        packets += got;
        double t = now_s();
        if (!first) first = t;
        last = t;
        if (t - start >= duration) break;
    }
    report(fd, packets, bytes, packets > 1 && last > first ? last - first : now_s() - start);
}

static void txflood(struct ctx *c, int fd, const unsigned char *frame, unsigned len,
                    unsigned long long count, double duration, unsigned batch) {
    uint64_t free_addrs[NUM_FRAMES];
    unsigned nfree = 0;
    for (unsigned i = 0; i < NUM_FRAMES; i++) {
        memcpy((char *)c->area + (size_t)i * FRAME_SIZE, frame, len);
        free_addrs[nfree++] = (uint64_t)i * FRAME_SIZE;
    }
    unsigned long long sent = 0;
    unsigned outstanding = 0;
    double start = now_s();
    while (!stop_requested && sent < count) {
        uint32_t idx;
        unsigned done = xsk_ring_cons__peek(&c->comp, RING_SIZE, &idx);
        for (unsigned i = 0; i < done; i++)
            free_addrs[nfree++] = *xsk_ring_cons__comp_addr(&c->comp, idx + i);
        xsk_ring_cons__release(&c->comp, done);
        outstanding -= done;
        unsigned want = batch;
        if (want > nfree) want = nfree;
        if (want > count - sent) want = (unsigned)(count - sent);
        if (want && xsk_ring_prod__reserve(&c->tx, want, &idx) == want) {
            for (unsigned i = 0; i < want; i++) {
                struct xdp_desc *d = xsk_ring_prod__tx_desc(&c->tx, idx + i);
                d->addr = free_addrs[--nfree];
                d->len = len;
                d->options = 0;
            }
            xsk_ring_prod__submit(&c->tx, want);
            sent += want;
            outstanding += want;
        }
        // Copy mode transmits inside sendto().
        if (xsk_ring_prod__needs_wakeup(&c->tx)) sendto(fd, NULL, 0, MSG_DONTWAIT, NULL, 0);
        if ((sent & 0xffff) < batch && now_s() - start >= duration) break;
    }
    double deadline = now_s() + 0.5;
    while (outstanding && now_s() < deadline) {
        uint32_t idx;
        sendto(fd, NULL, 0, MSG_DONTWAIT, NULL, 0);
        unsigned done = xsk_ring_cons__peek(&c->comp, RING_SIZE, &idx);
        xsk_ring_cons__release(&c->comp, done);
        outstanding -= done;
    }
    report(fd, sent - outstanding, (sent - outstanding) * len, now_s() - start);
}

// l2fwd (as xdpsock -l): receive a batch, swap the MAC addresses, send it back out of the same
// socket; completed TX frames go straight back to the FILL ring.
static void l2fwd(struct ctx *c, int fd, double duration, unsigned batch) {
    uint32_t idx;
    unsigned n = xsk_ring_prod__reserve(&c->fill, RING_SIZE, &idx);
    for (unsigned i = 0; i < n; i++)
        *xsk_ring_prod__fill_addr(&c->fill, idx + i) = (uint64_t)i * FRAME_SIZE;
    xsk_ring_prod__submit(&c->fill, n);
    unsigned long long packets = 0, bytes = 0, sent = 0;
    double start = now_s(), first = 0, last = 0;
    unsigned idle = 0;
    while (!stop_requested) {
        uint32_t idx_cq, idx_fq, idx_rx, idx_tx;
        // Completions back to FILL.
        unsigned done = xsk_ring_cons__peek(&c->comp, RING_SIZE, &idx_cq);
        if (done) {
            while (xsk_ring_prod__reserve(&c->fill, done, &idx_fq) != done) {
                if (xsk_ring_prod__needs_wakeup(&c->fill))
                    recvfrom(fd, NULL, 0, MSG_DONTWAIT, NULL, NULL);
            }
            for (unsigned i = 0; i < done; i++)
                *xsk_ring_prod__fill_addr(&c->fill, idx_fq + i) =
                    *xsk_ring_cons__comp_addr(&c->comp, idx_cq + i);
            xsk_ring_prod__submit(&c->fill, done);
            xsk_ring_cons__release(&c->comp, done);
        }
        unsigned got = xsk_ring_cons__peek(&c->rx, batch, &idx_rx);
        if (!got) {
            if (xsk_ring_prod__needs_wakeup(&c->fill))
                recvfrom(fd, NULL, 0, MSG_DONTWAIT, NULL, NULL);
            if (xsk_ring_prod__needs_wakeup(&c->tx)) sendto(fd, NULL, 0, MSG_DONTWAIT, NULL, 0);
            if ((++idle & 63) == 0 && now_s() - start >= duration) break;
            continue;
        }
        idle = 0;
        while (xsk_ring_prod__reserve(&c->tx, got, &idx_tx) != got) {
            if (xsk_ring_prod__needs_wakeup(&c->tx)) sendto(fd, NULL, 0, MSG_DONTWAIT, NULL, 0);
        }
        for (unsigned i = 0; i < got; i++) {
            const struct xdp_desc *d = xsk_ring_cons__rx_desc(&c->rx, idx_rx + i);
            uint64_t addr = xsk_umem__add_offset_to_addr(d->addr);
            unsigned char *p = xsk_umem__get_data(c->area, addr), tmp[6];
            memcpy(tmp, p, 6);
            memcpy(p, p + 6, 6);
            memcpy(p + 6, tmp, 6);
            struct xdp_desc *t = xsk_ring_prod__tx_desc(&c->tx, idx_tx + i);
            t->addr = d->addr;
            t->len = d->len;
            t->options = 0;
            bytes += d->len;
        }
        xsk_ring_prod__submit(&c->tx, got);
        xsk_ring_cons__release(&c->rx, got);
        if (xsk_ring_prod__needs_wakeup(&c->tx)) sendto(fd, NULL, 0, MSG_DONTWAIT, NULL, 0);
        packets += got;
        sent += got;
        double t = now_s();
        if (!first) first = t;
        last = t;
        if (t - start >= duration) break;
    }
    report(fd, packets, bytes, packets > 1 && last > first ? last - first : now_s() - start);
}

// sockperf's message header (the UDP payload): u64 sequence number, u16 flags, u32 length, all
// big-endian; flag bits: 1 the sender is a client, 2 it asks for an answer, 4 a warm-up message.
#define SOCKPERF_FLAGS_LOW 9 // the low byte of the flags
#define SOCKPERF_CLIENT 1
#define SOCKPERF_PONG 2
#define SOCKPERF_WARMUP 4

// Answer one frame in place; 0 if it is not a sockperf request to answer.
static int sockperf_answer(unsigned char *p, unsigned len) {
    if (len < 14 + 20 + 8 + 14 || p[12] != 0x08 || p[13] != 0x00) return 0; // IPv4
    unsigned char *ip = p + 14;
    unsigned ihl = (unsigned)(ip[0] & 0x0f) * 4;
    if ((ip[0] >> 4) != 4 || ihl < 20 || ip[9] != 17 || len < 14 + ihl + 8 + 14) return 0;
    unsigned char *udp = ip + ihl, *msg = udp + 8, tmp[6];
    unsigned char flags = msg[SOCKPERF_FLAGS_LOW];
    if ((flags & (SOCKPERF_CLIENT | SOCKPERF_PONG | SOCKPERF_WARMUP)) !=
        (SOCKPERF_CLIENT | SOCKPERF_PONG))
        return 0;
    msg[SOCKPERF_FLAGS_LOW] = flags & ~SOCKPERF_CLIENT;
    // A full UDP checksum, as kbypass's fix_checksums computes it: what arrives from a veth peer
    // with checksum offload carries only the pseudo-header sum, so an incremental update of it
    // would not give a valid checksum.
    unsigned udp_len = (unsigned)(udp[4] << 8 | udp[5]);
    if (udp_len < 8 || 14 + ihl + udp_len > len) return 0;
    uint32_t sum = 17 + udp_len;
    for (unsigned i = 12; i < 20; i += 2) sum += (uint32_t)(ip[i] << 8 | ip[i + 1]);
    udp[6] = udp[7] = 0;
    for (unsigned i = 0; i + 1 < udp_len; i += 2) sum += (uint32_t)(udp[i] << 8 | udp[i + 1]);
    if (udp_len & 1) sum += (uint32_t)udp[udp_len - 1] << 8;
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    uint16_t csum = (uint16_t)~sum;
    if (!csum) csum = 0xffff;
    udp[6] = (unsigned char)(csum >> 8);
    udp[7] = (unsigned char)csum;
    // Swapping addresses and ports keeps both checksums valid (the sums do not change).
    memcpy(tmp, p, 6); memcpy(p, p + 6, 6); memcpy(p + 6, tmp, 6);
    memcpy(tmp, ip + 12, 4); memcpy(ip + 12, ip + 16, 4); memcpy(ip + 16, tmp, 4);
    memcpy(tmp, udp, 2); memcpy(udp, udp + 2, 2); memcpy(udp + 2, tmp, 2);
    return 1;
}

// udpecho: see the top of the file. Completed TX frames and frames not answered go back to FILL.
static void udpecho(struct ctx *c, int fd, double duration, unsigned batch) {
    uint32_t idx;
    unsigned n = xsk_ring_prod__reserve(&c->fill, RING_SIZE, &idx);
    for (unsigned i = 0; i < n; i++)
        *xsk_ring_prod__fill_addr(&c->fill, idx + i) = (uint64_t)i * FRAME_SIZE;
    xsk_ring_prod__submit(&c->fill, n);
    unsigned long long packets = 0, bytes = 0, answered = 0;
    double start = now_s(), first = 0, last = 0;
    unsigned idle = 0;
    uint64_t back[MAX_BATCH];
    struct xdp_desc answers[MAX_BATCH];
    while (!stop_requested) {
        uint32_t idx_cq, idx_fq, idx_rx, idx_tx;
        unsigned done = xsk_ring_cons__peek(&c->comp, RING_SIZE, &idx_cq);
        if (done) {
            while (xsk_ring_prod__reserve(&c->fill, done, &idx_fq) != done) {
                if (xsk_ring_prod__needs_wakeup(&c->fill))
                    recvfrom(fd, NULL, 0, MSG_DONTWAIT, NULL, NULL);
            }
            for (unsigned i = 0; i < done; i++)
                *xsk_ring_prod__fill_addr(&c->fill, idx_fq + i) =
                    *xsk_ring_cons__comp_addr(&c->comp, idx_cq + i);
            xsk_ring_prod__submit(&c->fill, done);
            xsk_ring_cons__release(&c->comp, done);
        }
        unsigned got = xsk_ring_cons__peek(&c->rx, batch, &idx_rx);
        if (!got) {
            if (xsk_ring_prod__needs_wakeup(&c->fill))
                recvfrom(fd, NULL, 0, MSG_DONTWAIT, NULL, NULL);
            if (xsk_ring_prod__needs_wakeup(&c->tx)) sendto(fd, NULL, 0, MSG_DONTWAIT, NULL, 0);
            if ((++idle & 63) == 0 && now_s() - start >= duration) break;
            continue;
        }
        idle = 0;
        unsigned out = 0, nback = 0;
        for (unsigned i = 0; i < got; i++) {
            const struct xdp_desc *d = xsk_ring_cons__rx_desc(&c->rx, idx_rx + i);
            uint64_t addr = xsk_umem__add_offset_to_addr(d->addr);
            bytes += d->len;
            if (sockperf_answer(xsk_umem__get_data(c->area, addr), d->len))
                answers[out++] = *d;
            else
                back[nback++] = xsk_umem__extract_addr(d->addr);
        }
        if (out) {
            while (xsk_ring_prod__reserve(&c->tx, out, &idx_tx) != out) {
                if (xsk_ring_prod__needs_wakeup(&c->tx))
                    sendto(fd, NULL, 0, MSG_DONTWAIT, NULL, 0);
            }
            for (unsigned i = 0; i < out; i++) {
                struct xdp_desc *t = xsk_ring_prod__tx_desc(&c->tx, idx_tx + i);
                t->addr = answers[i].addr;
                t->len = answers[i].len;
                t->options = 0;
            }
            xsk_ring_prod__submit(&c->tx, out);
        }
        xsk_ring_cons__release(&c->rx, got);
        if (nback) {
            while (xsk_ring_prod__reserve(&c->fill, nback, &idx_fq) != nback) {
                if (xsk_ring_prod__needs_wakeup(&c->fill))
                    recvfrom(fd, NULL, 0, MSG_DONTWAIT, NULL, NULL);
            }
            for (unsigned i = 0; i < nback; i++)
                *xsk_ring_prod__fill_addr(&c->fill, idx_fq + i) = back[i];
            xsk_ring_prod__submit(&c->fill, nback);
        }
        if (out && xsk_ring_prod__needs_wakeup(&c->tx)) sendto(fd, NULL, 0, MSG_DONTWAIT, NULL, 0);
        packets += got;
        answered += out;
        double t = now_s();
        if (!first) first = t;
        last = t;
        if (t - start >= duration) break;
    }
    report(fd, packets, bytes, packets > 1 && last > first ? last - first : now_s() - start);
    printf("answered=%llu\n", answered);
    fflush(stdout);
}

static void usage(void) {
    fprintf(stderr,
            "usage: xsk_ref rxdrop  -i IF [-q QUEUE] [-d SECONDS] [-b BATCH] [-g]\n"
            "       xsk_ref l2fwd   -i IF [-q QUEUE] [-d SECONDS] [-b BATCH] [-g]\n"
            "       xsk_ref udpecho -i IF [-q QUEUE] [-d SECONDS] [-b BATCH] [-g]\n"
            "       xsk_ref txflood -i IF -f FRAME_FILE [-q QUEUE] [-n COUNT] [-d SECONDS] "
            "[-b BATCH]\n");
    exit(2);
}

int main(int argc, char **argv) {
    if (argc < 2) usage();
    const char *mode = argv[1];
    int is_echo = strcmp(mode, "udpecho") == 0;
    int is_fwd = strcmp(mode, "l2fwd") == 0 || is_echo;
    int is_rx = strcmp(mode, "rxdrop") == 0 || is_fwd, is_tx = strcmp(mode, "txflood") == 0;
    if (!is_rx && !is_tx) usage();
    const char *ifname = NULL, *frame_file = NULL;
    int queue = 0, generic = 0, opt;
    double duration = 1.0;
    unsigned batch = 64;
    unsigned long long count = ~0ULL;
    optind = 2;
    while ((opt = getopt(argc, argv, "i:q:d:b:n:f:g")) != -1) {
        switch (opt) {
        case 'i': ifname = optarg; break;
        case 'q': queue = atoi(optarg); break;
        case 'd': duration = atof(optarg); break;
        case 'b': batch = (unsigned)atoi(optarg); break;
        case 'n': count = strtoull(optarg, NULL, 10); break;
        case 'f': frame_file = optarg; break;
        case 'g': generic = 1; break;
        default: usage();
        }
    }
    if (!ifname || (is_tx && !frame_file) || batch == 0 || batch > MAX_BATCH || duration <= 0)
        usage();
    int ifindex = (int)if_nametoindex(ifname);
    if (!ifindex) die(ifname, errno);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);

    unsigned char frame[FRAME_SIZE];
    unsigned len = 0;
    if (is_tx) {
        FILE *f = fopen(frame_file, "rb");
        if (!f) die(frame_file, errno);
        len = (unsigned)fread(frame, 1, sizeof(frame), f);
        fclose(f);
        if (len < 14) die("frame file shorter than an Ethernet header", EINVAL);
    }

    struct ctx c = {.map_fd = -1, .prog_fd = -1, .link_fd = -1};
    setup_umem(&c);
    if (is_rx) {
        load_program(&c);
        attach_program(&c, ifindex, generic);
    }
    create_socket(&c, ifname, queue, is_rx, is_tx || is_fwd);
    int fd = xsk_socket__fd(c.xsk);
    if (is_rx) {
        int r = xsk_socket__update_xskmap(c.xsk, c.map_fd);
        if (r) die("xsk_socket__update_xskmap", -r);
        if (is_echo)
            udpecho(&c, fd, duration, batch);
        else if (is_fwd)
            l2fwd(&c, fd, duration, batch);
        else
            rxdrop(&c, fd, duration, batch);
    } else {
        txflood(&c, fd, frame, len, count, duration, batch);
    }
    xsk_socket__delete(c.xsk);
    xsk_umem__delete(c.umem);
    if (c.link_fd >= 0) close(c.link_fd);
    if (c.prog_fd >= 0) close(c.prog_fd);
    if (c.map_fd >= 0) close(c.map_fd);
    munmap(c.area, (size_t)NUM_FRAMES * FRAME_SIZE);
    return 0;
}
