package probe

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
)

// Path is how the probe hooks the kernel where it has a choice: the TCP
// state changes, and the sizes of UDP datagrams. Everything else (resets,
// UDP drops, the iterators, the cgroup hooks) is the same on every path.
type Path string

const (
	// PathAuto takes the tracepoint path where the kernel has it, else
	// fentry, and the hashmap path where the kernel's tracing programs
	// cannot use socket storage or the socket cookie (before Linux 5.12,
	// e.g. 5.10); for UDP sizes, the tracepoints when the kernel has them
	// (Linux 6.3), else fexit (with udp_hash.c's hash map where tracing
	// programs have no socket storage), else UDP sizes are not counted
	// (logged, and weir_collector_feature_enabled{feature="udp"} is 0).
	PathAuto Path = "auto"
	// PathTracepoint: tp_btf sock:inet_sock_set_state for TCP;
	// tp_btf sock:sock_send_length and sock:sock_recv_length for UDP
	// sizes, which run for every TCP message too.
	PathTracepoint Path = "tracepoint"
	// PathFentry: fentry on inet_sk_state_store for TCP; fexit on
	// udp_sendmsg, udpv6_sendmsg, udp_recvmsg and udpv6_recvmsg for UDP
	// sizes, which TCP traffic never runs. Needs BPF trampolines
	// (x86-64 since Linux 5.5, arm64 since 6.0) and a kernel that permits
	// attaching them.
	PathFentry Path = "fentry"
	// PathKprobe is refused: kprobe programs cannot use socket storage
	// (bpf_sk_storage_get is for tracing programs only), which holds every
	// socket's owner, role and baselines on the storage paths; where the
	// kernel's tracing programs cannot use it either, PathHashmap keeps the
	// same state in a hash map, from BTF tracepoints that need no kprobe
	// (path_hash.go).
	PathKprobe Path = "kprobe"
)

// PathEnv names the environment variable that the privileged tests of
// this package (and of test/telemetry, test/e2e through the collector's
// --probe-path) read to force a path, e.g. WEIR_PROBE_PATH=fentry in a
// kernel-matrix guest; empty means auto.
const PathEnv = "WEIR_PROBE_PATH"

// ParsePath parses a --probe-path value; empty is auto.
func ParsePath(s string) (Path, error) {
	switch p := Path(s); p {
	case "":
		return PathAuto, nil
	case PathAuto, PathTracepoint, PathFentry, PathHashmap, PathKprobe:
		return p, nil
	}
	return "", fmt.Errorf("%q is not auto, tracepoint, fentry, hashmap or kprobe", s)
}

// minKernel is the first Linux release that has each feature the probe
// can miss, as Check and Open name them.
var minKernel = map[string]string{
	"kernel BTF":                           "5.4 with CONFIG_DEBUG_INFO_BTF",
	"map type ringbuf":                     "5.8",
	"map type sk_storage":                  "5.2",
	"sk_storage flag BPF_F_CLONE":          "5.4",
	"bpf_sk_storage_get in tp_btf":         "5.11",
	"bpf_get_socket_cookie in tp_btf":      "5.12",
	"bpf_get_current_task_btf":             "5.11",
	"bpf_skc_to_tcp_sock":                  "5.9",
	"tp_btf/inet_sock_set_state":           "5.5",
	"tp_btf/tcp_send_reset":                "5.5",
	"tp_btf/tcp_receive_reset":             "5.5",
	"tp_btf/sock_send_length":              "6.3",
	"tp_btf/sock_recv_length":              "6.3",
	"tp_btf/udp_fail_queue_rcv_skb":        "5.5",
	"iter/tcp":                             "5.9",
	"iter/bpf_sk_storage_map":              "5.9",
	"iter/bpf_map_elem":                    "5.9",
	"iter/task_file":                       "5.8",
	"bpf_sock_from_file in iter/task_file": "5.11",
	"fentry/inet_sk_state_store":           "5.5 on x86-64, 6.0 on arm64",
	"fexit/udp_sendmsg":                    "5.5 on x86-64, 6.0 on arm64",
	"udp_fail_queue_rcv_skb with skb":      "6.10",
}

// MinKernel returns the first Linux release with feature (a name Check
// and Open use), or "".
func MinKernel(feature string) string { return minKernel[feature] }

// Feature is one signal the probe delivers or not on this kernel and path.
type Feature struct {
	Name    string // tcp, tcp_resets, udp, udp_drop_remotes
	Enabled bool
	Reason  string // why not, when not enabled; how, when enabled
}

// kprobeRefusal explains why the kprobe path is refused, and says whether
// this kernel has kprobes at all.
func kprobeRefusal() error {
	msg := "--probe-path=kprobe: not available: kprobe programs cannot use socket storage (bpf_sk_storage_get is for tracing programs only), which holds every socket's owner, role and baselines; where tracing programs cannot use it either (before Linux 5.11), --probe-path=hashmap keeps that state in a hash map from BTF tracepoints, with no kprobe; use auto, tracepoint, fentry or hashmap"
	if err := probeKprobe(); err != nil {
		msg += fmt.Sprintf(" (and this kernel has no usable kprobes: %v)", err)
	}
	return errors.New(msg)
}

// probeKprobe attaches a program that does nothing to a kprobe on
// inet_sk_state_store.
func probeKprobe() error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.Kprobe,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		return fmt.Errorf("load a kprobe program: %w", err)
	}
	defer prog.Close()
	l, err := link.Kprobe("inet_sk_state_store", prog, nil)
	if err != nil {
		return err
	}
	return l.Close()
}

// kernelArgs returns the number of parameters of a kernel function in the
// kernel's BTF (modules included), or 0 when it is not found.
func kernelArgs(name string) int {
	spec, err := kernelTypes().Kernel()
	if err != nil {
		return 0
	}
	var fn *btf.Func
	if err := spec.TypeByName(name, &fn); err != nil {
		return 0
	}
	proto, ok := fn.Type.(*btf.FuncProto)
	if !ok {
		return 0
	}
	return len(proto.Params)
}

// tracepointArgs returns the number of arguments of a BTF tracepoint
// (btf_trace_<name> is a pointer to its prototype, whose first parameter
// is the tracepoint's data), or 0 when it is not found.
func tracepointArgs(name string) int {
	spec, err := kernelTypes().Kernel()
	if err != nil {
		return 0
	}
	var td *btf.Typedef
	if err := spec.TypeByName("btf_trace_"+name, &td); err != nil {
		return 0
	}
	ptr, ok := td.Type.(*btf.Pointer)
	if !ok {
		return 0
	}
	proto, ok := ptr.Target.(*btf.FuncProto)
	if !ok || len(proto.Params) == 0 {
		return 0
	}
	return len(proto.Params) - 1
}

// PathFromEnv returns the path that $WEIR_PROBE_PATH forces, auto when it
// is empty; a bad value is an error.
func PathFromEnv() (Path, error) {
	p, err := ParsePath(strings.TrimSpace(os.Getenv(PathEnv)))
	if err != nil {
		return "", fmt.Errorf("%s: %w", PathEnv, err)
	}
	return p, nil
}
