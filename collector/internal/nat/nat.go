// Package nat keeps the NAT translations of the node's connections, learnt
// from conntrack events over netlink in every network namespace, so that a
// socket connected to a virtual IP can be reported with the backend it
// really talks to.
package nat

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"
	"golang.org/x/sys/unix"
)

// Config bounds a Table.
type Config struct {
	// MaxEntries caps the translations kept (flag --nat-max-entries); a new
	// one beyond is dropped and counted.
	MaxEntries int
	// TTL is how long a translation is kept after conntrack announced it:
	// long enough for the socket to be reported (an interval), short
	// enough that MaxEntries holds the translations of MaxEntries/TTL new
	// connections a second (546 at the defaults). A socket announced again
	// after the TTL (after a reconnect to the reducer) goes without its
	// translation, to the virtual IP's name.
	TTL time.Duration
	// Rescan is how often the network namespaces are listed again, besides
	// the listing that Sync makes when a socket comes from a namespace not
	// followed yet: the safety net for a namespace that translates
	// connections but was created after the last listing with no socket of
	// its own and none of a namespace created with it.
	Rescan time.Duration
	// ProcRoot is where /proc is mounted; the namespaces are found through
	// its processes, and through RunNetns.
	ProcRoot string
	// RunNetns is the directory of named namespaces (ip netns).
	RunNetns string
	// ReadBuffer is the receive buffer of each netlink socket, in bytes.
	ReadBuffer int
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{MaxEntries: 65536, TTL: 2 * time.Minute, Rescan: 10 * time.Second,
		ProcRoot: "/proc", RunNetns: "/run/netns", ReadBuffer: 1 << 20}
}

// Validate reports a bad field, named by its flag.
func (c Config) Validate() error {
	if c.MaxEntries <= 0 {
		return fmt.Errorf("--nat-max-entries: %d is not positive", c.MaxEntries)
	}
	if c.TTL <= 0 || c.Rescan <= 0 {
		return errors.New("nat: TTL and rescan interval must be positive")
	}
	return nil
}

// Translation is where a connection really goes: Local is the address the
// peer answers to (the client's, after source NAT), Remote the peer's real
// address (the backend's, after destination NAT).
type Translation struct {
	Local, Remote netip.AddrPort
}

type key struct {
	src, dst netip.AddrPort
}

type entry struct {
	Translation
	added time.Time
}

// Table holds the translations of TCP connections by their original
// tuple. It is safe for concurrent use.
type Table struct {
	cfg    Config
	logger *slog.Logger
	now    func() time.Time

	mu      sync.Mutex
	entries map[key]entry
	size    atomic.Int64 // len(entries), read without mu
	order   []key        // insertion order, for expiry

	overruns atomic.Uint64
	m        *metrics

	// wmu guards the event sockets, which Run drains every pollEvery and
	// Sync drains on demand.
	wmu     sync.Mutex
	watches map[uint64]*watch
	buf     []byte
	scanned time.Time // the last listing of the namespaces
	// unlisted are namespaces that Sync was asked for and the last listing
	// did not find; cleared by the periodic listing.
	unlisted map[uint64]struct{}
}

// New returns an empty table whose metrics are registered with reg.
func New(cfg Config, reg prometheus.Registerer, logger *slog.Logger) (*Table, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	t := &Table{cfg: cfg, logger: logger.With("component", "nat"), now: time.Now, entries: make(map[key]entry),
		watches: make(map[uint64]*watch), unlisted: make(map[uint64]struct{}), buf: make([]byte, 1<<16)}
	m, err := newMetrics(reg, t)
	if err != nil {
		return nil, err
	}
	t.m = m
	return t, nil
}

// Translate returns the translation of the TCP connection from local to
// remote, as the socket sees it, if conntrack rewrote it.
func (t *Table) Translate(local, remote netip.AddrPort) (Translation, bool) {
	if t.size.Load() == 0 {
		return Translation{}, false // no NAT on the node: no lock, no hashing
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.entries[key{unmap(local), unmap(remote)}]
	if ok {
		t.m.hits.Inc()
	}
	return e.Translation, ok
}

// Overruns returns the conntrack events lost so far to netlink overruns
// (ENOBUFS): the socket was closed by the kernel and opened again.
func (t *Table) Overruns() uint64 { return t.overruns.Load() }

// Len returns the number of translations kept.
func (t *Table) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.entries)
}

// add records a conntrack flow if it was translated.
func (t *Table) add(f *conntrack.Flow) {
	o, r := f.TupleOrig, f.TupleReply
	if o.Proto.Protocol != unix.IPPROTO_TCP {
		return
	}
	src := netip.AddrPortFrom(o.IP.SourceAddress.Unmap(), o.Proto.SourcePort)
	dst := netip.AddrPortFrom(o.IP.DestinationAddress.Unmap(), o.Proto.DestinationPort)
	// The reply comes from the real peer to the address it saw.
	peer := netip.AddrPortFrom(r.IP.SourceAddress.Unmap(), r.Proto.SourcePort)
	seen := netip.AddrPortFrom(r.IP.DestinationAddress.Unmap(), r.Proto.DestinationPort)
	if peer == dst && seen == src {
		return // not translated
	}
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	t.expire(now)
	k := key{src, dst}
	if _, ok := t.entries[k]; !ok {
		if len(t.entries) >= t.cfg.MaxEntries {
			t.m.dropped.Inc()
			return
		}
		t.order = append(t.order, k)
	}
	t.entries[k] = entry{Translation: Translation{Local: seen, Remote: peer}, added: now}
	t.size.Store(int64(len(t.entries)))
	t.m.added.Inc()
}

// expire drops the translations older than the TTL.
func (t *Table) expire(now time.Time) {
	n := 0
	for _, k := range t.order {
		e, ok := t.entries[k]
		if ok && now.Sub(e.added) < t.cfg.TTL {
			break
		}
		if ok {
			delete(t.entries, k)
		}
		n++
	}
	if n > 0 {
		clear(t.order[:n])
		t.order = t.order[n:]
		t.size.Store(int64(len(t.entries)))
	}
}

// pollEvery is how often the event sockets are drained, all in one pass.
// Reading on a timer rather than blocking for each event spares a wakeup
// per connection, which cost about 150 µs of collector CPU per connection
// in a VM, and one pass for all namespaces keeps the idle cost at ten
// wakeups a second however many namespaces there are. Each socket's buffer
// holds what arrives in between (ReadBuffer); an overrun is counted and
// followed by a dump.
const pollEvery = 100 * time.Millisecond

// retryAfter is how long a namespace whose socket failed waits.
const retryAfter = 5 * time.Second

// watch is the event socket of one namespace.
type watch struct {
	path    string
	c       *netlink.Conn // nil while it waits to retry
	retryAt time.Time
	lastErr string // the last failure logged at warning level
}

// failed counts and logs a failure of w's socket, which is retried after
// retryAfter. The first failure of a namespace, and one that differs from
// the last, is a warning; a repeat of the same one every retryAfter is
// logged at debug level.
func (t *Table) failed(w *watch, err error) {
	t.m.errors.Inc()
	w.retryAt = t.now().Add(retryAfter)
	level := slog.LevelWarn
	if msg := err.Error(); msg == w.lastErr {
		level = slog.LevelDebug
	} else {
		w.lastErr = msg
	}
	t.logger.Log(context.Background(), level, "conntrack socket failed; retrying", "netns", w.path,
		"retry_in", retryAfter, "err", err)
}

// Run follows conntrack in every network namespace until ctx is done.
func (t *Table) Run(ctx context.Context) error {
	defer func() {
		t.wmu.Lock()
		defer t.wmu.Unlock()
		for ino, w := range t.watches {
			w.close()
			delete(t.watches, ino)
		}
	}()
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	for {
		now := t.now()
		t.wmu.Lock()
		if now.Sub(t.scanned) >= t.cfg.Rescan {
			t.rescan(now)
			t.m.periodicRescans.Inc()
			clear(t.unlisted) // listed again: Sync may ask for them again
		}
		t.drainAll(now)
		t.wmu.Unlock()
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// Sync applies every conntrack event already delivered to the event
// sockets, so that the connections about to be reported, whose sockets are
// in the network namespaces netns, find their translations. The kernel
// delivers a connection's event when its first packet is confirmed, before
// the SYN leaves the namespace that translates it, so after Sync every
// translated connection whose socket is established (or closed) has its
// translation here, unless its namespace's socket overran (counted). The
// encoder calls it after it drained the socket table and before it
// announces the sockets, so that a short connection is never sent before
// its translation arrived.
//
// The namespaces are listed again (every /proc/PID/ns/net) only when one
// of netns is not followed yet: a new namespace, and any other created with
// it (a router that translates for it, whose connections so far come from
// the dump that follows its socket's opening). A namespace that such a
// listing does not find (held by no process and not named under
// RunNetns) is not asked for again until the periodic listing (Rescan):
// listing every namespace before each report was a fifth of an idle
// collector's CPU.
func (t *Table) Sync(netns []uint32) {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	now := t.now()
	if t.unfollowed(netns) {
		t.rescan(now)
		t.m.syncRescans.Inc()
		if len(t.unlisted) >= maxUnlisted {
			clear(t.unlisted)
		}
		for _, ns := range netns {
			if _, ok := t.watches[uint64(ns)]; !ok {
				t.unlisted[uint64(ns)] = struct{}{}
			}
		}
	}
	t.drainAll(now)
}

// maxUnlisted bounds the namespaces that Sync remembers not to list again
// for; beyond, it forgets them all (and lists again at most once for each).
const maxUnlisted = 1024

// unfollowed says whether a namespace of netns is neither followed nor
// known to be missing from the listing. t.wmu is held.
func (t *Table) unfollowed(netns []uint32) bool {
	for _, ns := range netns {
		if _, ok := t.watches[uint64(ns)]; ok {
			continue
		}
		if _, ok := t.unlisted[uint64(ns)]; !ok {
			return true
		}
	}
	return false
}

// rescan lists the network namespaces again: it follows the new ones
// (seeded by a dump of their connections) and forgets the gone ones. t.wmu
// is held.
func (t *Table) rescan(now time.Time) {
	t.scanned = now
	seen := t.namespaces()
	for ino, path := range seen {
		if _, ok := t.watches[ino]; !ok {
			w := &watch{path: path}
			t.watches[ino] = w
			t.open(w)
		}
	}
	for ino, w := range t.watches {
		if _, ok := seen[ino]; !ok {
			w.close()
			delete(t.watches, ino)
		}
	}
	t.m.namespaces.Set(float64(len(t.watches)))
	t.mu.Lock()
	t.expire(now)
	t.mu.Unlock()
}

// drainAll drains every event socket. t.wmu is held.
func (t *Table) drainAll(now time.Time) {
	for _, w := range t.watches {
		if w.c == nil {
			if now.After(w.retryAt) {
				t.open(w)
			}
			continue
		}
		err := t.drain(w.c, t.buf)
		switch {
		case err == nil:
		case errors.Is(err, unix.ENOBUFS):
			// Events were lost; the dump of the new socket catches up.
			t.overruns.Add(1)
			t.m.overruns.Inc()
			w.close()
			t.open(w)
		default:
			w.close()
			t.failed(w, err)
		}
	}
}

// open opens the event socket of w, then adds the translated connections
// that the namespace has already (a namespace without conntrack has none).
func (t *Table) open(w *watch) {
	c, err := events(w.path, t.cfg.ReadBuffer)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			// The namespace is gone; the next listing forgets it.
			w.retryAt = t.now().Add(retryAfter)
			return
		}
		t.failed(w, err)
		return
	}
	w.c = c
	if d, err := dial(w.path); err == nil {
		if flows, err := d.Dump(nil); err == nil {
			for i := range flows {
				t.add(&flows[i])
			}
		}
		d.Close()
	}
}

func (w *watch) close() {
	if w.c != nil {
		_ = w.c.Close()
		w.c = nil
	}
}

// namespaces lists the network namespaces by inode, each with a path that
// opens it.
func (t *Table) namespaces() map[uint64]string {
	out := make(map[uint64]string)
	add := func(path string) {
		var st unix.Stat_t
		if err := unix.Stat(path, &st); err != nil {
			return
		}
		if _, ok := out[st.Ino]; !ok {
			out[st.Ino] = path
		}
	}
	add(filepath.Join(t.cfg.ProcRoot, "1/ns/net"))
	if names, err := os.ReadDir(t.cfg.RunNetns); err == nil {
		for _, n := range names {
			add(filepath.Join(t.cfg.RunNetns, n.Name()))
		}
	}
	procs, err := os.ReadDir(t.cfg.ProcRoot)
	if err != nil {
		return out
	}
	for _, p := range procs {
		if _, err := strconv.Atoi(p.Name()); err != nil {
			continue
		}
		add(filepath.Join(t.cfg.ProcRoot, p.Name(), "ns/net"))
	}
	return out
}

// drain applies the events waiting in c without blocking.
func (t *Table) drain(c *netlink.Conn, buf []byte) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	for {
		n := 0
		var rerr error
		if err := rc.Read(func(fd uintptr) bool {
			n, _, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT)
			return true // never wait for more
		}); err != nil {
			return err
		}
		if errors.Is(rerr, unix.EAGAIN) || errors.Is(rerr, unix.EINTR) {
			return nil
		}
		if rerr != nil {
			return rerr
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			t.m.errors.Inc()
			continue
		}
		for _, m := range msgs {
			nm := netlink.Message{
				Header: netlink.Header{Length: m.Header.Len, Type: netlink.HeaderType(m.Header.Type),
					Flags: netlink.HeaderFlags(m.Header.Flags), Sequence: m.Header.Seq, PID: m.Header.Pid},
				Data: m.Data,
			}
			var ev conntrack.Event
			if err := ev.Unmarshal(nm); err != nil || ev.Flow == nil {
				t.m.errors.Inc()
				continue
			}
			t.add(ev.Flow)
		}
	}
}

// events opens a netlink socket in the namespace at path that receives its
// conntrack new-connection events.
func events(path string, readBuffer int) (*netlink.Conn, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, nsConfig(f))
	if err != nil {
		return nil, fmt.Errorf("conntrack events in %s: %w", path, err)
	}
	if err := c.JoinGroup(uint32(netfilter.GroupCTNew)); err != nil {
		c.Close()
		return nil, fmt.Errorf("conntrack events in %s: %w", path, err)
	}
	// Past net.core.rmem_max with CAP_NET_ADMIN, else up to it.
	if rc, err := c.SyscallConn(); err == nil {
		var serr error
		_ = rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, readBuffer)
		})
		if serr != nil {
			_ = c.SetReadBuffer(readBuffer)
		}
	}
	return c, nil
}

// nsConfig is the netlink configuration for the namespace open as f: none
// for the collector's own namespace, which it reads without setns (and so
// without CAP_SYS_ADMIN, which a least-privilege collector lacks).
func nsConfig(f *os.File) *netlink.Config {
	var ns, self unix.Stat_t
	if unix.Fstat(int(f.Fd()), &ns) == nil && unix.Stat("/proc/self/ns/net", &self) == nil && ns.Ino == self.Ino && ns.Dev == self.Dev {
		return &netlink.Config{}
	}
	return &netlink.Config{NetNS: int(f.Fd())}
}

// dial opens a conntrack socket in the namespace at path.
func dial(path string) (*conntrack.Conn, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	c, err := conntrack.Dial(nsConfig(f))
	if err != nil {
		return nil, fmt.Errorf("conntrack in %s: %w", path, err)
	}
	return c, nil
}

func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
