// SPDX-License-Identifier: GPL-2.0-only
/* tcptrace-bpf wire format: the one authority for what crosses the ring buffer.
 * Mirrored once in Python by tcptrace_bpf/wire.py (and the export index orders by the enums of
 * tcptrace_bpf/model.py): tests/test_header_mirror.py reads this file and checks every constant
 * and the field order, a real-kernel test the layout bcc compiled.
 * Fixed-width fields, largest first, no implicit padding. */
#ifndef TCPTRACE_H
#define TCPTRACE_H

#define TCPTRACE_WIRE_VERSION 2 /* 2: cgroup_id added after skaddr */
#define TCPTRACE_MAX_STATES 8
#define TCPTRACE_COMM_LEN 16

/* record kinds */
#define TT_KIND_OPEN           1 /* a socket's open attempt resolved (one per open) */
#define TT_KIND_REQ_SYNACK_RTX 2 /* a listener's request socket re-sent its SYN-ACK */
#define TT_KIND_EVENT          3 /* raw probe hit, only when built with TCPTRACE_EVENTS */

/* probes, for TT_KIND_EVENT */
#define TT_PROBE_STATE      1 /* state change: states[0] -> states[1] */
#define TT_PROBE_RST_IN     2 /* RST received */
#define TT_PROBE_SYN_IN     3 /* segment received in SYN_SENT (kprobe/fentry backends) */
#define TT_PROBE_SYNACK_OUT 4 /* tcp_send_synack: queued SYN re-sent with ACK */
#define TT_PROBE_DESTROY    5 /* socket destroyed */

/* flags: what the probes saw during the open */
#define TT_F_RST_IN        0x01 /* an RST arrived during the open */
#define TT_F_SYN_IN        0x02 /* a bare SYN arrived in SYN_SENT (crossed SYNs) */
#define TT_F_SYNACK_OUT    0x04 /* tcp_send_synack ran (simultaneous open) */
#define TT_F_NO_START      0x08 /* open began before tracing started */
#define TT_F_DESTROYED     0x10 /* resolved by socket destruction, not a state change */
#define TT_F_REPAIRED      0x20 /* a state change no program ran for was put back: from the next
                                 * change's old state, or read from the socket at destruction */

/* kernel-side loss counters (stats map index) */
#define TT_STAT_RINGBUF_FULL  0 /* ring buffer reserve failed: a record was lost */
#define TT_STAT_TABLE_FULL    1 /* per-socket table full: an open was not tracked */
#define TT_STAT_STALE_ENTRY   2 /* an unresolved entry was replaced by a new open */
#define TT_STAT_UNKNOWN_TRANSITION 3 /* export mode: an open whose path has no name */
#define TT_STAT_MISSED_STATE_CHANGE 4 /* a state change no program ran for (repaired: TT_F_REPAIRED) */
#define TT_STAT_MAX           5

/* Export mode (TCPTRACE_AGGREGATE): each resolved open is classified in the kernel and
 * counted in per-CPU arrays (bpf/tcptrace.bpf.c, "export mode") instead of crossing the ring buffer.
 * Index orders, mirrored by the member orders of model.OpenPath and model.Outcome: */
#define TT_PATH_ACTIVE       0
#define TT_PATH_PASSIVE      1
#define TT_PATH_SIMULTANEOUS 2
#define TT_PATH_SELF         3
#define TT_NPATHS            4
#define TT_OUT_ESTABLISHED   0
#define TT_OUT_REFUSED       1
#define TT_OUT_RESET         2
#define TT_OUT_TIMEOUT       3
#define TT_OUT_UNREACHABLE   4
#define TT_OUT_ABORTED       5
#define TT_OUT_PORT_EXHAUSTED 6
#define TT_NOUTCOMES         7
#define TT_NFAMILIES         2 /* 0: IPv4, 1: IPv6 */

struct tcptrace_record {
	__u64 ts_ns;          /* CLOCK_MONOTONIC (bpf_ktime_get_ns) at resolution */
	__u64 start_ns;       /* when the open began on this socket, 0 if unknown */
	__u64 skaddr;         /* socket (or request socket) address: identity while alive */
	__u64 cgroup_id;      /* cgroup v2 id of the process below, 0 when unknown */
	__u8  saddr[16];      /* local address; IPv4 uses the first 4 bytes */
	__u8  daddr[16];      /* peer address */
	__u32 netns;          /* network namespace inode */
	__u32 pid;            /* tgid that called connect(), or that owns the listener (passive);
	                       * 0 when unknown */
	__u32 passive_us;     /* passive child: SYN-ACK sent -> final ACK, as the kernel timed it */
	__u16 sport;          /* local port, host order */
	__u16 dport;          /* peer port, host order */
	__u16 family;         /* AF_INET / AF_INET6 */
	__u8  kind;           /* TT_KIND_* */
	__u8  probe;          /* TT_PROBE_* for TT_KIND_EVENT */
	__u8  nstates;        /* valid entries of states[] */
	__u8  flags;          /* TT_F_* */
	__u8  sk_err;         /* sk->sk_err when the open resolved (errno) */
	__u8  syn_retrans;    /* SYNs re-sent while in SYN_SENT */
	__u8  synack_retrans; /* SYN-ACKs re-sent (SYN_RECV, or the request socket) */
	__u8  states[TCPTRACE_MAX_STATES]; /* TCP states, oldest first */
	__u8  synack_budget;  /* request records: SYN-ACK re-sends the kernel allows */
	__u8  _pad[6];
	char  comm[TCPTRACE_COMM_LEN];
};

/* Who owns a listening socket: taken at listen() (process context) and seeded from /proc for
 * listeners older than the tracer, so that passive children, born in softirq, can be
 * attributed. Key: network namespace and local port (a v6 listener also takes v4). */
struct tcptrace_listener_key {
	__u32 netns;
	__u16 port;
	__u16 _pad;
};

struct tcptrace_owner {
	__u64 cgroup_id;
	__u32 pid;
	char  comm[TCPTRACE_COMM_LEN];
	__u8  _pad[4];
};

#endif
