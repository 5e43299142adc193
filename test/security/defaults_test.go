package security

import (
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
	"github.com/weir-project/weir/test/internal/harness"
)

// waitHTTPIn polls url from namespace ns until it answers 200.
func waitHTTPIn(t *testing.T, ns, url string) {
	t.Helper()
	c := httpIn(ns)
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := c.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s did not answer 200 from %s", url, ns)
}

// scrapeIn scrapes a /metrics URL with connections made in namespace ns.
func scrapeIn(t *testing.T, ns, url string) harness.Metrics {
	t.Helper()
	var err error
	for range 50 {
		var m harness.Metrics
		if m, err = scrapeWith(httpIn(ns), url); err == nil {
			return m
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("scrape %s from %s: %v", url, ns, err)
	return nil
}

func scrapeWith(c *http.Client, url string) (harness.Metrics, error) {
	resp, err := c.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mf, err := p.TextToMetricFamilies(resp.Body)
	return harness.Metrics(mf), err
}

// waitIn scrapes url from namespace ns until cond holds.
func waitIn(t *testing.T, ns, url string, timeout time.Duration, what string, cond func(harness.Metrics) bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if m, err := scrapeWith(httpIn(ns), url); err == nil && cond(m) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting for %s", timeout, what)
}

// TestPrivilegedLoopbackByDefault: a reducer started with no flags at all
// cannot be reached from another network namespace, neither its gRPC port
// (no fake edge can be injected) nor its HTTP port, while local clients
// work; with --insecure-listen it can, the warning is logged, the gauge is
// 1, and the per-peer connection limit holds.
func TestPrivilegedLoopbackByDefault(t *testing.T) {
	harness.RequireRoot(t)
	a, b := harness.TwoHosts(t, "sec")
	reducer := filepath.Join(harness.Binaries(t), "weir-reducer")
	ctx := t.Context()
	fromB := inNetNS(b.NS)

	r := harness.Start(t, "weir-reducer", a.Exec(reducer)...)
	waitHTTPIn(t, a.NS, "http://127.0.0.1:7010/readyz")
	for _, port := range []string{"7000", "7010"} {
		c, err := fromB(ctx, "tcp", net.JoinHostPort(a.IPv4, port))
		if err == nil {
			c.Close()
			t.Errorf("port %s of a reducer without flags is reachable from another namespace", port)
		}
	}
	if err := session(ctx, ingestClient(t, net.JoinHostPort(a.IPv4, "7000"), fromB, nil), hello("rq-node", 1), injected()); err == nil {
		t.Error("a batch from another namespace was acknowledged")
	}
	// On loopback, plaintext works as before (make run).
	if err := session(ctx, ingestClient(t, "127.0.0.1:7000", inNetNS(a.NS), nil), hello("local-node", 1), &ingestv1.Batch{Sequence: 1}); err != nil {
		t.Fatalf("a local collector: %v", err)
	}
	m := scrapeIn(t, a.NS, "http://127.0.0.1:7010/metrics")
	if v, ok := m.Value("weir_reducer_insecure", nil); !ok || v != 0 {
		t.Errorf("weir_reducer_insecure = %v (%v), want 0", v, ok)
	}
	if strings.Contains(r.Stderr(), "plaintext gRPC beyond loopback") {
		t.Error("warning logged without --insecure-listen")
	}
	r.Stop(10 * time.Second)

	// --insecure-listen: reachable, warned, counted; at most 4 connections
	// from one peer.
	r = harness.Start(t, "weir-reducer", a.Exec(reducer, "--insecure-listen", "--max-conns-per-peer", "4")...)
	waitHTTPIn(t, b.NS, fmt.Sprintf("http://%s/readyz", net.JoinHostPort(a.IPv4, "7010")))
	metricsURL := fmt.Sprintf("http://%s/metrics", net.JoinHostPort(a.IPv4, "7010"))
	cl := ingestClient(t, net.JoinHostPort(a.IPv4, "7000"), fromB, nil)
	if err := session(ctx, cl, hello("rq-node", uint64(time.Now().UnixNano())), injected()); err != nil {
		t.Fatalf("--insecure-listen: a batch from another namespace: %v", err)
	}
	if !strings.Contains(r.Stderr(), "plaintext gRPC beyond loopback (--insecure-listen)") {
		t.Errorf("no warning in the log:\n%s", r.Stderr())
	}
	m = scrapeIn(t, b.NS, metricsURL)
	if v, _ := m.Value("weir_reducer_insecure", nil); v != 1 {
		t.Errorf("weir_reducer_insecure = %v, want 1", v)
	}
	before := m.Sum("weir_reducer_connections_refused_total", map[string]string{"reason": "max_conns_per_peer"})
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range 10 {
		c, err := fromB(ctx, "tcp", net.JoinHostPort(a.IPv4, "7000"))
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	waitIn(t, b.NS, metricsURL, 10*time.Second, "connections over the per-peer limit refused", func(m harness.Metrics) bool {
		open, _ := m.Value("weir_reducer_connections_open", nil)
		refused := m.Sum("weir_reducer_connections_refused_total", map[string]string{"reason": "max_conns_per_peer"}) - before
		return open <= 4 && refused >= 6
	})
	if !r.Alive() {
		t.Fatal("the reducer exited")
	}
}
