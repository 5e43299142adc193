/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * What the TCP programs share: the per-socket storage and its value, the
 * records they hand to user space, and how a socket's endpoint, owner and
 * counters are read. Kernel structs are read through BTF pointers (plain
 * loads, relocated by CO-RE), never with probe-read helpers.
 */
#ifndef __WEIR_TCP_H__
#define __WEIR_TCP_H__

#include "vmlinux.h"
#include "bpf_helpers.h"
#include "bpf_endian.h"

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define TASK_COMM_LEN 16

enum tcp_state {
	TCP_ESTABLISHED = 1,
	TCP_SYN_SENT = 2,
	TCP_SYN_RECV = 3,
	TCP_FIN_WAIT1 = 4,
	TCP_FIN_WAIT2 = 5,
	TCP_TIME_WAIT = 6,
	TCP_CLOSE = 7,
	TCP_CLOSE_WAIT = 8,
	TCP_LAST_ACK = 9,
	TCP_LISTEN = 10,
	TCP_CLOSING = 11,
};

/* Values match probe.EventKind. 1 was the open event, no longer sent. */
enum event_kind {
	EVENT_CLOSE = 2,
	EVENT_LISTEN = 3,
	EVENT_EXISTING = 4,
	EVENT_FAILED = 5, /* a connect that never established; endpoint.reason says why */
	EVENT_RESET = 6,  /* a reset sent or received after the close event: the final counters again */
	EVENT_ORPHAN = 7, /* closed by its process with data still to send: a sample the open files' walk cannot take */
};

/* Why a connect failed (endpoint.reason of EVENT_FAILED); values match probe.FailReason. */
enum fail_reason {
	FAIL_REFUSED = 1,     /* the peer answered the SYN with a RST (ECONNREFUSED) */
	FAIL_TIMEOUT = 2,     /* the SYN retries ran out (ETIMEDOUT) */
	FAIL_UNREACHABLE = 3, /* another error, e.g. an ICMP unreachable (EHOSTUNREACH) */
};

#define ECONNREFUSED 111
#define ETIMEDOUT 110

/* Values match probe.Role. */
enum role {
	ROLE_UNKNOWN = 0,
	ROLE_CLIENT = 1,
	ROLE_SERVER = 2,
};

/* Indexes into the drops array. */
enum drop_reason {
	DROP_RING_FULL = 0,
	DROP_STORAGE_FULL = 1,
	DROP_SAMPLE_FALLBACK = 2, /* a sample written to the seq_file: the sample ring was full */
	DROP_UDP_RING_FULL = 3,   /* UDP close records lost: the UDP event ring was full */
	DROP_UDP_STORAGE_FULL = 4, /* UDP sockets not tracked: no socket storage */
	DROP_UDP_UNATTRIBUTED = 5, /* UDP datagrams whose peer was not known: counted as other peers */
	DROP_UDP_FALLBACK = 6,    /* UDP samples written to the seq_file: the sample ring was full */
	DROP_MAX = 7,
};

/* sk_state.flags */
enum {
	SK_STATE_TRACKED = 1, /* set when the storage is filled in; 0 in a fresh one */
	SK_STATE_CLOSED = 2,  /* the close event is out: the socket is not sampled again */
	/*
	 * A listening socket's storage: it only carries the owner (the process
	 * that called listen()) for the kernel to copy into every child.
	 */
	SK_STATE_LISTENER = 4,
};

/*
 * Map flag (uapi BPF_F_CLONE, Linux 5.4): the kernel copies a listener's
 * storage into each socket it clones from it (sk_clone_lock), before the
 * child's first state change.
 */
#define BPF_F_CLONE (1U << 9)

/* Which socket: its cookie and its addresses. */
struct endpoint {
	u64 cookie;   /* bpf_get_socket_cookie */
	u8 saddr[16]; /* 4 bytes used for AF_INET */
	u8 daddr[16];
	u32 netns;    /* network namespace inode */
	u16 sport;    /* host byte order */
	u16 dport;    /* host byte order */
	u16 family;
	u8 role;      /* enum role */
	u8 kind;      /* enum event_kind in an event, 0 in a sample */
	u8 reason;    /* enum fail_reason in EVENT_FAILED, else 0 */
	u8 _pad[3];
};

/* The process that uses a socket; pid 0 while unknown. */
struct owner {
	u64 start_time; /* group leader's start_boottime, ns */
	u64 cgroup_id;  /* cgroup v2 id */
	u32 pid;        /* tgid */
	u32 _pad;
	char comm[TASK_COMM_LEN]; /* group leader's comm */
};

/*
 * The counters user space sees: payload bytes, without SYN and FIN. The
 * segment counters are the kernel's u32 fields. total_retrans is
 * tcp_sock.total_retrans, read where the counters are read (the sample
 * walk, the close): exact, since the kernel adds every retransmitted
 * segment there, and free on the packet path, unlike a tcp_retransmit_skb
 * hook that would run per retransmission. The reset counters come from the
 * socket storage (the kernel keeps none per socket). srtt_us is the
 * smoothed RTT in microseconds (tcp_sock.srtt_us >> 3), 0 before the first
 * measurement: a gauge, not a counter.
 */
struct counters {
	u64 bytes_acked;
	u64 bytes_received;
	u32 delivered;
	u32 data_segs_in;
	u32 total_retrans;
	u32 srtt_us;
	u32 rst_sent;
	u32 rst_received;
};

/*
 * A lifecycle event on the ring buffer, and one live socket written by the
 * sampling iterator. 136 bytes: with the ring's 8-byte record header an
 * event fills two cache lines and a quarter.
 */
struct event {
	struct endpoint endpoint; /* endpoint.kind tells the event */
	struct owner owner;
	struct counters counters;
};

/* A socket found by the discovery iterator. */
struct discovered {
	struct event event;
	u64 inode; /* inode of the socket's file, 0 if it has none */
};

/*
 * Value of the socket storage. No counter is ever stored: they are read
 * from the tcp_sock when an event or a sample is written.
 */
struct sk_state {
	struct owner owner;
	/*
	 * Odd while a writer fills in owner. Writers take it with a
	 * compare-and-swap, so there is one at a time; a reader that sees it
	 * odd or changed reports the owner as unknown for that read.
	 */
	u32 owner_seq;
	u32 syn_acked;     /* bytes_acked at establishment: the SYN */
	u32 syn_delivered; /* delivered at establishment: the SYN */
	u8 role;           /* enum role */
	u8 flags;          /* SK_STATE_* */
	u16 walked;        /* the last open files' walk that sampled it (walk.h) */
	u32 rst_sent;      /* RSTs this socket sent (tcp_send_reset) */
	u32 rst_received;  /* RSTs it received (tcp_receive_reset) */
};

/*
 * Per-socket state of every tracked TCP socket, and of listeners. With
 * BPF_F_CLONE an accepted socket starts with a copy of its listener's
 * storage, so its owner is the process that called listen() on that
 * listening socket: the owner is known without any per-message hook.
 */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC | BPF_F_CLONE);
	__type(key, int);
	__type(value, struct sk_state);
} sk_states SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DROP_MAX);
	__type(key, u32);
	__type(value, u64);
} drops SEC(".maps");

static __always_inline void count_drop(u32 reason)
{
	u64 *n = bpf_map_lookup_elem(&drops, &reason);
	if (n)
		*n += 1;
}

static __always_inline u64 sub_floor(u64 a, u64 b)
{
	return a > b ? a - b : 0;
}

/* fin_queued: in this state the socket has queued its FIN. */
static __always_inline bool fin_queued(int state)
{
	switch (state) {
	case TCP_FIN_WAIT1:
	case TCP_FIN_WAIT2:
	case TCP_CLOSING:
	case TCP_LAST_ACK:
		return true;
	}
	return false;
}

/* trackable_state: a connected full socket, sampled and discovered. */
static __always_inline bool trackable_state(int state)
{
	switch (state) {
	case TCP_ESTABLISHED:
	case TCP_FIN_WAIT1:
	case TCP_FIN_WAIT2:
	case TCP_CLOSE_WAIT:
	case TCP_CLOSING:
	case TCP_LAST_ACK:
		return true;
	}
	return false;
}

/*
 * read_counters reads the cumulative counters of tp and takes out what is
 * not payload. bytes_acked and delivered count the SYN of an active open
 * (saved at establishment in syn_acked/syn_delivered) and, in bytes_acked,
 * our FIN once it is acked: state (or, at close, the state before) tells
 * whether the FIN was queued. bytes_received counts the peer's FIN once
 * received (SOCK_DONE).
 */
static __always_inline void read_counters(struct tcp_sock *tp, struct sk_state *st, u32 syn_acked,
					  u32 syn_delivered, int state, struct counters *c)
{
	struct sock *sk = &tp->inet_conn.icsk_inet.sk;
	u64 acked = sub_floor(tp->bytes_acked, syn_acked);
	u64 received = tp->bytes_received;

	if (fin_queued(state) && tp->snd_una == tp->write_seq)
		acked = sub_floor(acked, 1);
	if (sk->__sk_common.skc_flags & (1UL << SOCK_DONE))
		received = sub_floor(received, 1);

	c->bytes_acked = acked;
	c->bytes_received = received;
	c->delivered = tp->delivered - syn_delivered;
	c->data_segs_in = tp->data_segs_in;
	c->total_retrans = tp->total_retrans;
	c->srtt_us = tp->srtt_us >> 3;
	if (st) {
		c->rst_sent = st->rst_sent;
		c->rst_received = st->rst_received;
	}
}

static __always_inline void fill_endpoint(struct endpoint *e, struct tcp_sock *tp, u8 role)
{
	struct sock *sk = &tp->inet_conn.icsk_inet.sk;
	u16 family = sk->__sk_common.skc_family;

	e->cookie = bpf_get_socket_cookie(sk);
	e->family = family;
	e->role = role;
	/* inet_sport, not skc_num: at close the port is released before the tracepoint. */
	e->sport = bpf_ntohs(tp->inet_conn.icsk_inet.inet_sport);
	e->dport = bpf_ntohs(sk->__sk_common.skc_dport);
	e->netns = sk->__sk_common.skc_net.net->ns.inum;
	if (family == AF_INET) {
		*(u32 *)e->saddr = sk->__sk_common.skc_rcv_saddr;
		*(u32 *)e->daddr = sk->__sk_common.skc_daddr;
	} else {
		__builtin_memcpy(e->saddr, &sk->__sk_common.skc_v6_rcv_saddr, 16);
		__builtin_memcpy(e->daddr, &sk->__sk_common.skc_v6_daddr, 16);
	}
}

#define READ_ONCE_U32(x) (*(volatile u32 *)&(x))
#define barrier() asm volatile("" ::: "memory")

/*
 * read_owner copies the owner of st into o, or leaves o zero (unknown) if a
 * writer is filling it in. The writer's compare-and-swaps are full
 * barriers; the reads here are only kept in order by the compiler, which
 * x86 and arm64 loads from one cache line respect in practice.
 */
static __always_inline void read_owner(struct sk_state *st, struct owner *o)
{
	u32 seq = READ_ONCE_U32(st->owner_seq);
	if (seq & 1)
		return;
	barrier();
	o->start_time = st->owner.start_time;
	o->cgroup_id = st->owner.cgroup_id;
	o->pid = st->owner.pid;
	__builtin_memcpy(o->comm, st->owner.comm, sizeof(o->comm));
	barrier();
	if (READ_ONCE_U32(st->owner_seq) != seq)
		__builtin_memset(o, 0, sizeof(*o));
}

#endif /* __WEIR_TCP_H__ */
