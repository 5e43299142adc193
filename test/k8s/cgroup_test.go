package k8s

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weir-project/weir/test/internal/harness"
)

// TestPrivilegedEndToEndPodByCgroup: a client runs in a cgroup shaped as a
// kubelet and containerd make one for a container of a pod, and the pod
// object of that UID is checkout's; the client's network namespace has an
// address that is no pod's IP. /metrics names the client's end checkout's
// pod through the UID in its cgroup path alone, with the exact bytes, for
// each shape: cgroupfs and systemd drivers on cgroup v2, and a v1
// hierarchy only. Each client exits right after its transfer, before the
// collector's next report, so it is described from what the kernel said
// of it at exec time, not from /proc.
func TestPrivilegedEndToEndPodByCgroup(t *testing.T) {
	harness.RequireRoot(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	a, b := harness.BridgedHosts(t, "k8sc")
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
	// checkout's pod has an IP that no namespace here has: only its UID
	// can name the client.
	const elsewhere = "198.18.253.77"
	checkoutPod := c.RunPod("shop", "checkout", "node-a", elsewhere)
	r.Eventually(t, "pods", 20*time.Second, map[string]string{
		b.IPv4:    "deployment/cart@store zone=zone-1 pod=" + cartPod,
		elsewhere: "deployment/checkout@shop zone=zone-1 pod=" + checkoutPod,
		a.IPv4:    "none",
	})
	p, err := c.cs().CoreV1().Pods("shop").Get(ctx, checkoutPod, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	uid := string(p.UID)
	us := strings.ReplaceAll(uid, "-", "_")
	cid := strings.Repeat("c0ffee", 10) + "beef"

	srv, cli := peers(t)
	const (
		conns    = 2
		request  = 70_001
		response = 30_007
	)
	listen := net.JoinHostPort(b.IPv4, "8080")
	up := map[string]string{
		"src_workload": "checkout", "src_kind": "deployment", "src_namespace": "shop", "src_pod": checkoutPod, "src_zone": "zone-1",
		"dst_workload": "cart", "dst_kind": "deployment", "dst_namespace": "store", "dst_pod": cartPod,
	}
	down := map[string]string{
		"src_workload": "cart", "src_kind": "deployment", "src_namespace": "store", "src_pod": cartPod,
		"dst_workload": "checkout", "dst_kind": "deployment", "dst_namespace": "shop", "dst_pod": checkoutPod, "dst_zone": "zone-1",
	}
	for i, shape := range []struct {
		name, root, dir string
		hold            bool
	}{
		{"v2 cgroupfs", "/sys/fs/cgroup/unified", "kubepods/besteffort/pod" + uid + "/" + cid, false},
		{"v2 systemd", "/sys/fs/cgroup/unified", "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + us + ".slice/cri-containerd-" + cid + ".scope", false},
		// A v1 path has no id the kernel reports: the client lives until
		// its flow is counted, as a container's process does.
		{"v1 pids only", "/sys/fs/cgroup/pids", "kubepods/burstable/pod" + uid + "/" + cid, true},
	} {
		t.Run(shape.name, func(t *testing.T) {
			cg := makeCgroup(t, shape.root, shape.dir)
			s := harness.Start(t, "flowsrv", b.Exec(srv, "-listen", listen, "-conns", strconv.Itoa(conns),
				"-request-bytes", strconv.Itoa(request), "-response-bytes", strconv.Itoa(response))...)
			s.WaitLine(t, "listening", 10*time.Second)
			// The client joins the cgroup and then execs, as runc starts
			// a container's process.
			args := []string{cli, "-connect", listen, "-conns", strconv.Itoa(conns),
				"-request-bytes", strconv.Itoa(request), "-response-bytes", strconv.Itoa(response)}
			if shape.hold {
				args = append(args, "-hold")
			}
			argv := append([]string{"sh", "-c", `echo $$ > "$0/cgroup.procs" && exec "$@"`, cg}, a.Exec(args...)...)
			cl := harness.Start(t, "flowcli", argv...)
			cl.WaitLine(t, "done", 20*time.Second)
			n := float64(i + 1)
			harness.WaitFor(t, w.MetricsURL, 15*time.Second, "checkout (by its cgroup's pod UID) → cart with every byte", func(m harness.Metrics) bool {
				u, _ := m.Value("weir_tcp_bytes_total", up)
				d, _ := m.Value("weir_tcp_bytes_total", down)
				o, _ := m.Value("weir_tcp_connections_opened_total", up)
				return u == n*conns*request && d == n*conns*response && o == n*conns
			})
			cl.CloseStdin()
			if err := cl.Wait(10 * time.Second); err != nil {
				t.Fatalf("flowcli: %v", err)
			}
			_ = s.Wait(10 * time.Second)
		})
	}
	m, err := harness.Scrape(w.MetricsURL)
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Sum("weir_tcp_bytes_total", map[string]string{"dst_workload": "cart", "src_kind": "process"}) +
		m.Sum("weir_tcp_bytes_total", map[string]string{"dst_workload": "cart", "src_kind": "container"}); got != 0 {
		t.Errorf("%v bytes to cart from a process or container, want 0 (all from checkout's pod)", got)
	}
}

// makeCgroup creates root/dir and its parents, and removes those it
// created when the test ends.
func makeCgroup(t testing.TB, root, dir string) string {
	t.Helper()
	if _, err := os.Stat(root); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("no cgroup hierarchy at %s (CI=true: not skipping)", root)
		}
		t.Skipf("no cgroup hierarchy at %s", root)
	}
	var made []string
	p := root
	for _, seg := range strings.Split(dir, "/") {
		p = filepath.Join(p, seg)
		if err := os.Mkdir(p, 0o755); err == nil {
			made = append(made, p)
		} else if !os.IsExist(err) {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for i := len(made) - 1; i >= 0; i-- {
			// A cgroup is removable once its last process has exited.
			var err error
			for range 50 {
				if err = os.Remove(made[i]); err == nil {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if err != nil {
				t.Errorf("remove cgroup %s: %v", made[i], err)
			}
		}
	})
	return p
}
