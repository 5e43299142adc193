// Package k8s tests weir's Kubernetes metadata against a real control plane:
// etcd, kube-apiserver and kube-controller-manager built from the Go module
// proxy, the real weir-k8s-watcher with a token bound to exactly its RBAC
// file, and the real weir-reducer.
package k8s

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/weir-project/weir/test/internal/harness"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Cluster is a test's control plane plus the objects helpers need.
type Cluster struct {
	*ControlPlane
	t   testing.TB
	ctx context.Context
}

func (c *Cluster) cs() *kubernetes.Clientset { return c.Admin }

// CreateNode creates a node with an InternalIP and a zone.
func (c *Cluster) CreateNode(name, ip, zone string) {
	c.t.Helper()
	n, err := c.cs().CoreV1().Nodes().Create(c.ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name,
		Labels: map[string]string{"topology.kubernetes.io/zone": zone}}}, metav1.CreateOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}}
	if _, err := c.cs().CoreV1().Nodes().UpdateStatus(c.ctx, n, metav1.UpdateOptions{}); err != nil {
		c.t.Fatal(err)
	}
}

// SetZone relabels a node's zone.
func (c *Cluster) SetZone(name, zone string) {
	c.t.Helper()
	patch := fmt.Sprintf(`{"metadata":{"labels":{"topology.kubernetes.io/zone":%q}}}`, zone)
	if _, err := c.cs().CoreV1().Nodes().Patch(c.ctx, name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		c.t.Fatal(err)
	}
}

// CreateDeployment creates a one-replica Deployment whose pods have label
// app=name; the controller manager makes its ReplicaSet and pod.
func (c *Cluster) CreateDeployment(ns, name string) {
	c.t.Helper()
	c.ensureNamespace(c.t, c.ctx, ns)
	one := int32(1)
	labels := map[string]string{"app": name}
	_, err := c.cs().AppsV1().Deployments(ns).Create(c.ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{Replicas: &one, Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: podTemplate(labels)},
	}, metav1.CreateOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
}

func podTemplate(labels map[string]string) corev1.PodTemplateSpec {
	zero := int64(0)
	return corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
		Spec: corev1.PodSpec{TerminationGracePeriodSeconds: &zero,
			Containers: []corev1.Container{{Name: "app", Image: "weir.invalid/app:1"}}}}
}

// RunPod waits for an unscheduled pod with label app=app in ns, then does
// what the scheduler and a kubelet would: binds it to node and reports it
// running with ips. It returns the pod's name.
func (c *Cluster) RunPod(ns, app, node string, ips ...string) string {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		pods, err := c.cs().CoreV1().Pods(ns).List(c.ctx, metav1.ListOptions{LabelSelector: "app=" + app})
		if err != nil {
			c.t.Fatal(err)
		}
		for _, p := range pods.Items {
			if p.Spec.NodeName != "" || p.DeletionTimestamp != nil {
				continue
			}
			if err := c.cs().CoreV1().Pods(ns).Bind(c.ctx, &corev1.Binding{ObjectMeta: metav1.ObjectMeta{Name: p.Name, UID: p.UID},
				Target: corev1.ObjectReference{Kind: "Node", Name: node}}, metav1.CreateOptions{}); err != nil {
				c.t.Fatal(err)
			}
			c.SetPodIPs(ns, p.Name, ips...)
			return p.Name
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("no pending pod app=%s in %s within 30s", app, ns)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// SetPodIPs writes status.podIPs and phase Running, as a kubelet would.
func (c *Cluster) SetPodIPs(ns, name string, ips ...string) {
	c.t.Helper()
	for range 5 {
		p, err := c.cs().CoreV1().Pods(ns).Get(c.ctx, name, metav1.GetOptions{})
		if err != nil {
			c.t.Fatal(err)
		}
		p.Status.Phase = corev1.PodRunning
		p.Status.PodIPs = nil
		for _, ip := range ips {
			p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
		}
		p.Status.PodIP = ips[0]
		p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "app", Image: "weir.invalid/app:1", Ready: true,
			ContainerID: "containerd://" + strings.Repeat(fmt.Sprintf("%x", len(name)%16), 64)}}
		if _, err = c.cs().CoreV1().Pods(ns).UpdateStatus(c.ctx, p, metav1.UpdateOptions{}); err == nil {
			return
		}
	}
	c.t.Fatalf("update status of pod %s/%s: conflicts", ns, name)
}

// DeletePod deletes a pod at once, as a kubelet confirming it would.
func (c *Cluster) DeletePod(ns, name string) {
	c.t.Helper()
	zero := int64(0)
	if err := c.cs().CoreV1().Pods(ns).Delete(c.ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		c.t.Fatal(err)
	}
}

// Relabel sets a pod's app label.
func (c *Cluster) Relabel(ns, name, app string) {
	c.t.Helper()
	patch := fmt.Sprintf(`{"metadata":{"labels":{"app":%q}}}`, app)
	if _, err := c.cs().CoreV1().Pods(ns).Patch(c.ctx, name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		c.t.Fatal(err)
	}
}

// CreateService creates a dual-stack ClusterIP service and returns its
// ClusterIPs.
func (c *Cluster) CreateService(ns, name string) []string {
	c.t.Helper()
	pref := corev1.IPFamilyPolicyPreferDualStack
	s, err := c.cs().CoreV1().Services(ns).Create(c.ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": name}, IPFamilyPolicy: &pref,
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}}}, metav1.CreateOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	return s.Spec.ClusterIPs
}

// CreateCronJobJob creates a suspended CronJob and a Job it owns, as the
// CronJob controller would at its schedule; the Job controller makes the
// Job's pod, labelled app=name.
func (c *Cluster) CreateCronJobJob(ns, name string) {
	c.t.Helper()
	c.ensureNamespace(c.t, c.ctx, ns)
	suspend := true
	labels := map[string]string{"app": name}
	tmpl := podTemplate(labels)
	tmpl.Spec.RestartPolicy = corev1.RestartPolicyNever
	cj, err := c.cs().BatchV1().CronJobs(ns).Create(c.ctx, &batchv1.CronJob{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: batchv1.CronJobSpec{Schedule: "0 0 1 1 *", Suspend: &suspend,
			JobTemplate: batchv1.JobTemplateSpec{Spec: batchv1.JobSpec{Template: tmpl}}}}, metav1.CreateOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	yes := true
	_, err = c.cs().BatchV1().Jobs(ns).Create(c.ctx, &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Name: name + "-1",
		OwnerReferences: []metav1.OwnerReference{{APIVersion: "batch/v1", Kind: "CronJob", Name: cj.Name, UID: cj.UID, Controller: &yes}}},
		Spec: batchv1.JobSpec{Template: tmpl}}, metav1.CreateOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
}

// TestPrivilegedControlPlane drives the watcher and the reducer through a
// real control plane, step by step, and checks the reducer's view after
// each: create, label change, delete, IP reuse, service, zone; then the
// faults: the watcher's apiserver killed while objects change, the reducer
// restarted, the leading watcher killed.
func TestPrivilegedControlPlane(t *testing.T) {
	harness.RequireRoot(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	// The pods' addresses are those of network namespaces of this test.
	a, b := harness.BridgedHosts(t, "k8s")
	start := time.Now()
	// Two apiservers on one etcd: the watchers talk to 0, the test and the
	// controller manager to 1, so that objects can change while 0 is down.
	cp := StartControlPlane(t, 2)
	t.Logf("control plane up in %s", time.Since(start).Round(100*time.Millisecond))
	c := &Cluster{ControlPlane: cp, t: t, ctx: ctx}
	token := cp.ApplyRBAC(t, ctx, rbacPath())
	kubeconfig := cp.WriteKubeconfig(t, "watcher", 0, token)

	w := harness.StartWeir(t, harness.WeirOptions{NoCollector: true})
	r := dialReducer(t, w.GRPCAddr)
	leaderArgs := []string{"--leader-elect", "--lease-duration", "4s", "--renew-deadline", "3s", "--retry-period", "500ms"}
	w1 := StartWatcher(t, "watcher-1", kubeconfig, w.GRPCAddr, leaderArgs...)

	nodeIP := a.IPv4[:strings.LastIndex(a.IPv4, ".")] + ".254"
	c.CreateNode("node-a", nodeIP, "zone-1")
	c.CreateDeployment("shop", "checkout")
	c.CreateDeployment("store", "cart")
	created := time.Now()
	checkoutPod := c.RunPod("shop", "checkout", "node-a", a.IPv4, a.IPv6)
	took := r.Eventually(t, "create", 20*time.Second, map[string]string{
		a.IPv4: "deployment/checkout@shop zone=zone-1 pod=" + checkoutPod,
		a.IPv6: "deployment/checkout@shop zone=zone-1 pod=" + checkoutPod,
		nodeIP: "node/node-a zone=zone-1",
	})
	t.Logf("pod created → named by the reducer: %s from the Deployment's creation, %s from the pod's IPs", time.Since(created).Round(time.Millisecond), took.Round(time.Millisecond))

	// A label change that takes the pod out of its ReplicaSet's selector:
	// the controller orphans it, and the pod is its own workload.
	c.Relabel("shop", checkoutPod, "debug")
	r.Eventually(t, "label change", 20*time.Second, map[string]string{a.IPv4: "pod/" + checkoutPod + "@shop zone=zone-1 pod=" + checkoutPod})

	c.DeletePod("shop", checkoutPod)
	r.Eventually(t, "pod delete", 10*time.Second, map[string]string{a.IPv4: "none", a.IPv6: "none"})

	// The address goes to a pod of another Deployment in another namespace.
	cartPod := c.RunPod("store", "cart", "node-a", a.IPv4)
	r.Eventually(t, "IP reused", 10*time.Second, map[string]string{a.IPv4: "deployment/cart@store zone=zone-1 pod=" + cartPod})

	svcIPs := c.CreateService("shop", "checkout")
	if len(svcIPs) != 2 {
		t.Fatalf("service ClusterIPs %v, want a v4 and a v6", svcIPs)
	}
	r.Eventually(t, "service", 10*time.Second, map[string]string{svcIPs[0]: "service/checkout@shop", svcIPs[1]: "service/checkout@shop"})

	c.SetZone("node-a", "zone-2")
	r.Eventually(t, "zone", 10*time.Second, map[string]string{a.IPv4: "deployment/cart@store zone=zone-2 pod=" + cartPod, nodeIP: "node/node-a zone=zone-2"})

	// A CronJob's Job's pod is the CronJob's.
	c.CreateCronJobJob("batch", "report")
	reportPod := c.RunPod("batch", "report", "node-a", b.IPv4)
	r.Eventually(t, "cronjob", 20*time.Second, map[string]string{b.IPv4: "cronjob/report@batch zone=zone-2 pod=" + reportPod})

	// Fault: the watcher's apiserver dies; objects change meanwhile (through
	// the other apiserver); it comes back, the watcher relists, and the
	// reducer converges with no stale pod.
	cp.Kill(0)
	c.DeletePod("store", cartPod)
	c.DeletePod("batch", reportPod)
	c.CreateDeployment("shop", "payments")
	paymentsPod := c.RunPod("shop", "payments", "node-a", b.IPv4)
	// Down for longer than the lease: the watcher cannot renew it, stops
	// leading, and must campaign again once its apiserver is back.
	time.Sleep(5 * time.Second)
	if v := w1.Metric("weir_watcher_leader", nil); v != 0 {
		t.Fatalf("watcher-1 still leads (gauge %v) with its apiserver down for longer than the lease", v)
	}
	if got := r.View(a.IPv4); got == "none" {
		t.Fatalf("the reducer forgot %s while the watcher's apiserver was down", a.IPv4)
	}
	restart := time.Now()
	cp.Restart(t, 0)
	took = r.Eventually(t, "apiserver restart", 30*time.Second, map[string]string{
		a.IPv4: "none",
		b.IPv4: "deployment/payments@shop zone=zone-2 pod=" + paymentsPod,
	})
	t.Logf("apiserver back in %s; the reducer converged %s later", time.Since(restart).Round(100*time.Millisecond)-took, took.Round(time.Millisecond))

	// Fault: the reducer restarts with nothing; the watcher resends.
	full := map[string]string{
		b.IPv4:    "deployment/payments@shop zone=zone-2 pod=" + paymentsPod,
		svcIPs[0]: "service/checkout@shop",
		nodeIP:    "node/node-a zone=zone-2",
	}
	w.RestartReducer(t)
	r = dialReducer(t, w.GRPCAddr)
	took = r.Eventually(t, "reducer restart", 10*time.Second, full)
	t.Logf("reducer restarted: full view %s after it was ready", took.Round(time.Millisecond))

	// Fault: a second replica stands by; the leader is killed; the standby
	// takes the Lease and streams within the lease duration.
	w2 := StartWatcher(t, "watcher-2", kubeconfig, w.GRPCAddr, leaderArgs...)
	waitMetric(t, w2, "weir_watcher_synced", 1, 20*time.Second)
	if v := w1.Metric("weir_watcher_leader", nil); v != 1 {
		t.Fatalf("watcher-1 leader gauge %v, want 1", v)
	}
	if v := w2.Metric("weir_watcher_leader", nil); v != 0 {
		t.Fatalf("watcher-2 streams while watcher-1 leads (leader gauge %v)", v)
	}
	killed := time.Now()
	_ = syscall.Kill(w1.Proc.PID(), syscall.SIGKILL) // the Lease is not released
	c.SetZone("node-a", "zone-3")
	full[b.IPv4] = "deployment/payments@shop zone=zone-3 pod=" + paymentsPod
	full[nodeIP] = "node/node-a zone=zone-3"
	r.Eventually(t, "leader killed", 10*time.Second, full)
	t.Logf("leader killed → the standby's view on the reducer in %s (lease duration 4s)", time.Since(killed).Round(time.Millisecond))

	// Least privilege: without any one rule of the RBAC file, the watcher
	// fails.
	checkRBACIsNeeded(t, cp, ctx)
}

func waitMetric(t testing.TB, w *Watcher, name string, want float64, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for w.Metric(name, nil) != want {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s is %v, want %v", w.name, name, w.Metric(name, nil), want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
