package fleet

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weir-project/weir/test/internal/harness"
)

// The port reuse peers are copies of this test binary under names of this
// process, so that their edges (named by comm) are this process's only;
// TestMain runs the role that WEIR_FLEET_ROLE names instead of the tests.
const roleEnv = "WEIR_FLEET_ROLE"

// runRole runs a peer role and reports whether it ran one.
func runRole() bool {
	role := os.Getenv(roleEnv)
	if role == "" {
		return false
	}
	var err error
	switch role {
	case "server":
		err = reuseServer(os.Getenv("WEIR_FLEET_LISTEN"), atoi("WEIR_FLEET_REQUEST"), atoi("WEIR_FLEET_RESPONSE"))
	case "client":
		err = reuseClient(os.Getenv("WEIR_FLEET_CONNECT"), atoi("WEIR_FLEET_CONNS"), atoi("WEIR_FLEET_DIALERS"),
			atoi("WEIR_FLEET_REQUEST"), atoi("WEIR_FLEET_RESPONSE"))
	case "grpcfloor":
		err = floorServer()
	default:
		err = fmt.Errorf("unknown role %q", role)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, role+":", err)
		os.Exit(1)
	}
	return true
}

func atoi(env string) int {
	n, _ := strconv.Atoi(os.Getenv(env))
	return n
}

// reuseServer answers each connection's request with the response and
// closes first, so that the server's end holds TIME_WAIT and the client's
// port is free again at once.
func reuseServer(listen string, request, response int) error {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	fmt.Println("listening")
	resp := make([]byte, response)
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			if _, err := io.CopyN(io.Discard, c, int64(request)); err != nil {
				return
			}
			_, _ = c.Write(resp)
		}()
	}
}

// reuseClient makes conns connections with dialers dial loops: each sends
// the request, reads the response, waits for the server's close and
// closes. It prints "done N rate R" with the connections per second.
func reuseClient(addr string, conns, dialers, request, response int) error {
	var next, failed atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	start := time.Now()
	for range dialers {
		wg.Go(func() {
			req, resp := make([]byte, request), make([]byte, response+1)
			for next.Add(1) <= int64(conns) {
				err := func() error {
					c, err := net.DialTimeout("tcp", addr, 5*time.Second)
					if err != nil {
						return err
					}
					defer c.Close()
					if _, err := c.Write(req); err != nil {
						return err
					}
					if _, err := io.ReadFull(c, resp[:response]); err != nil {
						return err
					}
					if n, err := c.Read(resp[response:]); n != 0 || !errors.Is(err, io.EOF) {
						return fmt.Errorf("after the response: %d bytes, %v", n, err)
					}
					return nil
				}()
				if err != nil {
					failed.Add(1)
					once.Do(func() { firstErr = err })
				}
			}
		})
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		return fmt.Errorf("%d of %d connections failed, the first: %w", n, conns, firstErr)
	}
	el := time.Since(start)
	fmt.Printf("done %d rate %.0f\n", conns, float64(conns)/el.Seconds())
	return nil
}

// peerCopies copies this test binary under two names of this process.
func peerCopies(t *testing.T) (cli, srv string) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cli = filepath.Join(dir, fmt.Sprintf("rcli%d", os.Getpid()))
	srv = filepath.Join(dir, fmt.Sprintf("rsrv%d", os.Getpid()))
	for _, p := range []string{cli, srv} {
		if err := os.WriteFile(p, b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return cli, srv
}

// TestPrivilegedPortReuse: 200,000 connections as fast as this machine
// makes them between two namespaces through a bridge, through 64 client
// ports, so that the kernel reuses each client port many times a second;
// the real collector and reducer join every one: the bytes of the client →
// server edge and the reverse one are exact, every connection is opened on
// the client → server edge, and no other edge names either peer.
// WEIR_REUSE_CONNECTIONS sets the number of connections.
func TestPrivilegedPortReuse(t *testing.T) {
	harness.RequireRoot(t)
	conns := 200_000
	if testing.Short() {
		conns = 20_000
	}
	// WEIR_REUSE_CONNECTIONS sets the count, e.g. millions to hunt a rare
	// loss.
	if v := os.Getenv("WEIR_REUSE_CONNECTIONS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("WEIR_REUSE_CONNECTIONS=%q", v)
		}
		conns = n
	}
	const request, response = 100, 50
	a, b := harness.BridgedHosts(t, "reuse")
	// 64 client ports; without timestamps the server's TIME_WAIT takes a
	// new SYN of the same 4-tuple whose sequence number is higher.
	a.Sysctl(t, "net.ipv4.ip_local_port_range", "40000 40063")
	a.Sysctl(t, "net.ipv4.tcp_timestamps", "0")
	b.Sysctl(t, "net.ipv4.tcp_timestamps", "0")
	// At ~10,000 connections a second, the closed sockets of one interval
	// need more than the default 8 MiB buffer.
	w := harness.StartWeir(t, harness.WeirOptions{Interval: time.Second, ReducerArgs: []string{"--max-series", "100000"},
		CollectorArgs: []string{"--buffer-bytes", strconv.Itoa(64 << 20)}})
	cliBin, srvBin := peerCopies(t)
	cliName, srvName := filepath.Base(cliBin), filepath.Base(srvBin)
	listen := net.JoinHostPort(b.IPv4, "8080")

	env := []string{"env", roleEnv + "=server", "WEIR_FLEET_LISTEN=" + listen,
		"WEIR_FLEET_REQUEST=" + strconv.Itoa(request), "WEIR_FLEET_RESPONSE=" + strconv.Itoa(response)}
	srv := harness.Start(t, srvName, b.Exec(append(env, srvBin)...)...)
	srv.WaitLine(t, "listening", 10*time.Second)
	// Let the collector's table learn the server's process before the load.
	time.Sleep(1500 * time.Millisecond)

	start := time.Now()
	env = []string{"env", roleEnv + "=client", "WEIR_FLEET_CONNECT=" + listen,
		"WEIR_FLEET_CONNS=" + strconv.Itoa(conns), "WEIR_FLEET_DIALERS=16",
		"WEIR_FLEET_REQUEST=" + strconv.Itoa(request), "WEIR_FLEET_RESPONSE=" + strconv.Itoa(response)}
	cli := harness.Start(t, cliName, a.Exec(append(env, cliBin)...)...)
	line := cli.WaitLine(t, "done", 150*time.Second+time.Duration(conns/2000)*time.Second)
	t.Logf("%s in %s (%s)", line, time.Since(start).Round(time.Millisecond), "connections per second")

	want := map[Edge]*Want{
		{cliName, srvName}: {Bytes: uint64(conns) * request, Opened: uint64(conns)},
		{srvName, cliName}: {Bytes: uint64(conns) * response},
	}
	ours := func(m harness.Metrics) map[Edge]*Want {
		out := make(map[Edge]*Want)
		for e, v := range metricsEdges(m) {
			if e.Src == cliName || e.Dst == cliName || e.Src == srvName || e.Dst == srvName ||
				e.Src == a.IPv4 || e.Dst == a.IPv4 || e.Src == b.IPv4 || e.Dst == b.IPv4 {
				v.Packets = 0
				out[e] = v
			}
		}
		return out
	}
	var d []string
	deadline := time.Now().Add(30 * time.Second)
	var m harness.Metrics
	for {
		var err error
		if m, err = harness.Scrape(w.MetricsURL); err != nil {
			t.Fatal(err)
		}
		if d = diff(ours(m), want); len(d) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	reportDiff(t, d)
	if len(d) > 0 {
		// Everything there is to tell where a connection went: every
		// edge, and every counter and gauge of both processes.
		for e, v := range metricsEdges(m) {
			t.Logf("edge %s -> %s: %+v", e.Src, e.Dst, *v)
		}
		logCounters(t, m, w.CollectorMetricsURL)
	}
	for _, name := range []string{"weir_reducer_flow_conflicts_total", "weir_reducer_flows_unjoined_total"} {
		// Other processes' traffic counts too: a figure, not a check.
		v, _ := m.Value(name, nil)
		t.Logf("%s %v", name, v)
	}
}

// logCounters logs every nonzero counter and gauge of the reducer and the
// collector.
func logCounters(t *testing.T, reducer harness.Metrics, collectorURL string) {
	t.Helper()
	col, err := harness.Scrape(collectorURL)
	if err != nil {
		t.Log(err)
	}
	for _, m := range []harness.Metrics{reducer, col} {
		for _, name := range slices.Sorted(maps.Keys(m)) {
			if strings.HasPrefix(name, "go_") || strings.HasPrefix(name, "process_") || strings.HasPrefix(name, "weir_tcp_") {
				continue
			}
			for _, s := range m[name].GetMetric() {
				if v := s.GetCounter().GetValue() + s.GetGauge().GetValue(); v != 0 {
					t.Logf("%s %v %v", name, s.GetLabel(), v)
				}
			}
		}
	}
}

// logLoss logs the losses that the reducer and the collector report.
func logLoss(t *testing.T, reducer harness.Metrics, collectorURL string) {
	t.Helper()
	col, err := harness.Scrape(collectorURL)
	if err != nil {
		t.Log(err)
	}
	for _, m := range []harness.Metrics{reducer, col} {
		for name, mf := range m {
			if !strings.Contains(name, "loss") && !strings.Contains(name, "full") && !strings.Contains(name, "drop") &&
				!strings.Contains(name, "events") && !strings.Contains(name, "cap") && !strings.Contains(name, "regress") &&
				!strings.Contains(name, "missed") && !strings.Contains(name, "untracked") {
				continue
			}
			for _, s := range mf.GetMetric() {
				v := s.GetCounter().GetValue() + s.GetGauge().GetValue()
				if v != 0 {
					t.Logf("%s %v %v", name, s.GetLabel(), v)
				}
			}
		}
	}
}
