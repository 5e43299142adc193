package probe

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// testNetNS is a network namespace made for one test, mounted in
// /run/netns, with testAddr on its loopback.
type testNetNS struct {
	path string
	ino  uint32
}

// testAddr is the address the tests use inside their namespaces.
var testAddr = netip.MustParseAddr("198.18.0.1")

var netnsSeq atomic.Int32

func newNetNS(t *testing.T) testNetNS {
	t.Helper()
	name := fmt.Sprintf("weir-probe-%d-%d", os.Getpid(), netnsSeq.Add(1))
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	ip("netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	ip("-n", name, "link", "set", "lo", "up")
	ip("-n", name, "addr", "add", testAddr.String()+"/32", "dev", "lo")
	ns := testNetNS{path: "/run/netns/" + name}
	var st unix.Stat_t
	if err := unix.Stat(ns.path, &st); err != nil {
		t.Fatal(err)
	}
	ns.ino = uint32(st.Ino)
	return ns
}

// do runs fn on a thread inside the namespace: the sockets fn creates
// belong to it, and can be used from anywhere afterwards.
func (ns testNetNS) do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			errc <- err
			return // the thread stays locked and dies with the goroutine
		}
		defer self.Close()
		target, err := os.Open(ns.path)
		if err != nil {
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns: %w", err)
			return
		}
		err = fn()
		if unix.Setns(int(self.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// pairIn listens and connects inside ns, on testAddr.
func (ns testNetNS) pairIn(t *testing.T) (net.Listener, connPair) {
	t.Helper()
	var ln net.Listener
	var cp connPair
	err := ns.do(func() error {
		var err error
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(testAddr, 0).String())
		if err != nil {
			return err
		}
		cp, err = dialWith(&net.Dialer{}, ln)
		return err
	})
	if err != nil {
		t.Fatalf("connect in %s: %v", ns.path, err)
	}
	t.Cleanup(func() {
		ln.Close()
		cp.close()
	})
	return ln, cp
}

// inode is the inode of a socket's file.
func inode(t *testing.T, c syscall.Conn) uint64 {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.Fstat(int(fd), &st) }); err != nil || serr != nil {
		t.Fatalf("fstat: %v %v", err, serr)
	}
	return st.Ino
}

const fourMiB = 4 << 20

// writeAll writes n bytes in one Write call while read consumes them.
func writeAll(w net.Conn, n int, read func() error) error {
	errc := make(chan error, 1)
	go func() {
		_, err := w.Write(make([]byte, n))
		errc <- err
	}()
	return errors.Join(read(), <-errc)
}

// TestPrivilegedOtherNetNSIdle: a socket in another namespace that sent
// 4 MiB and then stays idle shows every byte acked, and its peer every byte
// received, without any further send or receive.
func TestPrivilegedOtherNetNSIdle(t *testing.T) {
	requirePrivileged(t)
	r := openRecorded(t, DefaultConfig())
	ns := newNetNS(t)
	_, cp := ns.pairIn(t)
	client, server := addrPort(t, cp.client.LocalAddr()), addrPort(t, cp.server.LocalAddr())

	err := writeAll(cp.server, fourMiB, func() error {
		_, err := io.ReadFull(cp.client, make([]byte, fourMiB))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	clientOpen := waitSample(t, r.p, client.Port(), server.Port())
	serverOpen := waitSample(t, r.p, server.Port(), client.Port())
	for _, ev := range []Sample{clientOpen, serverOpen} {
		if ev.NetNS != ns.ino || ev.LocalAddr != testAddr {
			t.Errorf("sample %+v: want netns %d, local address %v", ev.Endpoint, ns.ino, testAddr)
		}
	}
	want := map[uint64]Counters{
		clientOpen.Cookie: {BytesReceived: fourMiB},
		serverOpen.Cookie: {BytesAcked: fourMiB},
	}
	seen := waitCounters(t, r.p, want)
	for cookie, w := range want {
		if c := seen[cookie].Counters; c.BytesAcked != w.BytesAcked || c.BytesReceived != w.BytesReceived {
			t.Errorf("sample %#x: acked %d received %d, want %d and %d", cookie, c.BytesAcked, c.BytesReceived, w.BytesAcked, w.BytesReceived)
		}
		if ns := seen[cookie].NetNS; ns != clientOpen.NetNS {
			t.Errorf("sample %#x: netns %d, want %d", cookie, ns, clientOpen.NetNS)
		}
	}
}

// spliceDrain reads n bytes from c with splice() into a pipe, so that the
// socket sees no receive call.
func spliceDrain(c *net.TCPConn, n int64) error {
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	defer pr.Close()
	defer pw.Close()
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<16) // the pipe's default capacity
	for n > 0 {
		var m int64
		var serr error
		err := rc.Read(func(fd uintptr) bool {
			m, serr = unix.Splice(int(fd), nil, int(pw.Fd()), nil, len(buf), unix.SPLICE_F_NONBLOCK)
			return !errors.Is(serr, unix.EAGAIN)
		})
		if err := errors.Join(err, serr); err != nil {
			return fmt.Errorf("splice: %w", err)
		}
		if m == 0 {
			return io.ErrUnexpectedEOF
		}
		if _, err := io.ReadFull(pr, buf[:m]); err != nil {
			return err
		}
		n -= m
	}
	return nil
}

// TestPrivilegedDiscover: a connection made in another namespace before the
// probe is loaded is found by Discover, with its endpoints, inodes and
// counters as the baseline; traffic after that is counted exactly, even
// received with splice() and no receive call.
func TestPrivilegedDiscover(t *testing.T) {
	requirePrivileged(t)
	ns := newNetNS(t)
	ln, cp := ns.pairIn(t)
	const before = 1000
	cp.exchange(t, before, before)
	client, server := addrPort(t, cp.client.LocalAddr()), addrPort(t, cp.server.LocalAddr())

	r := openRecorded(t, DefaultConfig())
	found := map[uint64]Event{}
	discover := func() []Event {
		var evs []Event
		if err := r.p.Discover(func(ev Event) {
			if ev.NetNS == ns.ino {
				evs = append(evs, ev)
			}
		}); err != nil {
			t.Fatalf("Discover: %v", err)
		}
		return evs
	}
	for _, ev := range discover() {
		found[ev.Inode] = ev
	}
	ends := []struct {
		name          string
		inode         uint64
		local, remote netip.AddrPort
		acked, recvd  uint64
	}{
		// The handshake was not seen, so the client's SYN is in its bytes_acked.
		{"client", inode(t, cp.client.(*net.TCPConn)), client, server, before + 1, before},
		{"server", inode(t, cp.server.(*net.TCPConn)), server, client, before, before},
	}
	base := map[string]Event{}
	for _, e := range ends {
		ev, ok := found[e.inode]
		if !ok {
			t.Fatalf("%s (inode %d) not discovered; found %+v", e.name, e.inode, found)
		}
		if ev.Kind != EventExisting || ev.Role != RoleUnknown || ev.Cookie == 0 {
			t.Errorf("%s: %+v, want EventExisting, role unknown, a cookie", e.name, ev)
		}
		if got := netip.AddrPortFrom(ev.LocalAddr, ev.LocalPort); got != e.local {
			t.Errorf("%s: local %v, want %v", e.name, got, e.local)
		}
		if got := netip.AddrPortFrom(ev.RemoteAddr, ev.RemotePort); got != e.remote {
			t.Errorf("%s: remote %v, want %v", e.name, got, e.remote)
		}
		if ev.Owner != (Owner{}) {
			t.Errorf("%s: owner %+v, want unknown", e.name, ev.Owner)
		}
		if ev.Counters.BytesAcked != e.acked || ev.Counters.BytesReceived != e.recvd {
			t.Errorf("%s: baseline acked %d received %d, want %d and %d", e.name, ev.Counters.BytesAcked, ev.Counters.BytesReceived, e.acked, e.recvd)
		}
		base[e.name] = ev
	}
	lnInode := inode(t, ln.(*net.TCPListener))
	if ev, ok := found[lnInode]; !ok || ev.Kind != EventListen || ev.LocalPort != server.Port() {
		t.Errorf("listener (inode %d): %+v, want EventListen on port %d", lnInode, ev, server.Port())
	}

	// Again: the listener is reported, the tracked sockets are not.
	for _, ev := range discover() {
		if ev.Kind == EventExisting && (ev.Cookie == base["client"].Cookie || ev.Cookie == base["server"].Cookie) {
			t.Errorf("second Discover reported %+v again", ev)
		}
	}

	err := writeAll(cp.server, fourMiB, func() error {
		return spliceDrain(cp.client.(*net.TCPConn), fourMiB)
	})
	if err != nil {
		t.Fatal(err)
	}
	cc, sc := base["client"].Counters, base["server"].Counters
	want := map[uint64]Counters{
		base["client"].Cookie: {BytesAcked: cc.BytesAcked, BytesReceived: cc.BytesReceived + fourMiB},
		base["server"].Cookie: {BytesAcked: sc.BytesAcked + fourMiB, BytesReceived: sc.BytesReceived},
	}
	seen := waitCounters(t, r.p, want)
	for cookie, w := range want {
		s, ok := seen[cookie]
		if !ok {
			t.Fatalf("cookie %#x not sampled", cookie)
		}
		if c := s.Counters; c.BytesAcked != w.BytesAcked || c.BytesReceived != w.BytesReceived {
			t.Errorf("sample %#x: acked %d received %d, want %d and %d", cookie, c.BytesAcked, c.BytesReceived, w.BytesAcked, w.BytesReceived)
		}
	}
	// Neither connect() nor listen() was seen: the kernel knows no owner
	// (user space finds them through /proc), and sending does not make one.
	for _, name := range []string{"server", "client"} {
		if o := seen[base[name].Cookie].Owner; o != (Owner{}) {
			t.Errorf("%s owner %+v, want unknown", name, o)
		}
	}

	cp.close()
	for _, e := range ends {
		ev := r.wait(t, e.name+" close", onPorts(EventClose, e.local.Port(), e.remote.Port()))
		if ev.Cookie != base[e.name].Cookie {
			t.Errorf("%s close: cookie %#x, discovered %#x", e.name, ev.Cookie, base[e.name].Cookie)
		}
		w := want[ev.Cookie]
		if ev.Counters.BytesAcked != w.BytesAcked || ev.Counters.BytesReceived != w.BytesReceived {
			t.Errorf("%s close: acked %d received %d, want %d and %d", e.name, ev.Counters.BytesAcked, ev.Counters.BytesReceived, w.BytesAcked, w.BytesReceived)
		}
	}
}

// TestPrivilegedPassedDescriptor: a process that writes to a socket it got
// from another one does not become its owner: the socket keeps the owner
// it had, here the process that listened (there is no per-message hook).
func TestPrivilegedPassedDescriptor(t *testing.T) {
	requirePrivileged(t)
	r := openRecorded(t, DefaultConfig())
	me := readSelf(t)
	ln := listen(t, "tcp4", "127.0.0.1:0")
	cp := dialPair(t, ln)
	defer cp.close()
	client, server := addrPort(t, cp.client.LocalAddr()), addrPort(t, cp.server.LocalAddr())
	serverOpen := waitSample(t, r.p, server.Port(), client.Port())
	if serverOpen.Owner != me.owner() {
		t.Errorf("accepted socket's owner %+v, want the listener's %+v", serverOpen.Owner, me.owner())
	}

	f, err := cp.server.(*net.TCPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command("/bin/sh", "-c", "printf hello >&3")
	cmd.ExtraFiles = []*os.File{f}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v: %v: %s", cmd, err, out)
	}
	if _, err := io.ReadFull(cp.client, make([]byte, 5)); err != nil {
		t.Fatal(err)
	}
	seen := waitCounters(t, r.p, map[uint64]Counters{serverOpen.Cookie: {BytesAcked: 5}})
	s, ok := seen[serverOpen.Cookie]
	if !ok {
		t.Fatal("server socket not sampled")
	}
	if s.Owner != me.owner() {
		t.Errorf("owner %+v after %v wrote, want still %+v", s.Owner, cmd, me.owner())
	}
}
