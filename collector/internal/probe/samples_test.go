package probe

import (
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// socketKey names a loopback socket of this test's namespace while it lives.
type socketKey struct {
	netns         uint32
	local, remote uint16
}

// netnsInode is the inode of this process's network namespace.
func netnsInode(t testing.TB) uint32 {
	t.Helper()
	fi, err := os.Stat("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	return uint32(fi.Sys().(*syscall.Stat_t).Ino)
}

// openStable opens n connections to ln that stay open until the test ends
// and returns the keys of their 2n sockets.
func openStable(t testing.TB, ln net.Listener, n int) map[socketKey]bool {
	t.Helper()
	ns := netnsInode(t)
	keys := make(map[socketKey]bool, 2*n)
	for range n {
		cp := dialPair(t, ln)
		t.Cleanup(cp.close)
		c := cp.client.LocalAddr().(*net.TCPAddr).Port
		s := cp.server.LocalAddr().(*net.TCPAddr).Port
		keys[socketKey{ns, uint16(c), uint16(s)}] = true
		keys[socketKey{ns, uint16(s), uint16(c)}] = true
	}
	return keys
}

// churn opens and closes connections to a listener of its own, one at a
// time, until stop is closed, max connections are made, or a minute passes.
// Clients close with a reset, so that no port is left in TIME_WAIT. It
// returns the number of connections made.
func churn(stop <-chan struct{}, max int) (int, error) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	accepted := make(chan struct{})
	go func() {
		defer close(accepted)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	defer func() {
		ln.Close()
		<-accepted
	}()
	deadline := time.Now().Add(time.Minute)
	d := net.Dialer{}
	for n := 0; n < max; n++ {
		select {
		case <-stop:
			return n, nil
		default:
		}
		if time.Now().After(deadline) {
			return n, nil
		}
		c, err := d.Dial("tcp4", ln.Addr().String())
		if err != nil {
			return n, err
		}
		_ = c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}
	return max, nil
}

// TestPrivilegedSamplesExactlyOnce polls 2,400 established sockets while
// other connections open and close: each poll reports every one of them
// exactly once, in a single pass (a complete one, but for the open files'
// walk, which is never complete: walk.go).
func TestPrivilegedSamplesExactlyOnce(t *testing.T) {
	requirePrivileged(t)
	p, err := Open(DefaultConfig())
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer p.Close()
	stable := openStable(t, listen(t, "tcp4", "127.0.0.1:0"), 1200)
	before, err := p.Drops()
	if err != nil {
		t.Fatal(err)
	}

	stop := make(chan struct{})
	type result struct {
		n   int
		err error
	}
	churned := make(chan result, 1)
	go func() {
		n, err := churn(stop, 200_000)
		churned <- result{n, err}
	}()
	const polls = 150
	seen := make(map[socketKey]int, len(stable))
	for i := range polls {
		clear(seen)
		complete, err := p.SampleWalk(func(s Sample) {
			if k := (socketKey{s.NetNS, s.LocalPort, s.RemotePort}); stable[k] {
				seen[k]++
			}
		})
		if err != nil {
			t.Fatalf("poll %d: %v", i, err)
		}
		if complete == p.fileWalk {
			t.Errorf("poll %d: walk complete %v, open files' walk %v", i, complete, p.fileWalk)
		}
		missing, repeated := 0, 0
		for k := range stable {
			switch n := seen[k]; {
			case n == 0:
				missing++
			case n > 1:
				repeated++
			}
		}
		if missing > 0 || repeated > 0 {
			t.Errorf("poll %d: %d of %d stable sockets missing, %d repeated", i, missing, len(stable), repeated)
		}
		time.Sleep(time.Millisecond) // let the churn run between polls too
	}
	close(stop)
	res := <-churned
	if res.err != nil {
		t.Fatalf("churn: %v", res.err)
	}
	t.Logf("%d polls of %d stable sockets, %d connections opened and closed meanwhile", polls, len(stable), res.n)
	if res.n < polls {
		t.Errorf("only %d connections churned during %d polls", res.n, polls)
	}
	after, err := p.Drops()
	if err != nil {
		t.Fatal(err)
	}
	if after.SampleFallbacks != before.SampleFallbacks {
		t.Errorf("%d samples fell back to the seq_file", after.SampleFallbacks-before.SampleFallbacks)
	}
}

// TestPrivilegedSamplesFallback walks more sockets than a one-page sample
// ring holds: the rest come through the seq_file, counted, and the walk
// says it was not complete.
func TestPrivilegedSamplesFallback(t *testing.T) {
	requirePrivileged(t)
	page := uint32(os.Getpagesize())
	p, err := Open(Config{RingBytes: 1 << 20, SampleRingBytes: page})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer p.Close()
	stable := openStable(t, listen(t, "tcp4", "127.0.0.1:0"), 1000)

	seen := map[socketKey]int{}
	complete, err := p.SampleWalk(func(s Sample) {
		if k := (socketKey{s.NetNS, s.LocalPort, s.RemotePort}); stable[k] {
			seen[k]++
		}
	})
	if err != nil {
		t.Fatalf("SampleWalk: %v", err)
	}
	if complete {
		t.Error("walk complete, want a fallback")
	}
	// Nothing here opens or closes a socket during the walk, but other
	// processes on the machine may: a chunked walk can then miss one.
	if len(seen) < len(stable)*95/100 {
		t.Errorf("%d of %d stable sockets seen", len(seen), len(stable))
	}
	d, err := p.Drops()
	if err != nil {
		t.Fatal(err)
	}
	if d.SampleFallbacks == 0 {
		t.Error("no fallback counted")
	}
	t.Logf("%d of %d samples through the seq_file", d.SampleFallbacks, len(stable))
}
