package k8s

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weir-project/weir/test/internal/harness"
)

// TestPrivilegedEndToEndDeployments: two network namespaces stand in for
// pods of two Deployments in two Kubernetes namespaces, with the real
// collector's eBPF, the real watcher and the real reducer at
// --aggregation=pod. A client in one calls a server in the other directly,
// then through the ClusterIP of the server's Service (a DNAT rule in the
// server's namespace stands in for kube-proxy; the collector follows
// conntrack and reports the client's socket with its translation). /metrics
// shows deployment → deployment, each end's pod, node and zone, with the
// exact bytes of both paths, and nothing to the ClusterIP.
func TestPrivilegedEndToEndDeployments(t *testing.T) {
	harness.RequireRoot(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	a, b := harness.BridgedHosts(t, "k8se")
	cp := StartControlPlane(t, 1)
	c := &Cluster{ControlPlane: cp, t: t, ctx: ctx}
	token := cp.ApplyRBAC(t, ctx, rbacPath())
	w := harness.StartWeir(t, harness.WeirOptions{Interval: time.Second, ReducerArgs: []string{"--aggregation=pod"}})
	StartWatcher(t, "watcher", cp.WriteKubeconfig(t, "watcher", 0, token), w.GRPCAddr)
	r := dialReducer(t, w.GRPCAddr)

	c.CreateNode("node-a", "198.18.254.1", "zone-1")
	c.CreateDeployment("shop", "checkout")
	c.CreateDeployment("store", "cart")
	cartPod := c.RunPod("store", "cart", "node-a", b.IPv4, b.IPv6)
	r.Eventually(t, "server pod", 20*time.Second, map[string]string{b.IPv4: "deployment/cart@store zone=zone-1 pod=" + cartPod})
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

	// The client's pod gets its IPs, and the client connects at once: the
	// time until /metrics names it is the time from a pod's creation (as a
	// kubelet reports its IPs) to its name on the reducer's flows.
	checkoutPod := c.RunPod("shop", "checkout", "node-a", a.IPv4, a.IPv6)
	created := time.Now()
	cl := harness.Start(t, "flowcli", a.Exec(cli, "-connect", listen, "-conns", strconv.Itoa(conns), "-hold",
		"-request-bytes", strconv.Itoa(request), "-response-bytes", strconv.Itoa(response))...)
	cl.WaitLine(t, "done", 20*time.Second)

	up := map[string]string{
		"src_workload": "checkout", "src_kind": "deployment", "src_namespace": "shop", "src_zone": "zone-1",
		"src_node": "node-a", "src_pod": checkoutPod,
		"dst_workload": "cart", "dst_kind": "deployment", "dst_namespace": "store", "dst_zone": "zone-1",
		"dst_node": "node-a", "dst_pod": cartPod,
	}
	down := map[string]string{}
	for k, v := range up {
		if k[:4] == "src_" {
			down["dst_"+k[4:]] = v
		} else {
			down["src_"+k[4:]] = v
		}
	}
	harness.WaitFor(t, w.MetricsURL, 15*time.Second, "checkout → cart with every byte", func(m harness.Metrics) bool {
		u, _ := m.Value("weir_tcp_bytes_total", up)
		d, _ := m.Value("weir_tcp_bytes_total", down)
		o, _ := m.Value("weir_tcp_connections_opened_total", up)
		return u == conns*request && d == conns*response && o == conns
	})
	t.Logf("pod IPs reported → its Deployment on the reducer's flows: %s (collector interval 1s)", time.Since(created).Round(10*time.Millisecond))
	cl.CloseStdin()
	if err := cl.Wait(10 * time.Second); err != nil {
		t.Fatalf("flowcli: %v", err)
	}
	_ = s.Wait(10 * time.Second)
	time.Sleep(2 * time.Second) // two more reports: nothing may be added at close
	m, err := harness.Scrape(w.MetricsURL)
	if err != nil {
		t.Fatal(err)
	}
	if u, _ := m.Value("weir_tcp_bytes_total", up); u != conns*request {
		t.Errorf("bytes checkout → cart after close = %v, want %d", u, conns*request)
	}
	if d, _ := m.Value("weir_tcp_bytes_total", down); d != conns*response {
		t.Errorf("bytes cart → checkout after close = %v, want %d", d, conns*response)
	}

	// The same through the ClusterIP of cart's Service.
	vip := c.CreateService("store", "cart")[0]
	run(t, "ip", "-n", a.NS, "route", "add", vip+"/32", "via", b.IPv4)
	nft(t, b.NS, `table ip weirk8s {
	chain pre {
		type nat hook prerouting priority -100;
		ip daddr `+vip+` tcp dport 80 dnat to `+b.IPv4+`:8080
	}
}`)
	r.Eventually(t, "service", 10*time.Second, map[string]string{vip: "service/cart@store"})
	time.Sleep(3 * time.Second) // the collector lists namespaces' conntrack every 2 s
	s = harness.Start(t, "flowsrv", b.Exec(srv, "-listen", listen, "-conns", strconv.Itoa(conns),
		"-request-bytes", strconv.Itoa(request), "-response-bytes", strconv.Itoa(response))...)
	s.WaitLine(t, "listening", 10*time.Second)
	cl = harness.Start(t, "flowcli", a.Exec(cli, "-connect", net.JoinHostPort(vip, "80"), "-conns", strconv.Itoa(conns),
		"-request-bytes", strconv.Itoa(request), "-response-bytes", strconv.Itoa(response))...)
	cl.WaitLine(t, "done", 20*time.Second)
	m = harness.WaitFor(t, w.MetricsURL, 15*time.Second, "checkout → cart through the ClusterIP with every byte", func(m harness.Metrics) bool {
		u, _ := m.Value("weir_tcp_bytes_total", up)
		d, _ := m.Value("weir_tcp_bytes_total", down)
		return u == 2*conns*request && d == 2*conns*response
	})
	if got := m.Sum("weir_tcp_bytes_total", map[string]string{"dst_workload": "cart", "dst_kind": "service"}) +
		m.Sum("weir_tcp_bytes_total", map[string]string{"dst_workload": vip}); got != 0 {
		t.Errorf("%v bytes to the ClusterIP %s, want 0 (joined to the backend pod)", got, vip)
	}
	cm, err := harness.Scrape(w.CollectorMetricsURL)
	if err != nil {
		t.Fatal(err)
	}
	if got := cm.Sum("weir_collector_nat_sockets_translated_total", nil); got < conns {
		t.Errorf("the collector translated %v sockets, want at least %d: the ClusterIP path was not taken", got, conns)
	}
}

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// nft loads a ruleset into a namespace.
func nft(t *testing.T, ns, rules string) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft in %s: %v\n%s", ns, err, out)
	}
}

// peers returns copies of flowsrv and flowcli under names of this test
// process.
func peers(t testing.TB) (srv, cli string) {
	t.Helper()
	bin := os.Getenv("WEIR_BIN_DIR")
	if bin == "" {
		bin = harness.Binaries(t)
	}
	dir := t.TempDir()
	for _, n := range []string{"flowsrv", "flowcli"} {
		if out, err := exec.Command("cp", filepath.Join(bin, n), filepath.Join(dir, n)).CombinedOutput(); err != nil {
			t.Fatalf("cp %s: %v %s", n, err, out)
		}
	}
	return filepath.Join(dir, "flowsrv"), filepath.Join(dir, "flowcli")
}
