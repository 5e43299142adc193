// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
//go:build ignore

/*
 * Process lifecycle for the weir collector's process table.
 *
 * Three BTF tracepoints, sched:sched_process_fork, sched_process_exec and
 * sched_process_exit, each publish one small record to the `proc_events`
 * ring buffer: a new process (not a new thread), a program loaded, a thread
 * group gone. They read the task through its BTF pointer and format no trace
 * record. A thread's fork and a non-final thread's exit return at once, so
 * the cost is one record per process start, exec and end. User space keeps
 * the table and reads the rest (executable, command line, cgroup path) from
 * /proc only for the processes that own sockets.
 */

#include "vmlinux.h"
#include "bpf_helpers.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* The fields read here; CO-RE matches the names without the suffix. */
struct signal_struct___weir {
	struct {
		int counter;
	} live; /* atomic_t: the group's threads that have not begun to exit */
} __attribute__((preserve_access_index));

struct task_struct___weir {
	int pid;
	int tgid;
	u64 start_boottime;
	struct task_struct___weir *real_parent;
	struct task_struct___weir *group_leader;
	struct signal_struct___weir *signal;
	char comm[16];
} __attribute__((preserve_access_index));

enum proc_kind {
	PROC_FORK = 1,
	PROC_EXEC = 2,
	PROC_EXIT = 3,
};

struct proc_event {
	u64 start_time; /* thread group leader's start_boottime, ns */
	u64 cgroup_id;  /* cgroup v2 id of current */
	u32 pid;        /* tgid */
	u32 ppid;       /* tgid of the parent */
	u8 kind;        /* enum proc_kind */
	u8 pad[7];
	char comm[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 18); /* set from probe.ProcessConfig before load */
	__type(value, struct proc_event);
} proc_events SEC(".maps");

/*
 * Wake the reader only once this much is waiting: it also reads on a short
 * timer. A wakeup is an interrupt (in a VM, an exit), which costs several
 * microseconds per record. Set from probe.ProcessConfig before load.
 */
const volatile u64 wakeup_bytes = 1 << 16;

static __always_inline void submit(void *rec)
{
	u64 flags = bpf_ringbuf_query(&proc_events, 0 /* BPF_RB_AVAIL_DATA */) >= wakeup_bytes ?
			    2 /* BPF_RB_FORCE_WAKEUP */ :
			    1 /* BPF_RB_NO_WAKEUP */;
	bpf_ringbuf_submit(rec, flags);
}

/* proc_drops[0] counts records lost because the ring was full. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, u64);
} proc_drops SEC(".maps");

static __always_inline void emit(u8 kind, struct task_struct___weir *t, u32 ppid)
{
	struct proc_event *ev = bpf_ringbuf_reserve(&proc_events, sizeof(*ev), 0);
	if (!ev) {
		u32 k = 0;
		u64 *n = bpf_map_lookup_elem(&proc_drops, &k);
		if (n)
			(*n)++;
		return;
	}
	struct task_struct___weir *leader = t->group_leader;
	ev->kind = kind;
	ev->pid = t->tgid;
	ev->ppid = ppid;
	ev->start_time = leader->start_boottime;
	ev->cgroup_id = bpf_get_current_cgroup_id();
	__builtin_memcpy(ev->comm, leader->comm, sizeof(ev->comm));
	__builtin_memset(ev->pad, 0, sizeof(ev->pad));
	submit(ev);
}

SEC("tp_btf/sched_process_fork")
int proc_fork(u64 *ctx)
{
	struct task_struct___weir *parent = (void *)ctx[0], *child = (void *)ctx[1];

	if (child->pid != child->tgid)
		return 0; /* a new thread */
	emit(PROC_FORK, child, parent->tgid);
	return 0;
}

SEC("tp_btf/sched_process_exec")
int proc_exec(u64 *ctx)
{
	struct task_struct___weir *p = (void *)ctx[0];

	emit(PROC_EXEC, p, p->real_parent->tgid);
	return 0;
}

/*
 * sched_process_exit has a group_dead argument in recent kernels
 * (arguments: p, group_dead; 6.18 has it, 6.12 and 6.1 have only p). The verifier rejects a read
 * past the last argument, so there are two programs and user space loads
 * the one that matches the kernel's BTF. Without the argument, the group is
 * dead when no thread of it is still live: do_exit() decrements
 * signal->live before the tracepoint, as it computes group_dead. Two
 * threads of a group exiting at the same moment may then both see 0: the
 * exit is reported twice, and the process table takes the first.
 */
SEC("tp_btf/sched_process_exit")
int proc_exit(u64 *ctx)
{
	struct task_struct___weir *p = (void *)ctx[0];
	bool group_dead = ctx[1];

	if (!group_dead)
		return 0; /* other threads of the group live on */
	emit(PROC_EXIT, p, 0);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int proc_exit_live(u64 *ctx)
{
	struct task_struct___weir *p = (void *)ctx[0];

	if (p->signal->live.counter != 0)
		return 0; /* other threads of the group live on */
	emit(PROC_EXIT, p, 0);
	return 0;
}
