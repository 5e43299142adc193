// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
//go:build ignore

/*
 * The hashmap path: TCP telemetry for kernels whose tracing programs cannot
 * use socket storage (bpf_sk_storage_get from tracing programs: Linux 5.11)
 * or the socket cookie (5.12), such as 5.10. Same records and counters as
 * tcp.c and tcp_iter.c (struct event, struct discovered), read at the same
 * moments, so the same exactness; what differs is where a socket's state
 * lives and how it is named.
 *
 * Why these hooks: the state changes come from the same BTF tracepoint as
 * the primary path (tp_btf/inet_sock_set_state, Linux 5.5), and resets
 * from tp_btf/tcp_send_reset and tcp_receive_reset. A BTF tracepoint needs
 * no kprobe and no BPF trampoline, so this path also runs on arm64 kernels
 * without trampolines and on kernels that permit no kprobes, and its
 * programs read the socket through BTF pointers as the primary path does.
 * What 5.10 lacks in these programs is socket storage, the socket cookie
 * and bpf_get_current_task_btf; this object calls none of them:
 *  - per-socket state (struct hash_state) lives in `sk_hash`, a hash map
 *    keyed by the socket's address. The map is bounded: an insert into a
 *    full map is counted (DROP_STORAGE_FULL), never an eviction (an LRU map
 *    would drop a live socket's state without a trace). Values are written
 *    whole with bpf_map_update_elem and never recycled while a reader may
 *    hold them (BPF_F_NO_PREALLOC frees them after an RCU grace period), so
 *    the owner needs no sequence lock, and no compare-and-swap (5.12);
 *  - a socket's state outlives its close by at least `closed_keep_ns`, so
 *    that a reset sent just after the close (close() with unread data, or
 *    SO_LINGER 0) still counts and goes out as EVENT_RESET; a later close
 *    on the same CPU (closed_ring), or else the sampling walk, deletes it
 *    after that. A full TCP socket is always set to CLOSE
 *    before it is freed (inet_csk_destroy_sock warns otherwise), so every
 *    entry is closed before its address can be reused, and an entry whose
 *    address a new socket takes is written over whole by that socket;
 *  - a socket is named by an id of its own (endpoint.cookie) instead of the
 *    kernel's cookie, which 5.10 tracing programs cannot generate (reading
 *    skc_cookie gives 0 for most sockets): bit 63 set, so it never equals
 *    a kernel cookie, and the CPU, a per-CPU counter and the clock (see
 *    new_id);
 *  - the owner of an accepted socket: there is no BPF_F_CLONE to copy the
 *    listener's state into the child, and the child's tracepoint does not
 *    name its listener. listen() records its caller in `listen_owners`,
 *    keyed by network namespace and port, and a socket accepted on that
 *    port takes it. SO_REUSEPORT listeners of one port that belong to
 *    different processes are not told apart: the last listen() wins;
 *  - the current task: bpf_get_current_task() and CO-RE probe reads.
 * The sampling walk (iter/bpf_map_elem over sk_hash, Linux 5.9; where the
 * kernel refuses that, hash_walk_samples) visits every tracked socket, in
 * every network namespace, in one pass; it holds
 * the socket's address, not a BTF pointer, so it reads the socket with
 * bpf_probe_read_kernel (CO-RE). An entry not yet closed is a live socket
 * (the close runs before the free); a close racing the walk is caught by
 * reading the state (CLOSE is not sampled) and the entry's flags again
 * after the reads. The discovery walk (iter/tcp, per network namespace) is
 * tcp_iter.c's, with the hash map.
 *
 * Atomics: only adds whose result is unused (BPF_ADD, which every kernel
 * with BPF has); 5.10 rejects fetching atomics ("BPF_STX uses reserved
 * fields").
 */

#include "tcp.h"
#include "bpf_core_read.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* Keeps struct discovered in the BTF for bpf2go: it is only a local variable below. */
const struct discovered *unused_discovered __attribute__((unused));

/* Map types and flags beyond the shared vmlinux.h (uapi values). */
#define BPF_MAP_TYPE_HASH 1

/* The context of an iter/bpf_map_elem program; ___hash is dropped by CO-RE. */
struct bpf_iter__bpf_map_elem___hash {
	struct bpf_iter_meta *meta;
	struct bpf_map *map;
	void *key;
	void *value;
} __attribute__((preserve_access_index));

/* Value of sk_hash. */
struct hash_state {
	struct sk_state st; /* owner, role, flags, baselines, resets; owner_seq unused */
	u64 id;             /* endpoint.cookie of the socket's records */
	u64 closed_at;      /* bpf_ktime_get_ns() at the close, with SK_STATE_CLOSED */
};

/*
 * Sockets tracked at once: set from probe.Config before load. Closed
 * sockets stay until the first walk after closed_keep_ns.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1 << 17);
	__type(key, u64); /* the socket's address */
	__type(value, struct hash_state);
} sk_hash SEC(".maps");

struct listen_key {
	u32 netns;
	u16 port; /* host byte order */
	u16 _pad;
};

struct listen_owner {
	struct owner owner;
	u64 sk; /* the listening socket's address */
};

/* The owner of each listening port, for the sockets accepted on it. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1 << 14);
	__type(key, struct listen_key);
	__type(value, struct listen_owner);
} listen_owners SEC(".maps");

/* A counter per CPU for socket ids. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, u64);
} id_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20); /* set from probe.Config before load */
	__type(value, struct event);
} events SEC(".maps");

/* As tcp_iter.c's: the samples of one walk. Sized from probe.Config before load. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20);
} samples SEC(".maps");

/* Set from probe.Config before load, as in tcp_events.h. */
const volatile u64 wakeup_bytes = 1 << 18;

/*
 * How long a closed socket's state is kept for a late reset. The kernel
 * sends such a reset in the same call as the close (tcp_close() with
 * unread data, tcp_disconnect(), an orphan over the limit): a closed
 * socket is unhashed and its timers are stopped, so nothing later can
 * reset it. A quarter of a second is ample.
 */
const volatile u64 closed_keep_ns = 250000000ULL;

/*
 * The sockets each CPU closed last, oldest first from the head: a close
 * deletes the state of the one it replaces when that one is older than
 * closed_keep_ns, so that under churn the map does not wait for the next
 * sampling walk (which deletes the rest). 4096 a CPU: up to 16,000 closes
 * a second per CPU are forgotten here; beyond, by the walk.
 */
#define CLOSED_RING 4096

struct closed_slot {
	u64 key; /* the socket's address; 0 for an empty slot */
	u64 id;
	u64 at; /* bpf_ktime_get_ns() at the close */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CLOSED_RING);
	__type(key, u32);
	__type(value, struct closed_slot);
} closed_ring SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, u32);
} closed_head SEC(".maps");

/* An event's size in the ring: the record and its 8-byte header. */
#define EVENT_RING_BYTES (sizeof(struct event) + 8)

/*
 * submit_event is tcp_events.h's: it wakes the reader only when this event
 * takes the data waiting past a multiple of wakeup_bytes.
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

/*
 * new_id names a socket: bit 63, the CPU (10 bits), a per-CPU counter (13
 * bits) and the clock (40 bits of nanoseconds, 18 minutes). Two sockets
 * with one id would need the same CPU, the same counter modulo 8192 and the
 * same clock modulo 18 minutes. A race on the counter between a task and a
 * softirq of one CPU gives the same counter only to ids taken at different
 * times.
 */
static __always_inline u64 new_id(void)
{
	u32 zero = 0;
	u64 n = 0;
	u64 *ctr = bpf_map_lookup_elem(&id_counters, &zero);
	if (ctr) {
		n = *ctr;
		*ctr = n + 1;
	}
	u64 cpu = bpf_get_smp_processor_id();
	return (1ULL << 63) | ((cpu & 0x3ff) << 53) | ((n & 0x1fff) << 40) |
	       (bpf_ktime_get_ns() & ((1ULL << 40) - 1));
}

/* current_owner describes the process current belongs to, without bpf_get_current_task_btf. */
static __always_inline void current_owner(struct owner *o)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct task_struct *leader = BPF_CORE_READ(task, group_leader);

	o->pid = bpf_get_current_pid_tgid() >> 32;
	o->start_time = BPF_CORE_READ(leader, start_boottime);
	o->cgroup_id = bpf_get_current_cgroup_id();
	bpf_core_read(o->comm, sizeof(o->comm), &leader->comm);
}

static __always_inline bool tcp_inet(const struct sock *sk)
{
	u16 family = sk->__sk_common.skc_family;
	return sk->sk_protocol == IPPROTO_TCP && (family == AF_INET || family == AF_INET6);
}

/* fill_endpoint_id is tcp.h's fill_endpoint with the socket's id for its cookie. */
static __always_inline void fill_endpoint_id(struct endpoint *e, struct tcp_sock *tp, u8 role, u64 id)
{
	struct sock *sk = &tp->inet_conn.icsk_inet.sk;
	u16 family = sk->__sk_common.skc_family;

	e->cookie = id;
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

/*
 * forget deletes the state under key if it is still that of socket id and
 * closed. Between its lookup and its delete a new socket at the same
 * address could write its state, and lose it: a window of a few
 * instructions, which needs a socket freed and its memory taken by a new
 * one that connects in that window.
 */
static __always_inline void forget(u64 key, u64 id)
{
	struct hash_state *now = bpf_map_lookup_elem(&sk_hash, &key);
	if (now && now->id == id && (now->st.flags & SK_STATE_CLOSED))
		bpf_map_delete_elem(&sk_hash, &key);
}

/*
 * forget_later puts a closed socket in this CPU's closed_ring, and forgets
 * the one it replaces if that one is older than closed_keep_ns (else the
 * sampling walk will). A softirq that interrupts this on the same CPU can
 * take the same slot: a socket then waits for the walk.
 */
static __always_inline void forget_later(u64 key, u64 id, u64 at)
{
	u32 zero = 0;
	u32 *head = bpf_map_lookup_elem(&closed_head, &zero);
	if (!head)
		return;
	u32 i = *head & (CLOSED_RING - 1);
	*head = i + 1;
	struct closed_slot *slot = bpf_map_lookup_elem(&closed_ring, &i);
	if (!slot)
		return;
	if (slot->key && at - slot->at > closed_keep_ns)
		forget(slot->key, slot->id);
	slot->key = key;
	slot->id = id;
	slot->at = at;
}

static __always_inline struct hash_state *lookup(const void *sk)
{
	u64 key = (u64)sk;
	return bpf_map_lookup_elem(&sk_hash, &key);
}

/* store writes a socket's whole state; a full map is counted when count is set. */
static __always_inline int store(const void *sk, struct hash_state *v, bool count)
{
	u64 key = (u64)sk;
	int err = bpf_map_update_elem(&sk_hash, &key, v, BPF_ANY);
	if (err && count)
		count_drop(DROP_STORAGE_FULL);
	return err;
}

/* on_connect: CLOSE -> SYN_SENT, in connect(), so current is the owner. */
static __always_inline void on_connect(struct sock *sk)
{
	if (!tcp_inet(sk))
		return;
	struct hash_state v = {};
	v.id = new_id();
	v.st.role = ROLE_CLIENT;
	v.st.flags = SK_STATE_TRACKED;
	current_owner(&v.st.owner);
	/* A full map is counted at establishment, once. */
	store(sk, &v, false);
}

/*
 * on_established: SYN_SENT or SYN_RECV -> ESTABLISHED, in softirq. A
 * client's state is there since connect(); an accepted socket's is created
 * here, with the owner of its listening port.
 */
static __always_inline void on_established(struct sock *sk, u8 role)
{
	if (!tcp_inet(sk))
		return;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return;
	struct hash_state *h = lookup(sk);
	if (role == ROLE_CLIENT && h && (h->st.flags & (SK_STATE_TRACKED | SK_STATE_CLOSED)) == SK_STATE_TRACKED) {
		/* Nothing but the handshake has been acked yet: take it as the baseline. */
		h->st.syn_acked = tp->bytes_acked;
		h->st.syn_delivered = tp->delivered;
		return;
	}
	/* A server, or a client that connected before the probe was loaded (no owner). */
	struct hash_state v = {};
	v.id = new_id();
	v.st.role = role;
	v.st.flags = SK_STATE_TRACKED;
	v.st.syn_acked = tp->bytes_acked;
	v.st.syn_delivered = tp->delivered;
	if (role == ROLE_SERVER) {
		struct listen_key k = {
			.netns = sk->__sk_common.skc_net.net->ns.inum,
			.port = sk->__sk_common.skc_num,
		};
		struct listen_owner *lo = bpf_map_lookup_elem(&listen_owners, &k);
		if (lo)
			v.st.owner = lo->owner;
	}
	store(sk, &v, true);
}

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

/* on_listen: CLOSE -> LISTEN, in listen(), so current is the owner. */
static __always_inline void on_listen(struct sock *sk)
{
	if (!tcp_inet(sk))
		return;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return;
	struct hash_state v = {};
	v.id = new_id();
	v.st.flags = SK_STATE_LISTENER;
	current_owner(&v.st.owner);
	store(sk, &v, true);

	struct listen_key k = {
		.netns = sk->__sk_common.skc_net.net->ns.inum,
		.port = sk->__sk_common.skc_num,
	};
	struct listen_owner lo = {.owner = v.st.owner, .sk = (u64)sk};
	if (bpf_map_update_elem(&listen_owners, &k, &lo, BPF_ANY))
		count_drop(DROP_STORAGE_FULL);

	struct event *ev = reserve_event(EVENT_LISTEN);
	if (!ev)
		return;
	fill_endpoint_id(&ev->endpoint, tp, ROLE_UNKNOWN, v.id);
	ev->owner = v.st.owner;
	submit_event(ev);
}

/* on_unlisten: LISTEN -> CLOSE. The port's owner goes if it is this socket's. */
static __always_inline void on_unlisten(struct sock *sk)
{
	struct listen_key k = {
		.netns = sk->__sk_common.skc_net.net->ns.inum,
		.port = sk->__sk_common.skc_num,
	};
	struct listen_owner *lo = bpf_map_lookup_elem(&listen_owners, &k);
	if (lo && lo->sk == (u64)sk)
		bpf_map_delete_elem(&listen_owners, &k);
	struct hash_state *h = lookup(sk);
	if (h) {
		u64 at = bpf_ktime_get_ns();
		h->closed_at = at;
		h->st.flags |= SK_STATE_CLOSED;
		forget_later((u64)sk, h->id, at);
	}
}

/*
 * on_close: -> CLOSE. The final counters go out with the event; a connect
 * that failed goes out as EVENT_FAILED, with the reason. The state stays,
 * marked closed, for late resets.
 */
static __always_inline void on_close(struct sock *sk, int oldstate)
{
	if (oldstate == TCP_LISTEN) {
		on_unlisten(sk);
		return;
	}
	struct hash_state *h = lookup(sk);
	if (!h || (h->st.flags & (SK_STATE_CLOSED | SK_STATE_TRACKED)) != SK_STATE_TRACKED)
		return;
	u64 at = bpf_ktime_get_ns();
	h->closed_at = at;
	h->st.flags |= SK_STATE_CLOSED;
	forget_later((u64)sk, h->id, at);
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
	struct event *ev = reserve_event(kind);
	if (!ev)
		return;
	fill_endpoint_id(&ev->endpoint, tp, h->st.role, h->id);
	ev->endpoint.reason = reason;
	ev->owner = h->st.owner;
	read_counters(tp, &h->st, h->st.syn_acked, h->st.syn_delivered, oldstate, &ev->counters);
	submit_event(ev);
}

/* on_reset: tcp_events.h's, with the hash map. */
static __always_inline void on_reset(struct sock *sk, bool sent)
{
	if (!sk)
		return;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return;
	struct sock *full = &tp->inet_conn.icsk_inet.sk;
	struct hash_state *h = lookup(full);
	if (!h || !(h->st.flags & SK_STATE_TRACKED))
		return;
	/* The result is unused: BPF_ADD, not a fetching atomic. */
	if (sent)
		__sync_fetch_and_add(&h->st.rst_sent, 1);
	else
		__sync_fetch_and_add(&h->st.rst_received, 1);
	if (!(h->st.flags & SK_STATE_CLOSED))
		return; /* the next sample or the close event carries it */
	int state = full->__sk_common.skc_state;
	if (state != TCP_CLOSE)
		return;
	struct event *ev = reserve_event(EVENT_RESET);
	if (!ev)
		return;
	fill_endpoint_id(&ev->endpoint, tp, h->st.role, h->id);
	ev->owner = h->st.owner;
	/* The state before the close is gone: take the FIN as not queued. */
	read_counters(tp, &h->st, h->st.syn_acked, h->st.syn_delivered, TCP_CLOSE, &ev->counters);
	submit_event(ev);
}

/* Arguments: const struct sock *sk, int oldstate, int newstate. */
SEC("tp_btf/inet_sock_set_state")
int hash_inet_sock_set_state(u64 *ctx)
{
	struct sock *sk = (struct sock *)ctx[0];
	int oldstate = (int)ctx[1], newstate = (int)ctx[2];

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
	}
	return 0;
}

/* Arguments: const struct sock *sk, const struct sk_buff *skb[, reason]. */
SEC("tp_btf/tcp_send_reset")
int hash_tcp_send_reset(u64 *ctx)
{
	on_reset((struct sock *)ctx[0], true);
	return 0;
}

/* Arguments: struct sock *sk. */
SEC("tp_btf/tcp_receive_reset")
int hash_tcp_receive_reset(u64 *ctx)
{
	on_reset((struct sock *)ctx[0], false);
	return 0;
}

/*
 * The sampling walk's reads: tcp.h's fill_endpoint and read_counters, from
 * a socket address rather than a BTF pointer.
 */
static __always_inline void fill_sample(struct event *s, struct sock *sk, struct hash_state *h, int state)
{
	struct tcp_sock *tp = (struct tcp_sock *)sk;
	struct endpoint *e = &s->endpoint;
	u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);

	e->cookie = h->id;
	e->family = family;
	e->role = h->st.role;
	e->sport = bpf_ntohs(BPF_CORE_READ(tp, inet_conn.icsk_inet.inet_sport));
	e->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	e->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	if (family == AF_INET) {
		*(u32 *)e->saddr = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
		*(u32 *)e->daddr = BPF_CORE_READ(sk, __sk_common.skc_daddr);
	} else {
		bpf_core_read(e->saddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_core_read(e->daddr, 16, &sk->__sk_common.skc_v6_daddr);
	}
	s->owner = h->st.owner;

	struct counters *c = &s->counters;
	u64 acked = sub_floor(BPF_CORE_READ(tp, bytes_acked), h->st.syn_acked);
	u64 received = BPF_CORE_READ(tp, bytes_received);
	if (fin_queued(state) && BPF_CORE_READ(tp, snd_una) == BPF_CORE_READ(tp, write_seq))
		acked = sub_floor(acked, 1);
	if (BPF_CORE_READ(sk, __sk_common.skc_flags) & (1UL << SOCK_DONE))
		received = sub_floor(received, 1);
	c->bytes_acked = acked;
	c->bytes_received = received;
	c->delivered = BPF_CORE_READ(tp, delivered) - h->st.syn_delivered;
	c->data_segs_in = BPF_CORE_READ(tp, data_segs_in);
	c->total_retrans = BPF_CORE_READ(tp, total_retrans);
	c->srtt_us = BPF_CORE_READ(tp, srtt_us) >> 3;
	c->rst_sent = h->st.rst_sent;
	c->rst_received = h->st.rst_received;
}

/*
 * hash_sample_one samples the entry of sk_hash at key k: a live socket's
 * record goes to the samples ring. It returns 1 when the ring is full and
 * nothing was written, for the caller to handle the record: closed
 * entries past closed_keep_ns are forgotten instead.
 */
static __always_inline int hash_sample_one(u64 k, struct hash_state *h, struct event *full)
{
	if (h->st.flags & SK_STATE_CLOSED) {
		/*
		 * Deleting the entry the walk stands on is safe: the walk goes on
		 * from its next. A socket that took the address since (its state
		 * written whole, with another id) is left alone (see forget).
		 */
		if (bpf_ktime_get_ns() - h->closed_at > closed_keep_ns)
			forget(k, h->id);
		return 0;
	}
	if (!(h->st.flags & SK_STATE_TRACKED))
		return 0; /* a listener, or a discovery under way */
	struct sock *sk = (struct sock *)k;
	int state = BPF_CORE_READ(sk, __sk_common.skc_state);
	if (!trackable_state(state))
		return 0; /* a client still connecting, or closed */

	/* A close that raced the reads is caught by the flags read again after them: its event has the final counters. */
	struct event *s = bpf_ringbuf_reserve(&samples, sizeof(*s), 0);
	if (s) {
		__builtin_memset(s, 0, sizeof(*s));
		fill_sample(s, sk, h, state);
		if (h->st.flags & SK_STATE_CLOSED) {
			bpf_ringbuf_discard(s, 1 /* BPF_RB_NO_WAKEUP */);
			return 0;
		}
		/* No wakeup: the reader drains the ring after its read() returns. */
		bpf_ringbuf_submit(s, 1 /* BPF_RB_NO_WAKEUP */);
		return 0;
	}
	if (full)
		fill_sample(full, sk, h, state);
	return !(h->st.flags & SK_STATE_CLOSED);
}

SEC("iter/bpf_map_elem")
int hash_sample_sockets(struct bpf_iter__bpf_map_elem___hash *ctx)
{
	u64 *key = ctx->key;
	struct hash_state *h = ctx->value;
	if (!key || !h)
		return 0;
	/* The ring is full: correct, but the walk may now be chunked. */
	struct event f = {};
	if (hash_sample_one(*key, h, &f)) {
		count_drop(DROP_SAMPLE_FALLBACK);
		bpf_seq_write(ctx->meta->seq, &f, sizeof(f));
	}
	return 0;
}

/*
 * The walk for kernels that refuse iter/bpf_map_elem (a security policy
 * can: EPERM at load): hash_walk_samples, a raw_tp program that user space
 * runs (BPF_PROG_TEST_RUN, Linux 5.10) rather than attaches, goes over
 * sk_hash with bpf_for_each_map_elem (5.13). Its one argument is the
 * number of entries to pass over first, and it returns the number of
 * entries it went past, with bit 31 set when it stopped because the
 * samples ring was full: user space drains the ring and runs it again from
 * there. Such a resumed walk, like a chunked iterator walk, may repeat or
 * miss a socket when entries came or went in between.
 */
struct hash_walk {
	u64 skip;
	u32 seen;
	u32 full;
};

static long hash_walk_one(struct bpf_map *map, u64 *key, struct hash_state *h, struct hash_walk *w)
{
	if (w->seen < w->skip) {
		w->seen++;
		return 0;
	}
	if (hash_sample_one(*key, h, 0)) {
		w->full = 1;
		return 1;
	}
	w->seen++;
	return 0;
}

SEC("raw_tp")
int hash_walk_samples(u64 *ctx)
{
	struct hash_walk w = {.skip = ctx[0]};
	bpf_for_each_map_elem(&sk_hash, hash_walk_one, &w, 0);
	return (w.seen & 0x7fffffff) | (w.full ? 0x80000000 : 0);
}

/* discover_sockets: tcp_iter.c's, with the hash map. */
SEC("iter/tcp")
int hash_discover_sockets(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	if (!skc)
		return 0;
	int state = skc->skc_state;
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
	struct hash_state *h = lookup(sk);
	u64 id;
	if (state == TCP_LISTEN) {
		ev->endpoint.kind = EVENT_LISTEN;
		if (h && (h->st.flags & SK_STATE_LISTENER) && !(h->st.flags & SK_STATE_CLOSED)) {
			id = h->id;
		} else {
			/* A listener from before the probe: an id for its records, no owner. */
			struct hash_state v = {};
			v.id = new_id();
			v.st.flags = SK_STATE_LISTENER;
			store(sk, &v, true);
			id = v.id;
		}
	} else {
		if (h && (h->st.flags & (SK_STATE_TRACKED | SK_STATE_CLOSED)) == SK_STATE_TRACKED)
			return 0; /* seen established, or discovered before */
		if (!h || (h->st.flags & SK_STATE_CLOSED)) {
			/* Not tracked until its record is out (see below). */
			struct hash_state v = {};
			v.id = new_id();
			if (store(sk, &v, true))
				return 0;
			h = lookup(sk);
			if (!h)
				return 0;
		}
		id = h->id;
		ev->endpoint.kind = EVENT_EXISTING;
		/* The handshake was not seen: no SYN baseline, role and owner unknown. */
		read_counters(tp, 0, 0, 0, state, &ev->counters);
	}
	fill_endpoint_id(&ev->endpoint, tp, ROLE_UNKNOWN, id);
	struct socket *sock = sk->sk_socket;
	if (sock) {
		struct file *file = sock->file;
		if (file)
			d.inode = file->f_inode->i_ino;
	}
	/* The record first, as in tcp_iter.c: a record that does not fit is shown again. */
	if (bpf_seq_write(ctx->meta->seq, &d, sizeof(d)))
		return 0;
	if (state != TCP_LISTEN && h)
		h->st.flags = SK_STATE_TRACKED;
	return 0;
}
