package probe

import (
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
		t.Skipf("listen %s %s: %v", network, address, err)
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

			// Both sockets are in the map, owned by this process.
			seen := map[uint64]Sample{}
			if err := r.p.Samples(func(s Sample) {
				if s.Sock == clientOpen.Sock || s.Sock == serverOpen.Sock {
					seen[s.Sock] = s
				}
			}); err != nil {
				t.Fatalf("Samples: %v", err)
			}
			for _, sock := range []uint64{clientOpen.Sock, serverOpen.Sock} {
				s, ok := seen[sock]
				if !ok {
					t.Fatalf("sock %#x not in Samples", sock)
				}
				if s.Owner.PID != uint32(os.Getpid()) || s.Owner.Comm != comm {
					t.Errorf("sample %#x: owner %+v, want pid %d comm %q", sock, s.Owner, os.Getpid(), comm)
				}
			}
			if s := seen[serverOpen.Sock]; s.Counters.BytesReceived != up {
				t.Errorf("server sample: BytesReceived %d, want %d", s.Counters.BytesReceived, up)
			}
			if s := seen[clientOpen.Sock]; s.Counters.BytesReceived != down {
				t.Errorf("client sample: BytesReceived %d, want %d", s.Counters.BytesReceived, down)
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
