/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * The TCP lifecycle programs' logic, shared by the two ways of hooking it
 * (see tcp.c): tcp.c attaches it to the sock:inet_sock_set_state BTF
 * tracepoint, tcp_fentry.c to fentry on the kernel functions that fire
 * that tracepoint. Both objects have the same maps and records, and the
 * same tp_btf programs for resets (tcp:tcp_send_reset and
 * tcp:tcp_receive_reset, which every kernel with BTF programs has).
 */
#ifndef __WEIR_TCP_EVENTS_H__
#define __WEIR_TCP_EVENTS_H__

#include "tcp.h"


char __license[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20); /* set from probe.Config before load */
	__type(value, struct event);
} events SEC(".maps");

/*
 * Wake the reader only once this much is waiting: user space also reads on
 * a short timer, so a quiet ring costs no wakeup per event. Set from
 * probe.Config before load.
 */
const volatile u64 wakeup_bytes = 1 << 18;

/* An event's size in the ring: the record and its 8-byte header. */
#define EVENT_RING_BYTES (sizeof(struct event) + 8)

/*
 * submit_event publishes ev, waking the reader only when this event takes
 * the data waiting past a multiple of wakeup_bytes. Not on every event
 * past it: each wakeup queues an irq_work, whose self-interrupt is an APIC
 * write (a VM exit in a guest), about 15% of this program's time under
 * connection churn when every event past the mark woke the reader until
 * it caught up. The data waiting counts this event (reserved). Another
 * CPU's event can move the mark between this event's reserve and its
 * query, so both may wake the reader, or, rarely, neither: the next
 * multiple does, or the reader's timer (probe.eventWait).
 */
static __always_inline void submit_event(struct event *ev)
{
	u64 avail = bpf_ringbuf_query(&events, 0 /* BPF_RB_AVAIL_DATA */);
	u64 flags = 1; /* BPF_RB_NO_WAKEUP */

	if (wakeup_bytes && avail >= EVENT_RING_BYTES &&
	    avail / wakeup_bytes != (avail - EVENT_RING_BYTES) / wakeup_bytes)
		flags = 2; /* BPF_RB_FORCE_WAKEUP */
	bpf_ringbuf_submit(ev, flags);
}

static __always_inline struct event *reserve_event(u8 kind)
{
	struct event *ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		count_drop(DROP_RING_FULL);
		return 0;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->endpoint.kind = kind;
	return ev;
}

/* current_owner describes the process current belongs to. */
static __always_inline void current_owner(struct owner *o)
{
	struct task_struct *leader = bpf_get_current_task_btf()->group_leader;

	o->pid = bpf_get_current_pid_tgid() >> 32;
	o->start_time = leader->start_boottime;
	o->cgroup_id = bpf_get_current_cgroup_id();
	__builtin_memcpy(o->comm, leader->comm, sizeof(o->comm));
}

/*
 * set_owner makes current the owner of st. Its writers (connect() and
 * listen()) hold the socket lock, so there is one at a time; owner_seq
 * still lets a reader (the sample walk, a close) tell a torn owner. If
 * another writer held it, it gives up.
 */
static __always_inline void set_owner(struct sk_state *st)
{
	u32 seq = st->owner_seq;
	if (seq & 1)
		return;
	if (__sync_val_compare_and_swap(&st->owner_seq, seq, seq + 1) != seq)
		return;
	current_owner(&st->owner);
	__sync_val_compare_and_swap(&st->owner_seq, seq + 1, seq + 2);
}

static __always_inline bool tcp_inet(const struct sock *sk)
{
	u16 family = sk->__sk_common.skc_family;
	return sk->sk_protocol == IPPROTO_TCP && (family == AF_INET || family == AF_INET6);
}

/* on_connect: CLOSE -> SYN_SENT, in connect(), so current is the owner. */
static __always_inline void on_connect(struct sock *sk)
{
	if (!tcp_inet(sk))
		return;
	/* A failed creation is counted at establishment, once. */
	struct sk_state *st = bpf_sk_storage_get(&sk_states, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st)
		return;
	/* The storage can be left from an earlier connect() of the same socket. */
	st->role = ROLE_CLIENT;
	st->flags = SK_STATE_TRACKED;
	st->syn_acked = 0;
	st->syn_delivered = 0;
	st->rst_sent = 0;
	st->rst_received = 0;
	set_owner(st);
}

/*
 * on_established: SYN_SENT or SYN_RECV -> ESTABLISHED, in softirq: current
 * is unrelated. A client's owner is in its storage since connect(). An
 * accepted socket's storage is a copy of its listener's (BPF_F_CLONE), with
 * the owner; of the rest nothing is inherited. A socket whose listener was
 * there before the probe gets fresh storage without an owner: user space
 * then takes the owner of the listening port, found at start-up.
 */
static __always_inline void on_established(struct sock *sk, u8 role)
{
	if (!tcp_inet(sk))
		return;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return;
	struct sk_state *st = bpf_sk_storage_get(&sk_states, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st) {
		count_drop(DROP_STORAGE_FULL);
		return;
	}
	if (role == ROLE_SERVER) {
		st->role = ROLE_SERVER;
		st->flags = SK_STATE_TRACKED;
		st->rst_sent = 0;
		st->rst_received = 0;
	} else if (!(st->flags & SK_STATE_TRACKED)) {
		/* Fresh storage: a client that connected before the probe was loaded has no owner. */
		st->role = role;
		st->flags = SK_STATE_TRACKED;
	}
	/* Nothing but the handshake has been acked yet: take it as the baseline. */
	st->syn_acked = tp->bytes_acked;
	st->syn_delivered = tp->delivered;
}

/*
 * fail_reason tells why a connect in SYN_SENT ended, from the error the
 * kernel set before tcp_done(): 0 when the application gave up (close or
 * shutdown before the handshake), which is not a failure of the network.
 */
static __always_inline u8 fail_reason(struct sock *sk)
{
	int err = sk->sk_err;
	switch (err) {
	case 0:
		return 0;
	case ECONNREFUSED:
		return FAIL_REFUSED;
	case ETIMEDOUT:
		return FAIL_TIMEOUT;
	}
	return FAIL_UNREACHABLE;
}

/*
 * report writes an event of kind for tp: its endpoint with st's role,
 * st's owner, and tp's counters as read_counters takes them in state.
 */
static __always_inline void report(u8 kind, u8 reason, struct tcp_sock *tp, struct sk_state *st, int state)
{
	struct event *ev = reserve_event(kind);
	if (!ev)
		return;
	fill_endpoint(&ev->endpoint, tp, st->role);
	ev->endpoint.reason = reason;
	read_owner(st, &ev->owner);
	read_counters(tp, st, st->syn_acked, st->syn_delivered, state, &ev->counters);
	submit_event(ev);
}

/*
 * on_close: -> CLOSE. The final counters go out with the event; a connect
 * that failed goes out as EVENT_FAILED, with the reason.
 */
static __always_inline void on_close(struct sock *sk, int oldstate)
{
	if (oldstate == TCP_LISTEN || !sk->sk_bpf_storage)
		return; /* a listener, or not tracked: skip the lookup */
	struct sk_state *st = bpf_sk_storage_get(&sk_states, sk, 0, 0);
	if (!st || (st->flags & (SK_STATE_CLOSED | SK_STATE_TRACKED)) != SK_STATE_TRACKED)
		return;
	st->flags |= SK_STATE_CLOSED;
	u8 kind = EVENT_CLOSE, reason = 0;
	if (oldstate == TCP_SYN_SENT) {
		reason = fail_reason(sk);
		if (!reason)
			return; /* abandoned before the handshake: nothing to report */
		kind = EVENT_FAILED;
	}
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return;
	report(kind, reason, tp, st, oldstate);
}

/*
 * Set from probe.Config: the sampling walk goes over the processes' open
 * files (walk.h), which cannot reach an orphan: a socket its process
 * closed while the kernel still has its data to send. on_orphan then
 * samples such a socket once, into the event ring, when its process
 * closes it (-> FIN_WAIT1, or -> LAST_ACK after the peer's FIN): its end
 * is known before its close event, which can come seconds later. A socket
 * with nothing left to send closes at once, with its close event.
 */
const volatile u8 orphan_samples = 0;

static __always_inline void on_orphan(struct sock *sk, int newstate)
{
	if (!sk->sk_bpf_storage)
		return; /* not tracked: skip the lookup */
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
	if (!tp || tp->write_seq == tp->snd_una)
		return; /* everything sent was acked */
	struct sk_state *st = bpf_sk_storage_get(&sk_states, sk, 0, 0);
	if (!st || (st->flags & (SK_STATE_CLOSED | SK_STATE_TRACKED)) != SK_STATE_TRACKED)
		return;
	report(EVENT_ORPHAN, 0, tp, st, newstate);
}

/*
 * on_reset counts a RST that sk sent or received in its storage, for
 * sockets that have one: a reset of a socket weir does not track, or with
 * no socket at all (a SYN to a closed port: the client's refused connect
 * counts it), is left alone. The kernel often sends a RST just after the
 * socket moved to CLOSE (close() with SO_LINGER 0 or unread data), after
 * the close event: the final counters then go out again as EVENT_RESET.
 */
static __always_inline void on_reset(struct sock *sk, bool sent)
{
	if (!sk)
		return;
	/* Time-wait and request sockets are not full sockets: no storage field. */
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return;
	struct sock *full = &tp->inet_conn.icsk_inet.sk;
	if (!full->sk_bpf_storage)
		return;
	struct sk_state *st = bpf_sk_storage_get(&sk_states, full, 0, 0);
	if (!st || !(st->flags & SK_STATE_TRACKED))
		return;
	if (sent)
		__sync_fetch_and_add(&st->rst_sent, 1);
	else
		__sync_fetch_and_add(&st->rst_received, 1);
	if (!(st->flags & SK_STATE_CLOSED))
		return; /* the next sample or the close event carries it */
	int state = full->__sk_common.skc_state;
	if (state != TCP_CLOSE)
		return;
	/* The state before the close is gone: take the FIN as not queued. */
	report(EVENT_RESET, 0, tp, st, TCP_CLOSE);
}

/* Arguments: const struct sock *sk, const struct sk_buff *skb, enum sk_rst_reason reason. */
SEC("tp_btf/tcp_send_reset")
int tcp_send_reset(u64 *ctx)
{
	on_reset((struct sock *)ctx[0], true);
	return 0;
}

/* Arguments: struct sock *sk. */
SEC("tp_btf/tcp_receive_reset")
int tcp_receive_reset(u64 *ctx)
{
	on_reset((struct sock *)ctx[0], false);
	return 0;
}

/*
 * on_listen: CLOSE -> LISTEN, in listen(), so current is the owner. The
 * listener's storage carries the owner to every socket accepted from it
 * (BPF_F_CLONE); the event tells user space the owner of the port, for
 * sockets accepted from listeners that were there before the probe. The
 * storage is complete before the socket is hashed, so before any SYN can
 * find it and be cloned.
 */
static __always_inline void on_listen(struct sock *sk)
{
	if (!tcp_inet(sk))
		return;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return;
	struct sk_state *st = bpf_sk_storage_get(&sk_states, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (st) {
		st->role = ROLE_UNKNOWN;
		st->flags = SK_STATE_LISTENER;
		st->syn_acked = 0;
		st->syn_delivered = 0;
		st->rst_sent = 0;
		st->rst_received = 0;
		set_owner(st);
	} else {
		count_drop(DROP_STORAGE_FULL);
	}
	struct event *ev = reserve_event(EVENT_LISTEN);
	if (!ev)
		return;
	fill_endpoint(&ev->endpoint, tp, ROLE_UNKNOWN);
	current_owner(&ev->owner);
	submit_event(ev);
}

/*
 * on_state_change: sk moves from oldstate to newstate. Transitions that
 * carry nothing return at once.
 */
static __always_inline void on_state_change(struct sock *sk, int oldstate, int newstate)
{
	switch (newstate) {
	case TCP_SYN_SENT:
		on_connect(sk);
		break;
	case TCP_ESTABLISHED:
		if (oldstate == TCP_SYN_SENT)
			on_established(sk, ROLE_CLIENT);
		else if (oldstate == TCP_SYN_RECV)
			on_established(sk, ROLE_SERVER);
		break;
	case TCP_CLOSE:
		if (oldstate != TCP_CLOSE)
			on_close(sk, oldstate);
		break;
	case TCP_LISTEN:
		on_listen(sk);
		break;
	case TCP_FIN_WAIT1:
	case TCP_LAST_ACK:
		if (orphan_samples)
			on_orphan(sk, newstate);
		break;
	}
}

#endif /* __WEIR_TCP_EVENTS_H__ */
