// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
//go:build ignore

/*
 * Two programs on sock:inet_sock_set_state that bound what tcp.c's
 * program can cost, for the probe package's BenchmarkChurnFloor. The
 * collector never loads them.
 *
 *  - floor_empty returns at once: what the kernel's dispatch of the BTF
 *    tracepoint and its run-time statistics cost per run, on the same
 *    state changes.
 *  - floor_minimal does only the kernel calls that any program reporting
 *    each socket's end with its owner must make: socket storage created
 *    where a client's owner is current (connect()), and where a listener's
 *    is (listen(); BPF_F_CLONE gives its accepted sockets a copy, in the
 *    kernel's clone, outside the program's run time); the storage's lookup
 *    at the close, and one ring record of tcp.c's size at the close of
 *    every socket, with storage or not (an accepted socket whose listener
 *    was there before the program has none, and tcp.c creates it at
 *    establishment). It writes nothing but the cookie: no owner, endpoint
 *    or counter is read, the record is not zeroed, the socket's family is
 *    not checked, and the reader is never woken (it polls). So it is
 *    cheaper than any program that reports what weir reports.
 */

#include "tcp.h"

char __license[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} floor_events SEC(".maps");

SEC("tp_btf/inet_sock_set_state")
int floor_empty(u64 *ctx)
{
	return 0;
}

/* Arguments: const struct sock *sk, int oldstate, int newstate. */
SEC("tp_btf/inet_sock_set_state")
int floor_minimal(u64 *ctx)
{
	struct sock *sk = (struct sock *)ctx[0];
	int oldstate = (int)ctx[1], newstate = (int)ctx[2];

	if (newstate == TCP_SYN_SENT || newstate == TCP_LISTEN) {
		bpf_sk_storage_get(&sk_states, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		return 0;
	}
	if (newstate != TCP_CLOSE || oldstate == TCP_CLOSE || oldstate == TCP_LISTEN)
		return 0;
	if (sk->sk_bpf_storage)
		bpf_sk_storage_get(&sk_states, sk, 0, 0); /* a client's owner, a server's role */
	struct event *ev = bpf_ringbuf_reserve(&floor_events, sizeof(*ev), 0);
	if (!ev) {
		count_drop(DROP_RING_FULL);
		return 0;
	}
	ev->endpoint.cookie = bpf_get_socket_cookie(sk);
	bpf_ringbuf_submit(ev, 1 /* BPF_RB_NO_WAKEUP */);
	return 0;
}
