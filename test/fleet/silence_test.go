package fleet

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/weir-project/weir/test/internal/harness"
)

// TestPrivilegedSilentPath: the path between the collector and the reducer
// goes silent (an nftables rule drops every packet of the reducer's port,
// as a dead node or a broken network does: no reset, no close) while held
// connections carry traffic and short connections open and close. The
// collector ends the stalled stream after --ack-timeout; once the path is
// back, its new session sends again what the reducer says it did not
// apply, and every byte and every opened connection is on /metrics
// exactly once.
func TestPrivilegedSilentPath(t *testing.T) {
	harness.RequireRoot(t)
	const (
		interval = time.Second
		silence  = 8 * time.Second
		conns    = 10
		request  = 2003
		response = 1009
		rounds   = 3
		churn    = 300
	)
	a, b := harness.BridgedHosts(t, "silent")
	w := harness.StartWeir(t, harness.WeirOptions{Interval: interval, CollectorArgs: []string{"--ack-timeout", "2s"}})
	cli, cliName, srvName := heldConnections(t, w, a, b, "s", conns, request, response)
	time.Sleep(2 * interval) // the first round is acknowledged

	_, port, err := net.SplitHostPort(w.GRPCAddr)
	if err != nil {
		t.Fatal(err)
	}
	unblock := silencePort(t, port)
	silent := time.Now()
	// Traffic the collector reports into the silent stream: more rounds on
	// the held connections, then short connections opened and closed.
	for range rounds {
		cli.Send(t, "more")
		cli.WaitLine(t, "done", 10*time.Second)
		time.Sleep(interval)
	}
	rcli, rsrv := shortConnections(t, a, b, churn, silence)
	time.Sleep(time.Until(silent.Add(silence)))
	unblock()
	back := time.Now()

	want := map[Edge]*Want{
		{cliName, srvName}: {Bytes: conns * (rounds + 1) * request, Opened: conns},
		{srvName, cliName}: {Bytes: conns * (rounds + 1) * response},
		{rcli, rsrv}:       {Bytes: churn * 100, Opened: churn},
		{rsrv, rcli}:       {Bytes: churn * 50},
	}
	deadline := back.Add(60 * time.Second)
	var exact time.Duration
	for {
		m, err := harness.Scrape(w.MetricsURL)
		if err != nil {
			t.Fatal(err)
		}
		got := metricsEdges(m)
		ours := make(map[Edge]*Want)
		for e := range want {
			if g := got[e]; g != nil {
				g.Packets, g.Active = 0, 0
				ours[e] = g
			}
		}
		d := diff(ours, want)
		if len(d) == 0 {
			exact = time.Since(back)
		}
		if len(d) == 0 || time.Now().After(deadline) {
			reportDiff(t, d)
			if len(d) > 0 {
				logLoss(t, m, w.CollectorMetricsURL)
			}
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	cm, err := harness.Scrape(w.CollectorMetricsURL)
	if err != nil {
		t.Fatal(err)
	}
	stalls, _ := cm.Value("weir_collector_stream_stalls_total", nil)
	resumed, _ := cm.Value("weir_collector_resumed_reports_total", nil)
	unacked, _ := cm.Value("weir_collector_batches_unacknowledged_total", nil)
	t.Logf("path silent %s: %v stalled sessions, %v batches unacknowledged, %v reports sent again; every edge exact %s after the path was back (0: never)",
		silence, stalls, unacked, resumed, exact.Round(time.Millisecond))
	if stalls < 1 {
		t.Errorf("weir_collector_stream_stalls_total = %v: the silent stream was not ended by --ack-timeout", stalls)
	}
}

// silencePort drops every TCP packet to or from port on this host, without
// a reset, until the returned function (or the test's end) lifts it.
func silencePort(t *testing.T, port string) func() {
	t.Helper()
	table := fmt.Sprintf("weirsilent%d", os.Getpid())
	rules := fmt.Sprintf(`table inet %s {
  chain out {
    type filter hook output priority 0;
    tcp dport %[2]s drop
    tcp sport %[2]s drop
  }
}`, table, port)
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v\n%s", err, out)
	}
	done := false
	lift := func() {
		if done {
			return
		}
		done = true
		if out, err := exec.Command("nft", "delete", "table", "inet", table).CombinedOutput(); err != nil {
			t.Errorf("nft delete table: %v\n%s", err, out)
		}
	}
	t.Cleanup(lift)
	return lift
}
