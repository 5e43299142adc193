// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
//go:build ignore

/*
 * Refreshes the counters of every tracked socket, right before user space
 * reads the socks map. The tracepoints in tcp.c only refresh a socket when
 * it changes state or when its process sends or receives, so without this
 * the bytes a socket had acked since its last send would show only later.
 * The iterator visits each socket under its lock, so the counters read here
 * are consistent with each other.
 */

#include "tcp.h"

char __license[] SEC("license") = "Dual BSD/GPL";

SEC("iter/tcp")
int refresh_counters(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	if (!skc)
		return 0;
	/* Time-wait and request sockets are not full sockets and never tracked. */
	if (!trackable_state(BPF_CORE_READ(skc, skc_state)))
		return 0;

	u64 key = (u64)skc;
	struct sock_info *info = bpf_map_lookup_elem(&socks, &key);
	if (info)
		read_counters((struct sock *)skc, info, &info->counters);
	return 0;
}
