/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * What the TCP programs share: the socks map, its value, and how the
 * counters are read from a tcp_sock.
 */
#ifndef __WEIR_TCP_H__
#define __WEIR_TCP_H__

#include "vmlinux.h"
#include "bpf_helpers.h"
#include "bpf_core_read.h"

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define TASK_COMM_LEN 16

enum tcp_state {
	TCP_ESTABLISHED = 1,
	TCP_SYN_SENT = 2,
	TCP_SYN_RECV = 3,
	TCP_FIN_WAIT1 = 4,
	TCP_FIN_WAIT2 = 5,
	TCP_TIME_WAIT = 6,
	TCP_CLOSE = 7,
	TCP_CLOSE_WAIT = 8,
	TCP_LAST_ACK = 9,
	TCP_LISTEN = 10,
	TCP_CLOSING = 11,
};

/* Values match probe.EventKind. */
enum event_kind {
	EVENT_OPEN = 1,
	EVENT_CLOSE = 2,
	EVENT_LISTEN = 3,
};

/* Values match probe.Role. */
enum role {
	ROLE_UNKNOWN = 0,
	ROLE_CLIENT = 1,
	ROLE_SERVER = 2,
};

/* Indexes into the drops array. */
enum drop_reason {
	DROP_RING_FULL = 0,
	DROP_MAP_FULL = 1,
	DROP_MAX = 2,
};

/* sock_info.flags */
enum {
	SOCK_INFO_FIN_SENT = 1, /* this socket queued its FIN */
};

/* The counters user space sees: payload bytes, without SYN and FIN. */
struct counters {
	u64 bytes_acked;
	u64 bytes_received;
	u64 delivered;
	u64 data_segs_in;
};

/* Value of the socks map. */
struct sock_info {
	struct counters counters;
	u32 pid;              /* owner tgid, 0 while unknown */
	u32 syn_acked;        /* bytes_acked already counted at establishment: the SYN */
	u32 syn_delivered;    /* delivered already counted at establishment: the SYN */
	u8 role;              /* enum role */
	u8 flags;             /* SOCK_INFO_* */
	u16 _pad;
	char comm[TASK_COMM_LEN]; /* comm of the owner's thread group leader */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536); /* set from probe.Config before load */
	__type(key, u64);
	__type(value, struct sock_info);
} socks SEC(".maps");

static __always_inline u64 sub_floor(u64 a, u64 b)
{
	return a > b ? a - b : 0;
}

/*
 * read_counters reads the cumulative counters of sk and takes out what is not
 * payload. bytes_acked and delivered count the SYN of an active open (saved
 * at establishment in syn_acked/syn_delivered) and, in bytes_acked, our FIN
 * once it is acked. bytes_received counts the peer's FIN once received.
 */
static __always_inline void read_counters(struct sock *sk, const struct sock_info *info,
					  struct counters *c)
{
	struct tcp_sock *tp = (struct tcp_sock *)sk;
	u64 acked = BPF_CORE_READ(tp, bytes_acked);
	u64 received = BPF_CORE_READ(tp, bytes_received);
	u64 delivered = BPF_CORE_READ(tp, delivered);

	acked = sub_floor(acked, info->syn_acked);
	if ((info->flags & SOCK_INFO_FIN_SENT) &&
	    BPF_CORE_READ(tp, snd_una) == BPF_CORE_READ(tp, write_seq))
		acked = sub_floor(acked, 1);

	unsigned long sk_flags = BPF_CORE_READ(sk, __sk_common.skc_flags);
	if (sk_flags & (1UL << SOCK_DONE))
		received = sub_floor(received, 1);

	c->bytes_acked = acked;
	c->bytes_received = received;
	c->delivered = sub_floor(delivered, info->syn_delivered);
	c->data_segs_in = BPF_CORE_READ(tp, data_segs_in);
}

static __always_inline bool trackable_state(u8 state)
{
	switch (state) {
	case TCP_ESTABLISHED:
	case TCP_FIN_WAIT1:
	case TCP_FIN_WAIT2:
	case TCP_CLOSE_WAIT:
	case TCP_CLOSING:
	case TCP_LAST_ACK:
		return true;
	}
	return false;
}

#endif /* __WEIR_TCP_H__ */
