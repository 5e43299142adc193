package security

import (
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/weir-project/weir/test/internal/harness"
)

// The collector's capabilities on a kernel with CAP_BPF (5.8+) whose BPF
// memory is charged to the memory cgroup (5.11+), and their bits.
var collectorCaps = []struct {
	name string // as setpriv names it
	bit  uint
}{{"bpf", 39}, {"perfmon", 38}, {"net_admin", 12}, {"sys_ptrace", 19}}

// requireSetpriv installs setpriv (Debian's util-linux) if it is missing.
func requireSetpriv(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("setpriv"); err == nil {
		return p
	}
	out, err := exec.Command("bash", "-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq util-linux").CombinedOutput()
	if err != nil {
		t.Fatalf("install setpriv (util-linux): %v\n%s", err, out)
	}
	p, err := exec.LookPath("setpriv")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// unprivilegedCollector returns the argv that runs the collector as user
// nobody (65534) with exactly the capabilities caps, ambient so that they
// survive the change of user and the exec.
func unprivilegedCollector(t *testing.T, setpriv, bin string, caps []string, args ...string) []string {
	set := "-all"
	for _, c := range caps {
		set += ",+" + c
	}
	return append([]string{setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
		"--inh-caps=" + set, "--ambient-caps=" + set, "--bounding-set=" + set, "--", bin}, args...)
}

// copyCollector copies weir-collector where user nobody can run it.
func copyCollector(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "weir-sec-bin-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(harness.Binaries(t), "weir-collector"))
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "weir-collector")
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// procStatus returns the fields of /proc/pid/status.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			out[k] = strings.TrimSpace(v)
		}
	}
	return out
}

// TestPrivilegedLeastPrivilege runs the collector as user nobody with
// CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and CAP_SYS_PTRACE only: it streams
// exact bytes of a real transfer to the reducer, and a hijack of its node
// with a huge epoch does not disturb it. With any one of the four dropped
// it exits at once, naming the missing capability.
func TestPrivilegedLeastPrivilege(t *testing.T) {
	harness.RequireRoot(t)
	setpriv := requireSetpriv(t)
	bin := copyCollector(t)
	var names []string
	var want uint64
	for _, c := range collectorCaps {
		names = append(names, c.name)
		want |= 1 << c.bit
	}

	w := harness.StartWeir(t, harness.WeirOptions{NoCollector: true})
	port := harness.FreePort(t)
	colURL := fmt.Sprintf("http://127.0.0.1:%d/metrics", port)
	col := harness.Start(t, "weir-collector", unprivilegedCollector(t, setpriv, bin, names,
		"--reducer", w.GRPCAddr, "--interval", "1s", "--node-name", "lp-node", "--http-addr", fmt.Sprintf("127.0.0.1:%d", port))...)
	harness.WaitFor(t, colURL, 30*time.Second, "the unprivileged collector's session", func(m harness.Metrics) bool {
		v, _ := m.Value("weir_collector_connected", nil)
		return v == 1 && m.Sum("weir_collector_acks_received_total", nil) >= 3
	})
	st := procStatus(t, col.PID())
	if uid := strings.Fields(st["Uid"]); len(uid) == 0 || uid[0] != "65534" || uid[1] != "65534" {
		t.Errorf("collector uid %q, want 65534", st["Uid"])
	}
	eff, err := strconv.ParseUint(st["CapEff"], 16, 64)
	if err != nil {
		t.Fatal(err)
	}
	if eff != want {
		t.Errorf("collector CapEff %#x, want exactly %#x (%v)", eff, want, names)
	}

	// A local hijack of its node with a huge epoch is refused.
	before := acks(t, colURL)
	err = session(t.Context(), ingestClient(t, w.GRPCAddr, nil, nil), hello("lp-node", math.MaxUint64), injected())
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("hijack with a huge epoch: %v, want FailedPrecondition", err)
	}
	const conns, request, response = 3, 100_003, 9_001
	transfer(t, conns, request, response)
	waitEdge(t, w.MetricsURL, conns*request, conns*response, conns)
	harness.WaitFor(t, colURL, 10*time.Second, "acks after the hijack", func(m harness.Metrics) bool {
		return m.Sum("weir_collector_acks_received_total", nil) >= before+2 && m.Sum("weir_collector_stream_reconnects_total", nil) <= 1
	})
	if !col.Alive() {
		t.Fatal("the collector exited")
	}
	col.Stop(10 * time.Second)

	// One capability dropped: a clear exit.
	for i, c := range collectorCaps {
		t.Run("without "+c.name, func(t *testing.T) {
			rest := append(append([]string{}, names[:i]...), names[i+1:]...)
			p := harness.Start(t, "weir-collector", unprivilegedCollector(t, setpriv, bin, rest,
				"--reducer", w.GRPCAddr, "--node-name", "lp-node", "--http-addr", fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t)))...)
			err := p.Wait(20 * time.Second)
			if err == nil || p.Alive() {
				t.Fatalf("collector without %s: %v", c.name, err)
			}
			want := "missing capability CAP_" + strings.ToUpper(c.name)
			if !strings.Contains(p.Stderr(), want) {
				t.Errorf("stderr does not name it (%q):\n%s", want, p.Stderr())
			}
		})
	}
}
