package k8s

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weir-project/weir/test/internal/harness"
)

// BenchmarkPrivilegedWatcherPods loads a real apiserver with pods (5,000
// with WEIR_BENCH_FULL=1, else 300) owned by a ReplicaSet of a Deployment,
// each with a node, two IPs and a container, and measures:
//   - the watcher's live heap per pod (after a GC, with the slimming
//     transform), against the same watcher with no pods;
//   - the snapshot a restarted reducer gets: bytes on the wire (gzip) and
//     the reducer's time to apply it.
func BenchmarkPrivilegedWatcherPods(b *testing.B) {
	harness.RequireRoot(b)
	n := 300
	if os.Getenv("WEIR_BENCH_FULL") == "1" {
		n = 5000
	}
	b.ReportAllocs()
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	cp := startControlPlane(b, 1, false)
	c := &Cluster{ControlPlane: cp, t: b, ctx: ctx}
	token := cp.ApplyRBAC(b, ctx, rbacPath())
	w := harness.StartWeir(b, harness.WeirOptions{NoCollector: true})
	watcher := StartWatcher(b, "watcher", cp.WriteKubeconfig(b, "watcher", 0, token), w.GRPCAddr, "--pprof")
	c.CreateNode("node-a", "198.18.254.1", "zone-1")
	waitMetricValue(b, watcher, "weir_watcher_objects", map[string]string{"kind": "node"}, 1, 20*time.Second)
	var base int64

	// A Deployment and its ReplicaSet, then the pods, as the controllers
	// and the kubelet would write them.
	c.ensureNamespace(b, ctx, "load")
	// No controller manager here: the namespace's default service account,
	// which pods need, is made by hand.
	if _, err := cp.Admin.CoreV1().ServiceAccounts("load").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	labels := map[string]string{"app": "web"}
	zero := int32(0)
	dep, err := cp.Admin.AppsV1().Deployments("load").Create(ctx, &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{Replicas: &zero, Selector: &metav1.LabelSelector{MatchLabels: labels}, Template: podTemplate(labels)}}, metav1.CreateOptions{})
	if err != nil {
		b.Fatal(err)
	}
	yes := true
	rs, err := cp.Admin.AppsV1().ReplicaSets("load").Create(ctx, &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Name: "web-5d9c8f7b6",
		OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "Deployment", Name: dep.Name, UID: dep.UID, Controller: &yes}}},
		Spec: appsv1.ReplicaSetSpec{Replicas: &zero, Selector: &metav1.LabelSelector{MatchLabels: labels}, Template: podTemplate(labels)}}, metav1.CreateOptions{})
	if err != nil {
		b.Fatal(err)
	}
	// The heap is measured at a fifth of the pods and at all of them, so
	// that what the watcher's start left behind does not count.
	start := time.Now()
	first := n / 5
	createPods(b, ctx, cp, rs, 0, first)
	waitMetricValue(b, watcher, "weir_watcher_objects", map[string]string{"kind": "pod"}, float64(first), 60*time.Second)
	base = liveHeap(b, watcher)
	createPods(b, ctx, cp, rs, first, n)
	loaded := time.Since(start)
	waitMetricValue(b, watcher, "weir_watcher_objects", map[string]string{"kind": "pod"}, float64(n), 60*time.Second)
	after := liveHeap(b, watcher)
	perPod := float64(after-base) / float64(n-first)

	// A new reducer gets the whole view as one snapshot.
	wire0 := watcher.Metric("weir_watcher_stream_wire_bytes_total", nil)
	w.RestartReducer(b)
	r := dialReducer(b, w.GRPCAddr)
	r.Eventually(b, "snapshot", 30*time.Second, map[string]string{podIP(n - 1): fmt.Sprintf("deployment/web@load zone=zone-1 pod=web-5d9c8f7b6-%05d", n-1)})
	m := harness.WaitFor(b, strings.TrimSuffix(w.MetricsURL, "/metrics")+"/metrics", 10*time.Second, "the snapshot applied", func(m harness.Metrics) bool {
		v, _ := m.Value("weir_reducer_metadata_snapshot_objects", nil)
		return v == float64(n+2) // the pods, the node and the kubernetes service
	})
	apply, _ := m.Value("weir_reducer_metadata_snapshot_apply_seconds", nil)
	wire := watcher.Metric("weir_watcher_stream_wire_bytes_total", nil) - wire0
	b.ReportMetric(perPod, "watcher-B/pod")
	b.ReportMetric(wire, "snapshot-wire-B")
	b.ReportMetric(wire/float64(n+2), "snapshot-wire-B/object")
	b.ReportMetric(apply*1e3, "snapshot-apply-ms")
	b.Logf("%d pods written in %s; watcher live heap %d → %d B from %d to %d pods: %.0f B/pod; snapshot of %d objects: %.0f B on the wire (gzip), applied in %.1f ms",
		n, loaded.Round(time.Millisecond), base, after, first, n, perPod, n+2, wire, apply*1e3)
}

// createPods creates pods from to to-1 of rs, 16 at a time.
func createPods(b *testing.B, ctx context.Context, cp *ControlPlane, rs *appsv1.ReplicaSet, from, to int) {
	var next, failed atomic.Int64
	next.Store(int64(from))
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= to {
					return
				}
				if err := createPod(ctx, cp, rs, i); err != nil {
					if failed.Add(1) == 1 {
						b.Errorf("pod %d: %v", i, err)
					}
				}
			}
		}()
	}
	wg.Wait()
	if failed.Load() > 0 {
		b.Fatalf("%d pods failed", failed.Load())
	}
}

func podIP(i int) string { return fmt.Sprintf("198.18.%d.%d", 128+i/250, 1+i%250) }

// createPod creates pod i of rs, bound to node-a, then reports it running
// with a v4 and a v6 address and a container.
func createPod(ctx context.Context, cp *ControlPlane, rs *appsv1.ReplicaSet, i int) error {
	yes := true
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-%05d", rs.Name, i), Labels: rs.Spec.Selector.MatchLabels,
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: rs.Name, UID: rs.UID, Controller: &yes}}},
		Spec: rs.Spec.Template.Spec,
	}
	p.Spec.NodeName = "node-a"
	p.Spec.Containers = []corev1.Container{{Name: "app", Image: "weir.invalid/app:1",
		Env:   []corev1.EnvVar{{Name: "MODE", Value: "production"}, {Name: "LOG_LEVEL", Value: "info"}},
		Ports: []corev1.ContainerPort{{ContainerPort: 8080, Name: "http"}}}}
	var err error
	for range 5 {
		var created *corev1.Pod
		created, err = cp.Admin.CoreV1().Pods(rs.Namespace).Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		created.Status.Phase = corev1.PodRunning
		created.Status.PodIP = podIP(i)
		created.Status.PodIPs = []corev1.PodIP{{IP: podIP(i)}, {IP: fmt.Sprintf("2001:2:0:ff::%x", i+1)}}
		created.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "app", Image: "weir.invalid/app:1", Ready: true,
			ContainerID: fmt.Sprintf("containerd://%064x", i+1)}}
		for range 5 {
			if _, err = cp.Admin.CoreV1().Pods(rs.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err == nil {
				return nil
			}
			time.Sleep(50 * time.Millisecond)
		}
		return err
	}
	return fmt.Errorf("create failed 5 times: %w", err)
}

// liveHeap runs a GC in the watcher (pprof heap?gc=1) and returns its live
// heap.
func liveHeap(tb testing.TB, w *Watcher) int64 {
	tb.Helper()
	url := strings.TrimSuffix(w.MetricsURL, "/metrics") + "/debug/pprof/heap?gc=1"
	for range 2 { // the second GC also frees what the first one's finalizers let go
		resp, err := http.Get(url)
		if err != nil {
			tb.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	v := w.Metric("go_gc_heap_live_bytes", nil)
	if v <= 0 {
		tb.Fatal("no go_gc_heap_live_bytes from the watcher")
	}
	return int64(v)
}

func waitMetricValue(tb testing.TB, w *Watcher, name string, labels map[string]string, want float64, timeout time.Duration) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for w.Metric(name, labels) != want {
		if time.Now().After(deadline) {
			tb.Fatalf("%s: %s%v is %v, want %v", w.name, name, labels, w.Metric(name, labels), want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
