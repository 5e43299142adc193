package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"

	"github.com/weir-project/weir/test/internal/harness"
)

// TestPrivilegedHelmInstall installs the chart with helm on a real
// single-node Kubernetes and checks what a user would:
//   - the collector pod, not privileged (the apiserver refuses privileged
//     pods here), runs with exactly the chart's four capabilities in its
//     effective and bounding sets and has loaded its eBPF programs;
//   - every rendering of charts/weir/ci/*-values.yaml passes the
//     apiserver's validation (a server-side dry run);
//   - the pods of two Deployments in two namespaces, a client and a server
//     over TCP, are an edge deployment → deployment on the reducer's
//     /metrics with their names and namespaces and the exact bytes both ways;
//     weirctl map and /api/v1/map show it too;
//   - the watcher streams the cluster's metadata to the reducer;
//   - helm upgrade rolls every component (the edge comes back with its pods'
//     names at --aggregation=pod, bytes exact) and leaves no pod of the old
//     revision; helm uninstall leaves no object, pod, container or process;
//   - installed again with mTLS from weirctl certs, the collector connects
//     with its node's identity and the watcher with its own, the edge is
//     exact, weirctl reads the map with an observer certificate and not
//     without one; uninstalled, nothing is left.
func TestPrivilegedHelmInstall(t *testing.T) {
	harness.RequireRoot(t)
	requireNodeTools(t)
	start := time.Now()
	helmPath := helmBin(t)
	images := nodeImages(t)
	n := StartNode(t, images)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	t.Cleanup(cancel)
	t.Cleanup(func() {
		t.Logf("wall time %s; timeline:\n%s", time.Since(start).Round(100*time.Millisecond), n.Timeline())
	})
	t.Run("dry-run", func(t *testing.T) { chartDryRun(t, n, ctx) })
	n.mark("every ci/*-values.yaml accepted by a server-side dry run")

	// kube-proxy's part: the kubernetes Service (the watcher's in-cluster
	// configuration) and, once the reducer has an address, its Service.
	apiserver := fmt.Sprintf("%s:%d", n.NodeIP, n.apiPort)
	n.DNAT(serviceNet+".1", 443, apiserver)
	reducerVIP := serviceNet + ".70"
	collectorHTTP := harness.FreePort(t)
	h := &helmRun{t: t, bin: helmPath, kubeconfig: n.Kubeconfig}
	h.run("install", "weir", chartDir(), "--namespace", "weir", "--create-namespace",
		"--set", "image.pullPolicy=Never",
		"--set", "reducer.service.clusterIP="+reducerVIP,
		"--set", "collector.reducerAddress="+reducerVIP+":7000",
		"--set", "k8sWatcher.reducerAddress="+reducerVIP+":7000",
		"--set", "collector.interval=1s",
		"--set", fmt.Sprintf("collector.httpAddr=127.0.0.1:%d", collectorHTTP),
		"--set", "k8sWatcher.cluster=weir-test")
	n.mark("helm install")

	reducer := waitPods(t, n, ctx, "weir", "app.kubernetes.io/component=reducer", 1, podHasIP)[0]
	n.DNAT(reducerVIP, 7000, reducer.Status.PodIP+":7000")
	pods := waitPods(t, n, ctx, "weir", "app.kubernetes.io/instance=weir", 3, podReady)
	n.mark("weir's pods Ready")
	metricsURL := "http://" + reducer.Status.PodIP + ":7010/metrics"

	// The collector: not privileged, exactly its capabilities, its eBPF
	// programs loaded.
	collector := podOf(t, pods, "collector")
	sc := collector.Spec.Containers[0].SecurityContext
	if sc == nil || sc.Privileged == nil || *sc.Privileged {
		t.Fatalf("collector pod security context %+v: want privileged: false", sc)
	}
	pid := containerPID(t, n, collector)
	const wantCaps = 1<<12 | 1<<19 | 1<<38 | 1<<39 // NET_ADMIN, SYS_PTRACE, PERFMON, BPF
	status := procStatus(t, pid)
	for _, set := range []string{"CapEff", "CapPrm", "CapBnd"} {
		v, err := strconv.ParseUint(status[set], 16, 64)
		if err != nil || v != wantCaps {
			t.Errorf("collector %s = %s, want %x (BPF, PERFMON, NET_ADMIN, SYS_PTRACE only)", set, status[set], uint64(wantCaps))
		}
	}
	if status["NoNewPrivs"] != "1" {
		t.Errorf("collector NoNewPrivs = %s, want 1", status["NoNewPrivs"])
	}
	if status["Seccomp"] != "2" { // SECCOMP_MODE_FILTER: the runtime's default profile
		t.Errorf("collector Seccomp = %s, want 2 (RuntimeDefault)", status["Seccomp"])
	}
	t.Logf("collector pid %d: CapEff %s, Seccomp %s", pid, status["CapEff"], status["Seccomp"])
	progs, err := harness.ProgramsOf(pid)
	if err != nil {
		t.Fatalf("programs of the collector: %v", err)
	}
	var names []string
	for _, p := range progs {
		names = append(names, p.Name)
	}
	if len(progs) < 5 {
		t.Fatalf("collector holds %d eBPF programs (%v), want its TCP, UDP and process programs", len(progs), names)
	}
	t.Logf("collector holds %d eBPF programs: %v", len(progs), names)
	collectorURL := fmt.Sprintf("http://127.0.0.1:%d/metrics", collectorHTTP)
	harness.WaitFor(t, collectorURL, 60*time.Second, "collector connected to the reducer", func(m harness.Metrics) bool {
		v, _ := m.Value("weir_collector_connected", nil)
		return v == 1
	})
	n.mark("collector connected")

	// The watcher streams the metadata: the reducer holds the node and the
	// pods, and the watcher says its stream is up.
	watcher := podOf(t, pods, "k8s-watcher")
	harness.WaitFor(t, "http://"+watcher.Status.PodIP+":7012/metrics", 60*time.Second, "watcher synced and streaming", func(m harness.Metrics) bool {
		c, _ := m.Value("weir_watcher_stream_connected", nil)
		s, _ := m.Value("weir_watcher_synced", nil)
		return c == 1 && s == 1
	})
	harness.WaitFor(t, metricsURL, 60*time.Second, "the watcher's metadata in the reducer", func(m harness.Metrics) bool {
		s, _ := m.Value("weir_reducer_metadata_streams", nil)
		p, _ := m.Value("weir_reducer_metadata_objects", map[string]string{"kind": "pod"})
		nd, _ := m.Value("weir_reducer_metadata_objects", map[string]string{"kind": "node"})
		return s == 1 && p >= 3 && nd == 1
	})
	n.mark("watcher streaming")

	// Two Deployments in two namespaces: cart (a server) in store, and
	// checkout (a client holding conns connections) in shop.
	const (
		conns    = 3
		request  = 200_003
		response = 70_001
	)
	createNamespace(t, n, ctx, "store")
	createNamespace(t, n, ctx, "shop")
	createDeployment(t, n, ctx, "store", "cart", corev1.Container{
		Name: "flowsrv", Image: testRepo + "/flowsrv:" + imageTag, ImagePullPolicy: corev1.PullNever,
		Args: []string{"-listen", "0.0.0.0:8080", "-forever",
			"-request-bytes", strconv.Itoa(request), "-response-bytes", strconv.Itoa(response)},
	})
	cart := waitPods(t, n, ctx, "store", "app=cart", 1, podReady)[0]
	createDeployment(t, n, ctx, "shop", "checkout", corev1.Container{
		Name: "flowcli", Image: testRepo + "/flowcli:" + imageTag, ImagePullPolicy: corev1.PullNever,
		// --hold keeps the connections open while standard input is.
		Stdin: true,
		Args: []string{"-connect", cart.Status.PodIP + ":8080", "-conns", strconv.Itoa(conns), "-hold",
			"-request-bytes", strconv.Itoa(request), "-response-bytes", strconv.Itoa(response)},
	})
	checkout := waitPods(t, n, ctx, "shop", "app=checkout", 1, podReady)[0]
	n.mark("workloads Running")

	up := map[string]string{
		"src_workload": "checkout", "src_kind": "deployment", "src_namespace": "shop",
		"dst_workload": "cart", "dst_kind": "deployment", "dst_namespace": "store",
	}
	waitEdge(t, metricsURL, up, conns, request, response, func() string { return diagnose(n, collectorURL, metricsURL) })
	n.mark("edge checkout → cart exact on /metrics")

	// What NOTES.txt points at: /api/v1/map and weirctl map.
	mapJSON := httpGet(t, "http://"+reducer.Status.PodIP+":7010/api/v1/map")
	if !strings.Contains(mapJSON, `"checkout"`) || !strings.Contains(mapJSON, `"cart"`) {
		t.Errorf("/api/v1/map has no checkout → cart:\n%.2000s", mapJSON)
	}
	out, err := exec.Command(weirBinary(t, "weirctl"), "map", "--server", reducer.Status.PodIP+":7000").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "shop/checkout[deployment]") || !strings.Contains(string(out), "store/cart[deployment]") {
		t.Errorf("weirctl map: %v\n%s", err, out)
	}

	// helm upgrade: pod labels on the flows, a slower report interval, fewer
	// tombstones. The reducer is recreated (its address changes), the
	// collector and the watcher rolled.
	h.run("upgrade", "weir", chartDir(), "--namespace", "weir", "--reuse-values",
		"--set", "reducer.aggregation=pod", "--set", "collector.interval=2s", "--set", "k8sWatcher.maxTombstones=5000")
	n.mark("helm upgrade")
	oldReducer := reducer
	waitRolled(t, n, ctx, &oldReducer, collector, watcher)
	newPods := waitPods(t, n, ctx, "weir", "app.kubernetes.io/instance=weir", 3, podReady)
	reducer = *podOf(t, newPods, "reducer")
	n.DNATReplace(map[string]string{
		serviceNet + ".1:443": apiserver,
		reducerVIP + ":7000":  reducer.Status.PodIP + ":7000",
	})
	for _, p := range newPods {
		if args := strings.Join(p.Spec.Containers[0].Args, " "); p.Labels["app.kubernetes.io/component"] == "reducer" && !strings.Contains(args, "--aggregation=pod") ||
			p.Labels["app.kubernetes.io/component"] == "collector" && !strings.Contains(args, "--interval=2s") ||
			p.Labels["app.kubernetes.io/component"] == "k8s-watcher" && !strings.Contains(args, "--max-tombstones=5000") {
			t.Errorf("pod %s after the upgrade: %s", p.Name, args)
		}
	}
	metricsURL = "http://" + reducer.Status.PodIP + ":7010/metrics"
	up["src_pod"], up["dst_pod"] = checkout.Name, cart.Name
	// The held connections are idle, and a restarted collector counts
	// from its start: a new client pod opens new connections, whose bytes
	// are exact under its name and its server's.
	if err := n.Admin.CoreV1().Pods("shop").Delete(ctx, checkout.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	checkout = waitPods(t, n, ctx, "shop", "app=checkout", 1, func(p *corev1.Pod) bool { return podReady(p) && p.Name != checkout.Name })[0]
	up["src_pod"] = checkout.Name
	waitEdge(t, metricsURL, up, conns, request, response, func() string { return diagnose(n, collectorURL, metricsURL) })
	n.mark("edge exact after the upgrade, with pod names")

	// helm uninstall: nothing of the release is left.
	newCollector := podOf(t, newPods, "collector")
	collectorPID := containerPID(t, n, newCollector)
	h.run("uninstall", "weir", "--namespace", "weir", "--wait", "--timeout", "2m")
	n.mark("helm uninstall")
	waitGone(t, n, ctx, collectorPID)
	n.mark("nothing left of the release")

	// mTLS: certificates from weirctl certs, the collector with its node's
	// own identity (spiffe://weir.local/node/weir-node), the watcher with
	// the watcher's, weirctl with an observer's.
	certs := t.TempDir()
	weirctl := weirBinary(t, "weirctl")
	if out, err := exec.Command(weirctl, "certs", "--dir", certs, "--nodes", nodeName, "--observers", "weirctl",
		"--server-names", reducerVIP+",weir-reducer.weir.svc,weir-reducer.weir.svc.cluster.local").CombinedOutput(); err != nil {
		t.Fatalf("weirctl certs: %v\n%s", err, out)
	}
	createSecret(t, n, ctx, "weir", "weir-tls", certs, "ca.pem", "reducer.pem", "reducer-key.pem", "k8s-watcher.pem", "k8s-watcher-key.pem")
	createSecret(t, n, ctx, "weir", "weir-node-tls", certs, "ca.pem", "node-"+nodeName+".pem", "node-"+nodeName+"-key.pem")
	h.run("install", "weir", chartDir(), "--namespace", "weir",
		"--set", "image.pullPolicy=Never",
		"--set", "reducer.service.clusterIP="+reducerVIP,
		"--set", "collector.reducerAddress="+reducerVIP+":7000",
		"--set", "k8sWatcher.reducerAddress="+reducerVIP+":7000",
		"--set", "collector.interval=1s",
		"--set", fmt.Sprintf("collector.httpAddr=127.0.0.1:%d", collectorHTTP),
		"--set", "mtls.enabled=true", "--set", "mtls.existingSecret=weir-tls", "--set", "mtls.nodeSecret=weir-node-tls")
	n.mark("helm install with mTLS")
	reducer = waitPods(t, n, ctx, "weir", "app.kubernetes.io/component=reducer", 1, podHasIP)[0]
	n.DNATReplace(map[string]string{
		serviceNet + ".1:443": apiserver,
		reducerVIP + ":7000":  reducer.Status.PodIP + ":7000",
	})
	pods = waitPods(t, n, ctx, "weir", "app.kubernetes.io/instance=weir", 3, podReady)
	metricsURL = "http://" + reducer.Status.PodIP + ":7010/metrics"
	harness.WaitFor(t, collectorURL, 60*time.Second, "collector connected over mTLS", func(m harness.Metrics) bool {
		v, _ := m.Value("weir_collector_connected", nil)
		return v == 1
	})
	watcher = podOf(t, pods, "k8s-watcher")
	harness.WaitFor(t, "http://"+watcher.Status.PodIP+":7012/metrics", 60*time.Second, "watcher streaming over mTLS", func(m harness.Metrics) bool {
		c, _ := m.Value("weir_watcher_stream_connected", nil)
		return c == 1
	})
	n.mark("collector and watcher connected over mTLS")
	delete(up, "src_pod")
	delete(up, "dst_pod")
	if err := n.Admin.CoreV1().Pods("shop").Delete(ctx, checkout.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	old := checkout.Name
	checkout = waitPods(t, n, ctx, "shop", "app=checkout", 1, func(p *corev1.Pod) bool { return podReady(p) && p.Name != old })[0]
	waitEdge(t, metricsURL, up, conns, request, response, func() string { return diagnose(n, collectorURL, metricsURL) })
	n.mark("edge exact over mTLS")
	tlsArgs := []string{"--server", reducerVIP + ":7000", "--tls-ca", certs + "/ca.pem",
		"--tls-cert", certs + "/observer-weirctl.pem", "--tls-key", certs + "/observer-weirctl-key.pem"}
	out, err = exec.Command(weirctl, append([]string{"map"}, tlsArgs...)...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "shop/checkout[deployment]") {
		t.Errorf("weirctl map over mTLS: %v\n%s", err, out)
	}
	if out, err := exec.Command(weirctl, "map", "--server", reducerVIP+":7000", "--timeout", "3s").CombinedOutput(); err == nil {
		t.Errorf("weirctl map in plaintext against the mTLS reducer succeeded:\n%s", out)
	}
	newCollector = podOf(t, pods, "collector")
	collectorPID = containerPID(t, n, newCollector)
	h.run("uninstall", "weir", "--namespace", "weir", "--wait", "--timeout", "2m")
	waitGone(t, n, ctx, collectorPID)
	n.mark("nothing left of the mTLS release")
}

// createSecret makes a Secret of files of dir.
func createSecret(t *testing.T, n *Node, ctx context.Context, ns, name, dir string, files ...string) {
	t.Helper()
	data := map[string][]byte{}
	for _, f := range files {
		b, err := os.ReadFile(dir + "/" + f)
		if err != nil {
			t.Fatal(err)
		}
		data[f] = b
	}
	_, err := n.Admin.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Data: data}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

// helmRun runs helm against the node.
type helmRun struct {
	t          *testing.T
	bin        string
	kubeconfig string
}

func (h *helmRun) run(args ...string) string {
	h.t.Helper()
	cmd := exec.Command(h.bin, append(args, "--kubeconfig", h.kubeconfig)...)
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+h.t.TempDir(), "HELM_CONFIG_HOME="+h.t.TempDir(), "HELM_DATA_HOME="+h.t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil {
		h.t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	if args[0] == "install" && !strings.Contains(string(out), "weirctl") {
		h.t.Errorf("helm install printed no NOTES with weirctl:\n%s", out)
	}
	return string(out)
}

func podHasIP(p *corev1.Pod) bool { return p.Status.PodIP != "" }

func podReady(p *corev1.Pod) bool {
	if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// waitPods waits until the selector's pods in ns number want and each
// satisfies ok, and returns them.
func waitPods(t *testing.T, n *Node, ctx context.Context, ns, selector string, want int, ok func(*corev1.Pod) bool) []corev1.Pod {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	var last string
	for time.Now().Before(deadline) {
		list, err := n.Admin.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err == nil {
			good := 0
			var states []string
			for i := range list.Items {
				p := &list.Items[i]
				if ok(p) {
					good++
				}
				states = append(states, podState(p))
			}
			if good == want && len(list.Items) == want {
				return list.Items
			}
			last = strings.Join(states, "\n")
		} else {
			last = err.Error()
		}
		time.Sleep(250 * time.Millisecond)
	}
	events, _ := n.Admin.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
	var ev []string
	for _, e := range events.Items {
		ev = append(ev, fmt.Sprintf("%s %s/%s: %s", e.Type, e.InvolvedObject.Kind, e.InvolvedObject.Name, e.Message))
	}
	t.Fatalf("pods %s in %s: want %d, have:\n%s\nevents:\n%s\n%s", selector, ns, want, last, strings.Join(ev, "\n"), n.podLogs(ns))
	return nil
}

func podState(p *corev1.Pod) string {
	s := fmt.Sprintf("%s %s ip=%s", p.Name, p.Status.Phase, p.Status.PodIP)
	for _, c := range p.Status.ContainerStatuses {
		switch {
		case c.State.Waiting != nil:
			s += fmt.Sprintf(" %s: waiting %s %s", c.Name, c.State.Waiting.Reason, c.State.Waiting.Message)
		case c.State.Terminated != nil:
			s += fmt.Sprintf(" %s: terminated %s %d %s", c.Name, c.State.Terminated.Reason, c.State.Terminated.ExitCode, c.State.Terminated.Message)
		default:
			s += fmt.Sprintf(" %s: ready=%v restarts=%d", c.Name, c.Ready, c.RestartCount)
		}
	}
	return s
}

// podLogs returns the tail of every container log of namespace ns, read
// from the kubelet's log directory.
func (n *Node) podLogs(ns string) string {
	var b strings.Builder
	_ = walkFiles(n.path("podlogs"), func(p string) {
		if strings.Contains(p, "/"+ns+"_") && strings.HasSuffix(p, ".log") {
			data, _ := os.ReadFile(p)
			fmt.Fprintf(&b, "--- %s:\n%s\n", p, tail(string(data), 2000))
		}
	})
	return b.String()
}

func walkFiles(dir string, f func(string)) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		p := dir + "/" + e.Name()
		if e.IsDir() {
			_ = walkFiles(p, f)
		} else {
			f(p)
		}
	}
	return nil
}

func podOf(t *testing.T, pods []corev1.Pod, component string) *corev1.Pod {
	t.Helper()
	for i := range pods {
		if pods[i].Labels["app.kubernetes.io/component"] == component {
			return &pods[i]
		}
	}
	t.Fatalf("no %s pod among %d", component, len(pods))
	return nil
}

// containerPID is the host PID of the pod's first container, from
// containerd's task list.
func containerPID(t *testing.T, n *Node, p *corev1.Pod) int {
	t.Helper()
	id := strings.TrimPrefix(p.Status.ContainerStatuses[0].ContainerID, "containerd://")
	out := n.run("ctr", "--address", n.ctrdSock, "-n", "k8s.io", "tasks", "ls")
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == id {
			pid, err := strconv.Atoi(f[1])
			if err == nil {
				return pid
			}
		}
	}
	t.Fatalf("no task %s of pod %s in:\n%s", id, p.Name, out)
	return 0
}

func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

func createNamespace(t *testing.T, n *Node, ctx context.Context, name string) {
	t.Helper()
	_, err := n.Admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

func createDeployment(t *testing.T, n *Node, ctx context.Context, ns, name string, c corev1.Container) {
	t.Helper()
	c.SecurityContext = &corev1.SecurityContext{
		RunAsNonRoot: ptrTo(true), AllowPrivilegeEscalation: ptrTo(false), ReadOnlyRootFilesystem: ptrTo(true),
		Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
	}
	labels := map[string]string{"app": name}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptrTo(int32(1)),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					Containers:                    []corev1.Container{c},
					TerminationGracePeriodSeconds: ptrTo(int64(1)),
					AutomountServiceAccountToken:  ptrTo(false),
				},
			},
		},
	}
	if _, err := n.Admin.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// waitEdge waits for the edge up (client → server) and its reverse on
// /metrics with the exact bytes of conns connections both ways.
func waitEdge(t *testing.T, url string, up map[string]string, conns, request, response int, diag func() string) {
	t.Helper()
	down := map[string]string{}
	for k, v := range up {
		if strings.HasPrefix(k, "src_") {
			down["dst_"+k[4:]] = v
		} else {
			down["src_"+k[4:]] = v
		}
	}
	var m harness.Metrics
	deadline := time.Now().Add(90 * time.Second)
	for {
		var err error
		m, err = harness.Scrape(url)
		if err == nil {
			u, _ := m.Value("weir_tcp_bytes_total", up)
			d, _ := m.Value("weir_tcp_bytes_total", down)
			if u == float64(conns*request) && d == float64(conns*response) {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no edge %v with %d and %d bytes on %s (%v); its flows:\n%s\n%s", up, conns*request, conns*response, url, err, grepLines(httpGet(t, url), "weir_tcp_bytes_total", "checkout", "cart", podNet), diag())
		}
		time.Sleep(250 * time.Millisecond)
	}
	if v, _ := m.Value("weir_tcp_active_connections", up); v != float64(conns) {
		t.Errorf("active connections checkout → cart = %v, want %d", v, conns)
	}
	if v, _ := m.Value("weir_tcp_connections_opened_total", up); v != float64(conns) {
		t.Errorf("connections opened checkout → cart = %v, want %d", v, conns)
	}
}

// diagnose returns what explains a missing edge: the collector's and the
// reducer's own counters, and the logs of weir's pods.
func diagnose(n *Node, collectorURL, reducerURL string) string {
	var b strings.Builder
	for _, u := range []string{collectorURL, reducerURL} {
		resp, err := http.Get(u)
		if err != nil {
			fmt.Fprintf(&b, "--- %s: %v\n", u, err)
			continue
		}
		data, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Fprintf(&b, "--- %s (non-zero weir_collector_, weir_reducer_ and weir_tcp_ series):\n", u)
		for _, l := range strings.Split(string(data), "\n") {
			if (strings.HasPrefix(l, "weir_collector_") || strings.HasPrefix(l, "weir_reducer_") || strings.HasPrefix(l, "weir_tcp_")) &&
				!strings.HasSuffix(l, " 0") && !strings.Contains(l, "_bucket{") {
				b.WriteString(l + "\n")
			}
		}
	}
	b.WriteString(n.podLogs("weir"))
	return b.String()
}

// waitRolled waits until the reducer, collector and watcher pods of the
// first revision are gone.
func waitRolled(t *testing.T, n *Node, ctx context.Context, old ...*corev1.Pod) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for _, p := range old {
		for {
			_, err := n.Admin.CoreV1().Pods(p.Namespace).Get(ctx, p.Name, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("pod %s of the first revision still there after the upgrade (%v)", p.Name, err)
			}
			time.Sleep(250 * time.Millisecond)
		}
	}
}

// waitGone waits until nothing of the release is left: no object in the
// namespace or the cluster's RBAC, no pod or container, no collector
// process.
func waitGone(t *testing.T, n *Node, ctx context.Context, collectorPID int) {
	t.Helper()
	sel := metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=weir"}
	deadline := time.Now().Add(2 * time.Minute)
	var left []string
	for time.Now().Before(deadline) {
		left = left[:0]
		add := func(kind string, n int, err error) {
			if err != nil {
				left = append(left, kind+": "+err.Error())
			} else if n > 0 {
				left = append(left, fmt.Sprintf("%d %s", n, kind))
			}
		}
		c := n.Admin
		pods, err := c.CoreV1().Pods("weir").List(ctx, metav1.ListOptions{})
		add("pods", len(pods.Items), err)
		ds, err := c.AppsV1().DaemonSets("weir").List(ctx, sel)
		add("daemonsets", len(ds.Items), err)
		dep, err := c.AppsV1().Deployments("weir").List(ctx, sel)
		add("deployments", len(dep.Items), err)
		rs, err := c.AppsV1().ReplicaSets("weir").List(ctx, sel)
		add("replicasets", len(rs.Items), err)
		cr, err := c.AppsV1().ControllerRevisions("weir").List(ctx, sel)
		add("controllerrevisions", len(cr.Items), err)
		svc, err := c.CoreV1().Services("weir").List(ctx, sel)
		add("services", len(svc.Items), err)
		eps, err := c.DiscoveryV1().EndpointSlices("weir").List(ctx, metav1.ListOptions{})
		add("endpointslices", len(eps.Items), err)
		sa, err := c.CoreV1().ServiceAccounts("weir").List(ctx, sel)
		add("serviceaccounts", len(sa.Items), err)
		sec, err := c.CoreV1().Secrets("weir").List(ctx, metav1.ListOptions{LabelSelector: "owner=helm,name=weir"})
		add("helm release secrets", len(sec.Items), err)
		crs, err := c.RbacV1().ClusterRoles().List(ctx, sel)
		add("clusterroles", len(crs.Items), err)
		crbs, err := c.RbacV1().ClusterRoleBindings().List(ctx, sel)
		add("clusterrolebindings", len(crbs.Items), err)
		out, err := exec.Command("ctr", "--address", n.ctrdSock, "-n", "k8s.io", "containers", "ls").CombinedOutput()
		if err != nil {
			left = append(left, "ctr: "+err.Error())
		} else if strings.Contains(string(out), weirRepo) {
			left = append(left, "containers of weir's images:\n"+string(out))
		}
		if fileExists(fmt.Sprintf("/proc/%d", collectorPID)) {
			left = append(left, fmt.Sprintf("collector process %d", collectorPID))
		}
		if len(left) == 0 {
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("after helm uninstall: %s", strings.Join(left, "; "))
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s\n%s", url, resp.Status, b)
	}
	if !json.Valid(b) && strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		t.Fatalf("GET %s: invalid JSON", url)
	}
	return string(b)
}

func ptrTo[T any](v T) *T { return &v }

// grepLines returns the lines of text that start with prefix and contain
// any of words.
func grepLines(text, prefix string, words ...string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if !strings.HasPrefix(l, prefix) {
			continue
		}
		for _, w := range words {
			if strings.Contains(l, w) {
				out = append(out, l)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}

// chartDryRun sends every object that each charts/weir/ci/*-values.yaml
// renders to the real apiserver with a server-side dry run: the apiserver's
// own validation and admission accept the sharded StatefulSets (with the
// pod-index label of the watchers' downward API), the mTLS volumes and the
// OTLP arguments, which the install does not use. The ServiceMonitor is left
// out: the node has no Prometheus Operator CRDs.
func chartDryRun(t *testing.T, n *Node, ctx context.Context) {
	createNamespace(t, n, ctx, "weir")
	dyn, err := dynamic.NewForConfig(n.restConfig())
	if err != nil {
		t.Fatal(err)
	}
	groups, err := restmapper.GetAPIGroupResources(n.Admin.Discovery())
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDiscoveryRESTMapper(groups)
	for name, f := range ciValues(t) {
		t.Run(name, func(t *testing.T) {
			r := render(t, "-f", f)
			sent := 0
			for _, u := range r.raw {
				if u.GetKind() == "ServiceMonitor" {
					continue
				}
				gvk := u.GroupVersionKind()
				m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
				if err != nil {
					t.Fatalf("%s: %v", gvk, err)
				}
				var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
				if m.Scope.Name() == meta.RESTScopeNameNamespace {
					ri = dyn.Resource(m.Resource).Namespace(u.GetNamespace())
				}
				if _, err := ri.Create(ctx, u, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil {
					t.Errorf("dry run of %s %s: %v", u.GetKind(), u.GetName(), err)
				}
				sent++
			}
			if sent < 7 {
				t.Errorf("only %d objects sent", sent)
			}
		})
	}
}
