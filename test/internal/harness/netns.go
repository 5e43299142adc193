package harness

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Host is a network namespace with one veth end and its addresses.
type Host struct {
	NS   string
	IPv4 string
	IPv6 string
}

// Exec is argv prefixed so that it runs inside the host's namespace.
func (h Host) Exec(argv ...string) []string {
	return append([]string{"ip", "netns", "exec", h.NS}, argv...)
}

// TwoHosts creates two network namespaces joined by a veth pair, addressed
// from the benchmarking ranges 198.18.0.0/15 and 2001:2::/48, and deletes them
// when the test ends (namespaces left by an earlier failed run are removed
// first). Traffic between them never leaves the machine.
func TwoHosts(t testing.TB, tag string) (Host, Host) {
	t.Helper()
	prefix := fmt.Sprintf("weir-%s-", tag)
	removeStale(prefix)
	a := Host{NS: fmt.Sprintf("%s%d-a", prefix, os.Getpid()), IPv4: "198.18.0.1", IPv6: "2001:2::1"}
	b := Host{NS: fmt.Sprintf("%s%d-b", prefix, os.Getpid()), IPv4: "198.18.0.2", IPv6: "2001:2::2"}
	t.Cleanup(func() {
		_ = exec.Command("ip", "netns", "del", a.NS).Run()
		_ = exec.Command("ip", "netns", "del", b.NS).Run()
	})
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("ip", "netns", "add", a.NS)
	run("ip", "netns", "add", b.NS)
	run("ip", "-n", a.NS, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b.NS)
	for _, h := range []Host{a, b} {
		run("ip", "-n", h.NS, "link", "set", "lo", "up")
		run("ip", "-n", h.NS, "addr", "add", h.IPv4+"/24", "dev", "eth0")
		run("ip", "-n", h.NS, "addr", "add", h.IPv6+"/64", "dev", "eth0", "nodad")
		run("ip", "-n", h.NS, "link", "set", "eth0", "up")
	}
	return a, b
}

func removeStale(prefix string) {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		pid, _, ok := strings.Cut(strings.TrimPrefix(name, prefix), "-")
		if !strings.HasPrefix(name, prefix) || !ok {
			continue
		}
		if _, err := os.Stat("/proc/" + pid); err == nil {
			continue // its test process is still running
		}
		_ = exec.Command("ip", "netns", "del", name).Run()
	}
}
