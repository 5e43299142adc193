// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
//go:build ignore

/*
 * TCP socket lifecycle for the weir collector.
 *
 * Every TCP socket (AF_INET, AF_INET6) established while the probe is
 * loaded gets socket storage in `sk_states`, freed by the kernel with the
 * socket. It holds the owner, the role and the SYN baselines; never a
 * counter. Where the owner comes from, without any per-message hook:
 *  - a client: connect() (CLOSE -> SYN_SENT) runs in the owner's context;
 *  - a listener: listen() (-> LISTEN) runs in the owner's context too, and
 *    its storage is created there with that owner;
 *  - an accepted socket: sk_states has BPF_F_CLONE, so the kernel copies
 *    the listener's storage into the child when it clones it, and the
 *    child's owner is the process that listened on that very listening
 *    socket (each SO_REUSEPORT listener its own). Its cgroup id is the
 *    listener's, as the child's own sk_cgrp_data is the listener's copy.
 *    A pre-fork server whose workers accept on a socket their parent
 *    listened on is reported as the parent (the same container or pod). A
 *    descriptor passed to another process keeps its first owner.
 * Lifecycle events (close, listen) go through the `events` ring buffer, a
 * close carrying the final counters. There is no open event: the next walk
 * of the iterator in tcp_iter.c reports every established socket with its
 * endpoint, role and owner, and a socket that closes before it is described
 * whole by its close event. A connect that fails (SYN_SENT -> CLOSE with an
 * error) is an EVENT_FAILED: there is no established socket to sample, so
 * the event is all there is of it. Resets are counted in the socket storage
 * by tcp_send_reset and tcp_receive_reset, for sockets that have storage
 * only. No trace record is formatted: the socket is read through its BTF
 * pointer.
 *
 * Two ways of hooking the state changes, one object (user space loads one,
 * probe.Path): the sock:inet_sock_set_state BTF tracepoint (the tracepoint
 * path), or fentry on inet_sk_state_store(), the kernel function that
 * fires that tracepoint for every change weir uses: tcp_set_state() ends in
 * it, and listen() calls it; only the clone's change to SYN_RECV
 * (inet_sk_set_state()), which carries nothing, goes elsewhere (the fentry
 * path). The logic is tcp_events.h.
 *
 * What these programs need of the kernel (probe.Check tells which is
 * missing, with these releases):
 *  - tp_btf programs (BTF raw tracepoints) and fentry: 5.5 (fentry on
 *    x86-64; arm64 has it since 6.0); sock:inet_sock_set_state 4.16;
 *    tcp:tcp_send_reset and tcp:tcp_receive_reset 4.15;
 *  - bpf_sk_storage_get from tracing programs: 5.11;
 *  - bpf_get_current_task_btf: 5.11; bpf_get_socket_cookie from tracing
 *    programs: 5.12; bpf_skc_to_tcp_sock: 5.9;
 *  - BPF_F_CLONE on socket storage: 5.4; the ring buffer: 5.8;
 *  - iter/tcp and iter/bpf_sk_storage_map (tcp_iter.c): 5.9.
 * So TCP runs on 5.12 and later, on either path. UDP byte counting (udp.c)
 * adds sock:sock_send_length and sock:sock_recv_length (6.3) on the
 * tracepoint path, fexit on udp_sendmsg/udp_recvmsg and their IPv6 twins on
 * the fentry path.
 */

#include "tcp_events.h"

/* Arguments: const struct sock *sk, int oldstate, int newstate. */
SEC("tp_btf/inet_sock_set_state")
int inet_sock_set_state(u64 *ctx)
{
	on_state_change((struct sock *)ctx[0], (int)ctx[1], (int)ctx[2]);
	return 0;
}

/*
 * The fentry path: inet_sk_state_store(sk, newstate) fires the tracepoint
 * above and then stores the state, so at entry sk->sk_state is still the
 * old state.
 */
SEC("fentry/inet_sk_state_store")
int fentry_inet_sk_state_store(u64 *ctx)
{
	struct sock *sk = (struct sock *)ctx[0];
	on_state_change(sk, sk->__sk_common.skc_state, (int)ctx[1]);
	return 0;
}
