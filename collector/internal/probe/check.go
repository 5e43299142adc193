package probe

import (
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"
)

// Check runs the feature probes for what every path needs: kernel BTF,
// the ring buffer, the BTF tracepoints sock:inet_sock_set_state,
// tcp:tcp_send_reset and tcp:tcp_receive_reset, bpf_skc_to_tcp_sock from
// them, and the tcp iterator. That is Linux 5.9 with BTF: the hashmap path
// (bpf/tcp_hash.c) needs nothing more but iter/bpf_map_elem, which
// openHashmap checks. It returns an
// error wrapping ErrNotSupported that names the missing feature and the
// first release with it, e.g. "iter/tcp (Linux 5.9): not supported". What
// the socket storage paths (tracepoint, fentry) need besides is
// checkStorage's; Open chooses the path (Probe.Path, Probe.Features).
func Check() error {
	if _, err := kernelTypes().Kernel(); err != nil {
		if errors.Is(err, btf.ErrNotSupported) || errors.Is(err, os.ErrNotExist) {
			return feature("kernel BTF", ebpf.ErrNotSupported)
		}
		return fmt.Errorf("kernel BTF: %w", err)
	}
	if err := feature("map type ringbuf", features.HaveMapType(ebpf.RingBuf)); err != nil {
		return err
	}
	for _, tp := range []string{"inet_sock_set_state", "tcp_send_reset", "tcp_receive_reset"} {
		if err := feature("tp_btf/"+tp, loadTracing(ebpf.AttachTraceRawTp, tp, nil)); err != nil {
			return err
		}
	}
	sk := asm.LoadMem(asm.R6, asm.R1, 0, asm.DWord)
	skc := asm.Instructions{sk, asm.Mov.Reg(asm.R1, asm.R6), asm.FnSkcToTcpSock.Call()}
	if err := feature("bpf_skc_to_tcp_sock", loadTracing(ebpf.AttachTraceRawTp, "tcp_receive_reset", skc)); err != nil {
		return err
	}
	return feature("iter/tcp", loadTracing(ebpf.AttachTraceIter, "tcp", nil))
}

// checkStorage runs the feature probes for what the socket storage paths
// (tracepoint, fentry: bpf/tcp.c, bpf/tcp_iter.c) need beyond Check: the
// socket storage map type, storage that the kernel clones into accepted
// sockets (BPF_F_CLONE), the helpers the programs call from BTF
// tracepoints (bpf_sk_storage_get, bpf_get_socket_cookie,
// bpf_get_current_task_btf), and a sampling walk: the bpf_sk_storage_map
// iterator, or where the kernel refuses it, the open files' (walkFiles):
// Linux 5.12. Where it fails, auto takes the hashmap path. Its error names the
// feature as Check's do, e.g. "bpf_sk_storage_get in tp_btf (Linux 5.11):
// not supported".
func checkStorage() error {
	if err := feature("map type sk_storage", features.HaveMapType(ebpf.SkStorage)); err != nil {
		return err
	}
	spec, err := loadTcp()
	if err != nil {
		return err
	}
	// sk_states itself: socket storage needs BTF for its value.
	storage, err := ebpf.NewMap(spec.Maps[tcpMapSkStates])
	if err != nil {
		return feature("sk_storage flag BPF_F_CLONE", fmt.Errorf("%w: %w", ebpf.ErrNotSupported, err))
	}
	defer storage.Close()
	// Each helper from a tp_btf program whose first argument is a socket.
	sk := asm.LoadMem(asm.R6, asm.R1, 0, asm.DWord)
	for _, h := range []struct {
		name  string
		insns asm.Instructions
	}{
		{"bpf_sk_storage_get in tp_btf", asm.Instructions{sk,
			asm.LoadMapPtr(asm.R1, storage.FD()), asm.Mov.Reg(asm.R2, asm.R6),
			asm.Mov.Imm(asm.R3, 0), asm.Mov.Imm(asm.R4, 0), asm.FnSkStorageGet.Call()}},
		{"bpf_get_socket_cookie in tp_btf", asm.Instructions{sk, asm.Mov.Reg(asm.R1, asm.R6), asm.FnGetSocketCookie.Call()}},
		{"bpf_get_current_task_btf", asm.Instructions{asm.FnGetCurrentTaskBtf.Call()}},
	} {
		if err := feature(h.name, loadTracing(ebpf.AttachTraceRawTp, "tcp_receive_reset", h.insns)); err != nil {
			return err
		}
	}
	_, err = walkFiles()
	return err
}

// loadTracing loads a program of the tracing type with the given attach
// type and target, body followed by "return 0". A missing target, and a
// helper the kernel does not offer there, are ErrNotSupported.
func loadTracing(attach ebpf.AttachType, target string, body asm.Instructions) error {
	insns := append(append(asm.Instructions{}, body...), asm.Mov.Imm(asm.R0, 0), asm.Return())
	// A collection of one, for the shared kernel BTF (loadOptions).
	coll, err := ebpf.NewCollectionWithOptions(&ebpf.CollectionSpec{Programs: map[string]*ebpf.ProgramSpec{"probe": {
		Type:         ebpf.Tracing,
		AttachType:   attach,
		AttachTo:     target,
		License:      "GPL",
		Instructions: insns,
	}}}, *loadOptions(nil))
	if errors.Is(err, btf.ErrNotFound) {
		return fmt.Errorf("%w: %w", ebpf.ErrNotSupported, err)
	}
	var verr *ebpf.VerifierError
	if len(body) > 0 && errors.As(err, &verr) {
		// The trivial program loads (Check tried the target first): the
		// verifier refused the helper.
		return fmt.Errorf("%w: %w", ebpf.ErrNotSupported, err)
	}
	if err != nil {
		return err
	}
	coll.Close()
	return nil
}

// feature names the result of one feature probe, with the first release
// that has the feature.
func feature(name string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EPERM):
		return fmt.Errorf("%s: not permitted by this kernel (a security policy or a lockdown refuses the load): %w", name, err)
	case errors.Is(err, ebpf.ErrNotSupported):
		if v := minKernel[name]; v != "" {
			return fmt.Errorf("%s (Linux %s): %w", name, v, ErrNotSupported)
		}
		return fmt.Errorf("%s: %w", name, ErrNotSupported)
	default:
		return fmt.Errorf("probe %s: %w", name, err)
	}
}
