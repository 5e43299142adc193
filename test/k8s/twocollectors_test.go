package k8s

import (
	"context"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/weir-project/weir/test/internal/harness"
)

// TestPrivilegedEndToEndTwoCollectors: two collectors, each with its own
// --node-name and restricted by --netns to the network namespace of one
// pod, report the two ends of the connections between a pod of checkout
// (node-a) and a pod of cart (node-b). The reducer joins the two ends
// (pod IPs are fleet addresses): /metrics shows deployment → deployment
// across the two nodes and zones with the exact bytes, each byte once,
// and each collector saw its own end and ignored the other's namespace.
func TestPrivilegedEndToEndTwoCollectors(t *testing.T) {
	harness.RequireRoot(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	a, b := harness.BridgedHosts(t, "k8s2")
	cp := StartControlPlane(t, 1)
	c := &Cluster{ControlPlane: cp, t: t, ctx: ctx}
	token := cp.ApplyRBAC(t, ctx, rbacPath())
	w := harness.StartWeir(t, harness.WeirOptions{NoCollector: true, ReducerArgs: []string{"--aggregation=pod"}})
	StartWatcher(t, "watcher", cp.WriteKubeconfig(t, "watcher", 0, token), w.GRPCAddr)
	r := dialReducer(t, w.GRPCAddr)

	c.CreateNode("node-a", "198.18.254.1", "zone-1")
	c.CreateNode("node-b", "198.18.254.2", "zone-2")
	c.CreateDeployment("shop", "checkout")
	c.CreateDeployment("store", "cart")
	cartPod := c.RunPod("store", "cart", "node-b", b.IPv4, b.IPv6)
	checkoutPod := c.RunPod("shop", "checkout", "node-a", a.IPv4, a.IPv6)
	r.Eventually(t, "pods", 20*time.Second, map[string]string{
		a.IPv4: "deployment/checkout@shop zone=zone-1 pod=" + checkoutPod,
		b.IPv4: "deployment/cart@store zone=zone-2 pod=" + cartPod,
	})

	var metrics [2]string
	for i, h := range []struct{ node, ns string }{{"node-a", a.NS}, {"node-b", b.NS}} {
		port := harness.FreePort(t)
		metrics[i] = "http://127.0.0.1:" + strconv.Itoa(port) + "/metrics"
		harness.StartCollector(t, w.GRPCAddr, port, time.Second, "--node-name", h.node, "--netns", "/run/netns/"+h.ns)
	}

	srv, cli := peers(t)
	const (
		conns    = 3
		request  = 100_003
		response = 50_001
	)
	listen := net.JoinHostPort(b.IPv4, "8080")
	s := harness.Start(t, "flowsrv", b.Exec(srv, "-listen", listen, "-conns", strconv.Itoa(conns),
		"-request-bytes", strconv.Itoa(request), "-response-bytes", strconv.Itoa(response))...)
	s.WaitLine(t, "listening", 10*time.Second)
	cl := harness.Start(t, "flowcli", a.Exec(cli, "-connect", listen, "-conns", strconv.Itoa(conns),
		"-request-bytes", strconv.Itoa(request), "-response-bytes", strconv.Itoa(response))...)
	if err := cl.Wait(20 * time.Second); err != nil {
		t.Fatalf("flowcli: %v", err)
	}
	_ = s.Wait(10 * time.Second)

	up := map[string]string{
		"src_workload": "checkout", "src_kind": "deployment", "src_namespace": "shop", "src_zone": "zone-1",
		"src_node": "node-a", "src_pod": checkoutPod,
		"dst_workload": "cart", "dst_kind": "deployment", "dst_namespace": "store", "dst_zone": "zone-2",
		"dst_node": "node-b", "dst_pod": cartPod,
	}
	down := map[string]string{}
	for k, v := range up {
		if k[:4] == "src_" {
			down["dst_"+k[4:]] = v
		} else {
			down["src_"+k[4:]] = v
		}
	}
	check := func(m harness.Metrics) bool {
		u, _ := m.Value("weir_tcp_bytes_total", up)
		d, _ := m.Value("weir_tcp_bytes_total", down)
		o, _ := m.Value("weir_tcp_connections_opened_total", up)
		return u == conns*request && d == conns*response && o == conns
	}
	harness.WaitFor(t, w.MetricsURL, 20*time.Second, "checkout (node-a) → cart (node-b), each byte once", check)
	time.Sleep(3 * time.Second) // more reports and the join window: nothing may be added
	m, err := harness.Scrape(w.MetricsURL)
	if err != nil {
		t.Fatal(err)
	}
	if !check(m) {
		u, _ := m.Value("weir_tcp_bytes_total", up)
		d, _ := m.Value("weir_tcp_bytes_total", down)
		t.Errorf("after the join window: %v bytes up, %v down; want %d and %d", u, d, conns*request, conns*response)
	}
	if got := m.Sum("weir_tcp_bytes_total", map[string]string{"src_workload": "checkout"}); got != conns*request {
		t.Errorf("%v bytes from checkout in all, want %d: counted twice or to another end", got, conns*request)
	}
	if got := m.Sum("weir_tcp_bytes_total", map[string]string{"src_workload": "cart"}); got != conns*response {
		t.Errorf("%v bytes from cart in all, want %d: counted twice or to another end", got, conns*response)
	}

	// Each collector reported its own end: it saw the connections close
	// in its namespace, and ignored the sockets of the others.
	for i, url := range metrics {
		cm, err := harness.Scrape(url)
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := cm.Value("weir_collector_events_total", map[string]string{"kind": "close"}); got < conns {
			t.Errorf("collector %d saw %v closes in its namespace, want at least %d", i, got, conns)
		}
		if got := cm.Sum("weir_collector_netns_ignored_total", nil); got == 0 {
			t.Errorf("collector %d ignored no socket of another namespace (its own reports to the reducer are one)", i)
		}
	}
}
