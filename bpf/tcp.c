// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
//go:build ignore

/*
 * TCP socket tracking for the weir collector.
 *
 * Every TCP socket (AF_INET, AF_INET6) that is established while the probe is
 * loaded, or that sends or receives afterwards, gets an entry in the `socks`
 * hash map, keyed by its struct sock address. The entry holds the socket's
 * cumulative tcp_sock counters, read through CO-RE, and the process that uses
 * it. User space polls the map. Lifecycle events (open, close, listen) go
 * through the `events` ring buffer. Whatever cannot be recorded is counted in
 * `drops`.
 */

#include "vmlinux.h"
#include "bpf_helpers.h"
#include "bpf_core_read.h"
#include "bpf_endian.h"
#include "tcp.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* A lifecycle event on the ring buffer. */
struct event {
	u64 sk;
	struct counters counters;
	u8 saddr[16]; /* 4 bytes used for AF_INET */
	u8 daddr[16];
	u32 netns;
	u32 pid;
	u16 sport; /* host byte order */
	u16 dport; /* host byte order */
	u16 family;
	u8 kind; /* enum event_kind */
	u8 role; /* enum role */
	char comm[TASK_COMM_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20); /* set from probe.Config before load */
	__type(value, struct event);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DROP_MAX);
	__type(key, u32);
	__type(value, u64);
} drops SEC(".maps");

/*
 * Wake the reader only once this much is waiting: user space also reads on
 * a short timer, so a quiet ring costs no wakeup per event. Set from
 * probe.Config before load.
 */
const volatile u64 wakeup_bytes = 1 << 18;

/* submit_event publishes ev, waking the reader only when the ring fills up. */
static __always_inline void submit_event(struct event *ev)
{
	u64 flags = bpf_ringbuf_query(&events, 0 /* BPF_RB_AVAIL_DATA */) >= wakeup_bytes ?
			    2 /* BPF_RB_FORCE_WAKEUP */ :
			    1 /* BPF_RB_NO_WAKEUP */;
	bpf_ringbuf_submit(ev, flags);
}

static __always_inline void count_drop(u32 reason)
{
	u64 *n = bpf_map_lookup_elem(&drops, &reason);
	if (n)
		*n += 1;
}

static __always_inline void set_owner_current(struct sock_info *info)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	info->pid = bpf_get_current_pid_tgid() >> 32;
	BPF_CORE_READ_STR_INTO(&info->comm, task, group_leader, comm);
}

static __always_inline u32 sock_netns(struct sock *sk)
{
	return BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
}

/*
 * insert stores info for the socket at key, replacing a stale entry when
 * flags is BPF_ANY; a full map is counted.
 */
static __always_inline struct sock_info *insert(u64 key, const struct sock_info *info, u64 flags)
{
	long err = bpf_map_update_elem(&socks, &key, info, flags);
	if (err && err != -17 /* EEXIST: a concurrent insert won */) {
		count_drop(DROP_MAP_FULL);
		return 0;
	}
	return bpf_map_lookup_elem(&socks, &key);
}

static __always_inline struct event *reserve_event(void)
{
	struct event *ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		count_drop(DROP_RING_FULL);
		return 0;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	return ev;
}

static __always_inline void fill_owner(struct event *ev, const struct sock_info *info)
{
	ev->pid = info->pid;
	ev->role = info->role;
	__builtin_memcpy(ev->comm, info->comm, sizeof(ev->comm));
}

/* fill_addrs_tp copies the addresses of a state change from the tracepoint. */
static __always_inline void fill_addrs_tp(struct event *ev,
					  const struct trace_event_raw_inet_sock_set_state *ctx)
{
	ev->family = ctx->family;
	ev->sport = ctx->sport;
	ev->dport = ctx->dport;
	/* Copied with probe reads: the verifier rejects loads through a moved ctx pointer. */
	if (ctx->family == AF_INET) {
		bpf_core_read(ev->saddr, 4, &ctx->saddr);
		bpf_core_read(ev->daddr, 4, &ctx->daddr);
	} else {
		bpf_core_read(ev->saddr, 16, &ctx->saddr_v6);
		bpf_core_read(ev->daddr, 16, &ctx->daddr_v6);
	}
}

/* fill_addrs_sk reads the addresses from the socket itself. */
static __always_inline void fill_addrs_sk(struct event *ev, struct sock *sk, u16 family)
{
	ev->family = family;
	ev->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	ev->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (family == AF_INET) {
		bpf_core_read(ev->saddr, 4, &sk->__sk_common.skc_rcv_saddr);
		bpf_core_read(ev->daddr, 4, &sk->__sk_common.skc_daddr);
	} else {
		bpf_core_read(ev->saddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_core_read(ev->daddr, 16, &sk->__sk_common.skc_v6_daddr);
	}
}

static __always_inline void emit_state_event(const struct trace_event_raw_inet_sock_set_state *ctx,
					     struct sock *sk, u8 kind, const struct sock_info *info,
					     const struct counters *c)
{
	struct event *ev = reserve_event();
	if (!ev)
		return;
	ev->sk = (u64)sk;
	ev->kind = kind;
	ev->netns = sock_netns(sk);
	fill_addrs_tp(ev, ctx);
	fill_owner(ev, info);
	if (c)
		ev->counters = *c;
	submit_event(ev);
}

/* on_established tracks a socket that has just been established. */
static __always_inline void on_established(const struct trace_event_raw_inet_sock_set_state *ctx,
					   struct sock *sk, u8 role)
{
	u64 key = (u64)sk;
	struct tcp_sock *tp = (struct tcp_sock *)sk;
	struct sock_info *info = 0;

	/* A client has its entry since connect(); an accepted socket is new. */
	if (role == ROLE_CLIENT)
		info = bpf_map_lookup_elem(&socks, &key);
	if (!info) {
		struct sock_info fresh = {};
		fresh.role = role;
		info = insert(key, &fresh, BPF_ANY);
		if (!info)
			return;
	}
	/* Nothing but the handshake has been acked yet: take it as the baseline. */
	info->syn_acked = BPF_CORE_READ(tp, bytes_acked);
	info->syn_delivered = BPF_CORE_READ(tp, delivered);
	info->role = role;
	read_counters(sk, info, &info->counters);
	emit_state_event(ctx, sk, EVENT_OPEN, info, 0);
}

SEC("tracepoint/sock/inet_sock_set_state")
int inet_sock_set_state(struct trace_event_raw_inet_sock_set_state *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return 0;
	if (ctx->family != AF_INET && ctx->family != AF_INET6)
		return 0;

	struct sock *sk = (struct sock *)ctx->skaddr;
	u64 key = (u64)sk;
	int oldstate = ctx->oldstate;
	int newstate = ctx->newstate;

	if (newstate == TCP_SYN_SENT) {
		/* Inside connect(): current is the owner. */
		struct sock_info fresh = {};
		fresh.role = ROLE_CLIENT;
		set_owner_current(&fresh);
		insert(key, &fresh, BPF_ANY);
		return 0;
	}
	if (newstate == TCP_ESTABLISHED && oldstate == TCP_SYN_SENT) {
		/* softirq: current is unrelated, the owner comes from the entry. */
		on_established(ctx, sk, ROLE_CLIENT);
		return 0;
	}
	if (newstate == TCP_ESTABLISHED && oldstate == TCP_SYN_RECV) {
		/* An accepted socket, in softirq: the owner is learnt on its first send or receive. */
		on_established(ctx, sk, ROLE_SERVER);
		return 0;
	}
	if (newstate == TCP_LISTEN) {
		/* Inside listen(): current is the owner. */
		struct sock_info owner = {};
		set_owner_current(&owner);
		emit_state_event(ctx, sk, EVENT_LISTEN, &owner, 0);
		return 0;
	}

	struct sock_info *info = bpf_map_lookup_elem(&socks, &key);
	if (!info)
		return 0;

	if (newstate == TCP_CLOSE) {
		if (oldstate != TCP_SYN_SENT) {
			struct counters c = {};
			read_counters(sk, info, &c);
			emit_state_event(ctx, sk, EVENT_CLOSE, info, &c);
		}
		bpf_map_delete_elem(&socks, &key);
		return 0;
	}

	if (newstate == TCP_FIN_WAIT1 || newstate == TCP_LAST_ACK)
		info->flags |= SOCK_INFO_FIN_SENT;
	read_counters(sk, info, &info->counters);
	return 0;
}

/*
 * on_activity runs in the process that sends or receives, so current is the
 * socket's real user.
 */
static __always_inline int on_activity(struct trace_event_raw_sock_msg_length *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return 0;
	u16 family = ctx->family;
	if (family != AF_INET && family != AF_INET6)
		return 0;

	struct sock *sk = ctx->sk;
	u64 key = (u64)sk;
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct sock_info *info = bpf_map_lookup_elem(&socks, &key);

	if (!info) {
		/*
		 * Opened before the probe was loaded. Skip sockets that are
		 * not connected, or already closed: their entry would never
		 * see a close.
		 */
		u8 state = BPF_CORE_READ(sk, __sk_common.skc_state);
		if (!trackable_state(state))
			return 0;
		struct sock_info fresh = {};
		fresh.role = ROLE_UNKNOWN;
		set_owner_current(&fresh);
		if (state != TCP_ESTABLISHED && state != TCP_CLOSE_WAIT)
			fresh.flags |= SOCK_INFO_FIN_SENT;
		read_counters(sk, &fresh, &fresh.counters);
		info = insert(key, &fresh, BPF_NOEXIST);
		if (!info)
			return 0;

		struct event *ev = reserve_event();
		if (ev) {
			ev->sk = key;
			ev->kind = EVENT_OPEN;
			ev->netns = sock_netns(sk);
			fill_addrs_sk(ev, sk, family);
			fill_owner(ev, &fresh);
			ev->counters = fresh.counters;
			submit_event(ev);
		}
		return 0;
	}

	if (info->pid != tgid)
		set_owner_current(info);
	read_counters(sk, info, &info->counters);
	return 0;
}

SEC("tracepoint/sock/sock_send_length")
int sock_send_length(struct trace_event_raw_sock_msg_length *ctx)
{
	return on_activity(ctx);
}

SEC("tracepoint/sock/sock_recv_length")
int sock_recv_length(struct trace_event_raw_sock_msg_length *ctx)
{
	return on_activity(ctx);
}
