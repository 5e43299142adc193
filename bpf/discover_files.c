// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
//go:build ignore

/*
 * Discovery without entering network namespaces.
 *
 * discover_files (iter/task_file, Linux 5.8; bpf_sock_from_file, 5.11)
 * visits every open file of every process in the collector's PID namespace
 * (the host's, with hostPID). A file that is a connected or listening TCP
 * socket, in any network namespace, gets its storage in sk_states and one
 * struct discovered record, exactly as the per-namespace iter/tcp walk
 * writes it, but with the owner known: the process whose file table holds
 * the socket. Unlike iter/tcp it needs no setns, so no CAP_SYS_ADMIN.
 *
 * A socket held by several processes (inherited over fork, passed over a
 * unix socket) is reported once: the first visit fills its storage, and a
 * socket whose storage is filled in is not reported again. Tasks are
 * visited by ascending pid, so a parent usually comes before its children.
 * A listener's storage carries its owner to the sockets accepted from it
 * from then on (BPF_F_CLONE), as if the probe had seen the listen().
 *
 * What it cannot see: sockets no process holds, such as connections in a
 * listener's accept queue and orphans; iter/tcp finds those in the
 * namespaces it can enter. Multipath TCP sockets only in part: Go 1.24's
 * net.Listen makes an MPTCP listener where the kernel has MPTCP. The file
 * is then the MPTCP socket, and the TCP listener behind it (msk->first),
 * whose storage accepted sockets would inherit, cannot be reached as a
 * socket pointer from this program type (bpf_skc_to_mptcp_sock takes no
 * BTF pointer). Such a listener is reported (EVENT_LISTEN with its owner,
 * from its sock_common), without storage, so that user space gives its
 * owner to the connections accepted from it (their port is its port).
 * Established MPTCP connections are not reported.
 */

#define IPPROTO_MPTCP 262

#include "tcp.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* Keeps struct discovered in the BTF for bpf2go: it is only a local variable below. */
const struct discovered *unused_discovered __attribute__((unused));

/*
 * The kernel fields this walk reads beyond the shared vmlinux.h. The
 * ___files suffix is dropped by CO-RE: the offsets are those of the
 * kernel's struct bpf_iter__task_file, socket, task_struct, css_set,
 * cgroup and kernfs_node.
 */
struct bpf_iter__task_file___files {
	struct bpf_iter_meta *meta;
	struct task_struct *task;
	u32 fd;
	struct file *file;
} __attribute__((preserve_access_index));

struct socket___files {
	struct sock *sk;
} __attribute__((preserve_access_index));

struct kernfs_node___files {
	u64 id;
} __attribute__((preserve_access_index));

struct cgroup___files {
	struct kernfs_node___files *kn;
} __attribute__((preserve_access_index));

struct css_set___files {
	struct cgroup___files *dfl_cgrp;
} __attribute__((preserve_access_index));

struct task_struct___files {
	struct css_set___files *cgroups;
} __attribute__((preserve_access_index));

/*
 * Only the network namespaces listed in netns_filter (inode numbers),
 * when set: the collector's --netns. Set from user space before load.
 */
const volatile u8 filter_netns = 0;

struct {
	__uint(type, 1 /* BPF_MAP_TYPE_HASH, not in the trimmed vmlinux.h */);
	__uint(max_entries, 256);
	__type(key, u32);
	__type(value, u8);
} netns_filter SEC(".maps");

/*
 * task_owner describes the process of task as current_owner (tcp_events.h)
 * describes current's: tgid, the group leader's start time and comm, and
 * the task's cgroup v2 id (what bpf_get_current_cgroup_id returns).
 */
static __always_inline void task_owner(struct task_struct *task, struct owner *o)
{
	struct task_struct *leader = task->group_leader;
	struct task_struct___files *t = (void *)task;

	o->pid = task->tgid;
	o->start_time = leader->start_boottime;
	o->cgroup_id = t->cgroups->dfl_cgrp->kn->id;
	__builtin_memcpy(o->comm, leader->comm, sizeof(o->comm));
}

/*
 * set_task_owner makes task's process the owner of st, with the owner_seq
 * protocol of set_owner (tcp_events.h). This walk holds no socket lock: if
 * a writer holds owner_seq (a connect() or listen() on the socket right
 * now), it gives up, and that writer's owner stands.
 */
static __always_inline void set_task_owner(struct sk_state *st, struct task_struct *task)
{
	u32 seq = st->owner_seq;
	if (seq & 1)
		return;
	if (__sync_val_compare_and_swap(&st->owner_seq, seq, seq + 1) != seq)
		return;
	task_owner(task, &st->owner);
	__sync_val_compare_and_swap(&st->owner_seq, seq + 1, seq + 2);
}

static __always_inline bool netns_wanted(struct sock *sk)
{
	if (!filter_netns)
		return true;
	u32 netns = sk->__sk_common.skc_net.net->ns.inum;
	return bpf_map_lookup_elem(&netns_filter, &netns) != 0;
}

/*
 * report_mptcp_listener writes an EVENT_LISTEN for an MPTCP listening
 * socket, from its sock_common (the MPTCP socket's own port and address
 * are those of the TCP listener behind it). Nothing marks it reported: a
 * listener held by several processes is reported once per process.
 */
static __always_inline void report_mptcp_listener(struct bpf_iter__task_file___files *ctx,
						  struct task_struct *task, struct file *file,
						  struct sock *sk)
{
	u16 family = sk->__sk_common.skc_family;
	if ((family != AF_INET && family != AF_INET6) || !netns_wanted(sk))
		return;
	struct discovered d = {};
	struct endpoint *e = &d.event.endpoint;
	e->kind = EVENT_LISTEN;
	e->cookie = bpf_get_socket_cookie(sk);
	e->family = family;
	e->sport = sk->__sk_common.skc_num;
	e->netns = sk->__sk_common.skc_net.net->ns.inum;
	if (family == AF_INET)
		*(u32 *)e->saddr = sk->__sk_common.skc_rcv_saddr;
	else
		__builtin_memcpy(e->saddr, &sk->__sk_common.skc_v6_rcv_saddr, 16);
	task_owner(task, &d.event.owner);
	d.inode = file->f_inode->i_ino;
	bpf_seq_write(ctx->meta->seq, &d, sizeof(d));
}

SEC("iter/task_file")
int discover_files(struct bpf_iter__task_file___files *ctx)
{
	struct task_struct *task = ctx->task;
	struct file *file = ctx->file;
	if (!task || !file)
		return 0;
	struct socket___files *sock = (void *)bpf_sock_from_file(file);
	if (!sock)
		return 0;
	struct sock *fsk = sock->sk;
	if (!fsk)
		return 0;
	if (fsk->sk_protocol == IPPROTO_MPTCP) {
		if (fsk->__sk_common.skc_state == TCP_LISTEN)
			report_mptcp_listener(ctx, task, file, fsk);
		return 0;
	}
	/* TCP (stream, IPPROTO_TCP) full sockets only; NULL for the rest. */
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(fsk);
	if (!tp)
		return 0;
	struct sock *sk = &tp->inet_conn.icsk_inet.sk;
	u16 family = sk->__sk_common.skc_family;
	if (family != AF_INET && family != AF_INET6)
		return 0;
	int state = sk->__sk_common.skc_state;
	bool listener = state == TCP_LISTEN;
	if (!listener && !trackable_state(state))
		return 0; /* not connected yet, or closed */
	if (!netns_wanted(sk))
		return 0;

	struct sk_state *st = bpf_sk_storage_get(&sk_states, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st) {
		count_drop(DROP_STORAGE_FULL);
		return 0;
	}
	if (st->flags & (SK_STATE_TRACKED | SK_STATE_LISTENER)) {
		/*
		 * Followed since the probe was loaded, or found before (by
		 * another holder of the socket, or by iter/tcp). Those that the
		 * probe saw established but not connecting (connect() or
		 * listen() before the probe) have no owner yet: the samples
		 * carry this one from now on. Nothing is written.
		 */
		if (!(st->flags & SK_STATE_CLOSED) && st->owner.pid == 0)
			set_task_owner(st, task);
		return 0;
	}

	struct discovered d = {};
	struct event *ev = &d.event;
	/* The handshake was not seen: no SYN baseline, role unknown. */
	if (!listener)
		read_counters(tp, st, 0, 0, state, &ev->counters);
	fill_endpoint(&ev->endpoint, tp, ROLE_UNKNOWN);
	ev->endpoint.kind = listener ? EVENT_LISTEN : EVENT_EXISTING;
	task_owner(task, &ev->owner);
	d.inode = file->f_inode->i_ino;
	/*
	 * The record first: when it does not fit in what is left of the
	 * seq_file's buffer (32 KiB a read), the kernel shows this file again
	 * at the start of the next read(), and the storage must then still say
	 * that the socket was not discovered.
	 */
	if (bpf_seq_write(ctx->meta->seq, &d, sizeof(d)))
		return 0;
	if (listener) {
		st->role = ROLE_UNKNOWN;
		st->flags = SK_STATE_LISTENER;
	} else {
		st->flags = SK_STATE_TRACKED;
	}
	set_task_owner(st, task);
	return 0;
}
