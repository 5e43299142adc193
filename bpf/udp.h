/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * What the UDP programs share (see udp.c): the per-socket storage with its
 * remotes, the records handed to user space, and on_udp, which the
 * sock_send_length and sock_recv_length programs call for UDP sockets.
 */
#ifndef __WEIR_UDP_H__
#define __WEIR_UDP_H__

#include "tcp.h"

#define IPPROTO_UDP 17
#define UDP_MAX_PEERS 16

/* Values match probe.UDPRecordKind. */
enum udp_record_kind {
	UDP_SAMPLE = 0,
	UDP_CLOSE = 1,
};

/* udp_peer.state */
enum {
	PEER_FREE = 0,
	PEER_CLAIMED = 1, /* being filled in */
	PEER_READY = 2,
};

/* udp_state.flags */
enum {
	UDP_CLOSED = 1, /* the close records are out: not sampled again */
};

struct udp_peer {
	u8 addr[16]; /* 4 bytes used for AF_INET; v4-mapped v6 addresses are AF_INET */
	u16 port;    /* host byte order */
	u16 family;
	u32 state;
	u64 bytes_sent;
	u64 bytes_recv;
	u32 dgrams_sent;
	u32 dgrams_recv;
	u32 drops;
	u32 _pad;
};

struct udp_state {
	struct owner owner;
	u32 owner_seq; /* as sk_state.owner_seq */
	u32 flags;
	u32 folded; /* datagrams (sent, received, dropped) counted under other peers at the cap */
	u32 walked; /* the last open files' walk that sampled it (walk.h) */
	/* The socket's own end, as last seen by a tracepoint (the close has no BTF socket). */
	u8 saddr[16];
	u32 netns;
	u16 sport;
	u16 sfamily;
	/* peers[UDP_MAX_PEERS] is "other peers" */
	struct udp_peer peers[UDP_MAX_PEERS + 1];
};

/* One remote of one socket, sampled or at the close: 136 bytes. */
struct udp_record {
	u64 cookie;
	u8 saddr[16]; /* the socket's bound address: unspecified for a socket bound to any */
	u8 daddr[16]; /* the remote; all zero for other peers */
	u32 netns;
	u16 sport;
	u16 dport;
	u16 family;  /* of daddr; 0 for other peers */
	u16 sfamily; /* of saddr */
	u8 kind;     /* enum udp_record_kind */
	u8 other;    /* 1: the other peers slot */
	u8 _pad[1];
	u8 slot;     /* index of the remote's slot: two slots may hold one remote */
	u32 folded;
	struct owner owner;
	u64 bytes_sent;
	u64 bytes_recv;
	u32 dgrams_sent;
	u32 dgrams_recv;
	u32 drops;
	u32 _pad2;
};

/* Keeps struct udp_record in the BTF for bpf2go: it is only used through pointers below. */
const struct udp_record *unused_udp_record __attribute__((unused));

/* The remote of the call in progress on this CPU, left by a sock_addr hook. */
struct stash {
	u64 pid_tgid;
	u64 cookie;
	u8 addr[16];
	u16 port;
	u16 family;
	u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct udp_state);
} udp_states SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct stash);
} stashes SEC(".maps");


/* How many remotes a socket is reported with, at most UDP_MAX_PEERS. Set from probe.Config. */
const volatile u32 peer_cap = UDP_MAX_PEERS;


static __always_inline bool is_v4_mapped(const u8 *a)
{
	const u32 *w = (const u32 *)a;
	return w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0xffff);
}

/* set_peer writes a remote into a stash or a key, v4-mapped v6 as AF_INET. */
static __always_inline void set_peer(u8 *dst, u16 *family, u16 fam, const u8 *addr)
{
	if (fam == AF_INET6 && is_v4_mapped(addr)) {
		*family = AF_INET;
		*(u32 *)dst = *(const u32 *)(addr + 12);
		return;
	}
	*family = fam;
	if (fam == AF_INET)
		*(u32 *)dst = *(const u32 *)addr;
	else
		__builtin_memcpy(dst, addr, 16);
}

static __always_inline bool same_addr(const struct udp_peer *p, u16 family, const u8 *addr)
{
	if (p->family != family)
		return false;
	const u32 *a = (const u32 *)p->addr, *b = (const u32 *)addr;
	if (family == AF_INET)
		return a[0] == b[0];
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

static __always_inline bool udp_inet(const struct sock *sk)
{
	u16 family = sk->__sk_common.skc_family;
	return sk->sk_protocol == IPPROTO_UDP && (family == AF_INET || family == AF_INET6);
}

/* user_socket: a socket with a file, not one the kernel made for itself (tunnels). */
static __always_inline bool user_socket(const struct sock *sk)
{
	struct socket *sock = sk->sk_socket;
	return sock && sock->file;
}

static __always_inline void udp_current_owner(struct owner *o)
{
	struct task_struct *leader = bpf_get_current_task_btf()->group_leader;

	o->pid = bpf_get_current_pid_tgid() >> 32;
	o->start_time = leader->start_boottime;
	o->cgroup_id = bpf_get_current_cgroup_id();
	__builtin_memcpy(o->comm, leader->comm, sizeof(o->comm));
}

/*
 * udp_set_owner makes current the owner, as set_owner in tcp.c; an owner
 * set at bind() has no start time, and is completed by the next call.
 */
static __always_inline void udp_set_owner(struct udp_state *st)
{
	if (st->owner.pid == bpf_get_current_pid_tgid() >> 32 && st->owner.start_time)
		return;
	u32 seq = st->owner_seq;
	if (seq & 1)
		return;
	if (__sync_val_compare_and_swap(&st->owner_seq, seq, seq + 1) != seq)
		return;
	udp_current_owner(&st->owner);
	__sync_val_compare_and_swap(&st->owner_seq, seq + 1, seq + 2);
}

/* read_udp_owner copies the owner of st into o, as read_owner in tcp.h. */
static __always_inline void read_udp_owner(struct udp_state *st, struct owner *o)
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

/* remember_local keeps the socket's own end in st, for the close. */
static __always_inline void remember_local(struct udp_state *st, struct sock *sk)
{
	u16 sport = sk->__sk_common.skc_num; /* the bound port, host order */
	if (st->sport == sport && st->netns)
		return;
	st->netns = sk->__sk_common.skc_net.net->ns.inum;
	if (sk->__sk_common.skc_family == AF_INET) {
		u32 a = sk->__sk_common.skc_rcv_saddr;
		set_peer(st->saddr, &st->sfamily, AF_INET, (const u8 *)&a);
	} else {
		struct in6_addr a = sk->__sk_common.skc_v6_rcv_saddr;
		set_peer(st->saddr, &st->sfamily, AF_INET6, (const u8 *)&a);
	}
	st->sport = sport;
}

static __always_inline struct udp_state *udp_state_of(struct sock *sk)
{
	struct udp_state *st = bpf_sk_storage_get(&udp_states, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st) {
		count_drop(DROP_UDP_STORAGE_FULL);
		return 0;
	}
	remember_local(st, sk);
	return st;
}

/*
 * peer_of returns the slot of remote (family, addr, port) in st, claiming
 * a free one, or the other peers slot when peer_cap slots are taken. A
 * remote that two CPUs claim at once may get two slots: user space adds
 * them up.
 */
static __always_inline struct udp_peer *peer_of(struct udp_state *st, u16 family, const u8 *addr, u16 port)
{
	u32 cap = peer_cap;
	for (u32 i = 0; i < UDP_MAX_PEERS; i++) {
		if (i >= cap)
			break;
		struct udp_peer *p = &st->peers[i];
		u32 state = p->state;
		if (state == PEER_READY) {
			if (p->port == port && same_addr(p, family, addr))
				return p;
			continue;
		}
		if (state != PEER_FREE)
			continue;
		if (__sync_val_compare_and_swap(&p->state, PEER_FREE, PEER_CLAIMED) != PEER_FREE)
			continue;
		p->family = family;
		p->port = port;
		if (family == AF_INET)
			*(u32 *)p->addr = *(const u32 *)addr;
		else
			__builtin_memcpy(p->addr, addr, 16);
		/* The compare-and-swap is a full barrier: the fields are visible first. */
		__sync_val_compare_and_swap(&p->state, PEER_CLAIMED, PEER_READY);
		return p;
	}
	return &st->peers[UDP_MAX_PEERS];
}

/* A remote: family, address, port (host order); family 0 when unknown. */
struct remote {
	u8 addr[16];
	u16 port;
	u16 family;
};

/* connected_remote fills r with the remote of a connected socket. */
static __always_inline bool connected_remote(struct sock *sk, struct remote *r)
{
	if (sk->__sk_common.skc_state != TCP_ESTABLISHED)
		return false; /* UDP marks a connected socket established */
	u16 family = sk->__sk_common.skc_family;
	r->port = bpf_ntohs(sk->__sk_common.skc_dport);
	if (family == AF_INET) {
		u32 a = sk->__sk_common.skc_daddr;
		set_peer(r->addr, &r->family, AF_INET, (const u8 *)&a);
	} else {
		struct in6_addr a = sk->__sk_common.skc_v6_daddr;
		set_peer(r->addr, &r->family, AF_INET6, (const u8 *)&a);
	}
	return true;
}

/*
 * stash_remote leaves the remote of this sendmsg or recvmsg, from the
 * cgroup sock_addr hooks, for the hook that counts the datagram (udp.c's
 * on_udp, udp_hash.c's hash_on_udp). bpf_get_socket_cookie also sets the
 * socket's cookie, which take_stash reads.
 */
static __always_inline int stash_remote(struct bpf_sock_addr *ctx, bool v6)
{
	if (ctx->protocol != IPPROTO_UDP)
		return 1;
	u32 zero = 0;
	struct stash *s = bpf_map_lookup_elem(&stashes, &zero);
	if (!s)
		return 1;
	s->pid_tgid = bpf_get_current_pid_tgid();
	s->cookie = bpf_get_socket_cookie(ctx);
	s->port = bpf_ntohs((u16)ctx->user_port);
	if (!v6) {
		u32 a = ctx->user_ip4;
		set_peer(s->addr, &s->family, AF_INET, (const u8 *)&a);
	} else {
		u32 a[4] = {ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]};
		set_peer(s->addr, &s->family, AF_INET6, (const u8 *)a);
	}
	return 1;
}

/* take_stash moves the stash left for sk by this thread into r. */
static __always_inline bool take_stash(struct sock *sk, struct remote *r)
{
	u32 zero = 0;
	struct stash *s = bpf_map_lookup_elem(&stashes, &zero);
	if (!s || !s->cookie)
		return false;
	bool ok = s->pid_tgid == bpf_get_current_pid_tgid() && s->cookie == bpf_get_socket_cookie(sk);
	if (ok) {
		__builtin_memcpy(r->addr, s->addr, 16);
		r->port = s->port;
		r->family = s->family;
	}
	s->cookie = 0;
	return ok;
}

enum dir {
	DIR_SENT,
	DIR_RECV,
	DIR_DROP,
};

static __always_inline void count(struct udp_state *st, struct remote *r, enum dir d, u32 len)
{
	struct udp_peer *p;
	if (r->family)
		p = peer_of(st, r->family, r->addr, r->port);
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

/*
 * on_udp counts one datagram that current sent or received on sk: called
 * from the sock_send_length and sock_recv_length programs of udp.c.
 */
static __always_inline int on_udp(struct sock *sk, int ret, enum dir d)
{
	struct remote r = {};
	/* Take the stash whatever happens, so that none is left behind. */
	bool stashed = take_stash(sk, &r);
	if (ret < 0 || !udp_inet(sk) || !user_socket(sk))
		return 0;
	if (!connected_remote(sk, &r) && !stashed) {
		r.family = 0;
		count_drop(DROP_UDP_UNATTRIBUTED);
	}
	struct udp_state *st = udp_state_of(sk);
	if (!st || (st->flags & UDP_CLOSED))
		return 0;
	udp_set_owner(st);
	count(st, &r, d, ret);
	return 0;
}

#endif /* __WEIR_UDP_H__ */
