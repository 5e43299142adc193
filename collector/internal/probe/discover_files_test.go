package probe

import (
	"net"
	"net/netip"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// filesIn runs the file walk and keeps what it found in namespace ino.
func filesIn(t *testing.T, p *Probe, ino uint32) []Event {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	evs, err := p.discoverFiles()
	if err != nil {
		t.Fatalf("discoverFiles: %v", err)
	}
	var out []Event
	for _, ev := range evs {
		if ev.NetNS == ino {
			out = append(out, ev)
		}
	}
	return out
}

// TestPrivilegedDiscoverFiles: the iter/task_file walk, which enters no
// namespace, finds a connection and its listener opened in another network
// namespace before the probe was loaded, with this process as the owner
// and the counters at discovery as the baseline; a second walk reports
// none of them again; a connection accepted afterwards from that listener
// has the owner from the listener's storage; the discovered ends are
// sampled with exact bytes from their baseline on.
func TestPrivilegedDiscoverFiles(t *testing.T) {
	requirePrivileged(t)
	me := readSelf(t).owner()
	ns := newNetNS(t)
	// A plain TCP listener: the walk does not see MPTCP ones (Go's default).
	var ln net.Listener
	var cp connPair
	err := ns.do(func() error {
		var lc net.ListenConfig
		lc.SetMultipathTCP(false)
		var err error
		if ln, err = lc.Listen(t.Context(), "tcp4", netip.AddrPortFrom(testAddr, 0).String()); err != nil {
			return err
		}
		cp, err = dialWith(&net.Dialer{}, ln)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	defer cp.close()
	// And a Multipath TCP listener, with a connection accepted from it.
	var mln net.Listener
	var mcp connPair
	err = ns.do(func() error {
		var lc net.ListenConfig
		lc.SetMultipathTCP(true)
		var err error
		if mln, err = lc.Listen(t.Context(), "tcp4", netip.AddrPortFrom(testAddr, 0).String()); err != nil {
			return err
		}
		mcp, err = dialWith(&net.Dialer{}, mln)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer mln.Close()
	defer mcp.close()
	mptcp := protocolOf(t, mln.(*net.TCPListener)) == unix.IPPROTO_MPTCP
	t.Logf("the second listener is MPTCP: %v", mptcp)
	const before = 1000
	cp.exchange(t, before, before)
	client, server := addrPort(t, cp.client.LocalAddr()), addrPort(t, cp.server.LocalAddr())

	r := openRecorded(t, DefaultConfig())
	found := map[uint64]Event{}
	for _, ev := range filesIn(t, r.p, ns.ino) {
		if _, dup := found[ev.Inode]; dup {
			t.Errorf("inode %d reported twice", ev.Inode)
		}
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
		if ev.Owner != me {
			t.Errorf("%s: owner %+v, want %+v", e.name, ev.Owner, me)
		}
		if ev.Counters.BytesAcked != e.acked || ev.Counters.BytesReceived != e.recvd {
			t.Errorf("%s: baseline acked %d received %d, want %d and %d", e.name, ev.Counters.BytesAcked, ev.Counters.BytesReceived, e.acked, e.recvd)
		}
		base[e.name] = ev
	}
	lnInode := inode(t, ln.(*net.TCPListener))
	if ev, ok := found[lnInode]; !ok || ev.Kind != EventListen || ev.LocalPort != server.Port() || ev.Owner != me {
		t.Errorf("listener (inode %d): %+v, want EventListen on port %d owned by %+v", lnInode, ev, server.Port(), me)
	}
	// The MPTCP listener (a plain one where the kernel has no MPTCP) with
	// its owner, and the connection accepted from it (plain TCP: the
	// client did not ask for MPTCP).
	mport := addrPort(t, mln.Addr()).Port()
	if ev, ok := found[inode(t, mln.(*net.TCPListener))]; !ok || ev.Kind != EventListen || ev.LocalPort != mport || ev.Owner != me || ev.Cookie == 0 {
		t.Errorf("listener (MPTCP %v): %+v, want EventListen on port %d owned by %+v", mptcp, ev, mport, me)
	}
	for _, c := range []net.Conn{mcp.client, mcp.server} {
		if ev, ok := found[inode(t, c.(*net.TCPConn))]; !ok || ev.Kind != EventExisting || ev.Owner != me {
			t.Errorf("connection to the MPTCP listener, %v: %+v, want EventExisting owned by %+v", c.LocalAddr(), ev, me)
		}
	}
	if len(found) != 6 {
		t.Errorf("found %d sockets in the namespace, want 6: %+v", len(found), found)
	}

	// Again: everything found has its storage, nothing is reported (but
	// an MPTCP listener, which has none).
	for _, ev := range filesIn(t, r.p, ns.ino) {
		if !mptcp || ev.Kind != EventListen || ev.LocalPort != mport {
			t.Errorf("second walk reported %+v", ev)
		}
	}

	// Accepted from the discovered listener: the owner comes with the clone.
	var cp2 connPair
	if err := ns.do(func() (err error) { cp2, err = dialWith(&net.Dialer{}, ln); return err }); err != nil {
		t.Fatal(err)
	}
	defer cp2.close()
	s := waitSample(t, r.p, server.Port(), addrPort(t, cp2.client.LocalAddr()).Port())
	if s.Owner != me {
		t.Errorf("accepted socket: owner %+v, want the listener's %+v", s.Owner, me)
	}

	const after = 123_457
	cp.exchange(t, after, 2*after)
	cc, sc := base["client"].Counters, base["server"].Counters
	want := map[uint64]Counters{
		base["client"].Cookie: {BytesAcked: cc.BytesAcked + after, BytesReceived: cc.BytesReceived + 2*after},
		base["server"].Cookie: {BytesAcked: sc.BytesAcked + 2*after, BytesReceived: sc.BytesReceived + after},
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
		if s.Owner != me {
			t.Errorf("sample %#x: owner %+v, want %+v", cookie, s.Owner, me)
		}
	}
}

// protocolOf is a socket's protocol (SO_PROTOCOL).
func protocolOf(t *testing.T, c interface {
	SyscallConn() (syscall.RawConn, error)
}) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var proto int
	var serr error
	if err := rc.Control(func(fd uintptr) { proto, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PROTOCOL) }); err != nil || serr != nil {
		t.Fatalf("SO_PROTOCOL: %v %v", err, serr)
	}
	return proto
}

// TestPrivilegedDiscoverFilesNetNS: with Config.NetNS (--netns), the file
// walk reports the sockets of those namespaces only, and leaves the others
// without storage: a later walk without the filter still finds them.
func TestPrivilegedDiscoverFilesNetNS(t *testing.T) {
	requirePrivileged(t)
	in, out := newNetNS(t), newNetNS(t)
	_, cpIn := in.pairIn(t)
	_, cpOut := out.pairIn(t)
	cfg := DefaultConfig()
	cfg.NetNS = []string{in.path}
	r := openRecorded(t, cfg)
	r.p.mu.Lock()
	evs, err := r.p.discoverFiles()
	r.p.mu.Unlock()
	if err != nil {
		t.Fatalf("discoverFiles: %v", err)
	}
	want := map[uint64]bool{inode(t, cpIn.client.(*net.TCPConn)): true, inode(t, cpIn.server.(*net.TCPConn)): true}
	for _, ev := range evs {
		if ev.NetNS != in.ino {
			t.Errorf("reported from namespace %d, want only %d: %+v", ev.NetNS, in.ino, ev)
		}
		delete(want, ev.Inode)
	}
	if len(want) != 0 {
		t.Errorf("sockets of %s not found: inodes %v", in.path, want)
	}
	r.p.netns = nil
	found := 0
	for _, ev := range filesIn(t, r.p, out.ino) {
		if ev.Kind == EventExisting && (ev.Inode == inode(t, cpOut.client.(*net.TCPConn)) || ev.Inode == inode(t, cpOut.server.(*net.TCPConn))) {
			found++
		}
	}
	if found != 2 {
		t.Errorf("unfiltered walk found %d of the other namespace's 2 ends", found)
	}
}
