// SPDX-License-Identifier: GPL-2.0-only
/* tcptrace-bpf wire format: the one authority for what crosses the ring buffer.
 * Mirrored once in Python by tcptrace_bpf/wire.py (and the export index orders by the enums of
 * tcptrace_bpf/model.py): tests/test_header_mirror.py reads this file and checks every constant
 * and the field order, a real-kernel test the layout bcc compiled.
 * Fixed-width fields, largest first, no implicit padding. */
#ifndef TCPTRACE_H
#define TCPTRACE_H

#define TCPTRACE_WIRE_VERSION 3 /* 2: cgroup_id added after skaddr; 3: open_flags */
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

/* open_flags: what the handshake carried (issue 12's "flags") */
#define TT_OF_FASTOPEN  0x01 /* active: the peer acknowledged data sent in the SYN; passive: the
                              * child was created by the SYN itself (Fast Open) */
#define TT_OF_SYNCOOKIE 0x02 /* passive: the child was rebuilt from a valid SYN cookie */
#define TT_NOPENFLAGS   2    /* export counters: agg_flagged[path * TT_NOPENFLAGS + bit] */

/* kernel-side loss counters (stats map index) */
#define TT_STAT_RINGBUF_FULL  0 /* ring buffer reserve failed: a record was lost */
#define TT_STAT_TABLE_FULL    1 /* per-socket table full: an open was not tracked */
#define TT_STAT_STALE_ENTRY   2 /* an unresolved entry was replaced by a new open */
#define TT_STAT_UNKNOWN_TRANSITION 3 /* export mode: an open whose path has no name */
#define TT_STAT_MISSED_STATE_CHANGE 4 /* a state change no program ran for (repaired: TT_F_REPAIRED) */
#define TT_STAT_LISTEN_DROP_INFERRED 5 /* a listener's SYN bracket overlapped another CPU's: its
                                    * drop reason (or cookie) is inferred, not observed alone */
#define TT_STAT_LISTENER_TABLE_FULL 6 /* a listening socket could not be tracked */
#define TT_STAT_LISTEN_PORT_FULL 7 /* per-port counters full: counted under port 0 ("other") */
#define TT_STAT_LISTEN_UNCLOSED 8 /* a listener SYN's bracket was never closed (its skb
                                   * freed without consume_skb/kfree_skb); a drop its queue
                                   * predicate gives is then inferred (see retire()) */
#define TT_STAT_MAX           9

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
	__u8  open_flags;     /* TT_OF_*: how the handshake itself went */
	__u8  _pad[5];
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

/* Listener side (issue 12). What a listening socket dropped and sent, counted in the kernel
 * per socket (map listen_socks, key: the socket's address) and per local port (listen_ports,
 * key: port; 0 collects ports that found the map full). The queue figures are read on
 * request by the snapshot program (tt_listener_snapshot), as ss reads them. */
#define TT_DROP_ACCEPT_QUEUE 0 /* accept queue full: at SYN time, or the final (or cookie) ACK */
#define TT_DROP_SYN_QUEUE    1 /* SYN queue full and no SYN cookies */
#define TT_DROP_OTHER        2 /* the kernel counted a ListenDrop for another reason */
#define TT_NDROPS            3

struct tcptrace_listen_counts {
	__u64 drops[TT_NDROPS];
	__u64 syncookies_sent;
	__u64 synack_retransmits;
	__u64 passive_opens;      /* children born (LISTEN > SYN_RECV) */
};                                /* (per port: drops and cookies only, the rest stays 0) */

struct tcptrace_listener {
	struct tcptrace_listen_counts c;
	__u64 cgroup_id;
	__u8  addr[16];           /* bound address; IPv4 uses the first 4 bytes */
	__u32 netns;
	__u32 pid;                /* owner: who called listen(), 0 if before tracing */
	__u32 accept_queue;       /* snapshot: sk_ack_backlog */
	__u32 accept_queue_max;   /* snapshot: sk_max_ack_backlog */
	__u32 syn_queue;          /* snapshot: icsk_accept_queue.qlen */
	__u32 inflight;           /* SYN brackets open on this listener (all CPUs) */
	__u16 port;
	__u16 family;
	__u8  closed;             /* LISTEN > CLOSE seen: the collector reports it once more, then
	                           * deletes it */
	__u8  snapshot_ok;        /* the queue figures were read */
	__u8  _pad[2];
	char  comm[TCPTRACE_COMM_LEN];
};

#endif
