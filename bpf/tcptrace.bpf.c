// SPDX-License-Identifier: GPL-2.0-only
/* tcptrace-bpf kernel side: keeps each socket's handshake in a bounded map and emits one
 * record per resolved open. Compiled by bcc with -D flags built in tcptrace_bpf/loader.py:
 *   BACKEND_TRACEPOINT | BACKEND_KPROBE | BACKEND_FENTRY   which hooks to build
 *   OFF_*                 struct offsets, every one (loader.OFFSETS): from the running kernel's
 *                         BTF, or offsetof() against the headers when it has none
 *   TT_STRUCTS_FROM_HEADERS  given with the offsetof() ones: include the headers' structs
 *   MAX_SOCKETS, MAX_LISTENERS, RINGBUF_PAGES, TCPTRACE_EVENTS
 *   TCPTRACE_AGGREGATE, TT_NBUCKETS, TT_B0..TT_B31   export mode: count opens in the kernel
 * Every read of a kernel struct goes through an OFF_* offset: header layouts can be wrong
 * for the running kernel (see README "Why BTF offsets"). */
#include <uapi/linux/ptrace.h>
#include <uapi/linux/in.h>
#include <uapi/linux/if_ether.h>
#ifdef TT_STRUCTS_FROM_HEADERS
/* no BTF: the OFF_* flags are offsetof() against these headers' structs */
#include <net/sock.h>
#include <net/inet_sock.h>
#include <net/request_sock.h>
#include <linux/tcp.h>
#include <net/tcp.h>
#else
/* Every struct is read through an OFF_* offset from BTF: only the constants are needed
 * (TCP_* states; enum skb_drop_reason, which the skb:kfree_skb tracepoint's record names).
 * Parsing net/tcp.h and what it pulls in was most of the compile's time. */
#include <net/tcp_states.h>
struct sock;
struct sk_buff;
#if __has_include(<net/dropreason-core.h>)
#include <net/dropreason-core.h>
#else
#include <linux/skbuff.h>
#endif
#endif
#include "tcptrace.h"

#ifndef MAX_SOCKETS
#define MAX_SOCKETS 65536
#endif
#ifndef MAX_LISTENERS
#define MAX_LISTENERS 16384
#endif
#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 512
#endif

/* Optional fields (loader.OPTIONAL_OFFSETS), given only when the kernel has them. */
#ifndef OFF_TCP_TOTAL_RTO_TIME
#define OFF_TCP_TOTAL_RTO_TIME -1 /* absent before 6.7; then passive_us uses srtt only */
#endif

#define TT_RST 0x04
#define TT_SYN 0x02
#define TT_ACK 0x10

/* Two deliveries of every state change (tracepoint backend). The kernel skips a BPF program
 * whose previous run on this CPU has not returned: a softirq that interrupts the raw
 * tracepoint program while it runs in process context (connect(), close(), listen() of any
 * socket on the host) changes TCP states that this program then never sees (the kernel counts
 * them as the program's recursion_misses). The crossed-SYN flake of issue 10 was that: both
 * sockets' SYN_SENT > SYN_RECV > ESTABLISHED ran in a timer softirq nested in the program.
 * So the same handler also runs from a second raw tracepoint program on the same tracepoint
 * (tt_again_inet_sock_set_state, attached by the loader after the first). The kernel's
 * recursion guard is per program (prog->active in __bpf_trace_run), and the two run one after
 * the other, never one inside the other: a state change nested in one of them (a softirq on
 * top of it; tracepoint programs run with preemption off, and softirqs do not nest) finds the
 * other one idle. So every state change reaches on_state() once or twice. (Until issue 13 the
 * second delivery was the perf-event tracepoint sock:inet_sock_set_state, which is skipped
 * only while a kprobe or perf-event program runs on the CPU: as good a cover, but the kernel
 * builds a trace record for it first, and that costs more than the program.) Both deliveries
 * of one tracepoint call come one after the other, with no other state change of that socket
 * in between (the caller holds the socket lock), in either order; the socket's own entry
 * tells the second from a new transition:
 *   TT_F_DUP_PENDING  the entry's last transition came from one delivery; the other one may
 *                     follow, and is dropped
 *   TT_F_RESOLVED     the open was already submitted: the entry stays only until that other
 *                     delivery (or any later change, or destroy) deletes it
 * Internal to this file: cleared before a record reaches the ring buffer. */
#ifdef BACKEND_TRACEPOINT
#define TT_DUAL 1
#else
#define TT_DUAL 0
#endif
#define TT_F_RESOLVED    0x40
#define TT_F_DUP_PENDING 0x80
#define TT_F_INTERNAL    (TT_F_RESOLVED | TT_F_DUP_PENDING)

BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
/* key: socket address. A reused address always starts with an open transition, which
 * replaces (and counts) any stale entry, and tcp_destroy_sock deletes it. With two
 * deliveries (TT_DUAL) a resolved open's entry stays as a TT_F_RESOLVED tombstone until the
 * second delivery of its last change, which comes right after the first. */
BPF_HASH(opens, u64, struct tcptrace_record, MAX_SOCKETS);
BPF_PERCPU_ARRAY(stats, u64, TT_STAT_MAX);
/* listening sockets' owners, for passive opens (see struct tcptrace_owner) */
BPF_HASH(listeners, struct tcptrace_listener_key, struct tcptrace_owner, MAX_LISTENERS);

static __always_inline void count(int idx)
{
	u64 *v = stats.lookup(&idx);
	if (v)
		(*v)++;
}

/* Listener side (see struct tcptrace_listener). A listening socket is tracked from listen()
 * on, or from its first packet (listeners older than the tracer). */
#ifndef MAX_LISTEN_SOCKS
#define MAX_LISTEN_SOCKS 4096
#endif
#ifndef MAX_LISTEN_PORTS
#define MAX_LISTEN_PORTS 4096
#endif
BPF_HASH(listen_socks, u64, struct tcptrace_listener, MAX_LISTEN_SOCKS);
BPF_HASH(listen_ports, u32, struct tcptrace_listen_counts, MAX_LISTEN_PORTS);
#ifndef BACKEND_TRACEPOINT
/* a passive child's open_flags from its birth to the first state change these backends see
 * (LRU: a child destroyed before that leaves an entry the next ones push out) */
BPF_TABLE("lru_hash", u64, u8, child_open_flags, 16384);
#endif

/* the state an open's entry last saw */
static __always_inline u8 last_state(struct tcptrace_record *r)
{
	return r->states[(r->nstates - 1) & (TCPTRACE_MAX_STATES - 1)];
}

#define TT_READ(dst, base, off) bpf_probe_read_kernel(&(dst), sizeof(dst), (char *)(base) + (off))

/* ---------------------------------------------------------------- classification
 * Name a resolved open's path and outcome exactly as tcptrace_bpf/tracker.py does, and count
 * it here: export mode counts every open so Python does no work per connection; trace and
 * record count the opens their filters keep, so their summary is exact whatever the ring
 * buffer dropped. (In this file, not a header: bcc rewrites map calls only in the main
 * source.)
 *   agg_handshakes[(path * TT_NOUTCOMES + outcome) * TT_NFAMILIES + family]   (every mode)
 * Export mode only:
 *   agg_rtx[path] SYNs re-sent; agg_rtx[TT_NPATHS] SYN-ACKs re-sent
 *   agg_duration[(path * TT_NFAMILIES + family) * (TT_NBUCKETS + 2) + i]: i < TT_NBUCKETS
 *     opens within bucket i (not cumulative), TT_NBUCKETS above the last bound, then the
 *     sum of durations in ns.
 * The loader gives TT_NBUCKETS (at most 32) and the upper bounds in ns as TT_B0..TT_B31. */
BPF_PERCPU_ARRAY(agg_handshakes, u64, TT_NPATHS * TT_NOUTCOMES * TT_NFAMILIES);

static __always_inline int open_path(struct tcptrace_record *r)
{
	if (r->nstates < 2)
		return -1;
	if (r->states[0] == TCP_LISTEN && r->states[1] == TCP_SYN_RECV)
		return TT_PATH_PASSIVE;
	if (r->states[0] != TCP_CLOSE || r->states[1] != TCP_SYN_SENT)
		return -1;
	if (r->nstates > 2 && r->states[2] == TCP_SYN_RECV) { /* only crossed SYNs do this */
		u64 *s = (u64 *)r->saddr, *d = (u64 *)r->daddr;
		if (r->sport == r->dport && s[0] == d[0] && s[1] == d[1])
			return TT_PATH_SELF;
		return TT_PATH_SIMULTANEOUS;
	}
	return TT_PATH_ACTIVE;
}

static __always_inline int open_outcome(struct tcptrace_record *r)
{
	u8 last = last_state(r);
	bool rst = r->flags & TT_F_RST_IN;

	if (last == TCP_ESTABLISHED)
		return TT_OUT_ESTABLISHED;
	if (last != TCP_CLOSE)
		return TT_OUT_ABORTED;
	/* an if-chain, not a switch: no jump tables in BPF */
	if (r->sk_err == ECONNREFUSED) /* an RST in SYN_SENT; without one, ICMP port unreachable */
		return rst ? TT_OUT_REFUSED : TT_OUT_UNREACHABLE;
	if (r->sk_err == ETIMEDOUT)
		return TT_OUT_TIMEOUT;
	if (r->sk_err == ECONNRESET)
		return TT_OUT_RESET;
	if (r->sk_err) /* EHOSTUNREACH, ENETUNREACH, ...: an ICMP error */
		return TT_OUT_UNREACHABLE;
	/* connect() found no free local port (EADDRNOTAVAIL): SYN_SENT > CLOSE inside connect(),
	 * before a port was taken, so before any SYN; an open that sent one has its port */
	if (!rst && !r->sport && r->nstates == 3 && r->states[1] == TCP_SYN_SENT)
		return TT_OUT_PORT_EXHAUSTED;
	return rst ? TT_OUT_RESET : TT_OUT_ABORTED;
}

#define TT_NO_DURATION ((u64)-1)

/* How long the open took, as the tracker's duration_s: a cookie-born child has no SYN-ACK
 * send time; an established passive child the kernel's own SYN-ACK -> ACK time; otherwise
 * start to resolution, unknown for an open that began before tracing. */
static __always_inline u64 open_duration(struct tcptrace_record *r, int path, int outcome)
{
	if (r->open_flags & TT_OF_SYNCOOKIE)
		return TT_NO_DURATION;
	if (path == TT_PATH_PASSIVE && outcome == TT_OUT_ESTABLISHED && r->passive_us)
		return (u64)r->passive_us * 1000;
	if (r->start_ns)
		return r->ts_ns - r->start_ns;
	return TT_NO_DURATION;
}

static __always_inline void bump(u64 *slot, u64 by)
{
	if (slot)
		*slot += by; /* per-CPU: no other writer */
}

static __always_inline void count_open(struct tcptrace_record *r, int path, int outcome)
{
	int idx = (path * TT_NOUTCOMES + outcome) * TT_NFAMILIES + (r->family == AF_INET6);
	bump(agg_handshakes.lookup(&idx), 1);
}

#ifdef TCPTRACE_AGGREGATE
#define TT_HIST_STRIDE (TT_NBUCKETS + 2)

BPF_PERCPU_ARRAY(agg_rtx, u64, TT_NPATHS + 1);
BPF_PERCPU_ARRAY(agg_duration, u64, TT_NPATHS * TT_NFAMILIES * TT_HIST_STRIDE);
BPF_PERCPU_ARRAY(agg_flagged, u64, TT_NPATHS * TT_NOPENFLAGS);

static __always_inline void aggregate(struct tcptrace_record *r)
{
	int path = open_path(r), outcome, fam, i, idx;
	u64 d = 0;

	if (path < 0) {
		count(TT_STAT_UNKNOWN_TRANSITION);
		return;
	}
	outcome = open_outcome(r);
	fam = r->family == AF_INET6;
	count_open(r, path, outcome);
	if (r->syn_retrans) {
		idx = path;
		bump(agg_rtx.lookup(&idx), r->syn_retrans);
	}
	if (r->synack_retrans) {
		idx = TT_NPATHS;
		bump(agg_rtx.lookup(&idx), r->synack_retrans);
	}
	if (r->open_flags & TT_OF_FASTOPEN) {
		idx = path * TT_NOPENFLAGS;
		bump(agg_flagged.lookup(&idx), 1);
	}
	if (r->open_flags & TT_OF_SYNCOOKIE) {
		idx = path * TT_NOPENFLAGS + 1;
		bump(agg_flagged.lookup(&idx), 1);
	}
	if (outcome != TT_OUT_ESTABLISHED)
		return;
	d = open_duration(r, path, outcome);
	if (d == TT_NO_DURATION)
		return; /* a cookie-born child, or an open that began before tracing */
	/* constants, not an array: bcc would place an array's initializer in .rodata */
#define TT_BUCKET(n) if (TT_NBUCKETS > n && d <= TT_B##n) { i = n; goto found; }
	TT_BUCKET(0) TT_BUCKET(1) TT_BUCKET(2) TT_BUCKET(3) TT_BUCKET(4) TT_BUCKET(5)
	TT_BUCKET(6) TT_BUCKET(7) TT_BUCKET(8) TT_BUCKET(9) TT_BUCKET(10) TT_BUCKET(11)
	TT_BUCKET(12) TT_BUCKET(13) TT_BUCKET(14) TT_BUCKET(15) TT_BUCKET(16) TT_BUCKET(17)
	TT_BUCKET(18) TT_BUCKET(19) TT_BUCKET(20) TT_BUCKET(21) TT_BUCKET(22) TT_BUCKET(23)
	TT_BUCKET(24) TT_BUCKET(25) TT_BUCKET(26) TT_BUCKET(27) TT_BUCKET(28) TT_BUCKET(29)
	TT_BUCKET(30) TT_BUCKET(31)
	i = TT_NBUCKETS;
found:
	idx = (path * TT_NFAMILIES + fam) * TT_HIST_STRIDE;
	int b = idx + i, sum = idx + TT_NBUCKETS + 1;
	bump(agg_duration.lookup(&b), 1);
	bump(agg_duration.lookup(&sum), d);
}
#endif

/* Local port: a full socket's inet_sport survives inet_put_port() at CLOSE (skc_num does
 * not); a request socket has only skc_num. Zero ports (not yet bound) never overwrite. */
static __always_inline void read_tuple(void *sk, struct tcptrace_record *r, bool is_req)
{
	u16 family = 0, sport = 0, dport = 0;
	TT_READ(family, sk, OFF_SKC_FAMILY);
	TT_READ(dport, sk, OFF_SKC_DPORT);
	if (is_req) {
		TT_READ(sport, sk, OFF_SKC_NUM);
	} else {
		TT_READ(sport, sk, OFF_INET_SPORT);
		sport = ntohs(sport);
	}
	r->family = family;
	if (sport)
		r->sport = sport;
	if (dport)
		r->dport = ntohs(dport);
	if (family == AF_INET6) {
		TT_READ(r->saddr, sk, OFF_SKC_V6_RCV_SADDR);
		TT_READ(r->daddr, sk, OFF_SKC_V6_DADDR);
	} else {
		bpf_probe_read_kernel(r->saddr, 4, (char *)sk + OFF_SKC_RCV_SADDR);
		bpf_probe_read_kernel(r->daddr, 4, (char *)sk + OFF_SKC_DADDR);
	}
}

static __always_inline void read_ports(void *sk, struct tcptrace_record *r)
{
	u16 sport = 0, dport = 0;
	TT_READ(sport, sk, OFF_INET_SPORT);
	TT_READ(dport, sk, OFF_SKC_DPORT);
	if (sport)
		r->sport = ntohs(sport);
	if (dport)
		r->dport = ntohs(dport);
}

static __always_inline void *tt_sock_net(void *sk)
{
	void *net = NULL;
	TT_READ(net, sk, OFF_SKC_NET);
	return net;
}

/* How many SYNs (or SYN-ACKs) the kernel re-sends: the socket's own TCP_SYNCNT, else the
 * namespace's sysctl at net_off (OFF_NET_SYN_RETRIES or OFF_NET_SYNACK_RETRIES). */
static __always_inline u8 retry_limit(void *sk, int net_off)
{
	u8 limit = 0;
	void *net;

	TT_READ(limit, sk, OFF_ICSK_SYN_RETRIES);
	net = tt_sock_net(sk);
	if (!limit && net)
		TT_READ(limit, net, net_off);
	return limit;
}

static __always_inline u32 netns_of(void *sk)
{
	u32 inum = 0;
	void *net = tt_sock_net(sk);
	if (net)
		TT_READ(inum, net, OFF_NET_NS_INUM);
	return inum;
}

static __always_inline void push_state(struct tcptrace_record *r, int state)
{
	u8 n = r->nstates;
	if (n < TCPTRACE_MAX_STATES) {
		r->states[n & (TCPTRACE_MAX_STATES - 1)] = state;
		r->nstates = n + 1;
	}
}

/* No wakeup per record: the collector drains the ring on its own clock (POLL_MS), in
 * batches, instead of being woken (two context switches) for records one at a time. */
static __always_inline void submit(struct tcptrace_record *r)
{
	if (events.ringbuf_output(r, sizeof(*r), BPF_RB_NO_WAKEUP))
		count(TT_STAT_RINGBUF_FULL);
}

#ifdef TCPTRACE_EVENTS
static __always_inline void emit_event(void *sk, int probe, int old, int new)
{
	struct tcptrace_record e = {};
	e.kind = TT_KIND_EVENT;
	e.probe = probe;
	e.ts_ns = bpf_ktime_get_ns();
	e.skaddr = (u64)sk;
	e.netns = netns_of(sk);
	e.nstates = 2;
	e.states[0] = old;
	e.states[1] = new;
	read_tuple(sk, &e, false);
	submit(&e);
}
#else
#define emit_event(sk, probe, old, new) do {} while (0)
#endif

static __always_inline void listener_key(void *sk, struct tcptrace_listener_key *k)
{
	k->netns = netns_of(sk);
	TT_READ(k->port, sk, OFF_SKC_NUM); /* bound port; inet_sport is set later in listen() */
}

static __always_inline void owned_by(struct tcptrace_record *r, struct tcptrace_listener_key *k)
{
	struct tcptrace_owner *o = listeners.lookup(k);
	if (o) {
		r->pid = o->pid;
		r->cgroup_id = o->cgroup_id;
		__builtin_memcpy(r->comm, o->comm, sizeof(r->comm));
	}
}

/* ---------------------------------------------------------------- filters
 * trace's --port, --family, --netns, --pid, --cgroup, --failed and --slow, decided here before
 * a record is reserved: an open no filter keeps costs no ring-buffer record and no Python
 * work. The loader gives each one in use as a constant (tcptrace_bpf/loader.py
 * filter_cflags()), so an unused filter compiles to nothing. Same semantics as
 * tracker.Match, which replay applies and a live run applies again:
 *   TT_FILTER_PORT     local or peer port        TT_FILTER_FAMILY  AF_INET or AF_INET6
 *   TT_FILTER_NETNS    namespace inode           TT_FILTER_PID     connect() caller or
 *   TT_FILTER_CGROUP   cgroup v2 id                                listener owner (tgid)
 *   TT_FILTER_FAILED   outcome not established   TT_FILTER_SLOW_NS took at least this long,
 *   (with both of the last two: either)                            or re-sent a SYN/SYN-ACK */
static __always_inline bool where_wanted(struct tcptrace_record *r)
{
#ifdef TT_FILTER_PORT
	if (r->sport != TT_FILTER_PORT && r->dport != TT_FILTER_PORT)
		return false;
#endif
#ifdef TT_FILTER_FAMILY
	if (r->family != TT_FILTER_FAMILY)
		return false;
#endif
#ifdef TT_FILTER_NETNS
	if (r->netns != TT_FILTER_NETNS)
		return false;
#endif
#ifdef TT_FILTER_PID
	if (r->pid != TT_FILTER_PID)
		return false;
#endif
#ifdef TT_FILTER_CGROUP
	if (r->cgroup_id != TT_FILTER_CGROUP)
		return false;
#endif
	return true;
}

#if defined(TT_FILTER_FAILED) || defined(TT_FILTER_SLOW_NS)
#define TT_FILTER_BY_RESULT 1
#else
#define TT_FILTER_BY_RESULT 0
#endif

static __always_inline bool result_wanted(struct tcptrace_record *r, int path, int outcome)
{
	if (!TT_FILTER_BY_RESULT)
		return true;
#ifdef TT_FILTER_FAILED
	if (outcome != TT_OUT_ESTABLISHED)
		return true;
#endif
#ifdef TT_FILTER_SLOW_NS
	u64 d = open_duration(r, path, outcome);
	if (r->syn_retrans || r->synack_retrans || (d != TT_NO_DURATION && d >= TT_FILTER_SLOW_NS))
		return true;
#endif
	return false;
}

/* ---------------------------------------------------------------- per mode
 * Where trace and export mode differ inside the handlers, gathered here so each handler
 * reads the same in both:
 *   mode_attributes()  whether opens are attributed to processes (listeners' owners kept)
 *   mode_begin()       what an open keeps when it begins, beyond its states
 *   mode_resolve()     where a resolved open goes: the ring buffer, or the export counters */
#ifdef TCPTRACE_AGGREGATE
/* export mode names path, outcome and family only: no tuple, netns or process */
static __always_inline bool mode_attributes(void)
{
	return false;
}

static __always_inline void mode_begin(struct tcptrace_record *r, void *sk, int old)
{
	TT_READ(r->family, sk, OFF_SKC_FAMILY);
}

static __always_inline void mode_resolve(struct tcptrace_record *r, void *sk)
{
	if (r->nstates > 2 && r->states[2] == TCP_SYN_RECV)
		read_tuple(sk, r, false); /* self or simultaneous: the addresses tell */
	else if (last_state(r) == TCP_CLOSE)
		read_ports(sk, r); /* a failed open with no local port: port_exhausted */
	aggregate(r);
}
#else
static __always_inline bool mode_attributes(void)
{
	return true;
}

static __always_inline void mode_begin(struct tcptrace_record *r, void *sk, int old)
{
	r->netns = netns_of(sk);
	read_tuple(sk, r, false);
	if (old == TCP_CLOSE) {
		/* connect() runs in the caller's context: attribute the open to it. */
		r->pid = bpf_get_current_pid_tgid() >> 32;
		r->cgroup_id = bpf_get_current_cgroup_id();
		bpf_get_current_comm(&r->comm, sizeof(r->comm));
	} else {
		/* a passive child is born in softirq: the listener's owner is the process */
		struct tcptrace_listener_key k = {.netns = r->netns, .port = r->sport};
		owned_by(r, &k);
	}
}

static __always_inline void mode_resolve(struct tcptrace_record *r, void *sk)
{
	int path, outcome;

	read_ports(sk, r); /* an active open's local port is bound after SYN_SENT */
	path = open_path(r);
	if (path < 0) {
		count(TT_STAT_UNKNOWN_TRANSITION);
		return;
	}
	if (!where_wanted(r))
		return;
	outcome = open_outcome(r);
	if (!result_wanted(r, path, outcome)) {
		/* Not shown, but a passive child whose request re-sent SYN-ACKs still crosses: the
		 * tracker holds that request (KIND_REQ_SYNACK_RTX, which --failed keeps) and must see
		 * it resolve, or it would report a timeout. Rare: a SYN-ACK was lost. The tracker's
		 * own Match does not show it. */
		if (path == TT_PATH_PASSIVE && r->synack_retrans)
			submit(r);
		return;
	}
	count_open(r, path, outcome);
	submit(r);
}
#endif

/* ---------------------------------------------------------------- listener side
 * What the kernel does with a segment that reaches a listening socket happens under no
 * tracepoint: a SYN dropped in tcp_conn_request() (SYN queue or accept queue full) is freed
 * with consume_skb like an accepted one, and a cookie is sent without an event. So each such
 * segment is bracketed, on its CPU (segment processing at a listener runs to the end in one
 * softirq):
 *   open   cgroup_skb ingress (tt_listen_ingress), which runs in tcp_filter() on the listener
 *          before any queue check: the listener, its sk_drops, and for a SYN the kernel's own
 *          predicates of tcp_conn_request() on the queues as they are now
 *   close  consume_skb / kfree_skb of the same skb: sk_drops moved means the kernel counted a
 *          ListenDrop for it (tcp_listendrop()); the predicates name why
 *   child  a LISTEN > SYN_RECV inside the bracket is born of that segment: of a SYN, Fast
 *          Open; of an ACK that matched no request socket, a SYN cookie
 * Exact while no other CPU works on the same listener at the same time; when one does, the
 * reason is still the predicate's, and TT_STAT_LISTEN_DROP_INFERRED counts it. */
#define TT_PKT_SYN 1
#define TT_PKT_ACK 2

struct listen_pkt {
	u64 skb;          /* 0: this slot holds no open bracket */
	u64 opened_ns;
	u64 listener;
	u32 drops_before; /* the listener's sk_drops at the open */
	u16 rport;        /* the peer's port: the child's dport */
	u8  kind;         /* TT_PKT_* */
	u8  reason;       /* SYN: TT_DROP_* the kernel's predicates give, TT_NDROPS if none */
	u8  want_cookie;  /* SYN: the kernel will answer with a cookie */
	u8  cookie;       /* ACK: no request socket matched: the kernel checks it as a cookie */
	u8  contended;
	u8  _pad;
};
/* Two slots per CPU: a segment's processing can be interrupted by another's on the same CPU
 * (measured: one SYN bracket in about a hundred was overwritten before its SYN was freed, in
 * scenarios run back to back), so slot 1 holds the inner bracket while slot 0's is open. A
 * bracket open longer than TT_BRACKET_STALE_NS is no outer one: its skb was freed unseen
 * (an ACK whose data went to the child, always; a SYN, counted as listen_unclosed). */
#define TT_BRACKET_STALE_NS 10000000ULL
BPF_PERCPU_ARRAY(listen_pkt, struct listen_pkt, 2);

static __always_inline u32 sk_drops(u64 sk);
static __always_inline void listen_count(struct tcptrace_listener *l, int what);

/* A SYN bracket that was never closed: its skb left by a path without the consume_skb or
 * kfree_skb tracepoint (measured: about one SYN in 500 in the acceptq_syn scenario; the
 * skb's memory next reached those tracepoints 1.3 s later, as another packet). Counted as
 * listen_unclosed. If the kernel's own predicate said this SYN meets a full queue and the
 * listener's sk_drops has moved since, the drop is taken from the predicate, as for an
 * overlapped SYN (listen_drop_inferred too). */
static __always_inline void retire(struct listen_pkt *b)
{
	struct tcptrace_listener *l;

	if (b->skb && b->kind == TT_PKT_SYN) {
		count(TT_STAT_LISTEN_UNCLOSED);
		if ((l = listen_socks.lookup(&b->listener))) {
			__sync_fetch_and_add(&l->inflight, -1);
			if (b->reason < TT_NDROPS && sk_drops(b->listener) != b->drops_before) {
				count(TT_STAT_LISTEN_DROP_INFERRED);
				listen_count(l, b->reason);
			}
		}
	}
	b->skb = 0;
}

/* The slot for a new bracket: 0 if free (or stale), else 1 (nested in 0's). */
static __always_inline struct listen_pkt *bracket_slot(u64 now)
{
	u32 i0 = 0, i1 = 1;
	struct listen_pkt *b0 = listen_pkt.lookup(&i0), *b1 = listen_pkt.lookup(&i1);

	if (!b0 || !b1)
		return NULL;
	if (b0->skb && now - b0->opened_ns > TT_BRACKET_STALE_NS)
		retire(b0);
	if (b1->skb && now - b1->opened_ns > TT_BRACKET_STALE_NS)
		retire(b1);
	if (!b0->skb)
		return b0;
	if (b1->skb)
		retire(b1); /* a third level: not seen on this kernel */
	return b1;
}

/* The open bracket of `skb` on this CPU (the inner one first), or NULL. */
static __always_inline struct listen_pkt *bracket_of(u64 skb)
{
	u32 i0 = 0, i1 = 1;
	struct listen_pkt *b = listen_pkt.lookup(&i1);

	if (b && b->skb && b->skb == skb)
		return b;
	b = listen_pkt.lookup(&i0);
	return b && b->skb && b->skb == skb ? b : NULL;
}

static __always_inline void add(u64 *slot, u64 by)
{
	if (slot)
		__sync_fetch_and_add(slot, by);
}

#define TT_COUNT_COOKIE  TT_NDROPS
#define TT_COUNT_SYNACK  (TT_NDROPS + 1)
#define TT_COUNT_CHILD   (TT_NDROPS + 2)

/* Count for the listener and, for drops and cookies, its port (port 0: the map was full). */
static __always_inline void listen_count(struct tcptrace_listener *l, int what)
{
	u32 port = l->port;
	struct tcptrace_listen_counts zero = {}, *p;

	/* children (one per connection) and SYN-ACK re-sends are per listener only: the
	 * per-port series are drops and cookies, and the port lookup is not free */
	if (what == TT_COUNT_CHILD) {
		add(&l->c.passive_opens, 1);
		return;
	}
	if (what == TT_COUNT_SYNACK) {
		add(&l->c.synack_retransmits, 1);
		return;
	}
	p = listen_ports.lookup_or_try_init(&port, &zero);
	if (!p) {
		count(TT_STAT_LISTEN_PORT_FULL);
		port = 0;
		p = listen_ports.lookup_or_try_init(&port, &zero);
	}
	/* an if-chain: no jump tables in BPF; what < TT_NDROPS is a drop reason */
	if (what < TT_NDROPS) {
		add(&l->c.drops[what], 1);
		if (p)
			add(&p->drops[what], 1);
	} else {
		add(&l->c.syncookies_sent, 1);
		if (p)
			add(&p->syncookies_sent, 1);
	}
}

/* The listener's entry; created from the socket itself for a listener older than the tracer
 * (its owner, when known, from the owners table: listeners older than the tracer). */
static __always_inline struct tcptrace_listener *listener_of(u64 key)
{
	struct tcptrace_listener *l = listen_socks.lookup(&key), n = {};
	void *sk = (void *)key;

	if (l && !l->port) /* listen() without bind(): the port is picked after CLOSE > LISTEN */
		TT_READ(l->port, sk, OFF_SKC_NUM);
	if (l || !key)
		return l;
	TT_READ(n.family, sk, OFF_SKC_FAMILY);
	TT_READ(n.port, sk, OFF_SKC_NUM);
	n.netns = netns_of(sk);
	if (n.family == AF_INET6)
		TT_READ(n.addr, sk, OFF_SKC_V6_RCV_SADDR);
	else
		bpf_probe_read_kernel(n.addr, 4, (char *)sk + OFF_SKC_RCV_SADDR);
	if (mode_attributes()) {
		struct tcptrace_listener_key k = {.netns = n.netns, .port = n.port};
		struct tcptrace_owner *o = listeners.lookup(&k);
		if (o) {
			n.pid = o->pid;
			n.cgroup_id = o->cgroup_id;
			__builtin_memcpy(n.comm, o->comm, sizeof(n.comm));
		}
	}
	if (listen_socks.insert(&key, &n) && !listen_socks.lookup(&key)) {
		count(TT_STAT_LISTENER_TABLE_FULL);
		return NULL;
	}
	return listen_socks.lookup(&key);
}

static __always_inline u32 sk_drops(u64 sk)
{
	u32 v = 0;
	TT_READ(v, (void *)sk, OFF_SK_DROPS);
	return v;
}

/* Whether an ACK to listener `sk` matches a request socket (the normal final ACK) or not
 * (the kernel will check it as a SYN cookie): the same lookup the kernel just did. */
static __always_inline bool matches_request(struct __sk_buff *skb, bool v6, u32 thoff)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *s;
	bool req = false;
	u32 size;

	if (v6) {
		if (bpf_skb_load_bytes(skb, 8, t.ipv6.saddr, 32) ||
		    bpf_skb_load_bytes(skb, thoff, &t.ipv6.sport, 4))
			return true; /* unreadable: assume the common case */
		size = sizeof(t.ipv6);
	} else {
		if (bpf_skb_load_bytes(skb, 12, &t.ipv4.saddr, 8) ||
		    bpf_skb_load_bytes(skb, thoff, &t.ipv4.sport, 4))
			return true;
		size = sizeof(t.ipv4);
	}
	s = bpf_skc_lookup_tcp(skb, &t, size, BPF_F_CURRENT_NETNS, 0);
	if (!s)
		return false;
	req = s->state == BPF_TCP_NEW_SYN_RECV;
	bpf_sk_release(s);
	return req;
}

/* The listener's fields the ingress program reads, through the BTF pointer that
 * bpf_skc_to_tcp_sock() gives: plain loads, which the verifier checks against the running
 * kernel's BTF (where the OFF_* constants come from) and the JIT makes fault-safe, where each
 * bpf_probe_read_kernel() is a helper call (issue 13: they were most of this program's time,
 * and it runs for every segment to a listener). The pointer and the skb's are kept as plain
 * numbers (the raw tracepoints see them as such): root's programs may (CAP_PERFMON). */
#define TT_BTF(type, tp, off) (*(type *)((char *)(tp) + (off)))

/* The order of tcp_conn_request(): SYN queue full (or tcp_syncookies=2) sends a cookie, or
 * without cookies drops; then a full accept queue drops. Full is ">" for both queues. */
static __always_inline void predict_syn(struct tcp_sock *tp, struct listen_pkt *b)
{
	u32 backlog = TT_BTF(u32, tp, OFF_SK_ACK_BACKLOG), max = TT_BTF(u32, tp, OFF_SK_MAX_ACK_BACKLOG);
	u32 qlen = TT_BTF(u32, tp, OFF_ICSK_SYN_QLEN);
	char *net = TT_BTF(char *, tp, OFF_SKC_NET);
	u8 cookies = TT_BTF(u8, net, OFF_NET_SYNCOOKIES);

	b->reason = TT_NDROPS;
	b->want_cookie = 0;
	if (cookies == 2 || qlen > max) {
		if (!cookies) {
			b->reason = TT_DROP_SYN_QUEUE;
			return;
		}
		b->want_cookie = 1;
	}
	if (backlog > max)
		b->reason = TT_DROP_ACCEPT_QUEUE;
}

/* Whether the kernel would take an ACK to this listener as a SYN cookie: only within two
 * minutes of the listener's last SYN-queue overflow or cookie (tcp_synq_no_recent_overflow(),
 * whose stamp cookie_init_sequence() sets for every cookie sent); a listener that never had
 * one has a zero stamp, and needs no socket lookup per final ACK (the lookup was a third of
 * this program's time at full churn). Reuseport groups keep their stamp elsewhere: always
 * looked up. */
static __always_inline bool cookies_possible(struct tcp_sock *tp)
{
	return TT_BTF(u32, tp, OFF_TCP_TS_RECENT_STAMP) || TT_BTF(u64, tp, OFF_SK_REUSEPORT_CB);
}

/* The TCP flags and the peer's port of a segment, and where its TCP header starts: read in
 * place (the headers are in the linear part for every segment seen here: loopback and NIC
 * drivers pull them), else copied out with bpf_skb_load_bytes(). False: not TCP. */
static __always_inline bool tcp_header(struct __sk_buff *skb, bool v6, u32 *thoff, u8 *flags,
				       u16 *rport)
{
	u8 *data = (u8 *)(long)skb->data, *end = (u8 *)(long)skb->data_end, *th;
	u8 b0 = 0, proto = 0;

	if (v6) {
		if (data + 40 + 14 <= end) {
			if (data[6] != IPPROTO_TCP)
				return false;
			th = data + 40;
			*thoff = 40;
			*flags = th[13];
			*rport = *(u16 *)th;
			return true;
		}
		if (bpf_skb_load_bytes(skb, 6, &proto, 1))
			return false;
		*thoff = 40;
	} else {
		if (data + 20 <= end) {
			b0 = data[0];
			proto = data[9];
			*thoff = (b0 & 0xf) * 4;
			th = data + ((b0 & 0xf) << 2);
			if (th + 14 <= end) {
				if (proto != IPPROTO_TCP)
					return false;
				*flags = th[13];
				*rport = *(u16 *)th;
				return true;
			}
		} else if (bpf_skb_load_bytes(skb, 0, &b0, 1) || bpf_skb_load_bytes(skb, 9, &proto, 1)) {
			return false;
		}
		*thoff = (b0 & 0xf) * 4;
	}
	return proto == IPPROTO_TCP && !bpf_skb_load_bytes(skb, *thoff + 13, flags, 1) &&
	       !bpf_skb_load_bytes(skb, *thoff, rport, 2);
}

/* cgroup_skb ingress at the cgroup2 root: every packet on the host that has a socket. It
 * always returns 1 (pass): it only looks. */
int tt_listen_ingress(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;
	struct tcp_sock *tp;
	struct listen_pkt *b;
	struct tcptrace_listener *l;
	u32 thoff = 0;
	u64 now;
	u16 rport = 0;
	u8 flags = 0;
	bool v6;

	/* every packet with a socket comes here: leave before any helper unless it is for a
	 * listener (state is readable on any socket); then a full TCP socket, as a BTF pointer */
	if (!sk || sk->state != BPF_TCP_LISTEN)
		return 1;
	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return 1;
	v6 = skb->protocol == bpf_htons(ETH_P_IPV6);
	if (!tcp_header(skb, v6, &thoff, &flags, &rport) || (flags & TT_RST))
		return 1;
	if ((flags & (TT_SYN | TT_ACK)) != TT_SYN && (flags & (TT_SYN | TT_ACK)) != TT_ACK)
		return 1; /* neither a SYN nor a pure ACK: nothing to bracket */
	now = bpf_ktime_get_ns();
	b = bracket_slot(now);
	if (!b)
		return 1;
	b->opened_ns = now;
	b->listener = (u64)tp;
	l = listener_of(b->listener);
	if (!l)
		return 1;
	b->rport = ntohs(rport);
	b->drops_before = TT_BTF(u32, tp, OFF_SK_DROPS);
	if ((flags & (TT_SYN | TT_ACK)) == TT_SYN) {
		b->kind = TT_PKT_SYN;
		b->cookie = 0;
		/* (atomics without their result: BPF has them on every kernel we run on) */
		__sync_fetch_and_add(&l->inflight, 1);
		b->contended = l->inflight > 1;
		predict_syn(tp, b);
	} else {
		b->kind = TT_PKT_ACK;
		b->contended = 0;
		b->cookie = cookies_possible(tp) && !matches_request(skb, v6, thoff);
	}
	b->skb = (u64)skb;
	return 1;
}

/* The bracket's segment was freed: consumed (a SYN handled or dropped in tcp_conn_request,
 * both alike) or dropped with a reason. */
static __always_inline void on_skb_freed(u64 skb, int reason)
{
	u32 now;
	struct listen_pkt *b = bracket_of(skb);
	struct tcptrace_listener *l;

	if (!b)
		return;
	b->skb = 0;
	l = listen_socks.lookup(&b->listener);
	if (!l)
		return;
	now = sk_drops(b->listener);
	if (b->kind == TT_PKT_SYN) {
		/* overlapped by another CPU's SYN on this listener: what this one's predicates say
		 * may be that one's (only when there is something to say: a drop or a cookie) */
		if ((b->contended || l->inflight > 1) && (now != b->drops_before || b->want_cookie))
			count(TT_STAT_LISTEN_DROP_INFERRED);
		__sync_fetch_and_add(&l->inflight, -1);
		if (now != b->drops_before)
			listen_count(l, b->reason < TT_NDROPS ? b->reason : TT_DROP_OTHER);
		else if (b->want_cookie)
			listen_count(l, TT_COUNT_COOKIE);
		return;
	}
	/* An ACK the listener dropped: no child could be made for it. TCP_LISTEN_OVERFLOW is
	 * what tcp_check_req() says for every such failure of the final ACK; NO_SOCKET what
	 * cookie_v4/v6_check() say. Only the ones tcp_listendrop() counted (sk_drops moved) are
	 * ListenDrops; the accept queue, read now, says whether it was the overflow. */
	if ((reason == TT_REASON_LISTEN_OVERFLOW || (reason == TT_REASON_NO_SOCKET && b->cookie)) &&
	    now != b->drops_before) {
		u32 backlog = 0, max = 0;
		TT_READ(backlog, (void *)b->listener, OFF_SK_ACK_BACKLOG);
		TT_READ(max, (void *)b->listener, OFF_SK_MAX_ACK_BACKLOG);
		listen_count(l, backlog > max ? TT_DROP_ACCEPT_QUEUE : TT_DROP_OTHER);
	}
}

/* A passive child is being born (LISTEN > SYN_RECV, at `now`): of the segment in this CPU's
 * bracket. */
static __always_inline u8 child_flags(void *child, u64 now)
{
	u32 i0 = 0, i1 = 1;
	u16 dport = 0;
	struct listen_pkt *b = listen_pkt.lookup(&i1);
	struct tcptrace_listener *l;

	TT_READ(dport, child, OFF_SKC_DPORT);
	dport = ntohs(dport);
	/* the inner bracket first; the peer's port tells a stale one apart where the child has
	 * it already (6.18 sets the state after the ports; 6.12 before: 0, then freshness) */
	if (!b || !b->skb || (dport ? b->rport != dport : now - b->opened_ns > TT_BRACKET_STALE_NS))
		b = listen_pkt.lookup(&i0);
	if (!b || !b->skb || (dport ? b->rport != dport : now - b->opened_ns > TT_BRACKET_STALE_NS))
		return 0;
	l = listen_socks.lookup(&b->listener);
	if (l)
		listen_count(l, TT_COUNT_CHILD);
	if (b->kind == TT_PKT_SYN)
		return TT_OF_FASTOPEN;
	return b->cookie ? TT_OF_SYNCOOKIE : 0;
}

RAW_TRACEPOINT_PROBE(consume_skb) /* (struct sk_buff *skb, void *location) */
{
	on_skb_freed(ctx->args[0], 0);
	return 0;
}

RAW_TRACEPOINT_PROBE(kfree_skb) /* (skb, location, enum skb_drop_reason reason[, rx_sk]) */
{
	on_skb_freed(ctx->args[0], (int)ctx->args[2]);
	return 0;
}

/* Second deliveries, as for state changes (see TT_DUAL): a raw tracepoint program is skipped
 * on a CPU where it is already running, so a timer interrupt that lands inside the
 * consume_skb program and sends a SYN to a listener in its softirq (a client's SYN re-send)
 * frees that SYN unseen: measured, about one SYN in sixty in the synq_full scenario, counted
 * as listen_unclosed. A second raw program on the same tracepoint (attached by the loader) is
 * idle then; whichever delivery comes first closes the bracket, the other finds it closed. */
int tt_again_consume_skb(struct bpf_raw_tracepoint_args *ctx)
{
	on_skb_freed(ctx->args[0], 0);
	return 0;
}

int tt_again_kfree_skb(struct bpf_raw_tracepoint_args *ctx)
{
	on_skb_freed(ctx->args[0], (int)ctx->args[2]);
	return 0;
}

/* Run on request by the collector (BPF_PROG_TEST_RUN, args[0]: a listener's address): the
 * queue figures now, read without a lock as inet_diag (ss) reads them. */
int tt_listener_snapshot(struct bpf_raw_tracepoint_args *ctx)
{
	u64 key = ctx->args[0];
	struct tcptrace_listener *l = listen_socks.lookup(&key);
	void *sk = (void *)key;
	u8 state = 0;

	if (!l)
		return 0;
	TT_READ(state, sk, OFF_SKC_STATE);
	l->snapshot_ok = state == TCP_LISTEN;
	if (!l->snapshot_ok)
		return 0;
	TT_READ(l->accept_queue, sk, OFF_SK_ACK_BACKLOG);
	TT_READ(l->accept_queue_max, sk, OFF_SK_MAX_ACK_BACKLOG);
	TT_READ(l->syn_queue, sk, OFF_ICSK_SYN_QLEN);
	return 1;
}

/* CLOSE > LISTEN runs in listen()'s process context: remember who owns the port, and track
 * the listening socket. LISTEN > CLOSE: the collector reports it once more, then deletes it. */
static __always_inline void on_listen(void *sk, bool start)
{
	struct tcptrace_listener_key k = {};
	struct tcptrace_owner o = {};
	struct tcptrace_listener *l;
	u64 key = (u64)sk;

	if (!start) {
		l = listen_socks.lookup(&key);
		if (l)
			l->closed = 1;
	} else {
		listen_socks.delete(&key); /* a socket address reused: a new listener */
		l = listener_of(key);
		if (l) {
			l->pid = bpf_get_current_pid_tgid() >> 32;
			l->cgroup_id = bpf_get_current_cgroup_id();
			bpf_get_current_comm(&l->comm, sizeof(l->comm));
		}
	}
	if (!mode_attributes())
		return;
	listener_key(sk, &k);
	if (!k.port)
		return; /* unbound listen(): the port is picked after this event */
	if (!start) {
		listeners.delete(&k);
		return;
	}
	o.pid = bpf_get_current_pid_tgid() >> 32;
	o.cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(&o.comm, sizeof(o.comm));
	listeners.update(&k, &o);
}

/* A new open begins on this socket with old > new (at `now`, 0: unknown, before tracing):
 * fresh state, replacing any stale entry (or a tombstone, see TT_DUAL). The record is
 * complete before it is stored, so the common path is one map operation; `want`: return the
 * stored entry (a further lookup), else NULL. */
static __always_inline struct tcptrace_record *begin(u64 key, void *sk, int old, int new, u64 now,
						     u8 open_flags, bool want)
{
	struct tcptrace_record r = {};
	r.kind = TT_KIND_OPEN;
	r.start_ns = now;
	/* last activity, until resolve(): the sweeper's clock */
	r.ts_ns = now ? now : bpf_ktime_get_ns();
	r.skaddr = key;
	push_state(&r, old);
	if (!now)
		r.flags |= TT_F_NO_START;
	mode_begin(&r, sk, old);
	push_state(&r, new);
	r.open_flags = open_flags;
	if (TT_DUAL)
		r.flags |= TT_F_DUP_PENDING;
	if (opens.insert(&key, &r)) { /* BPF_NOEXIST: one map operation on the common path */
		struct tcptrace_record *e = opens.lookup(&key);
		if (!e) {
			count(TT_STAT_TABLE_FULL);
			return NULL;
		}
		if (!(e->flags & TT_F_RESOLVED))
			count(TT_STAT_STALE_ENTRY);
		opens.update(&key, &r);
	}
	return want ? opens.lookup(&key) : NULL;
}

/* keep: two deliveries, and the other one of this call may still come (see TT_DUAL) */
static __always_inline void resolve(u64 key, void *sk, struct tcptrace_record *r, u64 now,
				    bool keep)
{
	u32 total = 0, srtt = 0, rto_ms = 0;
	u8 err = 0;
	int e = 0;

	TT_READ(total, sk, OFF_TCP_TOTAL_RETRANS);
	if (!r->sk_err) { /* repair_missed() may have inferred it */
		TT_READ(e, sk, OFF_SK_ERR);
		err = e;
		r->sk_err = err;
	}
	r->ts_ns = now;
	r->flags &= ~TT_F_INTERNAL;
	if (r->states[0] == TCP_LISTEN) {
		/* a passive child inherits the request's SYN-ACK re-sends in total_retrans */
		r->synack_retrans = total;
		TT_READ(srtt, sk, OFF_TCP_SRTT_US);
		r->passive_us = srtt >> 3;
		if (total && OFF_TCP_TOTAL_RTO_TIME >= 0) {
			TT_READ(rto_ms, sk, OFF_TCP_TOTAL_RTO_TIME);
			r->passive_us = rto_ms * 1000;
		}
	} else if (total > r->syn_retrans) {
		r->synack_retrans = total - r->syn_retrans;
	}
	mode_resolve(r, sk);
	if (keep)
		r->flags |= TT_F_RESOLVED | TT_F_DUP_PENDING;
	else
		opens.delete(&key);
}

/* The one state-change handler every backend calls. `raw`: this delivery is the raw
 * tracepoint's (or the only one); with two deliveries (TT_DUAL) it alone reports raw events
 * of sockets that have no entry, which cannot tell a second delivery from a new change. */
static __always_inline void on_state(void *sk, int old, int new, bool raw)
{
	u64 key = (u64)sk, now = bpf_ktime_get_ns();
	struct tcptrace_record *r;

	if ((old == TCP_CLOSE && new == TCP_SYN_SENT) || (old == TCP_LISTEN && new == TCP_SYN_RECV)) {
		if (TT_DUAL) {
			/* before begin() builds a record: the other delivery may have begun it */
			r = opens.lookup(&key);
			if (r && (r->flags & TT_F_DUP_PENDING) && !(r->flags & TT_F_RESOLVED) &&
			    r->nstates == 2 && r->states[0] == old && r->states[1] == new) {
				r->flags &= ~TT_F_DUP_PENDING;
				return;
			}
		}
		begin(key, sk, old, new, now, old == TCP_LISTEN ? child_flags(sk, now) : 0, false);
		emit_event(sk, TT_PROBE_STATE, old, new);
		return;
	}
	r = opens.lookup(&key);
	if (TT_DUAL && r) {
		u8 last = last_state(r);
		if ((r->flags & TT_F_DUP_PENDING) && last == new) {
			/* the other delivery of this call: already applied */
			if (r->flags & TT_F_RESOLVED)
				opens.delete(&key);
			else
				r->flags &= ~TT_F_DUP_PENDING;
			return;
		}
		if (r->flags & TT_F_RESOLVED) {
			/* the other delivery of the resolving call never came: a change after it */
			opens.delete(&key);
			r = NULL;
		}
	}
	if (r || raw || !TT_DUAL)
		emit_event(sk, TT_PROBE_STATE, old, new);
	if (!r) {
		if (old != TCP_SYN_RECV)
			return; /* not an open we saw begin: nothing to explain */
		/* A passive child that kprobe/fentry see only from SYN_RECV on (it is born by
		 * inet_sk_set_state, not tcp_set_state), or one created before tracing began. */
		u8 flags = 0;
#ifndef BACKEND_TRACEPOINT
		u8 *f = child_open_flags.lookup(&key);
		if (f) {
			flags = *f;
			child_open_flags.delete(&key);
		}
#endif
		r = begin(key, sk, TCP_LISTEN, TCP_SYN_RECV, 0, flags, true);
		if (!r)
			return;
	}
	if (last_state(r) != old) {
		/* the socket changed state before this with no program run for it (see
		 * repair_missed()): it was in `old`, so it passed through it, e.g. the SYN_RECV
		 * of a crossed open whose SYN_SENT > SYN_RECV no delivery saw */
		count(TT_STAT_MISSED_STATE_CHANGE);
		r->flags |= TT_F_REPAIRED;
		push_state(r, old);
	}
	if (old == TCP_SYN_SENT) {
		u32 total = 0;
		u64 acked = 0;
		TT_READ(total, sk, OFF_TCP_TOTAL_RETRANS);
		r->syn_retrans = total;
		/* tcp_ack() of the SYN-ACK ran before this change: bytes_acked counts the SYN
		 * (1) and any SYN data the peer took, the only data that can be acknowledged yet
		 * (the kernel's syn_data_acked is set only after this change) */
		TT_READ(acked, sk, OFF_TCP_BYTES_ACKED);
		if (new == TCP_ESTABLISHED && acked > 1)
			r->open_flags |= TT_OF_FASTOPEN;
	}
	push_state(r, new);
	r->ts_ns = now;
	if (TT_DUAL)
		r->flags |= TT_F_DUP_PENDING;
	if (new != TCP_SYN_RECV)
		resolve(key, sk, r, now, TT_DUAL);
}

static __always_inline void on_flags(void *sk, u8 flags)
{
	u64 key = (u64)sk;
	struct tcptrace_record *r = opens.lookup(&key);
	if (r && !(r->flags & TT_F_RESOLVED))
		r->flags |= flags;
}

/* The socket left the state the entry last saw, and no program ran for it: the kernel also
 * skips both deliveries of a change (measured in CI: SYN_SENT > CLOSE made by the SYN timer's
 * softirq, on a timeout or a second ICMP error). At destruction the socket still tells how its
 * open ended: a SYN that was acknowledged (bytes_acked counts it) made it ESTABLISHED; else it
 * failed, and the errno the application may already have taken from sk_err is inferred, in
 * the order the kernel would have set it: sk_err, an RST (refused), the soft ICMP error kept
 * in sk_err_soft, SYN re-sends that reached the retry limit (timeout). Counted: the outcome is
 * the socket's own, the moment of it is the destruction's. */
static __always_inline void repair_missed(void *sk, struct tcptrace_record *r)
{
	u8 last = last_state(r), state = 0;
	u64 acked = 0;
	u32 total = 0;
	int err = 0;

	TT_READ(state, sk, OFF_SKC_STATE);
	if (state == last)
		return;
	count(TT_STAT_MISSED_STATE_CHANGE);
	r->flags |= TT_F_REPAIRED;
	if (last != TCP_SYN_SENT) {
		push_state(r, state); /* a passive child: where it was found, nothing inferred */
		return;
	}
	TT_READ(total, sk, OFF_TCP_TOTAL_RETRANS);
	r->syn_retrans = total;
	TT_READ(acked, sk, OFF_TCP_BYTES_ACKED);
	if (acked) {
		push_state(r, TCP_ESTABLISHED);
		return;
	}
	push_state(r, TCP_CLOSE);
	TT_READ(err, sk, OFF_SK_ERR);
	if (!err && (r->flags & TT_F_RST_IN))
		err = ECONNREFUSED;
	if (!err)
		TT_READ(err, sk, OFF_SK_ERR_SOFT);
	if (!err) {
		u8 limit = retry_limit(sk, OFF_NET_SYN_RETRIES);
		if (limit && total >= limit)
			err = ETIMEDOUT;
	}
	r->sk_err = err;
}

static __always_inline void on_destroy(void *sk)
{
	u64 key = (u64)sk;
	struct tcptrace_record *r = opens.lookup(&key);

	emit_event(sk, TT_PROBE_DESTROY, 0, 0);
	if (r && (r->flags & TT_F_RESOLVED)) {
		opens.delete(&key); /* already reported (see TT_DUAL) */
	} else if (r) {
		/* destroyed mid-handshake without a state change we resolved on */
		r->flags |= TT_F_DESTROYED;
		repair_missed(sk, r);
		resolve(key, sk, r, bpf_ktime_get_ns(), false);
	}
}

/* A listener's request socket re-sent its SYN-ACK: the only sign of a request whose
 * SYN-ACKs are lost. Python expires it when the kernel's retry budget runs out. */
static __always_inline void on_req_synack_rtx(void *listener, void *req)
{
	struct tcptrace_record r = {};
	struct tcptrace_listener_key k = {};
	u64 snt_us = 0;
	u8 nrtx = 0;

	r.kind = TT_KIND_REQ_SYNACK_RTX;
	r.ts_ns = bpf_ktime_get_ns();
	r.skaddr = (u64)req;
	read_tuple(req, &r, true);
	r.netns = netns_of(req);
	TT_READ(nrtx, req, OFF_REQ_NUM_RETRANS);
	r.synack_retrans = nrtx + 1; /* num_retrans counts this one only after we return */
	TT_READ(snt_us, req, OFF_TREQ_SNT_SYNACK);
	r.start_ns = snt_us * 1000;
	r.synack_budget = retry_limit(listener, OFF_NET_SYNACK_RETRIES); /* the listener's TCP_SYNCNT */
	listener_key(listener, &k);
	owned_by(&r, &k);
	r.nstates = 1;
	r.states[0] = TCP_NEW_SYN_RECV;
	/* --failed and --slow keep it: the request ends in a timeout (failed) or a child that
	 * re-sent a SYN-ACK (slow) */
	if (where_wanted(&r))
		submit(&r);
}

/* ---------------------------------------------------------------- entry points */

/* Raw tracepoints: the program gets the tracepoint's own arguments (ctx->args[], as in its
 * TP_PROTO), with none of the work a perf-event tracepoint does first to fill its record.
 * Measured with the churn benchmark: that work cost more than the programs themselves. */

RAW_TRACEPOINT_PROBE(tcp_destroy_sock) /* (struct sock *sk) */
{
	on_destroy((void *)ctx->args[0]);
	return 0;
}

RAW_TRACEPOINT_PROBE(tcp_retransmit_synack) /* (const struct sock *sk, const struct request_sock *req) */
{
	u64 listener = 0;
	struct tcptrace_listener *l;
	/* sk is the listener, or for Fast Open the child: the request knows its listener */
	u8 state = 0;

	TT_READ(listener, (void *)ctx->args[1], OFF_REQ_RSK_LISTENER);
	if (!listener)
		listener = ctx->args[0];
	TT_READ(state, (void *)listener, OFF_SKC_STATE);
	l = state == TCP_LISTEN ? listener_of(listener) : NULL;
	if (l)
		listen_count(l, TT_COUNT_SYNACK);
	on_req_synack_rtx((void *)ctx->args[0], (void *)ctx->args[1]);
	return 0;
}

/* (const struct sock *sk, const int oldstate, const int newstate). Every backend: listen()
 * changes state with inet_sk_state_store(), which no tcp_set_state probe sees; the
 * tracepoint backend also takes every other transition here. */
RAW_TRACEPOINT_PROBE(inet_sock_set_state)
{
	void *sk = (void *)ctx->args[0];
	int old = ctx->args[1], new = ctx->args[2];
	u16 protocol = 0;

	/* Opens begin from CLOSE or LISTEN and end leaving SYN_SENT or SYN_RECV; most changes
	 * (ESTABLISHED and the closing states) concern no open: leave before any read. */
	if (old != TCP_CLOSE && old != TCP_LISTEN && old != TCP_SYN_SENT && old != TCP_SYN_RECV)
		return 0;
	TT_READ(protocol, sk, OFF_SK_PROTOCOL);
	if (protocol != IPPROTO_TCP)
		return 0;
	if (new == TCP_LISTEN || old == TCP_LISTEN && new == TCP_CLOSE) {
		on_listen(sk, new == TCP_LISTEN);
		return 0;
	}
#ifdef BACKEND_TRACEPOINT
	on_state(sk, old, new, true);
#else
	if (old == TCP_LISTEN && new == TCP_SYN_RECV) {
		/* kprobe/fentry begin a passive open only at SYN_RECV > ESTABLISHED, outside the
		 * bracket of the segment that made the child: its flags wait here for begin() */
		u64 key = (u64)sk;
		u8 f = child_flags(sk, bpf_ktime_get_ns());
		child_open_flags.update(&key, &f);
	}
#endif
	return 0;
}

#ifdef BACKEND_TRACEPOINT
RAW_TRACEPOINT_PROBE(tcp_receive_reset) /* (struct sock *sk) */
{
	void *sk = (void *)ctx->args[0];

	emit_event(sk, TT_PROBE_RST_IN, 0, 0);
	on_flags(sk, TT_F_RST_IN);
	return 0;
}

/* The second deliveries (see TT_DUAL): second raw tracepoint programs on the same
 * tracepoints, attached by the loader (tcptrace_bpf/loader.py SECOND_DELIVERIES), for the
 * changes the first programs were skipped for. listen() and a listener's close() run in
 * process context, where the first program is never skipped. */
int tt_again_inet_sock_set_state(struct bpf_raw_tracepoint_args *ctx)
{
	void *sk = (void *)ctx->args[0];
	int old = ctx->args[1], new = ctx->args[2];
	u16 protocol = 0;

	if (old != TCP_CLOSE && old != TCP_LISTEN && old != TCP_SYN_SENT && old != TCP_SYN_RECV)
		return 0;
	if (new == TCP_LISTEN || old == TCP_LISTEN && new == TCP_CLOSE)
		return 0;
	TT_READ(protocol, sk, OFF_SK_PROTOCOL);
	if (protocol != IPPROTO_TCP)
		return 0;
	on_state(sk, old, new, false);
	return 0;
}

/* setting a flag twice is harmless; the raw event comes from the first program only */
int tt_again_tcp_receive_reset(struct bpf_raw_tracepoint_args *ctx)
{
	on_flags((void *)ctx->args[0], TT_F_RST_IN);
	return 0;
}
#endif

#if defined(BACKEND_KPROBE) || defined(BACKEND_FENTRY)
static __always_inline void on_segment(void *sk, void *skb)
{
	u8 state = 0, tcpflags = 0;

	TT_READ(state, sk, OFF_SKC_STATE);
	if (state != TCP_SYN_SENT && state != TCP_SYN_RECV)
		return;
	TT_READ(tcpflags, skb, OFF_SKB_CB + OFF_TCB_TCP_FLAGS);
	if (tcpflags & TT_RST) {
		emit_event(sk, TT_PROBE_RST_IN, state, state);
		on_flags(sk, TT_F_RST_IN);
	} else if (state == TCP_SYN_SENT && (tcpflags & (TT_SYN | TT_ACK)) == TT_SYN) {
		emit_event(sk, TT_PROBE_SYN_IN, state, state);
		on_flags(sk, TT_F_SYN_IN);
	}
}

static __always_inline void on_state_call(void *sk, int new)
{
	u8 old = 0;
	TT_READ(old, sk, OFF_SKC_STATE);
	if (old != new)
		on_state(sk, old, new, true);
}

static __always_inline void on_synack_out(void *sk)
{
	emit_event(sk, TT_PROBE_SYNACK_OUT, 0, 0);
	on_flags(sk, TT_F_SYNACK_OUT);
}
#endif

#ifdef BACKEND_KPROBE
/* No kprobe__ prefix: the loader attaches these, so they can also be loaded alone. */
int kp_tcp_set_state(struct pt_regs *ctx)
{
	on_state_call((void *)PT_REGS_PARM1(ctx), (int)PT_REGS_PARM2(ctx));
	return 0;
}

int kp_tcp_rcv_state_process(struct pt_regs *ctx)
{
	on_segment((void *)PT_REGS_PARM1(ctx), (void *)PT_REGS_PARM2(ctx));
	return 0;
}

int kp_tcp_send_synack(struct pt_regs *ctx)
{
	on_synack_out((void *)PT_REGS_PARM1(ctx));
	return 0;
}
#endif

#ifdef BACKEND_FENTRY
KFUNC_PROBE(tcp_set_state, struct sock *sk, int state)
{
	on_state_call((void *)sk, state);
	return 0;
}

KFUNC_PROBE(tcp_rcv_state_process, struct sock *sk, struct sk_buff *skb)
{
	on_segment((void *)sk, (void *)skb);
	return 0;
}

KFUNC_PROBE(tcp_send_synack, struct sock *sk)
{
	on_synack_out((void *)sk);
	return 0;
}
#endif
