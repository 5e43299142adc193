// Package caps checks at start-up that the collector holds the Linux
// capabilities it needs, and names each one missing with what it is for.
package caps

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Cap is a capability the collector needs, and why.
type Cap struct {
	Bit  int
	Name string
	Why  string
}

// The capabilities of a collector. CAP_BPF and CAP_PERFMON exist from
// Linux 5.8; before, CAP_SYS_ADMIN stands for both. Before Linux 5.11 BPF
// memory is charged to RLIMIT_MEMLOCK, which the collector raises with
// CAP_SYS_RESOURCE unless it is already unlimited.
var (
	BPF      = Cap{39, "CAP_BPF", "load the eBPF programs and maps"}
	Perfmon  = Cap{38, "CAP_PERFMON", "attach the tracing programs and read kernel socket state"}
	NetAdmin = Cap{unix.CAP_NET_ADMIN, "CAP_NET_ADMIN", "attach cgroup socket programs and read conntrack"}
	Ptrace   = Cap{unix.CAP_SYS_PTRACE, "CAP_SYS_PTRACE", "read other users' /proc/<pid>/fd and namespaces to name socket owners"}
	SysAdmin = Cap{unix.CAP_SYS_ADMIN, "CAP_SYS_ADMIN", "load eBPF on a kernel without CAP_BPF (before 5.8)"}
	Resource = Cap{unix.CAP_SYS_RESOURCE, "CAP_SYS_RESOURCE", "raise RLIMIT_MEMLOCK for eBPF maps (kernels before 5.11)"}
)

// Kernel is what the check needs to know of the running kernel.
type Kernel struct {
	// LastCap is /proc/sys/kernel/cap_last_cap: the highest capability
	// the kernel knows.
	LastCap int
	// Major and Minor are the kernel release's version.
	Major, Minor int
	// MemlockUnlimited is true when RLIMIT_MEMLOCK is already infinite.
	MemlockUnlimited bool
}

// Required returns the capabilities a collector needs on kernel k.
func Required(k Kernel) []Cap {
	var need []Cap
	if k.LastCap >= BPF.Bit {
		need = append(need, BPF, Perfmon)
	} else {
		need = append(need, SysAdmin)
	}
	need = append(need, NetAdmin, Ptrace)
	if (k.Major < 5 || k.Major == 5 && k.Minor < 11) && !k.MemlockUnlimited {
		need = append(need, Resource)
	}
	return need
}

// Missing returns the capabilities of need that are not in the effective
// set eff (a bit per capability).
func Missing(need []Cap, eff uint64) []Cap {
	var out []Cap
	for _, c := range need {
		if eff&(1<<uint(c.Bit)) == 0 {
			out = append(out, c)
		}
	}
	return out
}

// Effective returns the calling thread's effective capability set.
func Effective() (uint64, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return 0, fmt.Errorf("capget: %w", err)
	}
	return uint64(data[1].Effective)<<32 | uint64(data[0].Effective), nil
}

// Running describes the running kernel.
func Running() (Kernel, error) {
	var k Kernel
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return k, err
	}
	if k.LastCap, err = strconv.Atoi(strings.TrimSpace(string(b))); err != nil {
		return k, fmt.Errorf("cap_last_cap: %w", err)
	}
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return k, err
	}
	k.Major, k.Minor = parseRelease(unix.ByteSliceToString(u.Release[:]))
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &rl); err == nil {
		k.MemlockUnlimited = rl.Cur == unix.RLIM_INFINITY
	}
	return k, nil
}

// parseRelease returns the major and minor version of a release such as
// "6.8.0-45-generic".
func parseRelease(r string) (int, int) {
	parts := strings.SplitN(r, ".", 3)
	if len(parts) < 2 {
		return 0, 0
	}
	num := func(s string) int {
		if end := strings.IndexFunc(s, func(r rune) bool { return r < '0' || r > '9' }); end >= 0 {
			s = s[:end]
		}
		n, _ := strconv.Atoi(s)
		return n
	}
	return num(parts[0]), num(parts[1])
}

// Check returns an error naming every capability the collector lacks on
// this kernel, with what each is for.
func Check() error {
	k, err := Running()
	if err != nil {
		return fmt.Errorf("capabilities: %w", err)
	}
	eff, err := Effective()
	if err != nil {
		return err
	}
	missing := Missing(Required(k), eff)
	if len(missing) == 0 {
		return nil
	}
	var parts []string
	for _, c := range missing {
		parts = append(parts, fmt.Sprintf("%s (to %s)", c.Name, c.Why))
	}
	return fmt.Errorf("missing capability %s; grant it (Kubernetes: securityContext.capabilities.add; systemd: AmbientCapabilities=) or run as root", strings.Join(parts, ", "))
}

// Has reports whether the effective set holds c; false if it cannot be read.
func Has(c Cap) bool {
	eff, err := Effective()
	return err == nil && eff&(1<<uint(c.Bit)) != 0
}
