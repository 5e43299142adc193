// Command guest is the init of the kernel matrix's guests: it mounts what
// the collector's tests need, loads every program of the committed BPF
// objects on its own (the verifier's verdict per program), runs the test
// binaries of its plan and powers the machine off. Everything it prints
// for the host starts with the marker "WEIR-GUEST ".
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"
)

// Plan is what the host asks the guest to do; the host writes it to
// /plan.json in the initramfs.
type Plan struct {
	Objects []string `json:"objects"` // BPF object files to load program by program
	Runs    []Run    `json:"runs"`
}

// Run is one test binary run on one probe path.
type Run struct {
	Path  string   `json:"path"`
	Suite string   `json:"suite"`
	Bin   string   `json:"bin"`
	Args  []string `json:"args"`
	Env   []string `json:"env"`
}

const marker = "WEIR-GUEST"

func main() {
	defer poweroff()
	if err := setup(); err != nil {
		fmt.Printf("%s setup-failed %v\n", marker, err)
		return
	}
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	fmt.Printf("%s kernel %s %s\n", marker, unix.ByteSliceToString(uts.Release[:]), runtime.GOARCH)

	b, err := os.ReadFile("/plan.json")
	var plan Plan
	if err == nil {
		err = json.Unmarshal(b, &plan)
	}
	if err != nil {
		fmt.Printf("%s setup-failed plan: %v\n", marker, err)
		return
	}
	for _, obj := range plan.Objects {
		verify(obj)
	}
	for _, r := range plan.Runs {
		runTests(r)
	}
	fmt.Printf("%s done\n", marker)
}

// setup mounts the file systems the tests use and brings up loopback.
func setup() error {
	mounts := []struct{ src, dir, fstype, data string }{
		{"proc", "/proc", "proc", ""},
		{"sysfs", "/sys", "sysfs", ""},
		{"devtmpfs", "/dev", "devtmpfs", ""},
		{"tmpfs", "/run", "tmpfs", "mode=0755"},
		{"tmpfs", "/tmp", "tmpfs", "mode=1777"},
		{"debugfs", "/sys/kernel/debug", "debugfs", ""},
		{"tracefs", "/sys/kernel/tracing", "tracefs", ""},
		{"bpf", "/sys/fs/bpf", "bpf", ""},
		{"cgroup2", "/sys/fs/cgroup", "cgroup2", ""},
	}
	for _, m := range mounts {
		if err := os.MkdirAll(m.dir, 0o755); err != nil && !errors.Is(err, unix.EROFS) {
			return err
		}
		if err := unix.Mount(m.src, m.dir, m.fstype, 0, m.data); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount %s on %s: %w", m.fstype, m.dir, err)
		}
	}
	os.Setenv("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
	os.Setenv("HOME", "/tmp")
	if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return fmt.Errorf("ip link set lo up: %w: %s", err, out)
	}
	// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
	inf := &unix.Rlimit{Cur: unix.RLIM_INFINITY, Max: unix.RLIM_INFINITY}
	if err := unix.Setrlimit(unix.RLIMIT_MEMLOCK, inf); err != nil {
		return fmt.Errorf("memlock: %w", err)
	}
	return nil
}

// verify loads each program of a BPF object file alone, with the maps it
// uses, and prints one line per program: ok, unsupported (the kernel lacks
// its attach target or program type) or fail with the verifier log's last
// lines.
func verify(obj string) {
	name := strings.TrimSuffix(filepath.Base(obj), ".o")
	spec, err := ebpf.LoadCollectionSpec(obj)
	if err != nil {
		fmt.Printf("%s prog %s - fail %v\n", marker, name, oneLine(err))
		return
	}
	var progs []string
	for p := range spec.Programs {
		progs = append(progs, p)
	}
	sort.Strings(progs)
	for _, p := range progs {
		s := spec.Copy()
		for other := range s.Programs {
			if other != p {
				delete(s.Programs, other)
			}
		}
		for _, m := range s.Maps {
			if m.Type == ebpf.RingBuf && m.MaxEntries == 0 {
				m.MaxEntries = 1 << 20
			}
		}
		start := time.Now()
		coll, err := ebpf.NewCollectionWithOptions(s, ebpf.CollectionOptions{})
		took := time.Since(start)
		what := spec.Programs[p].SectionName
		var verr *ebpf.VerifierError
		switch {
		case err == nil:
			coll.Close()
			fmt.Printf("%s prog %s %s ok %s %.2fs\n", marker, name, p, what, took.Seconds())
		case errors.Is(err, btf.ErrNotFound), errors.Is(err, ebpf.ErrNotSupported):
			fmt.Printf("%s prog %s %s unsupported %s: %s\n", marker, name, p, what, oneLine(err))
		case errors.As(err, &verr):
			fmt.Printf("%s prog %s %s fail %s: %s\n", marker, name, p, what, oneLine(err))
			for _, l := range strings.Split(fmt.Sprintf("%-20v", verr), "\n")[1:] {
				fmt.Printf("%s log %s\n", marker, strings.TrimSpace(l))
			}
		default:
			fmt.Printf("%s prog %s %s fail %s: %s\n", marker, name, p, what, oneLine(err))
		}
	}
}

func oneLine(err error) string {
	return strings.ReplaceAll(err.Error(), "\n", " ")
}

// runTests runs one test binary with the tests' output on the console.
func runTests(r Run) {
	fmt.Printf("%s begin %s %s\n", marker, r.Path, r.Suite)
	start := time.Now()
	cmd := exec.Command(r.Bin, r.Args...)
	cmd.Dir = "/tmp"
	cmd.Env = append(os.Environ(), r.Env...)
	cmd.Stdout = os.Stdout
	cmd.Stderr = os.Stdout
	err := cmd.Run()
	code := 0
	if err != nil {
		code = -1
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			code = exit.ExitCode()
		} else {
			fmt.Printf("%s error %v\n", marker, err)
		}
	}
	fmt.Printf("\n%s end %s %s exit=%d seconds=%.1f\n", marker, r.Path, r.Suite, code, time.Since(start).Seconds())
}

func poweroff() {
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		fmt.Printf("%s poweroff: %v\n", marker, err)
	}
	select {}
}
