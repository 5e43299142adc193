// The privileged tests of this package load the real programs into the
// running kernel (root needed; under CI=true they fail instead of
// skipping). WEIR_PROBE_PATH forces the probe path every test's
// DefaultConfig takes: auto (the default), tracepoint, fentry or kprobe
// (refused: see Path). A kernel matrix runs this package's test binary
// once per path the kernel permits, e.g.
//
//	WEIR_PROBE_PATH=fentry ./probe.test -test.run Privileged
//
// TestPrivilegedForcedPath prints what each forced path gives on the
// kernel at hand (the refusal's reason where it cannot run).

package probe

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	if os.Getenv(listenHelperEnv) == "1" {
		listenHelper()
		return
	}
	path, err := PathFromEnv()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	// Every test's DefaultConfig takes the forced path.
	defaultPath = path
	goleak.VerifyTestMain(m)
}

// listenHelperEnv makes the test binary a helper process that calls
// listen() on its descriptor 3, says so, and waits for its stdin to close.
const listenHelperEnv = "WEIR_PROBE_TEST_LISTEN_FD3"

func listenHelper() {
	if err := unix.Listen(3, 64); err != nil {
		fmt.Fprintln(os.Stderr, "listen on descriptor 3:", err)
		os.Exit(1)
	}
	fmt.Println("listening")
	_, _ = io.Copy(io.Discard, os.Stdin)
	os.Exit(0)
}

// requirePrivileged skips without root, or fails when CI=true.
func requirePrivileged(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("needs root to load BPF programs (CI=true: not skipping)")
	}
	t.Skip("needs root to load BPF programs")
}

// recorder collects every event of a probe in the background.
type recorder struct {
	p    *Probe
	done chan struct{}

	mu     sync.Mutex
	events []Event
	err    error
	added  chan struct{} // closed and replaced whenever events grows
}

// openRecorded opens a probe and records its events until the test ends.
func openRecorded(t *testing.T, cfg Config) *recorder {
	t.Helper()
	p, err := Open(cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	r := &recorder{p: p, done: make(chan struct{}), added: make(chan struct{})}
	go r.run()
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		<-r.done
		if r.err != nil && !errors.Is(r.err, ErrClosed) {
			t.Errorf("ReadEvent: %v", r.err)
		}
	})
	return r
}

func (r *recorder) run() {
	defer close(r.done)
	for {
		ev, err := r.p.ReadEvent()
		r.mu.Lock()
		if err != nil {
			r.err = err
			r.mu.Unlock()
			return
		}
		r.events = append(r.events, ev)
		close(r.added)
		r.added = make(chan struct{})
		r.mu.Unlock()
	}
}

// wait returns the first recorded event that matches, waiting up to 10 s.
func (r *recorder) wait(t *testing.T, what string, match func(Event) bool) Event {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		r.mu.Lock()
		for _, ev := range r.events {
			if match(ev) {
				r.mu.Unlock()
				return ev
			}
		}
		added := r.added
		r.mu.Unlock()
		select {
		case <-added:
		case <-deadline:
			t.Fatalf("no %s event within 10s", what)
		}
	}
}

// onPorts matches an event of kind seen from the local port lport towards rport.
func onPorts(kind EventKind, lport, rport uint16) func(Event) bool {
	return func(ev Event) bool {
		return ev.Kind == kind && ev.LocalPort == lport && ev.RemotePort == rport
	}
}

// self is this process as the probe should see it.
type self struct {
	pid       uint32
	comm      string
	startTime uint64 // /proc/self/stat field 22
	cgroupID  uint64 // inode of the cgroup v2 directory
	netns     uint32
}

func readSelf(t *testing.T) self {
	t.Helper()
	b, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		t.Fatal(err)
	}
	s := self{pid: uint32(os.Getpid()), comm: strings.TrimSpace(string(b))}

	stat, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the comm, which ends with the last ')': field 3 is the first.
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	if s.startTime, err = strconv.ParseUint(fields[22-3], 10, 64); err != nil {
		t.Fatalf("start time in /proc/self/stat: %v", err)
	}

	cg, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(cg), "\n") {
		path, ok := strings.CutPrefix(line, "0::")
		if !ok {
			continue
		}
		for _, root := range []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup"} {
			var fs unix.Statfs_t
			if unix.Statfs(root, &fs) != nil || fs.Type != unix.CGROUP2_SUPER_MAGIC {
				continue
			}
			var st unix.Stat_t
			if err := unix.Stat(filepath.Join(root, path), &st); err != nil {
				t.Fatal(err)
			}
			s.cgroupID = st.Ino
		}
	}
	if s.cgroupID == 0 {
		t.Fatal("no cgroup v2 directory for this process")
	}

	var st syscall.Stat_t
	if err := syscall.Stat("/proc/self/ns/net", &st); err != nil {
		t.Fatal(err)
	}
	s.netns = uint32(st.Ino)
	return s
}

func (s self) owner() Owner {
	return Owner{PID: s.pid, StartTime: s.startTime, CgroupID: s.cgroupID, Comm: s.comm}
}

func addrPort(t *testing.T, a net.Addr) netip.AddrPort {
	t.Helper()
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		t.Fatal(err)
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// connPair is a connected client and the server socket accepted for it.
type connPair struct {
	client, server net.Conn
}

func (cp connPair) close() {
	cp.client.Close()
	cp.server.Close()
}

func dialPair(t testing.TB, ln net.Listener) connPair {
	t.Helper()
	cp, err := dialWith(&net.Dialer{}, ln)
	if err != nil {
		t.Fatal(err)
	}
	return cp
}

func dialWith(d *net.Dialer, ln net.Listener) (connPair, error) {
	type accepted struct {
		c   net.Conn
		err error
	}
	ch := make(chan accepted, 1)
	go func() {
		c, err := ln.Accept()
		ch <- accepted{c, err}
	}()
	client, err := d.Dial(ln.Addr().Network(), ln.Addr().String())
	if err != nil {
		ln.Close() // unblocks Accept
		<-ch
		return connPair{}, fmt.Errorf("dial: %w", err)
	}
	a := <-ch
	if a.err != nil {
		client.Close()
		return connPair{}, fmt.Errorf("accept: %w", a.err)
	}
	return connPair{client: client, server: a.c}, nil
}

// exchange sends up bytes from client to server and then down bytes back.
func (cp connPair) exchange(t testing.TB, up, down int64) {
	t.Helper()
	if err := send(cp.client, cp.server, up); err != nil {
		t.Fatalf("up: %v", err)
	}
	if err := send(cp.server, cp.client, down); err != nil {
		t.Fatalf("down: %v", err)
	}
}

// send writes n bytes to w and reads them from r.
func send(w, r net.Conn, n int64) error {
	errs := make(chan error, 1)
	go func() {
		_, err := io.CopyN(w, zeros{}, n)
		errs <- err
	}()
	if got, err := io.CopyN(io.Discard, r, n); err != nil {
		return fmt.Errorf("read %d of %d: %w", got, n, err)
	}
	return <-errs
}

type zeros struct{}

func (zeros) Read(b []byte) (int, error) {
	clear(b)
	return len(b), nil
}

func listen(t *testing.T, network, address string) net.Listener {
	t.Helper()
	ln, err := net.Listen(network, address)
	if err != nil {
		t.Fatalf("listen %s %s: %v", network, address, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

var loopbacks = []struct {
	name, network, address string
}{
	{"ipv4", "tcp4", "127.0.0.1:0"},
	{"ipv6", "tcp6", "[::1]:0"},
}

// waitSample polls Samples until a socket seen from the local port lport
// towards rport is reported, for up to 10 s, and returns its sample.
func waitSample(t *testing.T, p *Probe, lport, rport uint16) Sample {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var found []Sample
		if err := p.Samples(func(s Sample) {
			if s.LocalPort == lport && s.RemotePort == rport {
				found = append(found, s)
			}
		}); err != nil {
			t.Fatalf("Samples: %v", err)
		}
		switch {
		case len(found) == 1:
			return found[0]
		case len(found) > 1:
			t.Fatalf("%d samples from port %d to %d, want one", len(found), lport, rport)
		case time.Now().After(deadline):
			t.Fatalf("no sample from port %d to %d within 10s", lport, rport)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// samples returns the samples of the given cookies.
func samples(t *testing.T, p *Probe, cookies ...uint64) map[uint64]Sample {
	t.Helper()
	want := map[uint64]bool{}
	for _, c := range cookies {
		want[c] = true
	}
	seen := map[uint64]Sample{}
	if err := p.Samples(func(s Sample) {
		if want[s.Cookie] {
			if _, dup := seen[s.Cookie]; dup {
				t.Errorf("cookie %#x sampled twice", s.Cookie)
			}
			seen[s.Cookie] = s
		}
	}); err != nil {
		t.Fatalf("Samples: %v", err)
	}
	return seen
}

// waitCounters polls Samples until each cookie has the wanted bytes, or 2 s
// have passed (only a delayed ACK can hold the counters back); it returns
// the last samples.
func waitCounters(t *testing.T, p *Probe, want map[uint64]Counters) map[uint64]Sample {
	t.Helper()
	cookies := make([]uint64, 0, len(want))
	for c := range want {
		cookies = append(cookies, c)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		seen := samples(t, p, cookies...)
		exact := len(seen) == len(want)
		for c, w := range want {
			got := seen[c].Counters
			exact = exact && got.BytesAcked == w.BytesAcked && got.BytesReceived == w.BytesReceived
		}
		if exact || time.Now().After(deadline) {
			return seen
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestPrivilegedLoopbackCounts(t *testing.T) {
	requirePrivileged(t)
	const up, down = 1_000_003, 250_001
	r := openRecorded(t, DefaultConfig())
	me := readSelf(t)

	for _, tc := range loopbacks {
		t.Run(tc.name, func(t *testing.T) {
			ln := listen(t, tc.network, tc.address)
			cp := dialPair(t, ln)
			client, server := addrPort(t, cp.client.LocalAddr()), addrPort(t, cp.server.LocalAddr())
			if remote := addrPort(t, cp.server.RemoteAddr()); remote != client {
				t.Fatalf("server sees %v, client is %v", remote, client)
			}

			// No open event: the first walk reports the new sockets.
			clientOpen := waitSample(t, r.p, client.Port(), server.Port())
			serverOpen := waitSample(t, r.p, server.Port(), client.Port())
			for _, c := range []struct {
				name       string
				ev         Sample
				role       Role
				local, rem netip.AddrPort
			}{
				{"client", clientOpen, RoleClient, client, server},
				{"server", serverOpen, RoleServer, server, client},
			} {
				ev := c.ev
				if ev.Role != c.role {
					t.Errorf("%s open: role %v, want %v", c.name, ev.Role, c.role)
				}
				if got := netip.AddrPortFrom(ev.LocalAddr, ev.LocalPort); got != c.local {
					t.Errorf("%s open: local %v, want %v", c.name, got, c.local)
				}
				if got := netip.AddrPortFrom(ev.RemoteAddr, ev.RemotePort); got != c.rem {
					t.Errorf("%s open: remote %v, want %v", c.name, got, c.rem)
				}
				if ev.NetNS != me.netns {
					t.Errorf("%s open: netns %d, want %d", c.name, ev.NetNS, me.netns)
				}
				if ev.Cookie == 0 {
					t.Errorf("%s open: cookie 0", c.name)
				}
				if cs := ev.Counters; cs.SRTT <= 0 || cs.SRTT > time.Second {
					t.Errorf("%s open: srtt %v, want a loopback round trip", c.name, cs.SRTT)
				}
				if cs := ev.Counters; (cs != Counters{SRTT: cs.SRTT}) {
					t.Errorf("%s open: counters %+v, want zero (the handshake is the baseline)", c.name, ev.Counters)
				}
			}
			if clientOpen.Cookie == serverOpen.Cookie {
				t.Errorf("client and server share cookie %#x", clientOpen.Cookie)
			}
			// The client's owner is taken in connect(); the accepted
			// socket's is its listener's, copied at the clone, before any
			// send or receive.
			if clientOpen.Owner != me.owner() {
				t.Errorf("client open: owner %+v, want %+v", clientOpen.Owner, me.owner())
			}
			if serverOpen.Owner != me.owner() {
				t.Errorf("server open: owner %+v, want the listener's %+v", serverOpen.Owner, me.owner())
			}

			cp.exchange(t, up, down)

			// Both sockets are sampled, owned by this process. The counters are read at poll
			// time, so they reach the exact totals even for the server,
			// whose last send returned before it was acked.
			want := map[uint64]Counters{
				clientOpen.Cookie: {BytesAcked: up, BytesReceived: down},
				serverOpen.Cookie: {BytesAcked: down, BytesReceived: up},
			}
			seen := waitCounters(t, r.p, want)
			for cookie, w := range want {
				s, ok := seen[cookie]
				if !ok {
					t.Fatalf("cookie %#x not in Samples", cookie)
				}
				if s.Owner != me.owner() {
					t.Errorf("sample %#x: owner %+v, want %+v", cookie, s.Owner, me.owner())
				}
				if c := s.Counters; c.BytesAcked != w.BytesAcked || c.BytesReceived != w.BytesReceived {
					t.Errorf("sample %#x: acked %d received %d, want %d and %d", cookie, c.BytesAcked, c.BytesReceived, w.BytesAcked, w.BytesReceived)
				}
			}

			cp.close()
			clientClose := r.wait(t, "client close", onPorts(EventClose, client.Port(), server.Port()))
			serverClose := r.wait(t, "server close", onPorts(EventClose, server.Port(), client.Port()))
			for _, c := range []struct {
				name         string
				ev           Event
				open         Sample
				acked, recvd uint64
			}{
				{"client", clientClose, clientOpen, up, down},
				{"server", serverClose, serverOpen, down, up},
			} {
				ev := c.ev
				if ev.Endpoint != c.open.Endpoint {
					t.Errorf("%s close: endpoint %+v, first sample had %+v", c.name, ev.Endpoint, c.open.Endpoint)
				}
				if ev.Counters.BytesAcked != c.acked || ev.Counters.BytesReceived != c.recvd {
					t.Errorf("%s close: acked %d received %d, want %d and %d", c.name,
						ev.Counters.BytesAcked, ev.Counters.BytesReceived, c.acked, c.recvd)
				}
				if ev.Counters.SegsDelivered == 0 || ev.Counters.DataSegsIn == 0 {
					t.Errorf("%s close: segments %+v, want both > 0", c.name, ev.Counters)
				}
				if ev.Owner != me.owner() {
					t.Errorf("%s close: owner %+v, want %+v", c.name, ev.Owner, me.owner())
				}
			}
			// Closed sockets are not sampled any more.
			if seen := samples(t, r.p, clientOpen.Cookie, serverOpen.Cookie); len(seen) != 0 {
				t.Errorf("closed sockets still sampled: %+v", seen)
			}
			t.Logf("client close %+v", clientClose.Counters)
			t.Logf("server close %+v", serverClose.Counters)
		})
	}
}

// TestPrivilegedSync: events below the wakeup threshold wait in the ring for
// the read timer, but after Sync every event submitted before it (here the
// listen event, sent in the listen() call) has been returned by ReadEvent.
func TestPrivilegedSync(t *testing.T) {
	requirePrivileged(t)
	r := openRecorded(t, DefaultConfig())
	for i := range 3 {
		ln := listen(t, "tcp4", "127.0.0.1:0")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := r.p.Sync(ctx)
		cancel()
		if err != nil {
			t.Fatalf("round %d: Sync: %v", i, err)
		}
		port := addrPort(t, ln.Addr()).Port()
		r.mu.Lock()
		var listens int
		for _, ev := range r.events {
			if ev.Kind == EventListen && ev.LocalPort == port {
				listens++
			}
		}
		r.mu.Unlock()
		if listens != 1 {
			t.Errorf("round %d: %d listen events of port %d when Sync returned, want 1", i, listens, port)
		}
		ln.Close()
	}
	if err := r.p.Close(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.p.Sync(ctx); err == nil {
		t.Error("Sync after Close returned nil")
	}
}

func TestPrivilegedListenEvent(t *testing.T) {
	requirePrivileged(t)
	r := openRecorded(t, DefaultConfig())
	me := readSelf(t)

	for _, tc := range loopbacks {
		t.Run(tc.name, func(t *testing.T) {
			ln := listen(t, tc.network, tc.address)
			local := addrPort(t, ln.Addr())
			ev := r.wait(t, "listen", func(ev Event) bool {
				return ev.Kind == EventListen && ev.LocalPort == local.Port() && ev.LocalAddr == local.Addr()
			})
			if ev.Owner != me.owner() {
				t.Errorf("owner %+v, want %+v", ev.Owner, me.owner())
			}
			if ev.NetNS != me.netns {
				t.Errorf("netns %d, want %d", ev.NetNS, me.netns)
			}
			if ev.RemotePort != 0 || !ev.RemoteAddr.IsUnspecified() {
				t.Errorf("remote %v:%d, want unspecified", ev.RemoteAddr, ev.RemotePort)
			}
			if ev.Cookie == 0 {
				t.Error("cookie 0")
			}
			// A listener is not a connection: it is never sampled.
			if seen := samples(t, r.p, ev.Cookie); len(seen) != 0 {
				t.Errorf("listening socket sampled: %+v", seen)
			}
		})
	}
}

// TestPrivilegedAcceptedOwner: an accepted socket's owner is the process
// that called listen() on its listening socket, copied by the kernel from
// the listener's storage into the child (BPF_F_CLONE), before and without
// any send or receive: here another process listens on a socket this one
// created, and this one accepts and does all the I/O.
func TestPrivilegedAcceptedOwner(t *testing.T) {
	requirePrivileged(t)
	r := openRecorded(t, DefaultConfig())
	me := readSelf(t)
	f := boundSocket(t, 0, false)
	helper := listenIn(t, r, f)
	ln, err := net.FileListener(f)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	checkAcceptedOwner(t, r, ln, helper, me)
}

// TestPrivilegedAcceptedOwnerReuseport: two processes listen on one port
// with SO_REUSEPORT, each on its own socket; each accepted socket's owner
// is the process that listened on the socket it was accepted from.
func TestPrivilegedAcceptedOwnerReuseport(t *testing.T) {
	requirePrivileged(t)
	r := openRecorded(t, DefaultConfig())
	me := readSelf(t)
	f1 := boundSocket(t, 0, true)
	sa, err := unix.Getsockname(int(f1.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	f2 := boundSocket(t, sa.(*unix.SockaddrInet4).Port, true)
	for _, f := range []*os.File{f1, f2} {
		helper := listenIn(t, r, f)
		ln, err := net.FileListener(f)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		// The kernel spreads connections over the two listeners by hash:
		// accept from this one what it gets, one connection at a time.
		checkAcceptedOwner(t, r, ln, helper, me)
	}
}

// boundSocket returns a TCP socket bound to 127.0.0.1:port (0: any free
// port), with SO_REUSEPORT when reuse.
func boundSocket(t *testing.T, port int, reuse bool) *os.File {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if reuse {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			unix.Close(fd)
			t.Fatal(err)
		}
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: port}); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "listener")
	t.Cleanup(func() { f.Close() })
	return f
}

// listenIn has a helper process (this test binary) call listen() on f,
// checks the listen event's owner, and returns the helper as an owner. The
// helper lives until the test ends.
func listenIn(t *testing.T, r *recorder, f *os.File) Owner {
	t.Helper()
	me := readSelf(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), listenHelperEnv+"=1")
	cmd.ExtraFiles = []*os.File{f}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			t.Errorf("listen helper: %v", err)
		}
	})
	line := make([]byte, len("listening\n"))
	if _, err := io.ReadFull(stdout, line); err != nil || string(line) != "listening\n" {
		t.Fatalf("listen helper said %q: %v", line, err)
	}
	helper := Owner{PID: uint32(cmd.Process.Pid), StartTime: startTimeOf(t, cmd.Process.Pid), CgroupID: me.cgroupID, Comm: me.comm}
	ev := r.wait(t, "listen", func(ev Event) bool { return ev.Kind == EventListen && ev.Owner.PID == helper.PID })
	if ev.Owner != helper {
		t.Errorf("listen event owner %+v, want the helper %+v", ev.Owner, helper)
	}
	return helper
}

// checkAcceptedOwner dials ln until it accepts a connection (with
// SO_REUSEPORT another listener may get it), has this process exchange
// data on both ends, and checks that the accepted socket's owner is want
// and the client's is this process.
func checkAcceptedOwner(t *testing.T, r *recorder, ln net.Listener, want Owner, me self) {
	t.Helper()
	var cp connPair
	for range 64 {
		c, err := net.DialTimeout("tcp4", ln.Addr().String(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		accepted := make(chan net.Conn, 1)
		go func() {
			if err := ln.(*net.TCPListener).SetDeadline(time.Now().Add(200 * time.Millisecond)); err != nil {
				accepted <- nil
				return
			}
			s, err := ln.Accept()
			if err != nil {
				s = nil
			}
			accepted <- s
		}()
		if s := <-accepted; s != nil {
			cp = connPair{client: c, server: s}
			break
		}
		c.Close() // the other listener's: it closes with it
	}
	if cp.client == nil {
		t.Fatal("no connection reached this listener in 64 tries")
	}
	defer cp.close()
	cp.exchange(t, 1000, 1000)
	client, server := addrPort(t, cp.client.LocalAddr()), addrPort(t, cp.server.LocalAddr())
	seen := waitCounters(t, r.p, map[uint64]Counters{waitSample(t, r.p, server.Port(), client.Port()).Cookie: {BytesAcked: 1000, BytesReceived: 1000}})
	for _, s := range seen {
		if s.Role != RoleServer {
			t.Errorf("role %v, want server", s.Role)
		}
		if s.Owner != want {
			t.Errorf("accepted socket's owner %+v, want the process that listened %+v (this one: %+v)", s.Owner, want, me.owner())
		}
	}
	if s := waitSample(t, r.p, client.Port(), server.Port()); s.Owner != me.owner() {
		t.Errorf("client's owner %+v, want %+v", s.Owner, me.owner())
	}
}

// startTimeOf reads field 22 of /proc/PID/stat.
func startTimeOf(t *testing.T, pid int) uint64 {
	t.Helper()
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	v, err := strconv.ParseUint(fields[22-3], 10, 64)
	if err != nil {
		t.Fatalf("start time in /proc/%d/stat: %v", pid, err)
	}
	return v
}

// TestPrivilegedCookies: two connections, one after the other, on the same
// 4-tuple are two sockets with two cookies.
func TestPrivilegedCookies(t *testing.T) {
	requirePrivileged(t)
	r := openRecorded(t, DefaultConfig())
	ln := listen(t, "tcp4", "127.0.0.1:0")
	server := addrPort(t, ln.Addr())

	// A free local port for the client, reused by both connections.
	probe, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	local := probe.Addr().(*net.TCPAddr)
	probe.Close()
	d := &net.Dialer{
		LocalAddr: local,
		Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
			})
			return errors.Join(err, serr)
		},
	}

	var cookies []uint64
	for i := range 2 {
		cp, err := dialWith(d, ln)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		cp.exchange(t, 100, 100)
		if got := addrPort(t, cp.client.LocalAddr()).Port(); got != uint16(local.Port) {
			t.Fatalf("connection %d from port %d, want %d", i, got, local.Port)
		}
		// A reset leaves no TIME_WAIT on either side, so the 4-tuple is free again.
		if err := cp.client.(*net.TCPConn).SetLinger(0); err != nil {
			t.Fatal(err)
		}
		cp.close()
		ev := r.wait(t, "client close", func(ev Event) bool {
			return onPorts(EventClose, uint16(local.Port), server.Port())(ev) && !contains(cookies, ev.Cookie)
		})
		cookies = append(cookies, ev.Cookie)
	}
	if cookies[0] == cookies[1] || cookies[0] == 0 {
		t.Errorf("cookies %#x, want two different ones", cookies)
	}
}

// TestPrivilegedShortConnection: a connection established and closed
// between two walks has no event but its close, which carries everything:
// endpoint, role, owner and exact final counters. No walk reports it.
func TestPrivilegedShortConnection(t *testing.T) {
	requirePrivileged(t)
	const up, down = 70_001, 30_003
	r := openRecorded(t, DefaultConfig())
	me := readSelf(t)
	ln := listen(t, "tcp4", "127.0.0.1:0")
	if err := r.p.Samples(func(Sample) {}); err != nil {
		t.Fatal(err)
	}
	cp := dialPair(t, ln)
	client, server := addrPort(t, cp.client.LocalAddr()), addrPort(t, cp.server.LocalAddr())
	cp.exchange(t, up, down)
	cp.close()
	clientClose := r.wait(t, "client close", onPorts(EventClose, client.Port(), server.Port()))
	serverClose := r.wait(t, "server close", onPorts(EventClose, server.Port(), client.Port()))
	for _, c := range []struct {
		name         string
		ev           Event
		role         Role
		local, rem   netip.AddrPort
		acked, recvd uint64
	}{
		{"client", clientClose, RoleClient, client, server, up, down},
		{"server", serverClose, RoleServer, server, client, down, up},
	} {
		ev := c.ev
		if ev.Role != c.role || ev.Cookie == 0 || ev.NetNS != me.netns {
			t.Errorf("%s close: %+v, want role %v, a cookie and netns %d", c.name, ev.Endpoint, c.role, me.netns)
		}
		if netip.AddrPortFrom(ev.LocalAddr, ev.LocalPort) != c.local || netip.AddrPortFrom(ev.RemoteAddr, ev.RemotePort) != c.rem {
			t.Errorf("%s close: %v -> %v, want %v -> %v", c.name, ev.LocalAddr, ev.RemoteAddr, c.local, c.rem)
		}
		if ev.Counters.BytesAcked != c.acked || ev.Counters.BytesReceived != c.recvd {
			t.Errorf("%s close: acked %d received %d, want %d and %d", c.name, ev.Counters.BytesAcked, ev.Counters.BytesReceived, c.acked, c.recvd)
		}
		if ev.Counters.SegsDelivered == 0 || ev.Counters.DataSegsIn == 0 {
			t.Errorf("%s close: segments %+v, want both > 0", c.name, ev.Counters)
		}
		if ev.Owner != me.owner() {
			t.Errorf("%s close: owner %+v, want %+v", c.name, ev.Owner, me.owner())
		}
	}
	r.mu.Lock()
	for _, ev := range r.events {
		if (ev.LocalPort == client.Port() || ev.RemotePort == client.Port()) && ev.Kind != EventClose {
			t.Errorf("event %+v of the connection, want only its closes", ev)
		}
	}
	r.mu.Unlock()
	if seen := samples(t, r.p, clientClose.Cookie, serverClose.Cookie); len(seen) != 0 {
		t.Errorf("closed sockets sampled: %+v", seen)
	}
}

func contains(s []uint64, x uint64) bool {
	for _, y := range s {
		if x == y {
			return true
		}
	}
	return false
}

func TestPrivilegedRefused(t *testing.T) {
	requirePrivileged(t)
	r := openRecorded(t, DefaultConfig())

	// A port nobody listens on: reserve it, then close the listener.
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := addrPort(t, ln.Addr()).Port()
	ln.Close()
	if c, err := net.Dial("tcp4", ln.Addr().String()); err == nil {
		c.Close()
		t.Fatalf("port %d was taken again before the refused connect", refused)
	}

	// A connection that closes afterwards marks how far the ring has been read.
	ln2 := listen(t, "tcp4", "127.0.0.1:0")
	cp := dialPair(t, ln2)
	client, server := addrPort(t, cp.client.LocalAddr()), addrPort(t, cp.server.LocalAddr())
	cp.close()
	r.wait(t, "client close", onPorts(EventClose, client.Port(), server.Port()))

	r.mu.Lock()
	defer r.mu.Unlock()
	failed := 0
	for _, ev := range r.events {
		if ev.Kind == EventListen || (ev.RemotePort != refused && ev.LocalPort != refused) {
			continue
		}
		if ev.Kind != EventFailed {
			t.Errorf("event other than failed for a connection that was never established: %+v", ev)
			continue
		}
		failed++
		if ev.Reason != FailRefused || ev.Role != RoleClient || ev.RemotePort != refused || ev.Owner.PID != uint32(os.Getpid()) {
			t.Errorf("failed connect: %+v, want refused, client, remote port %d, owner %d", ev, refused, os.Getpid())
		}
		if ev.Counters.ResetsRecv != 1 {
			t.Errorf("failed connect: %d resets received, want 1", ev.Counters.ResetsRecv)
		}
	}
	if failed != 1 {
		t.Errorf("%d failed-connect events, want 1", failed)
	}
}

func TestPrivilegedRingFull(t *testing.T) {
	requirePrivileged(t)
	p, err := Open(Config{RingBytes: uint32(os.Getpagesize()), SampleRingBytes: defaultSampleRingBytes})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer p.Close()

	// Nobody reads the ring: one page holds a few dozen events.
	ln := listen(t, "tcp4", "127.0.0.1:0")
	for range 100 {
		dialPair(t, ln).close()
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		d, err := p.Drops()
		if err != nil {
			t.Fatalf("Drops: %v", err)
		}
		if d.RingFull > 0 {
			t.Logf("drops %+v", d)
			if d.StorageFull != 0 {
				t.Errorf("StorageFull %d, want 0", d.StorageFull)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Drops %+v: want RingFull > 0", d)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The events that fit are still readable.
	if _, err := p.ReadEvent(); err != nil {
		t.Fatalf("ReadEvent: %v", err)
	}
}

func TestPrivilegedClose(t *testing.T) {
	requirePrivileged(t)
	p, err := Open(udpConfig())
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	blocked := make(chan error, 1)
	go func() {
		for {
			if _, err := p.ReadEvent(); err != nil {
				blocked <- err
				return
			}
		}
	}()
	time.Sleep(50 * time.Millisecond)
	for i := range 2 {
		if err := p.Close(); err != nil {
			t.Errorf("Close #%d: %v", i+1, err)
		}
	}
	select {
	case err := <-blocked:
		if !errors.Is(err, ErrClosed) {
			t.Errorf("pending ReadEvent: %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not unblock ReadEvent")
	}
	if _, err := p.ReadEvent(); !errors.Is(err, ErrClosed) {
		t.Errorf("ReadEvent after Close: %v, want ErrClosed", err)
	}
	if err := p.Samples(func(Sample) {}); !errors.Is(err, ErrClosed) {
		t.Errorf("Samples after Close: %v, want ErrClosed", err)
	}
	if err := p.Discover(func(Event) {}); !errors.Is(err, ErrClosed) {
		t.Errorf("Discover after Close: %v, want ErrClosed", err)
	}
	if _, err := p.Drops(); !errors.Is(err, ErrClosed) {
		t.Errorf("Drops after Close: %v, want ErrClosed", err)
	}
	if _, err := p.ReadUDP(); !errors.Is(err, ErrClosed) {
		t.Errorf("ReadUDP after Close: %v, want ErrClosed", err)
	}
	if _, err := p.SampleUDP(func(UDPRecord) {}); !errors.Is(err, ErrClosed) {
		t.Errorf("SampleUDP after Close: %v, want ErrClosed", err)
	}
	if _, err := p.ProgramStats(); !errors.Is(err, ErrClosed) {
		t.Errorf("ProgramStats after Close: %v, want ErrClosed", err)
	}
}

func TestPrivilegedProgramStats(t *testing.T) {
	requirePrivileged(t)
	cfg := udpConfig()
	cfg.Stats = true
	r := openRecorded(t, cfg)
	ln := listen(t, "tcp4", "127.0.0.1:0")
	for range 20 {
		cp := dialPair(t, ln)
		cp.exchange(t, 10_000, 10_000)
		cp.close()
	}
	// Datagrams too: on the fentry path only UDP runs the size programs.
	srv, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cli, err := net.Dial("udp4", srv.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	for range 5 {
		if _, err := cli.Write(make([]byte, 100)); err != nil {
			t.Fatal(err)
		}
		if _, _, err := srv.ReadFrom(make([]byte, 200)); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.p.Samples(func(Sample) {}); err != nil {
		t.Fatal(err)
	}
	stats, err := r.p.ProgramStats()
	if err != nil {
		t.Fatalf("ProgramStats: %v", err)
	}
	names := map[string]ProgramStats{}
	for _, s := range stats {
		names[s.Name] = s
		if s.Runs > 0 {
			t.Logf("%-20s %8d runs %6d ns/run", s.Name, s.Runs, s.RunTime.Nanoseconds()/int64(s.Runs))
		}
	}
	// The UDP programs' send and receive hooks run for TCP messages too
	// (on the tracepoint path); the fexit ones only for UDP.
	sizes := []string{"sock_send_length", "sock_recv_length"}
	if r.p.udp != nil && len(r.p.udp.objs.sizes) == 4 {
		// fexit: the IPv4 send and receive programs.
		sizes = []string{r.p.udp.objs.sizes[0].name, r.p.udp.objs.sizes[2].name}
	}
	for _, name := range append([]string{r.p.objs.stateName, "sample_sockets"}, sizes...) {
		if s, ok := names[name]; !ok || s.Runs == 0 || s.RunTime == 0 {
			t.Errorf("%s: %+v, want runs and run time", name, s)
		}
	}
	if _, ok := names["discover_sockets"]; !ok {
		t.Error("discover_sockets missing")
	}
}

func TestCheck(t *testing.T) {
	requirePrivileged(t)
	if err := Check(); err != nil {
		t.Fatalf("Check: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	page := uint32(os.Getpagesize())
	for _, tc := range []struct {
		name string
		cfg  Config
		flag string // in the error, "" for valid
	}{
		{"default", DefaultConfig(), ""},
		{"one page rings", Config{RingBytes: page, SampleRingBytes: page}, ""},
		{"ring zero", Config{RingBytes: 0, SampleRingBytes: page}, "--ring-bytes"},
		{"ring not power of two", Config{RingBytes: 3 * page, SampleRingBytes: page}, "--ring-bytes"},
		{"ring below a page", Config{RingBytes: page / 2, SampleRingBytes: page}, "--ring-bytes"},
		{"sample ring zero", Config{RingBytes: page, SampleRingBytes: 0}, "--sample-ring-bytes"},
		{"sample ring not power of two", Config{RingBytes: page, SampleRingBytes: 3 * page}, "--sample-ring-bytes"},
		{"sample ring below a page", Config{RingBytes: page, SampleRingBytes: page / 2}, "--sample-ring-bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.flag == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.flag) {
				t.Fatalf("Validate: %v, want an error naming %s", err, tc.flag)
			}
		})
	}
}

// BenchmarkSamples polls 1,000 established loopback connections (2,000
// sockets) that have carried traffic.
func BenchmarkSamples(b *testing.B) {
	requirePrivileged(b)
	p, err := Open(DefaultConfig())
	if err != nil {
		b.Fatalf("Open: %v", err)
	}
	defer p.Close()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	const conns = 1000
	for range conns {
		cp := dialPair(b, ln)
		defer cp.close()
		cp.exchange(b, 1000, 1000)
	}
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		n = 0
		if err := p.Samples(func(Sample) { n++ }); err != nil {
			b.Fatal(err)
		}
		if n < 2*conns {
			b.Fatalf("%d samples, want at least %d", n, 2*conns)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/socket")
}
