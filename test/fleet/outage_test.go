package fleet

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/weir-project/weir/test/internal/harness"
)

// namedCopy copies bin under name into a temporary directory.
func namedCopy(t *testing.T, bin, name string) string {
	t.Helper()
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// heldConnections starts a server in b and a client in a that holds conns
// connections to it, each carrying one round of request and response
// bytes, and waits until the reducer of w counts the round. Their
// workloads are named prefix+"cli"/"srv" and the test's pid. The client
// sends one more round on each "more".
func heldConnections(t *testing.T, w *harness.Weir, a, b harness.Host, prefix string, conns, request, response int) (cli *harness.Process, cliName, srvName string) {
	t.Helper()
	bin := harness.Binaries(t)
	srvName, cliName = prefix+"srv"+strconv.Itoa(os.Getpid()), prefix+"cli"+strconv.Itoa(os.Getpid())
	listen := net.JoinHostPort(b.IPv4, "8080")
	srv := harness.Start(t, srvName, b.Exec(namedCopy(t, filepath.Join(bin, "flowsrv"), srvName),
		"-listen", listen, "-conns", strconv.Itoa(conns), "-rounds", "0",
		"-request-bytes", strconv.Itoa(request), "-response-bytes", strconv.Itoa(response))...)
	srv.WaitLine(t, "listening", 10*time.Second)
	cli = harness.Start(t, cliName, a.Exec(namedCopy(t, filepath.Join(bin, "flowcli"), cliName),
		"-connect", listen, "-conns", strconv.Itoa(conns), "-hold", "-more",
		"-request-bytes", strconv.Itoa(request), "-response-bytes", strconv.Itoa(response))...)
	cli.WaitLine(t, "done", 10*time.Second)
	up := map[string]string{"src_workload": cliName, "dst_workload": srvName}
	harness.WaitFor(t, w.MetricsURL, 10*time.Second, "the first round", func(m harness.Metrics) bool {
		v, _ := m.Value("weir_tcp_bytes_total", up)
		return v == float64(conns*request)
	})
	return cli, cliName, srvName
}

// shortConnections makes n connections from a to a server in b, one at a
// time, each with 100 bytes up and 50 down, and returns the workload names
// of the client and the server once all are done (within limit).
func shortConnections(t *testing.T, a, b harness.Host, n int, limit time.Duration) (cliName, srvName string) {
	t.Helper()
	rcli, rsrv := peerCopies(t)
	rlisten := net.JoinHostPort(b.IPv4, "8081")
	srv := harness.Start(t, filepath.Base(rsrv), b.Exec("env", roleEnv+"=server", "WEIR_FLEET_LISTEN="+rlisten,
		"WEIR_FLEET_REQUEST=100", "WEIR_FLEET_RESPONSE=50", rsrv)...)
	srv.WaitLine(t, "listening", 10*time.Second)
	cli := harness.Start(t, filepath.Base(rcli), a.Exec("env", roleEnv+"=client", "WEIR_FLEET_CONNECT="+rlisten,
		"WEIR_FLEET_CONNS="+strconv.Itoa(n), "WEIR_FLEET_DIALERS=1", "WEIR_FLEET_REQUEST=100", "WEIR_FLEET_RESPONSE=50", rcli)...)
	if err := cli.Wait(limit); err != nil {
		t.Fatalf("short connections: %v\n%s", err, cli.Stderr())
	}
	return filepath.Base(rcli), filepath.Base(rsrv)
}

// TestPrivilegedOutage: the reducer is away for 60 s while held connections
// carry traffic and short connections come and go; once it is back, the
// collector is connected again and the held connections' bytes of the
// outage are on /metrics within two report intervals, exactly, and the
// short connections' bytes too.
func TestPrivilegedOutage(t *testing.T) {
	harness.RequireRoot(t)
	outage := 60 * time.Second
	if testing.Short() {
		outage = 10 * time.Second
	}
	const (
		interval = time.Second
		conns    = 20
		request  = 3001
		response = 1001
		rounds   = 5
	)
	a, b := harness.BridgedHosts(t, "outage")
	w := harness.StartWeir(t, harness.WeirOptions{Interval: interval, CollectorArgs: []string{"--buffer-bytes", strconv.Itoa(256 << 20),
		// The report after the outage is larger than this: it goes out split
		// into several batches, which must add up exactly.
		"--max-batch-bytes", strconv.Itoa(64 << 10)},
		// Fewer than the report's 10,000 closed sockets: each piece closes
		// the sockets it announces, so the reducer never holds them all.
		ReducerArgs: []string{"--max-session-sockets", "8192"}})
	cli, cliName, srvName := heldConnections(t, w, a, b, "o", conns, request, response)
	time.Sleep(3 * interval) // nothing of the first round is left to report

	w.Reducer.Stop(10 * time.Second)
	stopped := time.Now()
	// Rounds on the held connections while the reducer is away.
	for range rounds {
		cli.Send(t, "more")
		cli.WaitLine(t, "done", 10*time.Second)
		time.Sleep(outage / (2 * rounds))
	}
	// Then churn: short connections. The collector keeps the closed
	// sockets of an outage up to --buffer-bytes and drops the oldest first;
	// it sees the whole machine, where other tests may churn too, so they
	// come last, with room to spare.
	const churn = 5000
	rcli, rsrv := shortConnections(t, a, b, churn, outage)
	time.Sleep(time.Until(stopped.Add(outage)))

	w.RestartReducer(t)
	back := time.Now()
	want := map[Edge]*Want{
		{cliName, srvName}: {Bytes: conns * rounds * request},
		{srvName, cliName}: {Bytes: conns * rounds * response},
		{rcli, rsrv}:       {Bytes: churn * 100, Opened: churn},
		{rsrv, rcli}:       {Bytes: churn * 50},
	}
	var held time.Duration
	deadline := back.Add(30 * time.Second)
	for {
		m, err := harness.Scrape(w.MetricsURL)
		if err != nil {
			t.Fatal(err)
		}
		got := metricsEdges(m)
		ours := make(map[Edge]*Want)
		for e := range want {
			if g := got[e]; g != nil {
				g.Packets = 0
				if e.Src == cliName || e.Src == srvName {
					g.Opened, g.Active = 0, 0 // existing connections, announced again
				}
				ours[e] = g
			}
		}
		upOK := ours[Edge{cliName, srvName}] != nil && *ours[Edge{cliName, srvName}] == *want[Edge{cliName, srvName}] &&
			ours[Edge{srvName, cliName}] != nil && *ours[Edge{srvName, cliName}] == *want[Edge{srvName, cliName}]
		if upOK && held == 0 {
			held = time.Since(back)
		}
		d := diff(ours, want)
		if len(d) == 0 || time.Now().After(deadline) {
			reportDiff(t, d)
			if len(d) > 0 {
				for e, v := range got {
					t.Logf("edge %s -> %s: %+v", e.Src, e.Dst, *v)
				}
				logLoss(t, m, w.CollectorMetricsURL)
			}
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("reducer away %s; held connections' bytes on /metrics %s after it was ready again", outage, held.Round(time.Millisecond))
	cm, err := harness.Scrape(w.CollectorMetricsURL)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := cm.Value("weir_collector_split_reports_total", nil); v < 1 {
		t.Errorf("weir_collector_split_reports_total %v: the report after the outage was not split", v)
	}
	if held == 0 || held > 2*interval {
		t.Errorf("held connections' bytes took %s after the reducer's return, want at most two intervals (%s)", held.Round(time.Millisecond), 2*interval)
	}
}
