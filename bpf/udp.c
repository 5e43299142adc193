// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
//go:build ignore

/*
 * UDP traffic for the weir collector, per socket and remote address.
 *
 * Every user-space UDP socket (AF_INET, AF_INET6) that binds, sends or
 * receives gets socket storage in `udp_states`, freed by the kernel with the
 * socket. It holds the owner and up to peer_cap remote addresses, each with
 * cumulative counters (bytes and datagrams both ways, receive drops); what
 * a socket exchanges with more remotes than that goes to one more slot,
 * "other peers", and is counted in `folded`. Counters are cumulative, so
 * user space reads them when it wants (sample_udp walks the storage at poll
 * time, like the TCP sampler), and a socket's close writes its final
 * counters to the `udp_events` ring (cgroup sock_release), so that a socket
 * that lives less than an interval (a DNS query) is counted too.
 *
 * Why these hooks, without kprobes:
 *  - sizes: tp_btf sock_send_length and sock_recv_length (Linux 6.3; the
 *    return of every sendmsg and recvmsg: bytes, one datagram per call for
 *    UDP). They run for every socket's every send and receive, TCP
 *    included (about 40-50 ns each with run-time statistics on, 4 runs per
 *    request/response): that is why --udp is off by default, and why the
 *    TCP programs use no per-message hook;
 *  - the remote of a connected socket is the socket's own;
 *  - the remote of an unconnected socket comes from the cgroup sock_addr
 *    hooks sendmsg4/6 (destination) and recvmsg4/6 (source) on the cgroup-v2
 *    root: they run in the same call just before the tracepoint, only for
 *    UDP with an address (never for TCP), and leave it in a per-CPU stash
 *    that the tracepoint takes if the thread and the socket match (a thread
 *    moved to another CPU in between is counted as unattributed, under
 *    "other peers");
 *  - drops: tp_btf udp:udp_fail_queue_rcv_skb, where the kernel gives up
 *    queueing a datagram (receive buffer full) and adds to sk_drops; the
 *    source is read from the datagram's headers;
 *  - the owner: bind4/6 in the binding process (a socket that only
 *    receives, or never reads), then whoever sends or receives.
 *  - the close: cgroup sock_release, in close(); for a UDP socket with
 *    storage it writes one record per remote, for anything else it returns.
 */

#include "udp.h"
#include "walk.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* Close records, one per remote of a closing socket. Sized from probe.Config before load. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} udp_events SEC(".maps");

/* Sample records of one walk of sample_udp, drained as the TCP samples ring. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} udp_samples SEC(".maps");

/* As wakeup_bytes in tcp.c: wake the reader only past this much. Set from probe.Config. */
const volatile u64 udp_wakeup_bytes = 1 << 18;

SEC("cgroup/sendmsg4")
int udp_sendmsg4(struct bpf_sock_addr *ctx)
{
	return stash_remote(ctx, false);
}

SEC("cgroup/sendmsg6")
int udp_sendmsg6(struct bpf_sock_addr *ctx)
{
	return stash_remote(ctx, true);
}

SEC("cgroup/recvmsg4")
int udp_recvmsg4(struct bpf_sock_addr *ctx)
{
	return stash_remote(ctx, false);
}

SEC("cgroup/recvmsg6")
int udp_recvmsg6(struct bpf_sock_addr *ctx)
{
	return stash_remote(ctx, true);
}

/*
 * on_bind gives a UDP socket its storage and owner when it binds, in the
 * binding process: a socket that only receives, or never reads, has one.
 * Only the pid, the thread's comm and the cgroup are at hand here; the
 * next send or receive completes the owner.
 */
static __always_inline int on_bind(struct bpf_sock_addr *ctx)
{
	if (ctx->protocol != IPPROTO_UDP)
		return 1;
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 1;
	struct udp_state *st = bpf_sk_storage_get(&udp_states, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st) {
		count_drop(DROP_UDP_STORAGE_FULL);
		return 1;
	}
	if (st->owner.pid)
		return 1;
	u32 seq = st->owner_seq;
	if ((seq & 1) || __sync_val_compare_and_swap(&st->owner_seq, seq, seq + 1) != seq)
		return 1;
	st->owner.pid = bpf_get_current_pid_tgid() >> 32;
	st->owner.cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(st->owner.comm, sizeof(st->owner.comm));
	__sync_val_compare_and_swap(&st->owner_seq, seq + 1, seq + 2);
	return 1;
}

SEC("cgroup/bind4")
int udp_bind4(struct bpf_sock_addr *ctx)
{
	return on_bind(ctx);
}

SEC("cgroup/bind6")
int udp_bind6(struct bpf_sock_addr *ctx)
{
	return on_bind(ctx);
}

/* Arguments: struct sock *sk, int ret, int flags. Anything but UDP returns at once. */
SEC("tp_btf/sock_send_length")
int sock_send_length(u64 *ctx)
{
	struct sock *sk = (struct sock *)ctx[0];
	if (sk->sk_protocol != IPPROTO_UDP)
		return 0;
	return on_udp(sk, (int)ctx[1], DIR_SENT);
}

/* Arguments: struct sock *sk, int ret, int flags. Anything but UDP returns at once. */
SEC("tp_btf/sock_recv_length")
int sock_recv_length(u64 *ctx)
{
	struct sock *sk = (struct sock *)ctx[0];
	if (sk->sk_protocol != IPPROTO_UDP)
		return 0;
	return on_udp(sk, (int)ctx[1], DIR_RECV);
}

/*
 * The fentry path's sizes: fexit of the functions behind sendmsg() and
 * recvmsg() on a UDP socket, with their return value, as the tracepoints
 * above see it; they run for UDP (and UDP-Lite, which on_udp leaves out)
 * only, so TCP traffic pays nothing for them. The return value follows the
 * arguments: udp_sendmsg and udpv6_sendmsg have 3; udp_recvmsg and
 * udpv6_recvmsg have 5 since Linux 5.19, and 6 before (noblock): user
 * space loads the variant that matches the kernel's BTF. (One program that
 * picks the slot at run time does not load: the compiler turns the choice
 * into arithmetic on the context pointer, which the verifier refuses.)
 */
SEC("fexit/udp_sendmsg")
int fexit_udp_sendmsg(u64 *ctx)
{
	return on_udp((struct sock *)ctx[0], (int)ctx[3], DIR_SENT);
}

SEC("fexit/udpv6_sendmsg")
int fexit_udpv6_sendmsg(u64 *ctx)
{
	return on_udp((struct sock *)ctx[0], (int)ctx[3], DIR_SENT);
}

/* Arguments: sk, msg, len, flags, addr_len (Linux 5.19 and later). */
SEC("fexit/udp_recvmsg")
int fexit_udp_recvmsg(u64 *ctx)
{
	return on_udp((struct sock *)ctx[0], (int)ctx[5], DIR_RECV);
}

SEC("fexit/udpv6_recvmsg")
int fexit_udpv6_recvmsg(u64 *ctx)
{
	return on_udp((struct sock *)ctx[0], (int)ctx[5], DIR_RECV);
}

/* Arguments: sk, msg, len, noblock, flags, addr_len (before Linux 5.19). */
SEC("fexit/udp_recvmsg")
int fexit_udp_recvmsg_noblock(u64 *ctx)
{
	return on_udp((struct sock *)ctx[0], (int)ctx[6], DIR_RECV);
}

SEC("fexit/udpv6_recvmsg")
int fexit_udpv6_recvmsg_noblock(u64 *ctx)
{
	return on_udp((struct sock *)ctx[0], (int)ctx[6], DIR_RECV);
}

/*
 * The tracepoint has the datagram (its third argument) since Linux 6.10;
 * before, only rc and sk: the drop is then counted under other peers.
 * Set from the kernel's BTF; 0 by default, so that the object loads on
 * every kernel as it is.
 */
const volatile u32 fail_queue_has_skb = 0;

/* Arguments: int rc, struct sock *sk[, struct sk_buff *skb]. */
SEC("tp_btf/udp_fail_queue_rcv_skb")
int udp_fail_queue_rcv_skb(u64 *ctx)
{
	struct sock *sk = (struct sock *)ctx[1];
	if (!sk || !udp_inet(sk) || !user_socket(sk))
		return 0;
	if (!fail_queue_has_skb) {
		struct udp_state *st = udp_state_of(sk);
		if (!st || (st->flags & UDP_CLOSED))
			return 0;
		struct remote none = {};
		count(st, &none, DIR_DROP, 0);
		return 0;
	}
	struct sk_buff *skb = (struct sk_buff *)ctx[2];
	if (!skb)
		return 0;
	unsigned char *head = skb->head;
	u16 nh = skb->network_header, th = skb->transport_header;
	struct remote r = {};
	u8 ver = 0;
	bpf_probe_read_kernel(&ver, 1, head + nh);
	if ((ver >> 4) == 4) {
		u32 a = 0;
		bpf_probe_read_kernel(&a, 4, head + nh + 12);
		set_peer(r.addr, &r.family, AF_INET, (const u8 *)&a);
	} else if ((ver >> 4) == 6) {
		u32 a[4] = {};
		bpf_probe_read_kernel(a, 16, head + nh + 8);
		set_peer(r.addr, &r.family, AF_INET6, (const u8 *)a);
	}
	u16 sport = 0;
	bpf_probe_read_kernel(&sport, 2, head + th);
	r.port = bpf_ntohs(sport);
	struct udp_state *st = udp_state_of(sk);
	if (!st || (st->flags & UDP_CLOSED))
		return 0;
	count(st, &r, DIR_DROP, 0);
	return 0;
}

/* fill_record describes slot i of st; false for a slot with nothing to tell. */
static __always_inline bool fill_record(struct udp_record *rec, struct udp_state *st, u32 i, u64 cookie, u8 kind)
{
	if (i > UDP_MAX_PEERS)
		return false;
	struct udp_peer *p = &st->peers[i];
	bool other = i == UDP_MAX_PEERS;
	if (!other && p->state != PEER_READY)
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
 * udp_release: close(), for every inet socket (cgroup sock_release). A UDP
 * socket with storage writes its final counters, one record per remote,
 * and is not sampled again.
 */
SEC("cgroup/sock_release")
int udp_release(struct bpf_sock *ctx)
{
	if (ctx->protocol != IPPROTO_UDP)
		return 1;
	struct udp_state *st = bpf_sk_storage_get(&udp_states, ctx, 0, 0);
	if (!st || (st->flags & UDP_CLOSED))
		return 1;
	st->flags |= UDP_CLOSED;
	u64 cookie = bpf_get_socket_cookie(ctx);
	for (u32 i = 0; i <= UDP_MAX_PEERS; i++) {
		struct udp_record *rec = bpf_ringbuf_reserve(&udp_events, sizeof(*rec), 0);
		if (!rec) {
			count_drop(DROP_UDP_RING_FULL);
			continue;
		}
		__builtin_memset(rec, 0, sizeof(*rec));
		if (!fill_record(rec, st, i, cookie, UDP_CLOSE)) {
			bpf_ringbuf_discard(rec, 1 /* BPF_RB_NO_WAKEUP */);
			continue;
		}
		u64 flags = bpf_ringbuf_query(&udp_events, 0) >= udp_wakeup_bytes ? 2 : 1;
		bpf_ringbuf_submit(rec, flags);
	}
	return 1;
}

/*
 * sample_udp_one writes one record per remote of a live UDP socket with
 * storage into udp_samples, or, when that ring is full, into the walk's
 * seq_file seq.
 */
static __always_inline void sample_udp_one(struct seq_file *seq, struct sock *sk, struct udp_state *st)
{
	if (st->flags & UDP_CLOSED)
		return;
	u64 cookie = bpf_get_socket_cookie(sk);
	for (u32 i = 0; i <= UDP_MAX_PEERS; i++) {
		struct udp_record *rec = bpf_ringbuf_reserve(&udp_samples, sizeof(*rec), 0);
		if (rec) {
			__builtin_memset(rec, 0, sizeof(*rec));
			if (fill_record(rec, st, i, cookie, UDP_SAMPLE))
				bpf_ringbuf_submit(rec, 1 /* BPF_RB_NO_WAKEUP */);
			else
				bpf_ringbuf_discard(rec, 1);
			continue;
		}
		struct udp_record f = {};
		if (!fill_record(&f, st, i, cookie, UDP_SAMPLE))
			continue;
		count_drop(DROP_UDP_FALLBACK);
		bpf_seq_write(seq, &f, sizeof(f));
	}
}

/*
 * sample_udp (iter/bpf_sk_storage_map on udp_states) writes one record per
 * remote of every live UDP socket with storage, in every network
 * namespace, into udp_samples; as sample_sockets in tcp_iter.c.
 */
SEC("iter/bpf_sk_storage_map")
int sample_udp(struct bpf_iter__bpf_sk_storage_map *ctx)
{
	struct sock *sk = ctx->sk;
	struct udp_state *st = ctx->value;
	if (sk && st)
		sample_udp_one(ctx->meta->seq, sk, st);
	return 0;
}

/*
 * sample_udp_files (iter/task_file) is sample_udp over the processes' open
 * files, where the kernel refuses the storage map's iterator; as
 * sample_files in tcp_iter.c, a socket held by several processes is
 * sampled once, and one that none holds is not. files_walk is the number of
 * the current walk (walk_number).
 */
static u16 files_walk;

SEC("iter/task_file")
int sample_udp_files(struct bpf_iter__task_file___walk *ctx)
{
	u16 walk = walk_number(ctx->meta, &files_walk);
	struct sock *sk = file_sock(ctx->file);
	if (!sk || sk->sk_protocol != IPPROTO_UDP)
		return 0;
	struct udp_state *st = bpf_sk_storage_get(&udp_states, sk, 0, 0);
	if (!st || st->walked == walk)
		return 0; /* no storage, or sampled from another holder */
	st->walked = walk;
	sample_udp_one(ctx->meta->seq, sk, st);
	return 0;
}
