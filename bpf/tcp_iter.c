// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
//go:build ignore

/*
 * The two walks user space makes over the sockets.
 *
 * sample_sockets (iter/bpf_sk_storage_map) visits every socket that has
 * storage in sk_states, in every network namespace, at poll time, and
 * writes one struct event per live socket (kind 0) with its counters read there
 * and then: an idle socket is as current as a busy one. The records go to
 * the `samples` ring buffer, so that the walk is a single pass (see there).
 *
 * discover_sockets (iter/tcp) visits the TCP sockets of the network
 * namespace that opened the iterator, at start-up. It creates the storage
 * of each connected socket not yet tracked and writes a struct event for it
 * (EVENT_EXISTING, with the counters then as the baseline), and one for
 * each listener (EVENT_LISTEN).
 */

#include "tcp.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* Keeps struct discovered in the BTF for bpf2go: it is only a local variable below. */
const struct discovered *unused_discovered __attribute__((unused));

/*
 * The samples of one walk. One read() of the iterator runs the whole walk
 * only while nothing is written to the seq_file: the kernel hands a walk
 * over in chunks when its 32 KiB seq buffer fills, and resumes the next
 * chunk by position in the storage map's hash bucket, which sockets opened
 * or freed in between shift. So samples go here, and user space drains the
 * ring once the read returns. Sized from probe.Config before load. The
 * kernel does not reschedule within such a read, and walks each bucket
 * under one RCU read lock: about 150 ns per socket, 10 ms for 65,536.
 */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20);
} samples SEC(".maps");

static __always_inline void fill_sample(struct event *s, struct tcp_sock *tp, struct sk_state *st,
					int state)
{
	fill_endpoint(&s->endpoint, tp, st->role);
	read_owner(st, &s->owner);
	read_counters(tp, st, st->syn_acked, st->syn_delivered, state, &s->counters);
}

SEC("iter/bpf_sk_storage_map")
int sample_sockets(struct bpf_iter__bpf_sk_storage_map *ctx)
{
	struct sock *sk = ctx->sk;
	struct sk_state *st = ctx->value;
	if (!sk || !st)
		return 0;
	if (!(st->flags & SK_STATE_TRACKED) || (st->flags & SK_STATE_CLOSED))
		return 0;
	int state = sk->__sk_common.skc_state;
	if (!trackable_state(state))
		return 0; /* a client still connecting, or closed */
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return 0;

	/* No wakeup: the reader drains the ring after its read() returns. */
	struct event *s = bpf_ringbuf_reserve(&samples, sizeof(*s), 0);
	if (s) {
		__builtin_memset(s, 0, sizeof(*s));
		fill_sample(s, tp, st, state);
		bpf_ringbuf_submit(s, 1 /* BPF_RB_NO_WAKEUP */);
		return 0;
	}
	/* The ring is full: correct, but the walk may now be chunked. */
	struct event f = {};
	fill_sample(&f, tp, st, state);
	count_drop(DROP_SAMPLE_FALLBACK);
	bpf_seq_write(ctx->meta->seq, &f, sizeof(f));
	return 0;
}

SEC("iter/tcp")
int discover_sockets(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	if (!skc)
		return 0;
	int state = skc->skc_state;
	/* Time-wait and request sockets are not full sockets. */
	if (state != TCP_LISTEN && !trackable_state(state))
		return 0;
	u16 family = skc->skc_family;
	if (family != AF_INET && family != AF_INET6)
		return 0;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0;
	struct sock *sk = &tp->inet_conn.icsk_inet.sk;

	struct discovered d = {};
	struct event *ev = &d.event;
	struct sk_state *st = 0;
	if (state == TCP_LISTEN) {
		ev->endpoint.kind = EVENT_LISTEN;
	} else {
		st = bpf_sk_storage_get(&sk_states, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (!st) {
			count_drop(DROP_STORAGE_FULL);
			return 0;
		}
		if (st->flags & SK_STATE_TRACKED)
			return 0; /* seen established, or discovered before */
		/* The handshake was not seen: no SYN baseline, role and owner unknown. */
		read_counters(tp, st, 0, 0, state, &ev->counters);
	}
	fill_endpoint(&ev->endpoint, tp, ROLE_UNKNOWN);
	if (state != TCP_LISTEN)
		ev->endpoint.kind = EVENT_EXISTING;
	struct socket *sock = sk->sk_socket;
	if (sock) {
		struct file *file = sock->file;
		if (file)
			d.inode = file->f_inode->i_ino;
	}
	/*
	 * The record first: when it does not fit in what is left of the
	 * seq_file's buffer (32 KiB a read), the kernel shows this socket again
	 * at the start of the next read(), and the storage must then still say
	 * that it was not discovered (marking it first lost about one socket
	 * per read).
	 */
	if (bpf_seq_write(ctx->meta->seq, &d, sizeof(d)))
		return 0;
	if (st)
		st->flags = SK_STATE_TRACKED;
	return 0;
}
