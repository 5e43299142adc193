package probe

import (
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
)

// Check runs the feature probes: kernel BTF, the ring buffer and socket storage map types, a BTF tracepoint (tp_btf)
// program on each of sock:inet_sock_set_state, sock:sock_send_length and
// sock:sock_recv_length, and the tcp and bpf_sk_storage_map iterators. It
// returns an error wrapping ErrNotSupported that names the missing feature,
// e.g. "tp_btf/sock_send_length: not supported".
func Check() error {
	if _, err := btf.LoadKernelSpec(); err != nil {
		if errors.Is(err, btf.ErrNotSupported) || errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("kernel BTF: %w", ErrNotSupported)
		}
		return fmt.Errorf("kernel BTF: %w", err)
	}
	if err := feature("map type ringbuf", features.HaveMapType(ebpf.RingBuf)); err != nil {
		return err
	}
	if err := feature("map type sk_storage", features.HaveMapType(ebpf.SkStorage)); err != nil {
		return err
	}
	for _, tp := range tracepoints {
		if err := feature("tp_btf/"+tp.name, loadTracing(ebpf.AttachTraceRawTp, tp.name)); err != nil {
			return err
		}
	}
	for _, it := range []string{"tcp", "bpf_sk_storage_map"} {
		if err := feature("iter/"+it, loadTracing(ebpf.AttachTraceIter, it)); err != nil {
			return err
		}
	}
	return nil
}

// loadTracing loads a program that does nothing, of the tracing type with
// the given attach type and target; a missing target is ErrNotSupported.
func loadTracing(attach ebpf.AttachType, target string) error {
	prog, err := ebpf.NewProgramWithOptions(&ebpf.ProgramSpec{
		Type:       ebpf.Tracing,
		AttachType: attach,
		AttachTo:   target,
		License:    "GPL",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, 0),
			asm.Return(),
		},
	}, ebpf.ProgramOptions{})
	if errors.Is(err, btf.ErrNotFound) {
		return fmt.Errorf("%w: %w", ebpf.ErrNotSupported, err)
	}
	if err != nil {
		return err
	}
	return prog.Close()
}

// feature names the result of one feature probe.
func feature(name string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ebpf.ErrNotSupported):
		return fmt.Errorf("%s: %w", name, ErrNotSupported)
	default:
		return fmt.Errorf("probe %s: %w", name, err)
	}
}
