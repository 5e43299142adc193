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
 * sample_files walks the processes' open files instead, where the kernel
 * refuses the storage map's iterator.
 *
 * discover_sockets (iter/tcp) visits the TCP sockets of the network
 * namespace that opened the iterator, at start-up. It creates the storage
 * of each connected socket not yet tracked and writes a struct event for it
 * (EVENT_EXISTING, with the counters then as the baseline), and one for
 * each listener (EVENT_LISTEN).
 */

#include "tcp.h"
#include "walk.h"

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

/* sample_one samples one socket for a walk whose seq_file is seq. */
static __always_inline void sample_one(struct seq_file *seq, struct sock *sk, struct sk_state *st)
{
	if (!(st->flags & SK_STATE_TRACKED) || (st->flags & SK_STATE_CLOSED))
		return;
	int state = sk->__sk_common.skc_state;
	if (!trackable_state(state))
		return; /* a client still connecting, or closed */
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return;

	/* No wakeup: the reader drains the ring after its read() returns. */
	struct event *s = bpf_ringbuf_reserve(&samples, sizeof(*s), 0);
	if (s) {
		__builtin_memset(s, 0, sizeof(*s));
		fill_sample(s, tp, st, state);
		bpf_ringbuf_submit(s, 1 /* BPF_RB_NO_WAKEUP */);
		return;
	}
	/* The ring is full: correct, but the walk may now be chunked. */
	struct event f = {};
	fill_sample(&f, tp, st, state);
	count_drop(DROP_SAMPLE_FALLBACK);
	bpf_seq_write(seq, &f, sizeof(f));
}

SEC("iter/bpf_sk_storage_map")
int sample_sockets(struct bpf_iter__bpf_sk_storage_map *ctx)
{
	struct sock *sk = ctx->sk;
	struct sk_state *st = ctx->value;
	if (sk && st)
		sample_one(ctx->meta->seq, sk, st);
	return 0;
}

/*
 * sample_files (iter/task_file, Linux 5.8; bpf_sock_from_file, 5.11) is
 * sample_sockets for kernels that refuse iterators over socket storage (a
 * security policy can: EPERM at load). It visits every open file of every
 * process in the collector's PID namespace and samples each TCP socket
 * with storage in sk_states, in any network namespace, as sample_sockets
 * does. A socket held by several processes is sampled once (walk.h), and
 * one that no process holds (an orphan, a connection in a listener's
 * accept queue) is not sampled: user space takes every such walk as
 * incomplete (Probe.SampleWalk). files_walk is the number of the current
 * walk (walk_number).
 */
static u16 files_walk;

SEC("iter/task_file")
int sample_files(struct bpf_iter__task_file___walk *ctx)
{
	u16 walk = walk_number(ctx->meta, &files_walk);
	struct sock *fsk = file_sock(ctx->file);
	if (!fsk)
		return 0;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(fsk);
	if (!tp)
		return 0;
	struct sock *sk = &tp->inet_conn.icsk_inet.sk;
	struct sk_state *st = bpf_sk_storage_get(&sk_states, sk, 0, 0);
	if (!st || st->walked == walk)
		return 0; /* no storage, or sampled from another holder */
	st->walked = walk;
	sample_one(ctx->meta->seq, sk, st);
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
