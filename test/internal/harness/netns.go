package harness

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
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

// BridgedHosts creates two host namespaces, each with one veth pair into a
// Linux bridge that lives in a third namespace of its own (a switch), so the
// traffic between the hosts crosses two veth pairs and a bridge, as between
// two pods on a node. The addresses come from the benchmarking ranges; the
// namespaces are deleted when the test ends, and namespaces of an earlier
// failed run are removed first.
func BridgedHosts(t testing.TB, tag string) (Host, Host) {
	t.Helper()
	prefix := fmt.Sprintf("weir-%s-", tag)
	removeStale(prefix)
	sw := fmt.Sprintf("%s%d-sw", prefix, os.Getpid())
	// A subnet per test process, so that tests of two processes running at
	// once (the collector sees every namespace) rarely share addresses.
	n := 1 + os.Getpid()%250
	a := Host{NS: fmt.Sprintf("%s%d-a", prefix, os.Getpid()), IPv4: fmt.Sprintf("198.18.%d.1", n), IPv6: fmt.Sprintf("2001:2:0:%x::1", n)}
	b := Host{NS: fmt.Sprintf("%s%d-b", prefix, os.Getpid()), IPv4: fmt.Sprintf("198.18.%d.2", n), IPv6: fmt.Sprintf("2001:2:0:%x::2", n)}
	t.Cleanup(func() {
		for _, ns := range []string{a.NS, b.NS, sw} {
			_ = exec.Command("ip", "netns", "del", ns).Run()
		}
	})
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	for _, ns := range []string{sw, a.NS, b.NS} {
		run("ip", "netns", "add", ns)
	}
	run("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
	run("ip", "-n", sw, "link", "set", "lo", "up")
	run("ip", "-n", sw, "link", "set", "br0", "up")
	for i, h := range []Host{a, b} {
		port := fmt.Sprintf("port%d", i)
		run("ip", "-n", sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", h.NS)
		run("ip", "-n", sw, "link", "set", port, "master", "br0")
		run("ip", "-n", sw, "link", "set", port, "up")
		run("ip", "-n", h.NS, "link", "set", "lo", "up")
		run("ip", "-n", h.NS, "addr", "add", h.IPv4+"/24", "dev", "eth0")
		run("ip", "-n", h.NS, "addr", "add", h.IPv6+"/64", "dev", "eth0", "nodad")
		run("ip", "-n", h.NS, "link", "set", "eth0", "up")
	}
	return a, b
}

// NetNSInode is the inode number of the host's network namespace, as the
// collector reports it (Socket.netns).
func (h Host) NetNSInode(t testing.TB) uint32 {
	t.Helper()
	fi, err := os.Stat("/run/netns/" + h.NS)
	if err != nil {
		t.Fatal(err)
	}
	return uint32(fi.Sys().(*syscall.Stat_t).Ino)
}

// Sysctl sets a kernel parameter inside the host's namespace only (the
// net.* parameters are per network namespace).
func (h Host) Sysctl(t testing.TB, key, value string) {
	t.Helper()
	if out, err := exec.Command("ip", "netns", "exec", h.NS, "sysctl", "-q", "-w", key+"="+value).CombinedOutput(); err != nil {
		t.Fatalf("sysctl %s=%s in %s: %v\n%s", key, value, h.NS, err, out)
	}
}
