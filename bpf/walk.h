/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * The sampling walks over the processes' open files (iter/task_file), for
 * kernels that refuse iterators over socket storage maps.
 */
#ifndef WEIR_WALK_H
#define WEIR_WALK_H

/*
 * The kernel's struct bpf_iter__task_file and the part of struct socket
 * that the walks read; the ___walk suffix is dropped by CO-RE.
 */
struct bpf_iter__task_file___walk {
	struct bpf_iter_meta *meta;
	struct task_struct *task;
	u32 fd;
	struct file *file;
} __attribute__((preserve_access_index));

struct socket___walk {
	struct sock *sk;
} __attribute__((preserve_access_index));

/* file_sock returns the socket of an open file; NULL for other files. */
static __always_inline struct sock *file_sock(struct file *file)
{
	if (!file)
		return 0;
	struct socket___walk *sock = (void *)bpf_sock_from_file(file);
	if (!sock)
		return 0;
	return sock->sk;
}

/*
 * A socket held by several processes (inherited over fork, passed over a
 * unix socket) is met once per holder: each walk has a number, and a
 * socket's state records the last walk that sampled it. The number goes up
 * at the first object of each walk (seq_num 0) and skips 0, the number of
 * a state not sampled yet. After 65,535 walks without a sample, a socket
 * may be taken for sampled in one walk.
 */
static __always_inline u16 walk_number(struct bpf_iter_meta *meta, u16 *last)
{
	if (meta->seq_num == 0 && ++*last == 0)
		*last = 1;
	return *last;
}

#endif
