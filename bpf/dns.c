// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
//go:build ignore

/*
 * DNS payloads for the weir collector.
 *
 * Two cgroup_skb programs on the cgroup-v2 root see every packet of every
 * local socket, in every network namespace, without kprobes. A socket filter
 * was the other choice: it would have to be attached to each socket (or to a
 * raw socket per namespace, which also sees forwarded traffic and copies
 * every packet to the filter's socket), and it cannot tell which process
 * sent a query. cgroup_skb runs in the sender's context on egress, knows the
 * socket (cookie, cgroup), and never sees a packet that no local socket
 * sends or receives.
 *
 * Only the client side is kept: a query sent to port 53 (egress) and an
 * answer received from port 53 (ingress), over UDP and over TCP. Everything
 * else, which is almost every packet, returns at once after reading the IP
 * protocol byte and, for UDP and TCP, the ports, by direct packet access.
 * A TCP segment to or from port 53 without payload (SYN, ACK, FIN) returns
 * after reading its header. Payloads (at most DNS_MAX bytes of each
 * datagram or segment) go to the `dns_events` ring buffer; a full ring is
 * counted in dns_drops. A TCP segment carries its sequence number and its
 * whole payload length, so that user space reassembles the length-prefixed
 * messages of the stream, drops retransmissions and knows what was cut.
 * Both programs always let the packet pass.
 */

#include "vmlinux.h"
#include "bpf_helpers.h"
#include "bpf_endian.h"
#include "bpf_core_read.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* The leading part of the UAPI struct __sk_buff: stable, not relocated. */
struct __sk_buff {
	__u32 len;
	__u32 pkt_type;
	__u32 mark;
	__u32 queue_mapping;
	__u32 protocol;
	__u32 vlan_present;
	__u32 vlan_tci;
	__u32 vlan_proto;
	__u32 priority;
	__u32 ingress_ifindex;
	__u32 ifindex;
	__u32 tc_index;
	__u32 cb[5];
	__u32 hash;
	__u32 tc_classid;
	__u32 data;
	__u32 data_end;
};

/*
 * The sender's task fields: tgid, comm and network namespace. They are read
 * through bpf_get_current_task() and CO-RE reads, which cgroup_skb programs
 * may call on every kernel the collector supports (with CAP_PERFMON):
 * bpf_get_current_pid_tgid() and bpf_get_current_comm() are refused there
 * on some (6.1 and 5.10 refuse the first, 6.12 the second).
 */
struct ns_common___weir {
	unsigned int inum;
} __attribute__((preserve_access_index));
struct net___weir {
	struct ns_common___weir ns;
} __attribute__((preserve_access_index));
struct nsproxy___weir {
	struct net___weir *net_ns;
} __attribute__((preserve_access_index));
struct task_struct___dns {
	int tgid;
	char comm[16];
	struct nsproxy___weir *nsproxy;
} __attribute__((preserve_access_index));

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_UDP 17
#define IPPROTO_TCP 6
#define DNS_PORT 53
#define DNS_MAX 512

struct dns_event {
	u64 time;      /* bpf_ktime_get_ns */
	u64 cookie;    /* socket cookie */
	u64 cgroup_id; /* the socket's cgroup v2 id */
	u32 pid;       /* tgid of the sender (egress only) */
	u32 netns;     /* the sender's network namespace inode (egress only) */
	u8 saddr[16];
	u8 daddr[16];
	u16 sport;
	u16 dport;
	u16 len;   /* payload bytes in payload */
	u8 egress; /* 1: a query sent; 0: an answer received */
	u8 family; /* 4 or 6 */
	u8 tcp;    /* 1: a TCP segment; 0: a UDP datagram */
	u8 pad[3];
	u32 seq;   /* TCP: sequence number of the payload's first byte */
	u32 total; /* payload bytes of the datagram or segment; more than len when cut */
	char comm[16];
	u8 payload[DNS_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20); /* set from probe.DNSConfig before load */
	__type(value, struct dns_event);
} dns_events SEC(".maps");

/*
 * Wake the reader only once this much is waiting: it also reads on a short
 * timer. A wakeup is an interrupt (in a VM, an exit), which costs several
 * microseconds per record. Set from probe.DNSConfig before load.
 */
const volatile u64 wakeup_bytes = 1 << 16;

static __always_inline void submit(void *rec)
{
	u64 flags = bpf_ringbuf_query(&dns_events, 0 /* BPF_RB_AVAIL_DATA */) >= wakeup_bytes ?
			    2 /* BPF_RB_FORCE_WAKEUP */ :
			    1 /* BPF_RB_NO_WAKEUP */;
	bpf_ringbuf_submit(rec, flags);
}

/* dns_drops[0] counts payloads lost because the ring was full. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, u64);
} dns_drops SEC(".maps");

/*
 * l4_ports finds the UDP or TCP header of skb: it returns its offset, or 0
 * for anything that is neither. The ports come back in host order.
 */
static __always_inline u32 l4_ports(struct __sk_buff *skb, u8 *family, u8 *proto, u16 *sport, u16 *dport)
{
	u8 *data = (u8 *)(long)skb->data;
	u8 *end = (u8 *)(long)skb->data_end;
	u32 off;
	u16 ports[2];

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		if (data + 20 > end)
			goto slow;
		*proto = data[9];
		off = (data[0] & 0xf) * 4;
		*family = 4;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		if (data + 40 > end)
			goto slow;
		*proto = data[6]; /* extension headers are not followed */
		off = 40;
		*family = 6;
	} else {
		return 0;
	}
	if (*proto != IPPROTO_UDP && *proto != IPPROTO_TCP)
		return 0;
	if (off < 20 || off > 60)
		return 0;
	if (data + off + 4 > end) {
		if (bpf_skb_load_bytes(skb, off, ports, 4))
			return 0;
	} else {
		__builtin_memcpy(ports, data + off, 4);
	}
	*sport = bpf_ntohs(ports[0]);
	*dport = bpf_ntohs(ports[1]);
	return off;

slow: {
	/* Headers outside the linear data: read them. */
	u8 h[10];
	if (bpf_skb_load_bytes(skb, 0, h, 10))
		return 0;
	if ((h[0] >> 4) == 4) {
		*proto = h[9];
		off = (h[0] & 0xf) * 4;
		*family = 4;
	} else if ((h[0] >> 4) == 6) {
		*proto = h[6];
		off = 40;
		*family = 6;
	} else {
		return 0;
	}
	if (*proto != IPPROTO_UDP && *proto != IPPROTO_TCP)
		return 0;
	if (off < 20 || off > 60)
		return 0;
	if (bpf_skb_load_bytes(skb, off, ports, 4))
		return 0;
	*sport = bpf_ntohs(ports[0]);
	*dport = bpf_ntohs(ports[1]);
	return off;
}
}

static __always_inline void capture(struct __sk_buff *skb, u8 egress)
{
	u8 family = 0, proto = 0;
	u16 sport = 0, dport = 0;
	u32 seq = 0;
	u32 off = l4_ports(skb, &family, &proto, &sport, &dport);

	if (!off)
		return;
	if (egress ? dport != DNS_PORT : sport != DNS_PORT)
		return;
	if (proto == IPPROTO_TCP) {
		u8 th[13];
		u32 doff;

		if (bpf_skb_load_bytes(skb, off, th, sizeof(th)))
			return;
		doff = (th[12] >> 4) * 4;
		if (doff < 20)
			return;
		off += doff;
		if (skb->len <= off)
			return; /* no payload: a SYN, an ACK or a FIN */
		seq = ((u32)th[4] << 24) | ((u32)th[5] << 16) | ((u32)th[6] << 8) | th[7];
	} else {
		off += 8;
		if (skb->len <= off + 12)
			return; /* shorter than a DNS header */
	}
	u32 total = skb->len - off;
	u32 len = total;
	if (len > DNS_MAX)
		len = DNS_MAX;

	struct dns_event *ev = bpf_ringbuf_reserve(&dns_events, sizeof(*ev), 0);
	if (!ev) {
		u32 k = 0;
		u64 *n = bpf_map_lookup_elem(&dns_drops, &k);
		if (n)
			(*n)++;
		return;
	}
	ev->time = bpf_ktime_get_ns();
	ev->cookie = bpf_get_socket_cookie(skb);
	ev->cgroup_id = bpf_skb_cgroup_id(skb);
	ev->sport = sport;
	ev->dport = dport;
	ev->egress = egress;
	ev->family = family;
	ev->tcp = proto == IPPROTO_TCP;
	ev->seq = seq;
	ev->total = total;
	__builtin_memset(ev->pad, 0, sizeof(ev->pad));
	ev->pid = 0;
	ev->netns = 0;
	__builtin_memset(ev->comm, 0, sizeof(ev->comm));
	__builtin_memset(ev->saddr, 0, sizeof(ev->saddr));
	__builtin_memset(ev->daddr, 0, sizeof(ev->daddr));
	if (family == 4) {
		bpf_skb_load_bytes(skb, 12, ev->saddr, 4);
		bpf_skb_load_bytes(skb, 16, ev->daddr, 4);
	} else {
		bpf_skb_load_bytes(skb, 8, ev->saddr, 16);
		bpf_skb_load_bytes(skb, 24, ev->daddr, 16);
	}
	if (egress) {
		/* Egress runs in the sending task's context. */
		struct task_struct___dns *task = (void *)bpf_get_current_task();
		ev->pid = BPF_CORE_READ(task, tgid);
		ev->netns = BPF_CORE_READ(task, nsproxy, net_ns, ns.inum);
		BPF_CORE_READ_STR_INTO(&ev->comm, task, comm);
	}
	ev->len = 0;
	/*
	 * The size is masked into [1, DNS_MAX] in the register passed: older
	 * verifiers (6.1, 5.10) do not carry the bounds checked above through
	 * the stack slot the compiler reloads len from, and refuse a size that
	 * may be 0. For len in [1, DNS_MAX] the mask changes nothing.
	 */
	if (len >= 1 && len <= DNS_MAX &&
	    bpf_skb_load_bytes(skb, off, ev->payload, ((len - 1) & (DNS_MAX - 1)) + 1) == 0)
		ev->len = len;
	submit(ev);
}

SEC("cgroup_skb/egress")
int dns_egress(struct __sk_buff *skb)
{
	capture(skb, 1);
	return 1;
}

SEC("cgroup_skb/ingress")
int dns_ingress(struct __sk_buff *skb)
{
	capture(skb, 0);
	return 1;
}
