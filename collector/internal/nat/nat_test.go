package nat

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/ti-mo/conntrack"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func flow(src, dst, replySrc, replyDst string) *conntrack.Flow {
	s, d := netip.MustParseAddrPort(src), netip.MustParseAddrPort(dst)
	rs, rd := netip.MustParseAddrPort(replySrc), netip.MustParseAddrPort(replyDst)
	f := &conntrack.Flow{}
	f.TupleOrig.IP.SourceAddress, f.TupleOrig.IP.DestinationAddress = s.Addr(), d.Addr()
	f.TupleOrig.Proto = conntrack.ProtoTuple{Protocol: unix.IPPROTO_TCP, SourcePort: s.Port(), DestinationPort: d.Port()}
	f.TupleReply.IP.SourceAddress, f.TupleReply.IP.DestinationAddress = rs.Addr(), rd.Addr()
	f.TupleReply.Proto = conntrack.ProtoTuple{Protocol: unix.IPPROTO_TCP, SourcePort: rs.Port(), DestinationPort: rd.Port()}
	return f
}

func newTable(t *testing.T, cfg Config) (*Table, *time.Time) {
	t.Helper()
	tb, err := New(cfg, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1000, 0)
	tb.now = func() time.Time { return now }
	return tb, &now
}

func TestTranslate(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxEntries = 2
	tb, now := newTable(t, cfg)
	client, vip := netip.MustParseAddrPort("10.0.0.5:40000"), netip.MustParseAddrPort("10.96.0.10:80")
	tb.add(flow("10.0.0.5:40000", "10.96.0.10:80", "10.1.0.7:8080", "10.0.0.5:40000"))            // DNAT
	tb.add(flow("10.0.0.5:40001", "198.18.0.1:443", "198.18.0.1:443", "192.0.2.1:61000"))         // SNAT
	tb.add(flow("10.0.0.5:40002", "198.18.0.1:443", "198.18.0.1:443", "10.0.0.5:40002"))          // none
	tb.add(flow("[2001:2::5]:40003", "[2001:2::a]:80", "[2001:2::77]:8080", "[2001:2::5]:40003")) // over the cap
	got, ok := tb.Translate(client, vip)
	if !ok || got != (Translation{Local: client, Remote: netip.MustParseAddrPort("10.1.0.7:8080")}) {
		t.Errorf("DNAT: %v %v", got, ok)
	}
	got, ok = tb.Translate(netip.MustParseAddrPort("10.0.0.5:40001"), netip.MustParseAddrPort("198.18.0.1:443"))
	if !ok || got.Local != netip.MustParseAddrPort("192.0.2.1:61000") {
		t.Errorf("SNAT: %v %v", got, ok)
	}
	if _, ok := tb.Translate(netip.MustParseAddrPort("10.0.0.5:40002"), netip.MustParseAddrPort("198.18.0.1:443")); ok {
		t.Error("untranslated connection kept")
	}
	if tb.Len() != 2 {
		t.Errorf("%d entries, want the cap 2", tb.Len())
	}
	// An IPv4-mapped socket address finds its entry.
	if _, ok := tb.Translate(netip.MustParseAddrPort("[::ffff:10.0.0.5]:40000"), netip.MustParseAddrPort("[::ffff:10.96.0.10]:80")); !ok {
		t.Error("mapped address not found")
	}
	*now = now.Add(cfg.TTL)
	tb.add(flow("10.0.0.6:1", "10.96.0.10:80", "10.1.0.8:8080", "10.0.0.6:1"))
	if tb.Len() != 1 {
		t.Errorf("%d entries after the TTL, want 1", tb.Len())
	}
}

// TestPrivilegedRun follows a namespace with a DNAT rule and finds the
// translation of a connection to its virtual address.
func TestPrivilegedRun(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root (network namespaces, conntrack); CI=true: not skipping")
		}
		t.Skip("needs root")
	}
	ns := "weir-nat-unit-" + strings.ReplaceAll(time.Now().Format("150405.000"), ".", "")
	sh := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	sh("ip", "netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	sh("ip", "-n", ns, "link", "set", "lo", "up")
	sh("ip", "-n", ns, "addr", "add", "198.18.9.1/32", "dev", "lo")
	sh("ip", "-n", ns, "route", "add", "198.18.9.99/32", "dev", "lo")
	nft := exec.Command("ip", "netns", "exec", ns, "nft", "-f", "-")
	nft.Stdin = strings.NewReader(`table ip weirunit {
	chain out {
		type nat hook output priority -100;
		ip daddr 198.18.9.99 tcp dport 80 dnat to 198.18.9.1:8080
	}
}
`)
	if out, err := nft.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v\n%s", err, out)
	}
	cfg := DefaultConfig()
	cfg.Rescan = 100 * time.Millisecond
	tb, _ := newTable(t, cfg)
	tb.now = time.Now
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tb.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	time.Sleep(500 * time.Millisecond) // the namespace is followed

	// A server and a client in the namespace: sockets stay in the
	// namespace they were made in.
	var local netip.AddrPort
	err := inNetns(ns, func() error {
		ln, err := net.Listen("tcp", "198.18.9.1:8080")
		if err != nil {
			return err
		}
		defer ln.Close()
		go func() {
			if c, err := ln.Accept(); err == nil {
				c.Close()
			}
		}()
		c, err := net.Dial("tcp", "198.18.9.99:80")
		if err != nil {
			return err
		}
		local = c.LocalAddr().(*net.TCPAddr).AddrPort()
		return c.Close()
	})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		tr, ok := tb.Translate(local, netip.MustParseAddrPort("198.18.9.99:80"))
		if ok {
			if tr.Remote != netip.MustParseAddrPort("198.18.9.1:8080") {
				t.Errorf("translation %v", tr)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no translation of %s → 198.18.9.99:80", local)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestPrivilegedSync: without the Run loop, Sync alone follows a namespace
// created after the table (its connection so far from the dump) and then
// applies the event of a new connection at once: a report that calls Sync
// first sends every established socket with its translation.
func TestPrivilegedSync(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root (network namespaces, conntrack); CI=true: not skipping")
		}
		t.Skip("needs root")
	}
	tb, _ := newTable(t, DefaultConfig())
	tb.now = time.Now
	defer func() {
		for _, w := range tb.watches {
			w.close()
		}
	}()
	ns := "weir-nat-sync-" + strings.ReplaceAll(time.Now().Format("150405.000"), ".", "")
	for _, args := range [][]string{
		{"ip", "netns", "add", ns},
		{"ip", "-n", ns, "link", "set", "lo", "up"},
		{"ip", "-n", ns, "addr", "add", "198.18.9.1/32", "dev", "lo"},
		{"ip", "-n", ns, "route", "add", "198.18.9.99/32", "dev", "lo"},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
		if args[2] == "add" && args[1] == "netns" {
			t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
		}
	}
	nft := exec.Command("ip", "netns", "exec", ns, "nft", "-f", "-")
	nft.Stdin = strings.NewReader(`table ip weirunit {
	chain out {
		type nat hook output priority -100;
		ip daddr 198.18.9.99 tcp dport 80 dnat to 198.18.9.1:8080
	}
}
`)
	if out, err := nft.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v\n%s", err, out)
	}
	vip := netip.MustParseAddrPort("198.18.9.99:80")
	var ln net.Listener
	if err := inNetns(ns, func() (err error) { ln, err = net.Listen("tcp", "198.18.9.1:8080"); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	connect := func() netip.AddrPort {
		var local netip.AddrPort
		if err := inNetns(ns, func() error {
			c, err := net.Dial("tcp", vip.String())
			if err != nil {
				return err
			}
			local = c.LocalAddr().(*net.TCPAddr).AddrPort()
			return c.Close()
		}); err != nil {
			t.Fatal(err)
		}
		return local
	}
	var st unix.Stat_t
	if err := unix.Stat("/run/netns/"+ns, &st); err != nil {
		t.Fatal(err)
	}
	for i, what := range []string{"a connection of a namespace not followed yet (the dump)", "a new connection (its event)"} {
		local := connect()
		tb.Sync([]uint32{uint32(st.Ino)})
		tr, ok := tb.Translate(local, vip)
		if !ok || tr.Remote != netip.MustParseAddrPort("198.18.9.1:8080") {
			t.Errorf("%d, %s: translation %v, %v right after Sync (namespaces followed %d, translations %d, conntrack errors %v)",
				i, what, tr, ok, len(tb.watches), tb.Len(), testutil.ToFloat64(tb.m.errors))
		}
	}
}

// inNetns runs fn on a thread in the named network namespace, and puts the
// thread back in its own namespace afterwards. A thread left in another
// namespace would be the main thread at times, which the runtime cannot
// end: the test process would stay in that namespace.
func inNetns(name string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer self.Close()
		f, err := os.Open("/run/netns/" + name)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		err = fn()
		if rerr := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); rerr != nil {
			// Left locked: the thread ends with the goroutine.
			errc <- errors.Join(err, rerr)
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}

// TestPrivilegedDialFailsInNamespace: a netlink socket that the kernel
// refuses in another namespace is an error, not a nil connection (the
// namespace path of mdlayher/socket before v0.6.0 dropped the error, and
// the table's next call on the socket panicked).
func TestPrivilegedDialFailsInNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root (network namespaces); CI=true: not skipping")
		}
		t.Skip("needs root")
	}
	ns := "weir-nat-dial-" + strings.ReplaceAll(time.Now().Format("150405.000"), ".", "")
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v\n%s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	f, err := os.Open("/run/netns/" + ns)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const noSuchProtocol = 31 // no netlink family has this number
	c, err := netlink.Dial(noSuchProtocol, nsConfig(f))
	if err == nil {
		_ = c.Close()
		t.Fatal("netlink family 31 opened")
	}
	if !errors.Is(err, unix.EPROTONOSUPPORT) {
		t.Fatalf("error %v, want EPROTONOSUPPORT", err)
	}
}

// TestSyncListsOnlyForNewNamespaces: Sync lists the namespaces again only
// for a namespace it does not follow yet, once; one that the listing does
// not find is not asked for again until the periodic listing.
func TestSyncListsOnlyForNewNamespaces(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(root+"/1/ns", 0o755); err != nil {
		t.Fatal(err)
	}
	// A stand-in for the initial namespace: the listing finds its inode;
	// its socket fails to open (not a namespace), which is counted and
	// retried, yet the namespace is followed.
	if err := os.WriteFile(root+"/1/ns/net", nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(root+"/1/ns/net", &st); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.ProcRoot, cfg.RunNetns = root, root+"/none"
	tb, _ := newTable(t, cfg)
	defer func() {
		for _, w := range tb.watches {
			w.close()
		}
	}()
	listings := func() float64 { return testutil.ToFloat64(tb.m.syncRescans) }
	known, gone := uint32(st.Ino), uint32(st.Ino)+1
	for i, c := range []struct {
		netns []uint32
		want  float64
	}{
		{[]uint32{known}, 1},       // not followed yet: listed
		{[]uint32{known}, 1},       // followed
		{[]uint32{known, gone}, 2}, // a new one: listed, not found
		{[]uint32{gone}, 2},        // not found last time: not again
		{nil, 2},
	} {
		tb.Sync(c.netns)
		if got := listings(); got != c.want {
			t.Errorf("Sync %d (%v): %v listings, want %v", i, c.netns, got, c.want)
		}
	}
	if _, ok := tb.watches[uint64(known)]; !ok {
		t.Errorf("namespace %d not followed after its listing", known)
	}
}
