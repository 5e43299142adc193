package probe

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
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

// selfComm is what `ps -o comm` shows for this process.
func selfComm(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// selfNetNS is the inode of this process's network namespace.
func selfNetNS(t *testing.T) uint32 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/self/ns/net", &st); err != nil {
		t.Fatal(err)
	}
	return uint32(st.Ino)
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

func dialPair(t *testing.T, ln net.Listener) connPair {
	t.Helper()
	type accepted struct {
		c   net.Conn
		err error
	}
	ch := make(chan accepted, 1)
	go func() {
		c, err := ln.Accept()
		ch <- accepted{c, err}
	}()
	client, err := net.Dial(ln.Addr().Network(), ln.Addr().String())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	a := <-ch
	if a.err != nil {
		client.Close()
		t.Fatalf("accept: %v", a.err)
	}
	return connPair{client: client, server: a.c}
}

// exchange sends up bytes from client to server and then down bytes back.
func (cp connPair) exchange(t *testing.T, up, down int64) {
	t.Helper()
	errs := make(chan error, 2)
	go func() {
		_, err := io.CopyN(cp.client, zeros{}, up)
		errs <- err
	}()
	if n, err := io.CopyN(io.Discard, cp.server, up); err != nil {
		t.Fatalf("server read %d of %d: %v", n, up, err)
	}
	if err := <-errs; err != nil {
		t.Fatalf("client write: %v", err)
	}
	go func() {
		_, err := io.CopyN(cp.server, zeros{}, down)
		errs <- err
	}()
	if n, err := io.CopyN(io.Discard, cp.client, down); err != nil {
		t.Fatalf("client read %d of %d: %v", n, down, err)
	}
	if err := <-errs; err != nil {
		t.Fatalf("server write: %v", err)
	}
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

func TestPrivilegedLoopbackCounts(t *testing.T) {
	requirePrivileged(t)
	const up, down = 1_000_003, 250_001
	r := openRecorded(t, DefaultConfig())
	comm, netns := selfComm(t), selfNetNS(t)

	for _, tc := range loopbacks {
		t.Run(tc.name, func(t *testing.T) {
			ln := listen(t, tc.network, tc.address)
			cp := dialPair(t, ln)
			client, server := addrPort(t, cp.client.LocalAddr()), addrPort(t, cp.server.LocalAddr())
			remote := addrPort(t, cp.server.RemoteAddr())
			if remote != client {
				t.Fatalf("server sees %v, client is %v", remote, client)
			}

			clientOpen := r.wait(t, "client open", onPorts(EventOpen, client.Port(), server.Port()))
			serverOpen := r.wait(t, "server open", onPorts(EventOpen, server.Port(), client.Port()))
			for _, c := range []struct {
				name       string
				ev         Event
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
				if ev.NetNS == 0 || ev.NetNS != netns {
					t.Errorf("%s open: netns %d, want %d", c.name, ev.NetNS, netns)
				}
				if ev.Sock == 0 {
					t.Errorf("%s open: sock 0", c.name)
				}
			}
			if clientOpen.Owner.PID != uint32(os.Getpid()) || clientOpen.Owner.Comm != comm {
				t.Errorf("client open: owner %+v, want pid %d comm %q", clientOpen.Owner, os.Getpid(), comm)
			}
			if serverOpen.Owner.PID != 0 {
				t.Errorf("server open: owner %+v, want unknown (accepted in softirq)", serverOpen.Owner)
			}

			cp.exchange(t, up, down)

			// Both sockets are in the map, owned by this process. Samples
			// refreshes the counters first, so they reach the exact totals
			// even for the server, whose last send returned before it was
			// acked and which does not send or receive again. Only a delayed
			// ACK can hold them back, hence the wait.
			want := map[uint64]Counters{
				clientOpen.Sock: {BytesAcked: up, BytesReceived: down},
				serverOpen.Sock: {BytesAcked: down, BytesReceived: up},
			}
			var seen map[uint64]Sample
			deadline := time.Now().Add(2 * time.Second)
			for {
				seen = map[uint64]Sample{}
				if err := r.p.Samples(func(s Sample) {
					if _, ok := want[s.Sock]; ok {
						seen[s.Sock] = s
					}
				}); err != nil {
					t.Fatalf("Samples: %v", err)
				}
				exact := len(seen) == len(want)
				for sock, w := range want {
					c := seen[sock].Counters
					exact = exact && c.BytesAcked == w.BytesAcked && c.BytesReceived == w.BytesReceived
				}
				if exact || time.Now().After(deadline) {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			for sock, w := range want {
				s, ok := seen[sock]
				if !ok {
					t.Fatalf("sock %#x not in Samples", sock)
				}
				if s.Owner.PID != uint32(os.Getpid()) || s.Owner.Comm != comm {
					t.Errorf("sample %#x: owner %+v, want pid %d comm %q", sock, s.Owner, os.Getpid(), comm)
				}
				if c := s.Counters; c.BytesAcked != w.BytesAcked || c.BytesReceived != w.BytesReceived {
					t.Errorf("sample %#x: acked %d received %d, want %d and %d", sock, c.BytesAcked, c.BytesReceived, w.BytesAcked, w.BytesReceived)
				}
			}

			cp.client.Close()
			cp.server.Close()
			clientClose := r.wait(t, "client close", onPorts(EventClose, client.Port(), server.Port()))
			serverClose := r.wait(t, "server close", onPorts(EventClose, server.Port(), client.Port()))

			for _, c := range []struct {
				name          string
				ev            Event
				sock          uint64
				role          Role
				acked, recvd  uint64
				wantOwnerPID  uint32
				wantOwnerComm string
			}{
				{"client", clientClose, clientOpen.Sock, RoleClient, up, down, uint32(os.Getpid()), comm},
				{"server", serverClose, serverOpen.Sock, RoleServer, down, up, uint32(os.Getpid()), comm},
			} {
				ev := c.ev
				if ev.Sock != c.sock {
					t.Errorf("%s close: sock %#x, open had %#x", c.name, ev.Sock, c.sock)
				}
				if ev.Role != c.role {
					t.Errorf("%s close: role %v, want %v", c.name, ev.Role, c.role)
				}
				if ev.Counters.BytesAcked != c.acked {
					t.Errorf("%s close: BytesAcked %d, want %d", c.name, ev.Counters.BytesAcked, c.acked)
				}
				if ev.Counters.BytesReceived != c.recvd {
					t.Errorf("%s close: BytesReceived %d, want %d", c.name, ev.Counters.BytesReceived, c.recvd)
				}
				if ev.Counters.SegsDelivered == 0 || ev.Counters.DataSegsIn == 0 {
					t.Errorf("%s close: segments %+v, want both > 0", c.name, ev.Counters)
				}
				if ev.Owner.PID != c.wantOwnerPID || ev.Owner.Comm != c.wantOwnerComm {
					t.Errorf("%s close: owner %+v, want pid %d comm %q", c.name, ev.Owner, c.wantOwnerPID, c.wantOwnerComm)
				}
				if ev.NetNS != netns {
					t.Errorf("%s close: netns %d, want %d", c.name, ev.NetNS, netns)
				}
			}
			t.Logf("client close %+v", clientClose.Counters)
			t.Logf("server close %+v", serverClose.Counters)
		})
	}
}

// TestPrivilegedSync: events below the wakeup threshold wait in the ring for
// the read timer, but after Sync every event of a connection made before it
// has been returned by ReadEvent.
func TestPrivilegedSync(t *testing.T) {
	requirePrivileged(t)
	r := openRecorded(t, DefaultConfig())
	ln := listen(t, "tcp4", "127.0.0.1:0")
	for i := range 3 {
		cp := dialPair(t, ln)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := r.p.Sync(ctx)
		cancel()
		if err != nil {
			t.Fatalf("round %d: Sync: %v", i, err)
		}
		client := addrPort(t, cp.client.LocalAddr())
		server := addrPort(t, ln.Addr())
		r.mu.Lock()
		var opens int
		for _, ev := range r.events {
			if ev.Kind == EventOpen && (onPorts(EventOpen, client.Port(), server.Port())(ev) ||
				onPorts(EventOpen, server.Port(), client.Port())(ev)) {
				opens++
			}
		}
		r.mu.Unlock()
		if opens != 2 {
			t.Errorf("round %d: %d open events of the connection when Sync returned, want 2", i, opens)
		}
		cp.client.Close()
		cp.server.Close()
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
	comm, netns := selfComm(t), selfNetNS(t)

	for _, tc := range loopbacks {
		t.Run(tc.name, func(t *testing.T) {
			ln := listen(t, tc.network, tc.address)
			local := addrPort(t, ln.Addr())
			ev := r.wait(t, "listen", func(ev Event) bool {
				return ev.Kind == EventListen && ev.LocalPort == local.Port() && ev.LocalAddr == local.Addr()
			})
			if ev.Owner.PID != uint32(os.Getpid()) || ev.Owner.Comm != comm {
				t.Errorf("owner %+v, want pid %d comm %q", ev.Owner, os.Getpid(), comm)
			}
			if ev.NetNS != netns {
				t.Errorf("netns %d, want %d", ev.NetNS, netns)
			}
			if ev.RemotePort != 0 || !ev.RemoteAddr.IsUnspecified() {
				t.Errorf("remote %v:%d, want unspecified", ev.RemoteAddr, ev.RemotePort)
			}
			// A listener is not a connection: it never enters the socket map.
			if err := r.p.Samples(func(s Sample) {
				if s.Sock == ev.Sock {
					t.Errorf("listening socket %#x is in the socket map", ev.Sock)
				}
			}); err != nil {
				t.Fatalf("Samples: %v", err)
			}
		})
	}
}

func TestPrivilegedExistingSocket(t *testing.T) {
	requirePrivileged(t)
	comm := selfComm(t)

	for _, tc := range loopbacks {
		t.Run(tc.name, func(t *testing.T) {
			ln := listen(t, tc.network, tc.address)
			cp := dialPair(t, ln)
			defer cp.client.Close()
			defer cp.server.Close()
			const before = 1000
			cp.exchange(t, before, before)

			r := openRecorded(t, DefaultConfig())
			const up, down = 70_001, 30_007
			cp.exchange(t, up, down)

			client, server := addrPort(t, cp.client.LocalAddr()), addrPort(t, cp.server.LocalAddr())
			ends := []struct {
				name          string
				local, remote netip.AddrPort
				acked, recvd  uint64
			}{
				// The probe did not see the handshake, so it cannot take the
				// SYN out of the client's bytes_acked: the kernel counts it.
				{"client", client, server, before + up + 1, before + down},
				{"server", server, client, before + down, before + up},
			}
			for _, c := range ends {
				ev := r.wait(t, c.name+" open", onPorts(EventOpen, c.local.Port(), c.remote.Port()))
				if ev.Role != RoleUnknown {
					t.Errorf("%s: role %v, want unknown", c.name, ev.Role)
				}
				if ev.LocalAddr != c.local.Addr() || ev.RemoteAddr != c.remote.Addr() {
					t.Errorf("%s: %v -> %v, want %v -> %v", c.name, ev.LocalAddr, ev.RemoteAddr, c.local.Addr(), c.remote.Addr())
				}
				if ev.Owner.PID != uint32(os.Getpid()) || ev.Owner.Comm != comm {
					t.Errorf("%s: owner %+v, want pid %d comm %q", c.name, ev.Owner, os.Getpid(), comm)
				}
				var sample *Sample
				if err := r.p.Samples(func(s Sample) {
					if s.Sock == ev.Sock {
						sample = &s
					}
				}); err != nil {
					t.Fatalf("Samples: %v", err)
				}
				if sample == nil {
					t.Fatalf("%s: sock %#x not in Samples", c.name, ev.Sock)
				}
				// The kernel's counters cover the whole life of the socket.
				if sample.Counters.BytesReceived != c.recvd {
					t.Errorf("%s: BytesReceived %d, want %d", c.name, sample.Counters.BytesReceived, c.recvd)
				}
			}

			cp.client.Close()
			cp.server.Close()
			for _, c := range ends {
				ev := r.wait(t, c.name+" close", onPorts(EventClose, c.local.Port(), c.remote.Port()))
				if ev.Role != RoleUnknown {
					t.Errorf("%s close: role %v, want unknown", c.name, ev.Role)
				}
				if ev.Counters.BytesAcked != c.acked || ev.Counters.BytesReceived != c.recvd {
					t.Errorf("%s close: acked %d received %d, want %d and %d", c.name,
						ev.Counters.BytesAcked, ev.Counters.BytesReceived, c.acked, c.recvd)
				}
			}
		})
	}
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
		t.Skipf("port %d was taken again", refused)
	}

	// A connection that closes afterwards marks how far the ring has been read.
	ln2 := listen(t, "tcp4", "127.0.0.1:0")
	cp := dialPair(t, ln2)
	client, server := addrPort(t, cp.client.LocalAddr()), addrPort(t, cp.server.LocalAddr())
	cp.client.Close()
	cp.server.Close()
	r.wait(t, "client close", onPorts(EventClose, client.Port(), server.Port()))

	r.mu.Lock()
	defer r.mu.Unlock()
	for _, ev := range r.events {
		if ev.Kind != EventListen && (ev.RemotePort == refused || ev.LocalPort == refused) {
			t.Errorf("event for a connection that was never established: %+v", ev)
		}
	}
}

func TestPrivilegedMapFull(t *testing.T) {
	requirePrivileged(t)
	const entries = 4
	r := openRecorded(t, Config{SocketMapEntries: entries, RingBytes: 1 << 20})

	ln := listen(t, "tcp4", "127.0.0.1:0")
	var pairs []connPair
	defer func() {
		for _, cp := range pairs {
			cp.client.Close()
			cp.server.Close()
		}
	}()
	for range 10 {
		cp := dialPair(t, ln)
		pairs = append(pairs, cp)
		cp.exchange(t, 1000, 1000)
	}

	d, err := r.p.Drops()
	if err != nil {
		t.Fatalf("Drops: %v", err)
	}
	if d.MapFull == 0 {
		t.Errorf("Drops %+v: want MapFull > 0 after 20 sockets in a map of %d", d, entries)
	}
	n := 0
	if err := r.p.Samples(func(Sample) { n++ }); err != nil {
		t.Fatalf("Samples: %v", err)
	}
	if n > entries {
		t.Errorf("%d samples from a map of %d entries", n, entries)
	}
	// Still working: closing a tracked socket frees its entry and is reported.
	cp := pairs[0]
	client, server := addrPort(t, cp.client.LocalAddr()), addrPort(t, cp.server.LocalAddr())
	cp.client.Close()
	cp.server.Close()
	ev := r.wait(t, "close", func(ev Event) bool {
		return ev.Kind == EventClose && (ev.LocalPort == client.Port() || ev.LocalPort == server.Port())
	})
	t.Logf("drops %+v, samples %d, close %+v", d, n, ev.Counters)
}

func TestPrivilegedRingFull(t *testing.T) {
	requirePrivileged(t)
	cfg := Config{SocketMapEntries: 1024, RingBytes: uint32(os.Getpagesize())}
	p, err := Open(cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer p.Close()

	// Nobody reads the ring: one page holds a few dozen events.
	ln := listen(t, "tcp4", "127.0.0.1:0")
	for range 100 {
		cp := dialPair(t, ln)
		cp.client.Close()
		cp.server.Close()
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		d, err := p.Drops()
		if err != nil {
			t.Fatalf("Drops: %v", err)
		}
		if d.RingFull > 0 {
			t.Logf("drops %+v", d)
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
	p, err := Open(DefaultConfig())
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
	if _, err := p.Drops(); !errors.Is(err, ErrClosed) {
		t.Errorf("Drops after Close: %v, want ErrClosed", err)
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
		{"one page ring", Config{SocketMapEntries: 1, RingBytes: page}, ""},
		{"no sockets", Config{SocketMapEntries: 0, RingBytes: 1 << 20}, "--socket-map-entries"},
		{"ring zero", Config{SocketMapEntries: 10, RingBytes: 0}, "--ring-bytes"},
		{"ring not power of two", Config{SocketMapEntries: 10, RingBytes: 3 * page}, "--ring-bytes"},
		{"ring below a page", Config{SocketMapEntries: 10, RingBytes: page / 2}, "--ring-bytes"},
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

// BenchmarkSamples walks a socket map holding 10,000 entries.
func BenchmarkSamples(b *testing.B) {
	requirePrivileged(b)
	p, err := Open(DefaultConfig())
	if err != nil {
		b.Fatalf("Open: %v", err)
	}
	defer p.Close()
	const entries = 10_000
	keys := make([]uint64, entries)
	values := make([]tcpSockInfo, entries)
	for i := range keys {
		keys[i] = uint64(i + 1) // never a kernel address
		values[i].Pid = uint32(i)
		values[i].Comm = comm16("bench")
	}
	if _, err := p.objs.Socks.BatchUpdate(keys, values, nil); err != nil {
		b.Fatalf("populate: %v", err)
	}
	b.ReportAllocs()
	for b.Loop() {
		n := 0
		if err := p.Samples(func(Sample) { n++ }); err != nil {
			b.Fatal(err)
		}
		if n < entries {
			b.Fatalf("%d samples, want at least %d", n, entries)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/entries, "ns/entry")
}
