package harness

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// EnableBPFStats turns on the kernel's run-time statistics of BPF programs
// (run_time_ns and run_cnt, as with sysctl kernel.bpf_stats_enabled=1) until
// the test ends. The kernel keeps them on while any holder's file descriptor
// is open, so other holders (a collector started with --bpf-stats) are not
// disturbed, and nothing is left on after the test.
func EnableBPFStats(tb testing.TB) {
	tb.Helper()
	c, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		tb.Fatalf("enable BPF run-time stats: %v", err)
	}
	tb.Cleanup(func() { _ = c.Close() })
}

// ProgStats is the kernel's accounting of one BPF program.
type ProgStats struct {
	ID   uint32
	Name string // as the loader named it, truncated by the kernel to 15 bytes
	// Iter is true for an iterator program: it runs inside the read() of
	// the process that holds it, so its run time is part of that process's
	// own system CPU time already.
	Iter     bool
	RunTime  time.Duration
	RunCount uint64
}

// ProgramsOf lists the BPF programs that process pid holds, directly or
// through a link, with their cumulative run time and run count, sorted by
// name. It asks the kernel rather than the process, so it does not depend on
// the process's own metrics: the program ids come from /proc/PID/fdinfo of
// its bpf-prog and bpf_link descriptors.
func ProgramsOf(pid int) ([]ProgStats, error) {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	fds, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	ids := map[uint32]bool{} // program id → attached as an iterator
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join(dir, fd.Name()))
		if err != nil || !strings.HasPrefix(target, "anon_inode:bpf") {
			continue
		}
		info, err := readFdinfo(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, fd.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		id, err := strconv.ParseUint(info["prog_id"], 10, 32)
		if err != nil {
			continue // a map, or a link without a program
		}
		ids[uint32(id)] = ids[uint32(id)] || info["link_type"] == "iter"
	}
	var out []ProgStats
	for id, iter := range ids {
		p, err := ebpf.NewProgramFromID(ebpf.ProgramID(id))
		if err != nil {
			return nil, fmt.Errorf("program %d: %w", id, err)
		}
		info, err := p.Info()
		if err != nil {
			p.Close()
			return nil, fmt.Errorf("program %d: info: %w", id, err)
		}
		st, err := p.Stats()
		p.Close()
		if err != nil {
			return nil, fmt.Errorf("program %d: stats: %w", id, err)
		}
		out = append(out, ProgStats{ID: id, Name: info.Name, Iter: iter || info.Type == ebpf.Tracing && strings.Contains(info.Name, "iter"),
			RunTime: st.Runtime, RunCount: st.RunCount})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

func readFdinfo(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	m := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m, sc.Err()
}

// ProgDelta is what one program did between two ProgramsOf snapshots.
type ProgDelta struct {
	Name     string
	Iter     bool
	RunTime  time.Duration
	RunCount uint64
}

// Sub returns, per program name, the run time and count from before to
// after. Programs are matched by id; programs of the same name (one per
// load, if the process loaded several) are added together.
func Sub(after, before []ProgStats) map[string]ProgDelta {
	prev := map[uint32]ProgStats{}
	for _, p := range before {
		prev[p.ID] = p
	}
	d := map[string]ProgDelta{}
	for _, p := range after {
		b := prev[p.ID]
		x := d[p.Name]
		x.Name, x.Iter = p.Name, p.Iter
		x.RunTime += p.RunTime - b.RunTime
		x.RunCount += p.RunCount - b.RunCount
		d[p.Name] = x
	}
	return d
}
