package probe

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"
)

// tracefsMount is where Open mounts tracefs when no mount is found.
const tracefsMount = "/sys/kernel/tracing"

// Check runs the feature probes (BTF present, tracepoint program type, ring
// buffer map, the tracepoints sock:inet_sock_set_state, sock:sock_send_length,
// sock:sock_recv_length exist in tracefs). It returns an error wrapping
// ErrNotSupported that names the missing feature, e.g.
// "tracepoint sock:sock_send_length: not supported". It mounts tracefs if
// it is not mounted.
func Check() error {
	if _, err := btf.LoadKernelSpec(); err != nil {
		if errors.Is(err, btf.ErrNotSupported) || errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("kernel BTF: %w", ErrNotSupported)
		}
		return fmt.Errorf("kernel BTF: %w", err)
	}
	if err := feature("program type tracepoint", features.HaveProgramType(ebpf.TracePoint)); err != nil {
		return err
	}
	if err := feature("map type ringbuf", features.HaveMapType(ebpf.RingBuf)); err != nil {
		return err
	}
	if err := feature("helper bpf_ringbuf_reserve",
		features.HaveProgramHelper(ebpf.TracePoint, asm.FnRingbufReserve)); err != nil {
		return err
	}
	dir, err := tracefs()
	if err != nil {
		return err
	}
	for _, tp := range tracepoints {
		name := fmt.Sprintf("tracepoint %s:%s", tp.group, tp.name)
		_, err := os.Stat(filepath.Join(dir, "events", tp.group, tp.name, "id"))
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%s: %w", name, ErrNotSupported)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	return nil
}

// feature names the result of one cilium/ebpf feature probe.
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

// tracefs returns the directory where tracefs is mounted, mounting it at
// /sys/kernel/tracing if it is mounted nowhere.
func tracefs() (string, error) {
	for _, dir := range []string{tracefsMount, "/sys/kernel/debug/tracing"} {
		var st unix.Statfs_t
		if err := unix.Statfs(dir, &st); err == nil && st.Type == unix.TRACEFS_MAGIC {
			return dir, nil
		}
	}
	if err := unix.Mount("nodev", tracefsMount, "tracefs", 0, ""); err != nil {
		if errors.Is(err, unix.ENODEV) {
			return "", fmt.Errorf("tracefs: %w", ErrNotSupported)
		}
		return "", fmt.Errorf("mount tracefs at %s: %w", tracefsMount, err)
	}
	return tracefsMount, nil
}
