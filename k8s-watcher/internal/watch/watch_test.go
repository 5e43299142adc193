package watch

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"go.uber.org/goleak"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	metadatafake "k8s.io/client-go/metadata/fake"

	"github.com/weir-project/weir/k8s-watcher/internal/view"
	metadatav1 "github.com/weir-project/weir/proto/weir/metadata/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func ref(kind, name string) []metav1.OwnerReference {
	yes := true
	return []metav1.OwnerReference{{Kind: kind, Name: name, Controller: &yes}}
}

func meta(apiVersion, kind, ns, name string, owners []metav1.OwnerReference) *metav1.PartialObjectMetadata {
	return &metav1.PartialObjectMetadata{TypeMeta: metav1.TypeMeta{APIVersion: apiVersion, Kind: kind},
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, OwnerReferences: owners}}
}

func apiPod(ns, name string, owners []metav1.OwnerReference, ips ...string) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + name), OwnerReferences: owners},
		Spec:   corev1.PodSpec{NodeName: "n1"},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{{ContainerID: "containerd://abc123"}}}}
	for _, ip := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	return p
}

// workloads returns the pods of the view as name → kind/workload.
func workloads(v *view.View) map[string]string {
	ds, _ := v.Snapshot()
	out := map[string]string{}
	for _, d := range ds {
		if p := d.GetPod(); p != nil {
			out[p.GetName()] = p.GetWorkload().GetKind() + "/" + p.GetWorkload().GetName()
		}
	}
	return out
}

func TestWatcherNamesTopOwners(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cs := fake.NewClientset(
		apiPod("shop", "checkout-x", ref("ReplicaSet", "checkout-5d9"), "198.18.0.10", "2001:2::10"),
		apiPod("shop", "orphan", nil),
		apiPod("shop", "db-0", ref("StatefulSet", "db")),
		apiPod("batch", "report-1-x", ref("Job", "report-1")),
		apiPod("batch", "adhoc-x", ref("Job", "adhoc")),
		apiPod("shop", "late-x", ref("ReplicaSet", "late-6f")),
	)
	scheme := runtime.NewScheme()
	_ = metav1.AddMetaToScheme(scheme)
	mc := metadatafake.NewSimpleMetadataClient(scheme,
		meta("apps/v1", "ReplicaSet", "shop", "checkout-5d9", ref("Deployment", "checkout")),
		meta("batch/v1", "Job", "batch", "report-1", ref("CronJob", "report")),
		meta("batch/v1", "Job", "batch", "adhoc", nil),
	)
	v := view.New(1, 100)
	w, err := New(cs, mc, v, slog.New(slog.DiscardHandler), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	synced := make(chan struct{})
	done := make(chan struct{})
	go func() { _ = w.Run(ctx, func() { close(synced) }); close(done) }()
	<-synced
	want := map[string]string{
		"checkout-x": "deployment/checkout",
		"orphan":     "pod/orphan",
		"db-0":       "statefulset/db",
		"report-1-x": "cronjob/report",
		"adhoc-x":    "job/adhoc",
		"late-x":     "replicaset/late-6f",
	}
	eventually(t, v, want)

	// The ReplicaSet arrives after its pod: the pod is named again.
	rsc := mc.Resource(appsv1.SchemeGroupVersion.WithResource("replicasets")).Namespace("shop").(interface {
		CreateFake(*metav1.PartialObjectMetadata, metav1.CreateOptions, ...string) (*metav1.PartialObjectMetadata, error)
	})
	if _, err := rsc.CreateFake(meta("apps/v1", "ReplicaSet", "shop", "late-6f", ref("Deployment", "late")), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	want["late-x"] = "deployment/late"
	eventually(t, v, want)

	d, ok := v.Get(view.Key{Kind: metadatav1.ObjectKind_OBJECT_KIND_POD, ID: "uid-checkout-x"})
	if !ok {
		t.Fatal("no checkout-x in the view")
	}
	p := d.GetPod()
	if fmt.Sprint(p.GetIps()) != "[198.18.0.10 2001:2::10]" || fmt.Sprint(p.GetContainerIds()) != "[abc123]" || p.GetNode() != "n1" ||
		p.GetPhase() != metadatav1.PodPhase_POD_PHASE_RUNNING {
		t.Fatalf("slim pod %v", p)
	}

	if err := cs.CoreV1().Pods("shop").Delete(ctx, "orphan", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	delete(want, "orphan")
	eventually(t, v, want)
	cancel()
	<-done
}

func eventually(t *testing.T, v *view.View, want map[string]string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := workloads(v)
		if fmt.Sprint(got) == fmt.Sprint(want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("view %v, want %v", got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
