/* The compiled consumer of `--json` (tcptrace_bpf/fastpath.py drives it): decode, classify,
 * filter and render opens (TT_KIND_OPEN) to JSON lines, byte for byte what tracker.Classifier
 * and sinks/jsonl.render make of them, at a fraction of Python's cost per record. Everything
 * else goes back to Python as bytes, in order: other kinds, records that do not decode, opens
 * with no known path (Python counts them), and passive opens while Python's tracker has
 * pending requests (it pops the request of a passive open).
 *
 * The record layout comes from bpf/tcptrace.h itself; the names (states, paths, outcomes,
 * flags) mirror model.py and tests/test_fastpath.py holds them together. Little-endian only,
 * as the wire format is the x86-64 kernel's own layout. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <linux/types.h> /* __u8 .. __u64, as the BPF side has them */
#include "bpf/tcptrace.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the wire format is little-endian; this consumer reads it in place"
#endif
_Static_assert(sizeof(struct tcptrace_record) == 120, "struct tcptrace_record is 120 bytes");

/* model.TcpState (1..12), model.OpenPath and model.Outcome in TT_PATH_* / TT_OUT_* order,
 * model.OPEN_FLAGS in bit order */
static const char *const STATE_NAMES[] = {
	NULL, "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT",
	"CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING", "NEW_SYN_RECV"};
#define NSTATE_NAMES 13
enum { ST_ESTABLISHED = 1, ST_SYN_SENT = 2, ST_SYN_RECV = 3, ST_CLOSE = 7, ST_LISTEN = 10 };
static const char *const PATH_NAMES[TT_NPATHS] = {"active", "passive", "simultaneous", "self"};
static const char *const OUTCOME_NAMES[TT_NOUTCOMES] = {
	"established", "refused", "reset", "timeout", "unreachable", "aborted", "port_exhausted"};
static const char *const FLAG_LISTS[4] = {
	"[]", "[\"fastopen\"]", "[\"syncookie\"]", "[\"fastopen\",\"syncookie\"]"};

/* -- output buffer: the bytes object handed back, grown in place (no copy at the end) ----- */
typedef struct {
	PyObject *bytes;
	size_t len, cap;
} Buf;

#define LINE_MAX_BYTES 2048 /* the longest line: ts of a huge float (~320 bytes), comm as \ufffd x16, 8 states */

static int buf_reserve(Buf *b, size_t more)
{
	if (b->bytes && b->len + more <= b->cap)
		return 0;
	size_t cap = b->cap ? b->cap : 65536;
	while (cap < b->len + more)
		cap *= 2;
	if (!b->bytes) {
		b->bytes = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)cap);
		if (!b->bytes)
			return -1;
	} else if (_PyBytes_Resize(&b->bytes, (Py_ssize_t)cap) < 0)
		return -1;
	b->cap = cap;
	return 0;
}

static char *buf_end(Buf *b)
{
	return PyBytes_AS_STRING(b->bytes) + b->len;
}

/* the lines as a bytes object of their length; the buffer gives it up */
static PyObject *buf_take(Buf *b)
{
	if (!b->bytes)
		return PyBytes_FromStringAndSize(NULL, 0);
	PyObject *out = b->bytes;
	b->bytes = NULL;
	if (_PyBytes_Resize(&out, (Py_ssize_t)b->len) < 0)
		return NULL;
	return out;
}

static char *put_str(char *o, const char *s)
{
	size_t n = strlen(s);
	memcpy(o, s, n);
	return o + n;
}

/* a string literal: its length known at compile time */
#define PUT(o, lit) (memcpy((o), (lit), sizeof(lit) - 1), (o) + sizeof(lit) - 1)

static char *put_u64(char *o, uint64_t v)
{
	char tmp[20];
	int n = 0;
	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (n)
		*o++ = tmp[--n];
	return o;
}

/* A duration, (neg ? -units : units) / scale seconds (units: ns, or us with scale 1e6), as
 * Python's f"{d:.9f}": Python's float of the exact integer, divided. */
typedef struct {
	int neg;
	uint64_t units;
	double scale;
} Duration;

static double seconds(Duration d)
{
	double u = (double)d.units; /* rounded to nearest, as Python's float(int) */
	return (d.neg ? -u : u) / d.scale;
}

/* The quotient is one correctly rounded division, so below 2^22 s its 9 decimals are exactly
 * the integer's digits (half an ulp < 0.5 ns there); beyond, printf (as exact as Python's). */
static char *put_duration(char *o, Duration d)
{
	uint64_t ns = d.units;
	if (ns >= 4000000000000000ULL)
		return o + sprintf(o, "%.9f", seconds(d));
	if (d.scale == 1e6)
		ns *= 1000;
	if (d.neg)
		*o++ = '-';
	o = put_u64(o, ns / 1000000000ULL);
	*o++ = '.';
	uint64_t frac = ns % 1000000000ULL;
	for (uint64_t place = 100000000ULL; place; place /= 10)
		*o++ = (char)('0' + frac / place % 10);
	return o;
}

/* Python's f"{x:.6f}": the exact binary value of x rounded half-even to 6 decimals (as
 * printf does too, at several times the cost). |x| = m / 2^s exactly; m * 10^6 fits 128 bits. */
static char *put_fixed6(char *o, double x)
{
	if (!(fabs(x) < 1e12)) /* and NaN, inf: the quotient below would not fit 64 bits */
		return o + sprintf(o, "%.6f", x);
	int e;
	double fr = frexp(fabs(x), &e); /* |x| = fr * 2^e, fr in [0.5, 1) or 0 */
	uint64_t m = (uint64_t)ldexp(fr, 53), q = 0;
	int s = 53 - e; /* > 0: |x| < 1e12 < 2^40 */
	if (s <= 74) { /* beyond, |x| * 10^6 < 1/4: rounds to 0 */
		unsigned __int128 v = (unsigned __int128)m * 1000000u;
		unsigned __int128 half = (unsigned __int128)1 << (s - 1), rem = v & ((half << 1) - 1);
		q = (uint64_t)(v >> s);
		if (rem > half || (rem == half && (q & 1)))
			q++;
	}
	if (signbit(x))
		*o++ = '-';
	o = put_u64(o, q / 1000000);
	*o++ = '.';
	for (uint64_t d = 100000, frac = q % 1000000; d; d /= 10)
		*o++ = (char)('0' + frac / d % 10);
	return o;
}

/* comm as json.dumps(comm_bytes.decode(errors="replace")): UTF-8 decoded with one U+FFFD per
 * maximal invalid subpart (CPython's rule), then escaped with ensure_ascii. */
static char *put_escaped(char *o, uint32_t c)
{
	static const char hex[] = "0123456789abcdef";
	switch (c) {
	case '"': return PUT(o, "\\\"");
	case '\\': return PUT(o, "\\\\");
	case '\n': return PUT(o, "\\n");
	case '\r': return PUT(o, "\\r");
	case '\t': return PUT(o, "\\t");
	case '\b': return PUT(o, "\\b");
	case '\f': return PUT(o, "\\f");
	}
	if (c >= 0x20 && c <= 0x7e) {
		*o++ = (char)c;
		return o;
	}
	if (c >= 0x10000) { /* a surrogate pair, as json does */
		c -= 0x10000;
		o = put_escaped(o, 0xd800 | (c >> 10));
		return put_escaped(o, 0xdc00 | (c & 0x3ff));
	}
	*o++ = '\\';
	*o++ = 'u';
	for (int shift = 12; shift >= 0; shift -= 4)
		*o++ = hex[c >> shift & 0xf];
	return o;
}

static char *put_comm(char *o, const unsigned char *s, size_t n)
{
	*o++ = '"';
	size_t i = 0;
	while (i < n) {
		unsigned char b = s[i];
		if (b < 0x80) {
			o = put_escaped(o, b);
			i++;
			continue;
		}
		int need;
		unsigned char lo = 0x80, hi = 0xbf; /* the range of the first continuation byte */
		uint32_t c;
		if (b >= 0xc2 && b <= 0xdf) {
			need = 1;
			c = b & 0x1f;
		} else if (b >= 0xe0 && b <= 0xef) {
			need = 2;
			c = b & 0x0f;
			if (b == 0xe0)
				lo = 0xa0; /* overlong */
			else if (b == 0xed)
				hi = 0x9f; /* surrogates */
		} else if (b >= 0xf0 && b <= 0xf4) {
			need = 3;
			c = b & 0x07;
			if (b == 0xf0)
				lo = 0x90;
			else if (b == 0xf4)
				hi = 0x8f; /* above U+10FFFF */
		} else {
			o = put_escaped(o, 0xfffd);
			i++;
			continue;
		}
		size_t j = i + 1;
		int k;
		for (k = 0; k < need && j < n; k++, j++) {
			unsigned char cb = s[j];
			if (cb < (k ? 0x80 : lo) || cb > (k ? 0xbf : hi))
				break;
			c = c << 6 | (cb & 0x3f);
		}
		/* complete: the character; else one U+FFFD for the lead and the valid bytes after it */
		o = put_escaped(o, k == need ? c : 0xfffd);
		i = j;
	}
	*o++ = '"';
	return o;
}

/* inet_ntop's text (what wire.py shows); IPv4 by hand, as glibc's "%u.%u.%u.%u" but cheaper */
static char *put_addr(char *o, const __u8 *addr, int v4)
{
	*o++ = '"';
	if (v4) {
		for (int i = 0; i < 4; i++) {
			if (i)
				*o++ = '.';
			o = put_u64(o, addr[i]);
		}
	} else {
		char text[INET6_ADDRSTRLEN];
		inet_ntop(AF_INET6, addr, text, sizeof text);
		o = put_str(o, text);
	}
	*o++ = '"';
	return o;
}

/* -- the Renderer: a Classifier's epoch offset and Match ------------------------------------ */
typedef struct {
	PyObject_HEAD
	double epoch_offset;
	int has_port, has_family, has_pid, has_netns, has_cgroup, has_slow, failed;
	unsigned long long port, family, pid, netns, cgroup;
	long long slow_ns;
} Renderer;

enum { R_DONE, R_BACK, R_BAD }; /* rendered or filtered out; for Python; does not decode */

/* tracker.Classifier._path, -1 for none */
static int open_path(const struct tcptrace_record *r)
{
	const __u8 *st = r->states;
	if (r->nstates < 2)
		return -1;
	if (st[0] == ST_LISTEN && st[1] == ST_SYN_RECV)
		return TT_PATH_PASSIVE;
	if (st[0] != ST_CLOSE || st[1] != ST_SYN_SENT)
		return -1;
	if (r->nstates > 2 && st[2] == ST_SYN_RECV) {
		int n = r->family == AF_INET ? 4 : 16;
		if (!memcmp(r->saddr, r->daddr, n) && r->sport == r->dport)
			return TT_PATH_SELF;
		return TT_PATH_SIMULTANEOUS;
	}
	return TT_PATH_ACTIVE;
}

/* tracker.Classifier._outcome */
static int open_outcome(const struct tcptrace_record *r)
{
	int last = r->states[r->nstates - 1], err = r->sk_err, rst = r->flags & TT_F_RST_IN;
	if (last == ST_ESTABLISHED)
		return TT_OUT_ESTABLISHED;
	if (last != ST_CLOSE)
		return TT_OUT_ABORTED;
	if (err == ECONNREFUSED)
		return rst ? TT_OUT_REFUSED : TT_OUT_UNREACHABLE;
	if (err == ETIMEDOUT)
		return TT_OUT_TIMEOUT;
	if (err == ECONNRESET)
		return TT_OUT_RESET;
	if (err)
		return TT_OUT_UNREACHABLE;
	if (!rst && !r->sport && r->nstates == 3 && r->states[1] == ST_SYN_SENT)
		return TT_OUT_PORT_EXHAUSTED;
	return rst ? TT_OUT_RESET : TT_OUT_ABORTED;
}

/* tracker.Match for an open (has_dur 0: its duration is None) */
static int matches(const Renderer *m, const struct tcptrace_record *r, int outcome,
		   int has_dur, Duration d)
{
	if (m->has_port && m->port != r->sport && m->port != r->dport)
		return 0;
	if (m->has_family && m->family != (r->family == AF_INET ? 4u : 6u))
		return 0;
	if (m->has_netns && m->netns != r->netns)
		return 0;
	int by_result = m->failed || m->has_slow;
	if (!m->has_pid && !m->has_cgroup && !by_result)
		return 1;
	/* a pid or cgroup of 0 is None in Python: it equals no filter value */
	if (m->has_pid && (!r->pid || m->pid != r->pid))
		return 0;
	if (m->has_cgroup && (!r->cgroup_id || m->cgroup != r->cgroup_id))
		return 0;
	if (!by_result)
		return 1;
	if (m->failed && outcome != TT_OUT_ESTABLISHED)
		return 1;
	if (!m->has_slow)
		return 0;
	if (r->syn_retrans || r->synack_retrans)
		return 1;
	if (!has_dur)
		return 0;
	double ns = nearbyint(seconds(d) * 1e9); /* round(duration_s * 1e9), half-even */
	if (ns >= 9223372036854775808.0)
		return 1;
	return (long long)ns >= m->slow_ns;
}

/* One record: rendered into `out` (or filtered out, counted in `counts`), or not ours. */
static int consume(const Renderer *m, const unsigned char *p, size_t len, int *pending,
		   Buf *out, unsigned long long *counts, uint64_t *ts)
{
	struct tcptrace_record r;
	if (len < sizeof r)
		return R_BAD;
	memcpy(&r, p, sizeof r); /* recording frames leave records unaligned */
	if (r.kind < TT_KIND_OPEN || r.kind > TT_KIND_EVENT ||
	    (r.family != AF_INET && r.family != AF_INET6) || r.nstates > TCPTRACE_MAX_STATES)
		return R_BAD; /* wire.decode refuses it */
	*ts = r.ts_ns;
	if (r.kind != TT_KIND_OPEN) {
		if (r.kind == TT_KIND_REQ_SYNACK_RTX)
			*pending = 1; /* Python's tracker will hold a request from here on */
		return R_BACK;
	}
	int path = open_path(&r);
	if (path < 0 || (path == TT_PATH_PASSIVE && *pending))
		return R_BACK;
	int outcome = open_outcome(&r);

	int has_dur = 1;
	Duration d = {0, 0, 1e9};
	if (r.open_flags & TT_OF_SYNCOOKIE)
		has_dur = 0; /* the kernel kept no SYN-ACK send time for a cookie */
	else if (path == TT_PATH_PASSIVE && outcome == TT_OUT_ESTABLISHED && r.passive_us) {
		d.units = r.passive_us;
		d.scale = 1e6;
	} else if (r.start_ns) { /* ts before start: negative, as Python's exact int says */
		d.neg = r.ts_ns < r.start_ns;
		d.units = d.neg ? r.start_ns - r.ts_ns : r.ts_ns - r.start_ns;
	} else
		has_dur = 0;
	if (!matches(m, &r, outcome, has_dur, d))
		return R_DONE;
	counts[path * TT_NOUTCOMES + outcome]++;

	if (buf_reserve(out, LINE_MAX_BYTES) < 0)
		return -1;
	char *o = buf_end(out);
	int v4 = r.family == AF_INET;
	o = PUT(o, "{\"type\":\"open\",\"ts\":");
	o = put_fixed6(o, (double)r.ts_ns / 1e9 + m->epoch_offset);
	o = PUT(o, ",\"path\":\"");
	o = put_str(o, PATH_NAMES[path]);
	o = PUT(o, "\",\"outcome\":\"");
	o = put_str(o, OUTCOME_NAMES[outcome]);
	o = put_str(o, v4 ? "\",\"family\":4,\"saddr\":" : "\",\"family\":6,\"saddr\":");
	o = put_addr(o, r.saddr, v4);
	o = PUT(o, ",\"sport\":");
	o = put_u64(o, r.sport);
	o = PUT(o, ",\"daddr\":");
	o = put_addr(o, r.daddr, v4);
	o = PUT(o, ",\"dport\":");
	o = put_u64(o, r.dport);
	o = PUT(o, ",\"states\":[");
	for (int i = 0; i < r.nstates; i++) {
		if (i)
			*o++ = ',';
		int s = r.states[i];
		if (s > 0 && s < NSTATE_NAMES) {
			*o++ = '"';
			o = put_str(o, STATE_NAMES[s]);
			*o++ = '"';
		} else
			o += sprintf(o, "\"STATE_%d\"", s); /* TcpState.name_of */
	}
	o = PUT(o, "],\"duration_s\":");
	o = has_dur ? put_duration(o, d) : PUT(o, "null");
	o = PUT(o, ",\"syn_retransmits\":");
	o = put_u64(o, r.syn_retrans);
	o = PUT(o, ",\"synack_retransmits\":");
	o = put_u64(o, r.synack_retrans);
	o = PUT(o, ",\"pid\":");
	o = r.pid ? put_u64(o, r.pid) : PUT(o, "null");
	o = PUT(o, ",\"comm\":");
	size_t n = strnlen(r.comm, TCPTRACE_COMM_LEN);
	o = n ? put_comm(o, (const unsigned char *)r.comm, n) : PUT(o, "null");
	o = PUT(o, ",\"netns\":");
	o = put_u64(o, r.netns);
	o = PUT(o, ",\"errno\":");
	/* the kernel keeps no error for a port search that failed: connect() returned it */
	o = put_u64(o, outcome == TT_OUT_PORT_EXHAUSTED ? EADDRNOTAVAIL : r.sk_err);
	o = PUT(o, ",\"cgroup\":");
	o = r.cgroup_id ? put_u64(o, r.cgroup_id) : PUT(o, "null");
	o = PUT(o, ",\"flags\":");
	o = put_str(o, FLAG_LISTS[r.open_flags & 3]);
	o = PUT(o, "}\n");
	out->len = (size_t)(o - PyBytes_AS_STRING(out->bytes));
	return R_DONE;
}

/* -- Python glue ---------------------------------------------------------------------------- */
/* None: no filter; else an unsigned value (OverflowError for a negative one: the caller then
 * keeps Python's path, which handles any value) */
static int opt_u64(PyObject *v, int *has, unsigned long long *out)
{
	*has = v != Py_None;
	if (!*has)
		return 0;
	*out = PyLong_AsUnsignedLongLong(v);
	return *out == (unsigned long long)-1 && PyErr_Occurred() ? -1 : 0;
}

static int Renderer_init(Renderer *self, PyObject *args, PyObject *kw)
{
	static char *names[] = {"epoch_offset", "port", "family", "pid", "netns", "cgroup",
				"failed", "slow_ns", NULL};
	PyObject *port = Py_None, *family = Py_None, *pid = Py_None, *netns = Py_None,
		 *cgroup = Py_None, *slow = Py_None;
	int failed = 0;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "d|OOOOOpO", names, &self->epoch_offset, &port,
					 &family, &pid, &netns, &cgroup, &failed, &slow))
		return -1;
	if (opt_u64(port, &self->has_port, &self->port) < 0 ||
	    opt_u64(family, &self->has_family, &self->family) < 0 ||
	    opt_u64(pid, &self->has_pid, &self->pid) < 0 ||
	    opt_u64(netns, &self->has_netns, &self->netns) < 0 ||
	    opt_u64(cgroup, &self->has_cgroup, &self->cgroup) < 0)
		return -1;
	self->failed = failed;
	self->has_slow = slow != Py_None;
	if (self->has_slow) {
		self->slow_ns = PyLong_AsLongLong(slow);
		if (self->slow_ns == -1 && PyErr_Occurred())
			return -1;
	}
	return 0;
}

/* (bytes of the lines, [bytes for Python], counts by path * TT_NOUTCOMES + outcome, ...) */
static PyObject *result(Buf *out, PyObject *back, const unsigned long long *counts,
			unsigned long long a, unsigned long long b)
{
	PyObject *lines = buf_take(out), *c = PyTuple_New(TT_NPATHS * TT_NOUTCOMES), *res = NULL;
	if (lines && c) {
		for (int i = 0; i < TT_NPATHS * TT_NOUTCOMES; i++)
			PyTuple_SET_ITEM(c, i, PyLong_FromUnsignedLongLong(counts[i]));
		res = Py_BuildValue("(OOOKK)", lines, back, c, a, b);
	}
	Py_XDECREF(lines);
	Py_XDECREF(c);
	return res;
}

static int give_back(PyObject *back, const unsigned char *p, size_t len)
{
	PyObject *b = PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)len);
	if (!b)
		return -1;
	int rc = PyList_Append(back, b);
	Py_DECREF(b);
	return rc;
}

PyDoc_STRVAR(render_doc,
"render(buf, pending, frame=0, stop_on_bad=False) -> (lines, back, counts, done, last_ts)\n\n"
"buf: records of 120 bytes, each after `frame` bytes (a recording's frame header). lines: the\n"
"JSON lines of the opens rendered here; back: the records left to Python, in order; counts:\n"
"opens shown, by path * 7 + outcome; done: records consumed (with stop_on_bad, fewer than in\n"
"buf when record `done` does not decode); last_ts: ts_ns of the last record read.");

static PyObject *Renderer_render(Renderer *self, PyObject *args, PyObject *kw)
{
	static char *names[] = {"buf", "pending", "frame", "stop_on_bad", NULL};
	Py_buffer in;
	int pending, stop_on_bad = 0;
	Py_ssize_t frame = 0;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "y*p|np", names, &in, &pending, &frame,
					 &stop_on_bad))
		return NULL;
	PyObject *back = PyList_New(0), *res = NULL;
	Buf out = {0};
	unsigned long long counts[TT_NPATHS * TT_NOUTCOMES] = {0}, done = 0;
	uint64_t ts = 0;
	size_t stride = (size_t)frame + sizeof(struct tcptrace_record), len = (size_t)in.len;
	const unsigned char *p = in.buf;
	if (!back || frame < 0 || buf_reserve(&out, len / stride * 400 + LINE_MAX_BYTES) < 0)
		goto out; /* (most lines are under 400 bytes) */
	for (size_t at = 0; at + stride <= len; at += stride, done++) {
		const unsigned char *rec = p + at + frame;
		int rc = consume(self, rec, stride - frame, &pending, &out, counts, &ts);
		if (rc < 0)
			goto out;
		if (rc == R_BAD && stop_on_bad)
			break;
		if (rc != R_DONE && give_back(back, rec, stride - frame) < 0)
			goto out;
	}
	res = result(&out, back, counts, done, ts);
out:
	PyBuffer_Release(&in);
	Py_XDECREF(back);
	Py_XDECREF(out.bytes);
	return res;
}

#define RB_BUSY (1U << 31)
#define RB_DISCARD (1U << 30)
#define RB_HDR 8

PyDoc_STRVAR(drain_doc,
"drain(cons, prod, page, mask, pending) -> (lines, back, counts, records, 0)\n\n"
"Walk a BPF ring buffer as ringbuf.RingReader.drain does (cons: the consumer page, writable;\n"
"prod: the producer page then the data area mapped twice, from byte `page`), advancing\n"
"consumer_pos past each committed batch; the result as render()'s.");

static PyObject *Renderer_drain(Renderer *self, PyObject *args)
{
	PyObject *cons_o, *prod_o;
	Py_ssize_t page;
	unsigned long long mask;
	int pending;
	if (!PyArg_ParseTuple(args, "OOnKp", &cons_o, &prod_o, &page, &mask, &pending))
		return NULL;
	Py_buffer cons, prod;
	if (PyObject_GetBuffer(cons_o, &cons, PyBUF_WRITABLE) < 0)
		return NULL;
	if (PyObject_GetBuffer(prod_o, &prod, PyBUF_SIMPLE) < 0) {
		PyBuffer_Release(&cons);
		return NULL;
	}
	PyObject *back = PyList_New(0), *res = NULL;
	Buf out = {0};
	unsigned long long counts[TT_NPATHS * TT_NOUTCOMES] = {0}, n = 0;
	uint64_t ts;
	if (!back)
		goto out;
	if (cons.len < 8 || page < 8 || (size_t)prod.len < (size_t)page + 2 * (mask + 1)) {
		PyErr_SetString(PyExc_ValueError, "ring buffer maps smaller than their layout");
		goto out;
	}
	uint64_t *consp = cons.buf;
	const uint64_t *prodp = prod.buf;
	const unsigned char *data = (const unsigned char *)prod.buf + page;
	size_t data_len = (size_t)prod.len - (size_t)page;
	uint64_t c = __atomic_load_n(consp, __ATOMIC_ACQUIRE);
	for (;;) {
		uint64_t pr = __atomic_load_n(prodp, __ATOMIC_ACQUIRE);
		if (c >= pr)
			break;
		int busy = 0;
		while (c < pr) {
			size_t off = c & mask;
			uint32_t head = __atomic_load_n((const uint32_t *)(data + off), __ATOMIC_ACQUIRE);
			if (head & RB_BUSY) { /* reserved, not yet committed: the next drain takes it */
				busy = 1;
				break;
			}
			size_t length = head & ~(RB_BUSY | RB_DISCARD);
			if (!(head & RB_DISCARD)) {
				const unsigned char *rec = data + off + RB_HDR;
				size_t avail = data_len - off - RB_HDR; /* as Python's slice would clamp */
				size_t rlen = length < avail ? length : avail;
				int rc = consume(self, rec, rlen, &pending, &out, counts, &ts);
				if (rc < 0 || (rc != R_DONE && give_back(back, rec, rlen) < 0))
					goto out;
				n++;
			}
			c += (length + RB_HDR + 7) & ~(size_t)7;
		}
		__atomic_store_n(consp, c, __ATOMIC_RELEASE); /* frees the space for the producers */
		if (busy)
			break;
	}
	res = result(&out, back, counts, n, 0);
out:
	PyBuffer_Release(&cons);
	PyBuffer_Release(&prod);
	Py_XDECREF(back);
	Py_XDECREF(out.bytes);
	return res;
}

static PyMethodDef Renderer_methods[] = {
	{"render", (PyCFunction)(void (*)(void))Renderer_render, METH_VARARGS | METH_KEYWORDS,
	 render_doc},
	{"drain", (PyCFunction)Renderer_drain, METH_VARARGS, drain_doc},
	{NULL},
};

static PyTypeObject RendererType = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "tcptrace_bpf._fastpath.Renderer",
	.tp_doc = "Renderer(epoch_offset, port, family, pid, netns, cgroup, failed, slow_ns): a "
		  "Classifier's clock and Match (None: no filter), rendering opens as jsonl.render",
	.tp_basicsize = sizeof(Renderer),
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_new = PyType_GenericNew,
	.tp_init = (initproc)Renderer_init,
	.tp_methods = Renderer_methods,
};

PyDoc_STRVAR(scan_doc,
"scan_frames(buf, record_size) -> length of the run of whole record frames (recording.FRAME\n"
"type 1 of record_size bytes) at the start of buf");

static PyObject *scan_frames(PyObject *Py_UNUSED(mod), PyObject *args)
{
	Py_buffer in;
	Py_ssize_t size, at = 0;
	if (!PyArg_ParseTuple(args, "y*n", &in, &size))
		return NULL;
	const unsigned char *p = in.buf;
	while (at + 4 + size <= in.len && p[at] == 1 && p[at + 1] == 0 &&
	       (p[at + 2] | p[at + 3] << 8) == size)
		at += 4 + size;
	PyBuffer_Release(&in);
	return PyLong_FromSsize_t(at);
}

static PyMethodDef module_methods[] = {
	{"scan_frames", scan_frames, METH_VARARGS, scan_doc},
	{NULL},
};

static struct PyModuleDef module = {
	PyModuleDef_HEAD_INIT, "tcptrace_bpf._fastpath",
	"Compiled --json consumer (see tcptrace_bpf/fastpath.py).", -1, module_methods,
};

static PyObject *names_tuple(const char *const *names, int n)
{
	PyObject *t = PyTuple_New(n);
	for (int i = 0; t && i < n; i++)
		PyTuple_SET_ITEM(t, i, PyUnicode_FromString(names[i] ? names[i] : ""));
	return t;
}

PyMODINIT_FUNC PyInit__fastpath(void)
{
	if (PyType_Ready(&RendererType) < 0)
		return NULL;
	PyObject *m = PyModule_Create(&module);
	if (!m)
		return NULL;
	Py_INCREF(&RendererType);
	/* for tests/test_fastpath.py: the names and sizes this build was compiled with */
	if (PyModule_AddObject(m, "Renderer", (PyObject *)&RendererType) < 0 ||
	    PyModule_AddObject(m, "STATE_NAMES", names_tuple(STATE_NAMES, NSTATE_NAMES)) < 0 ||
	    PyModule_AddObject(m, "PATHS", names_tuple(PATH_NAMES, TT_NPATHS)) < 0 ||
	    PyModule_AddObject(m, "OUTCOMES", names_tuple(OUTCOME_NAMES, TT_NOUTCOMES)) < 0 ||
	    PyModule_AddObject(m, "FLAG_LISTS", names_tuple(FLAG_LISTS, 4)) < 0 ||
	    PyModule_AddIntConstant(m, "RECORD_SIZE", sizeof(struct tcptrace_record)) < 0 ||
	    PyModule_AddIntConstant(m, "WIRE_VERSION", TCPTRACE_WIRE_VERSION) < 0) {
		Py_DECREF(m);
		return NULL;
	}
	return m;
}
