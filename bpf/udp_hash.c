// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
//go:build ignore

/*
 * UDP traffic for the weir collector on kernels whose tracing programs have
 * no socket storage (Linux 5.11) or socket cookie (5.12), such as 5.10: the
 * hashmap path's UDP, as tcp_hash.c is its TCP. The records, counters and
 * remotes are udp.c's; what differs:
 *  - each socket's state (owner, its own end, up to peer_cap remotes and
 *    "other peers") is in udp_hash, a hash map keyed by the socket's
 *    address (65,536 entries, allocated as used). A full map is counted
 *    (DROP_UDP_STORAGE_FULL), never evicted;
 *  - no compare-and-swap or fetching atomic (5.10 has neither): a state is
 *    created whole with BPF_NOEXIST, a remote's slot is claimed by
 *    inserting (socket, slot) into udp_slot_claims with BPF_NOEXIST (the
 *    map's bucket lock makes that a test-and-set), and counters are adds
 *    whose result is unused;
 *  - sizes: fexit on udp_sendmsg, udpv6_sendmsg, udp_recvmsg and
 *    udpv6_recvmsg (BPF trampolines: x86-64 since 5.5);
 *  - the remote of an unconnected socket comes from udp.c's cgroup
 *    sock_addr hooks' stash, matched on the cookie that their
 *    bpf_get_socket_cookie left in the socket (sk_cookie), read here;
 *  - the close: fentry on inet_release (cgroup sock_release's context is no
 *    key here), which writes the close records and deletes the state;
 *  - the owner is written in place by the sender or receiver, under a
 *    sequence count that only one writer changes at a time in practice (two
 *    processes sending on one socket at once can leave a sample without an
 *    owner, never a mixed one that the count does not catch);
 *  - a record's cookie is the probe's own id (bit 63 set), as tcp_hash.c's.
 */

#include "udp.h"
#include "bpf_core_read.h"

char __license[] SEC("license") = "Dual BSD/GPL";

#define BPF_MAP_TYPE_HASH 1
#define BPF_MAP_TYPE_ARRAY 2
#define BPF_NOEXIST 1
#define WRITE_ONCE_U32(x, v) (*(volatile u32 *)&(x) = (v))

struct bpf_iter__bpf_map_elem___udph {
	struct bpf_iter_meta *meta;
	struct bpf_map *map;
	void *key;
	void *value;
} __attribute__((preserve_access_index));

/* Fields beyond the shared vmlinux.h; ___udph is dropped by CO-RE. */
struct sock_common___udph {
	struct {
		s64 counter;
	} skc_cookie;
} __attribute__((preserve_access_index));

struct socket___udph {
	struct sock *sk;
} __attribute__((preserve_access_index));

struct udp_hash_state {
	struct udp_state st; /* owner_seq: written by one writer at a time, no CAS */
	u64 id;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1 << 16);
	__type(key, u64); /* the socket's address */
	__type(value, struct udp_hash_state);
} udp_hash SEC(".maps");

struct slot_key {
	u64 sk;
	u32 slot;
	u32 _pad;
};

/* One entry per claimed remote slot of a tracked socket. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, (1 << 16) * 4);
	__type(key, struct slot_key);
	__type(value, u32);
} udp_slot_claims SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, u64);
} udp_id_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} udp_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} udp_samples SEC(".maps");

const volatile u64 udp_wakeup_bytes = 1 << 18;

/* A zero state that nothing writes: a new socket's state is created from it. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct udp_hash_state);
} udp_zero SEC(".maps");

static __always_inline u64 udp_new_id(void)
{
	u32 zero = 0;
	u64 n = 0;
	u64 *ctr = bpf_map_lookup_elem(&udp_id_counters, &zero);
	if (ctr) {
		n = *ctr;
		*ctr = n + 1;
	}
	u64 cpu = bpf_get_smp_processor_id();
	return (1ULL << 63) | ((cpu & 0x3ff) << 53) | ((n & 0x1fff) << 40) |
	       (bpf_ktime_get_ns() & ((1ULL << 40) - 1));
}

static __always_inline void hash_current_owner(struct owner *o)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct task_struct *leader = BPF_CORE_READ(task, group_leader);

	o->pid = bpf_get_current_pid_tgid() >> 32;
	o->start_time = BPF_CORE_READ(leader, start_boottime);
	o->cgroup_id = bpf_get_current_cgroup_id();
	bpf_core_read(o->comm, sizeof(o->comm), &leader->comm);
}

/* hash_state_of returns sk's state, creating it whole; a full map is counted. */
static __always_inline struct udp_hash_state *hash_state_of(struct sock *sk)
{
	u64 key = (u64)sk;
	struct udp_hash_state *h = bpf_map_lookup_elem(&udp_hash, &key);
	if (h)
		return h;
	u32 zero = 0;
	struct udp_hash_state *z = bpf_map_lookup_elem(&udp_zero, &zero);
	if (!z)
		return 0;
	int err = bpf_map_update_elem(&udp_hash, &key, z, BPF_NOEXIST);
	if (err == -17 /* EEXIST: another CPU created it */)
		return bpf_map_lookup_elem(&udp_hash, &key);
	if (err) {
		count_drop(DROP_UDP_STORAGE_FULL);
		return 0;
	}
	h = bpf_map_lookup_elem(&udp_hash, &key);
	if (!h)
		return 0;
	/* The creator names it; nothing is counted in it before this returns. */
	h->id = udp_new_id();
	remember_local(&h->st, sk);
	return h;
}

static __always_inline void hash_set_owner(struct udp_state *st)
{
	u32 pid = bpf_get_current_pid_tgid() >> 32;
	if (st->owner.pid == pid && st->owner.start_time)
		return;
	u32 seq = st->owner_seq;
	if (seq & 1)
		return;
	WRITE_ONCE_U32(st->owner_seq, seq + 1);
	barrier();
	hash_current_owner(&st->owner);
	barrier();
	WRITE_ONCE_U32(st->owner_seq, seq + 2);
}

/* hash_peer_of is udp.h's peer_of with the slot claimed through udp_slot_claims. */
static __always_inline struct udp_peer *hash_peer_of(u64 key, struct udp_state *st, u16 family, const u8 *addr, u16 port)
{
	u32 cap = peer_cap;
	for (u32 i = 0; i < UDP_MAX_PEERS; i++) {
		if (i >= cap)
			break;
		struct udp_peer *p = &st->peers[i];
		u32 state = READ_ONCE_U32(p->state);
		if (state == PEER_READY) {
			if (p->port == port && same_addr(p, family, addr))
				return p;
			continue;
		}
		if (state != PEER_FREE)
			continue;
		struct slot_key k = {.sk = key, .slot = i};
		u32 one = 1;
		if (bpf_map_update_elem(&udp_slot_claims, &k, &one, BPF_NOEXIST))
			continue; /* taken by another CPU, or the map is full */
		p->family = family;
		p->port = port;
		if (family == AF_INET)
			*(u32 *)p->addr = *(const u32 *)addr;
		else
			__builtin_memcpy(p->addr, addr, 16);
		barrier();
		WRITE_ONCE_U32(p->state, PEER_READY);
		return p;
	}
	return &st->peers[UDP_MAX_PEERS];
}

static __always_inline void hash_count(u64 key, struct udp_state *st, struct remote *r, enum dir d, u32 len)
{
	struct udp_peer *p;
	if (r->family)
		p = hash_peer_of(key, st, r->family, r->addr, r->port);
	else
		p = &st->peers[UDP_MAX_PEERS];
	if (p == &st->peers[UDP_MAX_PEERS] && r->family)
		__sync_fetch_and_add(&st->folded, 1);
	switch (d) {
	case DIR_SENT:
		__sync_fetch_and_add(&p->bytes_sent, len);
		__sync_fetch_and_add(&p->dgrams_sent, 1);
		break;
	case DIR_RECV:
		__sync_fetch_and_add(&p->bytes_recv, len);
		__sync_fetch_and_add(&p->dgrams_recv, 1);
		break;
	case DIR_DROP:
		__sync_fetch_and_add(&p->drops, 1);
		break;
	}
}

/* hash_take_stash is udp.h's take_stash, matched on the cookie left in the socket. */
static __always_inline bool hash_take_stash(struct sock *sk, struct remote *r)
{
	u32 zero = 0;
	struct stash *s = bpf_map_lookup_elem(&stashes, &zero);
	if (!s || !s->cookie)
		return false;
	u64 cookie = ((struct sock_common___udph *)&sk->__sk_common)->skc_cookie.counter;
	bool ok = s->pid_tgid == bpf_get_current_pid_tgid() && s->cookie == cookie;
	if (ok) {
		__builtin_memcpy(r->addr, s->addr, 16);
		r->port = s->port;
		r->family = s->family;
	}
	s->cookie = 0;
	return ok;
}

static __always_inline int hash_on_udp(struct sock *sk, int ret, enum dir d)
{
	struct remote r = {};
	bool stashed = hash_take_stash(sk, &r);
	if (ret < 0 || !udp_inet(sk) || !user_socket(sk))
		return 0;
	if (!connected_remote(sk, &r) && !stashed) {
		r.family = 0;
		count_drop(DROP_UDP_UNATTRIBUTED);
	}
	struct udp_hash_state *h = hash_state_of(sk);
	if (!h)
		return 0;
	hash_set_owner(&h->st);
	hash_count((u64)sk, &h->st, &r, d, ret);
	return 0;
}

SEC("cgroup/sendmsg4")
int udph_sendmsg4(struct bpf_sock_addr *ctx)
{
	return stash_remote(ctx, false);
}

SEC("cgroup/sendmsg6")
int udph_sendmsg6(struct bpf_sock_addr *ctx)
{
	return stash_remote(ctx, true);
}

SEC("cgroup/recvmsg4")
int udph_recvmsg4(struct bpf_sock_addr *ctx)
{
	return stash_remote(ctx, false);
}

SEC("cgroup/recvmsg6")
int udph_recvmsg6(struct bpf_sock_addr *ctx)
{
	return stash_remote(ctx, true);
}

SEC("fexit/udp_sendmsg")
int udph_sendmsg(u64 *ctx)
{
	return hash_on_udp((struct sock *)ctx[0], (int)ctx[3], DIR_SENT);
}

SEC("fexit/udpv6_sendmsg")
int udph_v6_sendmsg(u64 *ctx)
{
	return hash_on_udp((struct sock *)ctx[0], (int)ctx[3], DIR_SENT);
}

/* Arguments: sk, msg, len, noblock, flags, addr_len (before Linux 5.19). */
SEC("fexit/udp_recvmsg")
int udph_recvmsg_noblock(u64 *ctx)
{
	return hash_on_udp((struct sock *)ctx[0], (int)ctx[6], DIR_RECV);
}

SEC("fexit/udpv6_recvmsg")
int udph_v6_recvmsg_noblock(u64 *ctx)
{
	return hash_on_udp((struct sock *)ctx[0], (int)ctx[6], DIR_RECV);
}

/* Arguments: sk, msg, len, flags, addr_len (Linux 5.19 and later). */
SEC("fexit/udp_recvmsg")
int udph_recvmsg(u64 *ctx)
{
	return hash_on_udp((struct sock *)ctx[0], (int)ctx[5], DIR_RECV);
}

SEC("fexit/udpv6_recvmsg")
int udph_v6_recvmsg(u64 *ctx)
{
	return hash_on_udp((struct sock *)ctx[0], (int)ctx[5], DIR_RECV);
}

/* Drops, as udp.c's udp_fail_queue_rcv_skb (5.10's tracepoint has no datagram). */
SEC("tp_btf/udp_fail_queue_rcv_skb")
int udph_fail_queue_rcv_skb(u64 *ctx)
{
	struct sock *sk = (struct sock *)ctx[1];
	if (!sk || !udp_inet(sk) || !user_socket(sk))
		return 0;
	struct udp_hash_state *h = hash_state_of(sk);
	if (!h)
		return 0;
	struct remote none = {};
	hash_count((u64)sk, &h->st, &none, DIR_DROP, 0);
	return 0;
}

/* fill_record is udp.c's. */
static __always_inline bool hash_fill_record(struct udp_record *rec, struct udp_state *st, u32 i, u64 cookie, u8 kind)
{
	if (i > UDP_MAX_PEERS)
		return false;
	struct udp_peer *p = &st->peers[i];
	bool other = i == UDP_MAX_PEERS;
	if (!other && READ_ONCE_U32(p->state) != PEER_READY)
		return false;
	if (!p->dgrams_sent && !p->dgrams_recv && !p->drops)
		return false;
	rec->cookie = cookie;
	__builtin_memcpy(rec->saddr, st->saddr, 16);
	rec->netns = st->netns;
	rec->sport = st->sport;
	rec->sfamily = st->sfamily;
	rec->kind = kind;
	rec->slot = i;
	rec->folded = st->folded;
	read_udp_owner(st, &rec->owner);
	if (other) {
		rec->other = 1;
	} else {
		__builtin_memcpy(rec->daddr, p->addr, 16);
		rec->dport = p->port;
		rec->family = p->family;
	}
	rec->bytes_sent = p->bytes_sent;
	rec->bytes_recv = p->bytes_recv;
	rec->dgrams_sent = p->dgrams_sent;
	rec->dgrams_recv = p->dgrams_recv;
	rec->drops = p->drops;
	return true;
}

/*
 * The close: inet_release, for every inet socket (inet6_release calls it).
 * A UDP socket with state writes its final counters, one record per
 * remote, and its state and slot claims are deleted.
 */
SEC("fentry/inet_release")
int udph_release(u64 *ctx)
{
	struct socket___udph *sock = (struct socket___udph *)ctx[0];
	struct sock *sk = sock->sk;
	if (!sk || sk->sk_protocol != IPPROTO_UDP)
		return 0;
	u64 key = (u64)sk;
	struct udp_hash_state *h = bpf_map_lookup_elem(&udp_hash, &key);
	if (!h || (h->st.flags & UDP_CLOSED))
		return 0;
	h->st.flags |= UDP_CLOSED;
	for (u32 i = 0; i <= UDP_MAX_PEERS; i++) {
		struct udp_record *rec = bpf_ringbuf_reserve(&udp_events, sizeof(*rec), 0);
		if (!rec) {
			count_drop(DROP_UDP_RING_FULL);
			continue;
		}
		__builtin_memset(rec, 0, sizeof(*rec));
		if (!hash_fill_record(rec, &h->st, i, h->id, UDP_CLOSE)) {
			bpf_ringbuf_discard(rec, 1 /* BPF_RB_NO_WAKEUP */);
			continue;
		}
		u64 flags = bpf_ringbuf_query(&udp_events, 0) >= udp_wakeup_bytes ? 2 : 1;
		bpf_ringbuf_submit(rec, flags);
	}
	for (u32 i = 0; i < UDP_MAX_PEERS; i++) {
		struct slot_key k = {.sk = key, .slot = i};
		bpf_map_delete_elem(&udp_slot_claims, &k);
	}
	bpf_map_delete_elem(&udp_hash, &key);
	return 0;
}

/* The sampling walk: iter/bpf_map_elem over udp_hash, as udp.c's sample_udp. */
SEC("iter/bpf_map_elem")
int udph_sample(struct bpf_iter__bpf_map_elem___udph *ctx)
{
	struct udp_hash_state *h = ctx->value;
	if (!h || (h->st.flags & UDP_CLOSED))
		return 0;
	for (u32 i = 0; i <= UDP_MAX_PEERS; i++) {
		struct udp_record *rec = bpf_ringbuf_reserve(&udp_samples, sizeof(*rec), 0);
		if (rec) {
			__builtin_memset(rec, 0, sizeof(*rec));
			if (hash_fill_record(rec, &h->st, i, h->id, UDP_SAMPLE))
				bpf_ringbuf_submit(rec, 1 /* BPF_RB_NO_WAKEUP */);
			else
				bpf_ringbuf_discard(rec, 1);
			continue;
		}
		struct udp_record f = {};
		if (!hash_fill_record(&f, &h->st, i, h->id, UDP_SAMPLE))
			continue;
		count_drop(DROP_UDP_FALLBACK);
		bpf_seq_write(ctx->meta->seq, &f, sizeof(f));
	}
	return 0;
}
