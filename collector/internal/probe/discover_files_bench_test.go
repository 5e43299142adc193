package probe

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// benchConns is how many connections BenchmarkDiscoverStartup opens in
// its namespace: twice as many sockets.
const benchConns = 10_000

// BenchmarkDiscoverStartup: the start-up discovery of benchConns
// connections (and their listener) opened in a fresh network namespace
// before the probe is loaded, by the three ways Discover can walk:
//
//   - files: the iter/task_file walk over the open files of every process
//     on the machine (discoverFiles, no setns);
//   - setns-one: iter/tcp in the test namespace alone, entered with setns;
//   - setns-all: iter/tcp in every network namespace on the machine, as
//     Discover does with CAP_SYS_ADMIN (namespace listing included).
//
// Each iteration loads a fresh probe for each way, in alternating order,
// so that every walk finds the sockets untracked; the loads are not timed.
// The ns/op of each way is reported as files-ns/op etc., and the most
// connected sockets of the namespace a walk missed as files-missed etc.
// (files must miss none). The files way includes loading its program
// (iter/tcp is loaded by Open): files-load-ns/op of it.
func BenchmarkDiscoverStartup(b *testing.B) {
	requirePrivileged(b)
	ns := benchNetNS(b)
	holdConnections(b, ns, benchConns)

	var load time.Duration // of the files way's program, included in files-ns/op
	ways := []struct {
		name string
		walk func(p *Probe) ([]Event, error)
	}{
		{"files", func(p *Probe) ([]Event, error) {
			start := time.Now()
			w, err := p.loadFilesWalk()
			load += time.Since(start)
			if err != nil {
				return nil, err
			}
			defer w.close()
			return p.walkFiles(w)
		}},
		{"setns-one", func(p *Probe) ([]Event, error) {
			evs, errs := p.discoverAll([]string{ns.path})
			return evs, joinErrs(errs)
		}},
		{"setns-all", func(p *Probe) ([]Event, error) {
			evs, errs := p.discoverAll(netnsPaths(p.procRoot))
			return evs, joinErrs(errs)
		}},
	}
	total := make([]time.Duration, len(ways))
	// iter/tcp marks a socket discovered before its record is written, so
	// the socket whose record overflows a read's 32 KiB is not written
	// again by the next read: one in about 227 is missed (tcp_iter.c).
	missed := make([]int, len(ways))
	walk := func(i int) {
		p, err := Open(DefaultConfig())
		if err != nil {
			b.Fatalf("Open: %v", err)
		}
		defer p.Close()
		p.mu.Lock()
		defer p.mu.Unlock()
		start := time.Now()
		evs, err := ways[i].walk(p)
		total[i] += time.Since(start)
		if err != nil {
			b.Fatalf("%s: %v", ways[i].name, err)
		}
		found := 0
		for _, ev := range evs {
			if ev.NetNS == ns.ino && ev.Kind == EventExisting {
				found++
			}
		}
		missed[i] = max(missed[i], 2*benchConns-found)

		if found != 2*benchConns && ways[i].name == "files" {
			b.Fatalf("%s found %d connected sockets in the namespace, want %d", ways[i].name, found, 2*benchConns)
		}
	}
	b.ResetTimer()
	for n := 0; b.Loop(); n++ {
		for k := range ways {
			// Rotate the order from one iteration to the next.
			walk((k + n) % len(ways))
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(load.Nanoseconds())/float64(b.N), "files-load-ns/op")
	for i, w := range ways {
		b.ReportMetric(float64(total[i].Nanoseconds())/float64(b.N), w.name+"-ns/op")
		b.ReportMetric(float64(missed[i]), w.name+"-missed")
	}
}

// holdBatch is how many connections one holder process keeps (both ends),
// within this process's descriptor limit while it passes them on.
const holdBatch = 4000

// holdConnections opens n connections in ns to a listener there and hands
// both ends of each to sleep(1) processes, holdBatch connections each,
// which keep them until the benchmark ends: the sockets belong to those
// processes, and this one's descriptor limit does not bound n.
func holdConnections(b *testing.B, ns testNetNS, n int) {
	b.Helper()
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		b.Fatal(err)
	}
	var ln net.Listener
	err = ns.do(func() error {
		var lc net.ListenConfig
		lc.SetMultipathTCP(false)
		var err error
		ln, err = lc.Listen(b.Context(), "tcp4", netip.AddrPortFrom(testAddr, 0).String())
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	for done := 0; done < n; {
		files := make([]*os.File, 0, 2*holdBatch)
		err := ns.do(func() error {
			for ; done < n && len(files) < 2*holdBatch; done++ {
				cp, err := dialWith(&net.Dialer{}, ln)
				if err != nil {
					return err
				}
				for _, c := range []net.Conn{cp.client, cp.server} {
					f, err := c.(*net.TCPConn).File()
					c.Close()
					if err != nil {
						return err
					}
					files = append(files, f)
				}
			}
			return nil
		})
		if err == nil {
			cmd := exec.Command(sleep, "infinity")
			cmd.ExtraFiles = files
			if err = cmd.Start(); err == nil {
				b.Cleanup(func() {
					_ = cmd.Process.Kill()
					_ = cmd.Wait()
				})
			}
		}
		for _, f := range files {
			f.Close()
		}
		if err != nil {
			b.Fatalf("%d connections in %s: %v", n, ns.path, err)
		}
	}
}

// joinErrs is nil for no errors, else the first with a count.
func joinErrs(errs []error) error {
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("%d errors, first: %w", len(errs), errs[0])
}

// benchNetNS is newNetNS for a benchmark.
func benchNetNS(b *testing.B) testNetNS {
	b.Helper()
	name := fmt.Sprintf("weir-probe-bench-%d", os.Getpid())
	ip := func(args ...string) {
		b.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			b.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	ip("netns", "add", name)
	b.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	ip("-n", name, "link", "set", "lo", "up")
	ip("-n", name, "addr", "add", testAddr.String()+"/32", "dev", "lo")
	ns := testNetNS{path: "/run/netns/" + name}
	var st unix.Stat_t
	if err := unix.Stat(ns.path, &st); err != nil {
		b.Fatal(err)
	}
	ns.ino = uint32(st.Ino)
	return ns
}
