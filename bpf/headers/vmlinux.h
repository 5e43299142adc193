/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * A trimmed vmlinux.h: only the kernel types weir's BPF programs touch.
 * Every struct carries preserve_access_index, so field offsets are
 * relocated at load time against the running kernel's BTF (CO-RE); the
 * layouts below only have to name the fields, not match the kernel.
 * Regenerate the full header with:
 *   bpftool btf dump file /sys/kernel/btf/vmlinux format c
 */
#ifndef __WEIR_VMLINUX_H__
#define __WEIR_VMLINUX_H__

typedef unsigned char __u8;
typedef short int __s16;
typedef short unsigned int __u16;
typedef int __s32;
typedef unsigned int __u32;
typedef long long int __s64;
typedef long long unsigned int __u64;
typedef __u8 u8;
typedef __s16 s16;
typedef __u16 u16;
typedef __s32 s32;
typedef __u32 u32;
typedef __s64 s64;
typedef __u64 u64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u64 __be64;
typedef __u32 __wsum;
typedef _Bool bool;

enum {
	false = 0,
	true = 1,
};

enum bpf_map_type {
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_SK_STORAGE = 24,
	BPF_MAP_TYPE_RINGBUF = 27,
};

/* Map flags. */
enum {
	BPF_F_NO_PREALLOC = 1,
};

/* Flags for bpf_sk_storage_get. */
enum {
	BPF_SK_STORAGE_GET_F_CREATE = 1,
};

/* Flags for bpf_map_update_elem. */
enum {
	BPF_ANY = 0,
	BPF_NOEXIST = 1,
	BPF_EXIST = 2,
};

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

struct seq_file;
struct bpf_map;
struct bpf_local_storage;

struct bpf_iter_meta {
	struct seq_file *seq;
	u64 session_id;
	u64 seq_num;
};

/* Context of an iter/tcp program. */
struct bpf_iter__tcp {
	struct bpf_iter_meta *meta;
	struct sock_common *sk_common;
	u32 uid;
};

/* Context of an iter/bpf_sk_storage_map program. */
struct bpf_iter__bpf_sk_storage_map {
	struct bpf_iter_meta *meta;
	struct bpf_map *map;
	struct sock *sk;
	void *value;
};

struct ns_common {
	unsigned int inum;
};

struct net {
	struct ns_common ns;
};

typedef struct {
	struct net *net;
} possible_net_t;

struct in6_addr {
	union {
		__u8 u6_addr8[16];
		__be16 u6_addr16[8];
		__be32 u6_addr32[4];
	} in6_u;
};

struct sock_common {
	union {
		struct {
			__be32 skc_daddr;
			__be32 skc_rcv_saddr;
		};
	};
	union {
		struct {
			__be16 skc_dport;
			__u16 skc_num;
		};
	};
	short unsigned int skc_family;
	volatile unsigned char skc_state;
	possible_net_t skc_net;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
	long unsigned int skc_flags;
};

struct inode {
	long unsigned int i_ino;
};

struct file {
	struct inode *f_inode;
};

struct socket {
	struct file *file;
};

struct sock {
	struct sock_common __sk_common;
	struct bpf_local_storage *sk_bpf_storage;
	struct socket *sk_socket;
	u16 sk_protocol;
	int sk_err;
};

struct inet_sock {
	struct sock sk;
	__be16 inet_sport;
};

struct inet_connection_sock {
	struct inet_sock icsk_inet;
};

struct tcp_sock {
	struct inet_connection_sock inet_conn;
	u64 bytes_sent;
	u32 write_seq;
	u32 snd_una;
	u32 delivered;
	u64 bytes_received;
	u32 segs_in;
	u32 data_segs_in;
	u64 bytes_acked;
	u32 srtt_us;
	u32 total_retrans;
};

enum sock_flags {
	SOCK_DEAD = 0,
	SOCK_DONE = 1,
};

struct task_struct {
	int pid;
	int tgid;
	u64 start_boottime;
	struct task_struct *group_leader;
	char comm[16];
};

struct sk_buff {
	unsigned char *head;
	__u16 transport_header;
	__u16 network_header;
};

/* Context of an iter/udp program. */
struct bpf_iter__udp {
	struct bpf_iter_meta *meta;
	struct udp_sock *udp_sk;
	u32 uid;
	int bucket;
};

#pragma clang attribute pop

/*
 * Contexts of cgroup programs: UAPI structs whose fields the verifier
 * rewrites, so their layout is fixed (no CO-RE).
 */
struct bpf_sock {
	__u32 bound_dev_if;
	__u32 family;
	__u32 type;
	__u32 protocol;
	__u32 mark;
	__u32 priority;
	__u32 src_ip4;
	__u32 src_ip6[4];
	__u32 src_port;
	__be16 dst_port;
	__u16 :16;
	__u32 dst_ip4;
	__u32 dst_ip6[4];
	__u32 state;
	__s32 rx_queue_mapping;
};

struct bpf_sock_addr {
	__u32 user_family;
	__u32 user_ip4;
	__u32 user_ip6[4];
	__u32 user_port;
	__u32 family;
	__u32 type;
	__u32 protocol;
	__u32 msg_src_ip4;
	__u32 msg_src_ip6[4];
	union {
		struct bpf_sock *sk;
		__u64 :64;
	} __attribute__((aligned(8)));
};

#endif /* __WEIR_VMLINUX_H__ */
