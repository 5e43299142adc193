// Package watch keeps the watcher's view of the cluster current from
// client-go shared informers: pods (slimmed as they arrive), the metadata of
// ReplicaSets and Jobs (to name a pod's top owner), services and nodes.
package watch

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	apiwatch "k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/tools/cache"

	"github.com/weir-project/weir/k8s-watcher/internal/view"
	metadatav1 "github.com/weir-project/weir/proto/weir/metadata/v1"
)

// byOwner indexes pods by the namespace, kind and name of their controller.
const byOwner = "owner"

// Watcher feeds a view from the API server.
type Watcher struct {
	logger *slog.Logger
	view   *view.View

	core informers.SharedInformerFactory
	meta metadatainformer.SharedInformerFactory

	pods, replicaSets, jobs, services, nodes cache.SharedIndexInformer

	// mu serializes the handlers, so that a pod's workload, computed
	// from its owners' stores, is never overwritten by an older one.
	mu     sync.Mutex
	events func(kind, op string)
}

// New returns a watcher of the cluster that cs and mc talk to. events, if
// set, counts each informer event, and listErrors each failed list or watch
// (e.g. forbidden: a missing permission).
func New(cs kubernetes.Interface, mc metadata.Interface, v *view.View, logger *slog.Logger, events func(kind, op string), listErrors func(kind string)) (*Watcher, error) {
	if events == nil {
		events = func(string, string) {}
	}
	if listErrors == nil {
		listErrors = func(string) {}
	}
	w := &Watcher{
		logger: logger.With("component", "watch"),
		view:   v,
		core:   informers.NewSharedInformerFactory(cs, 0),
		meta:   metadatainformer.NewSharedInformerFactory(mc, 0),
		events: events,
	}
	// Pods get an informer of their own, with only the index by owner:
	// the factory's would add a namespace index, an entry per pod that the
	// watcher never reads.
	w.pods = cache.NewSharedIndexInformer(&cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return cs.CoreV1().Pods("").List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (apiwatch.Interface, error) {
			return cs.CoreV1().Pods("").Watch(ctx, o)
		},
	}, &corev1.Pod{}, 0, cache.Indexers{})
	w.services = w.core.Core().V1().Services().Informer()
	w.nodes = w.core.Core().V1().Nodes().Informer()
	w.replicaSets = w.meta.ForResource(schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "replicasets"}).Informer()
	w.jobs = w.meta.ForResource(schema.GroupVersionResource{Group: "batch", Version: "v1", Resource: "jobs"}).Informer()

	for _, s := range []struct {
		inf cache.SharedIndexInformer
		fn  cache.TransformFunc
	}{{w.pods, transformPod}, {w.services, transformService}, {w.nodes, transformNode}, {w.replicaSets, transformOwner("replicaset", "Deployment")}, {w.jobs, transformOwner("job", "CronJob")}} {
		if err := s.inf.SetTransform(s.fn); err != nil {
			return nil, fmt.Errorf("set transform: %w", err)
		}
	}
	if err := w.pods.AddIndexers(cache.Indexers{byOwner: func(obj any) ([]string, error) {
		p, ok := obj.(*pod)
		if !ok || p.ownerKind == "" {
			return nil, nil
		}
		return []string{ownerIndex(p.pb.GetNamespace(), p.ownerKind, p.ownerName)}, nil
	}}); err != nil {
		return nil, fmt.Errorf("add pod indexer: %w", err)
	}
	handlers := []struct {
		inf              cache.SharedIndexInformer
		kind             string
		upsert, onDelete func(any)
	}{
		{w.pods, "pod", w.upsertPod, w.deletePod},
		{w.services, "service", w.upsertService, w.deleteService},
		{w.nodes, "node", w.upsertNode, w.deleteNode},
		{w.replicaSets, "replicaset", w.ownerChanged("ReplicaSet"), w.ownerChanged("ReplicaSet")},
		{w.jobs, "job", w.ownerChanged("Job"), w.ownerChanged("Job")},
	}
	for _, h := range handlers {
		kind, upsert, onDelete := h.kind, h.upsert, h.onDelete
		if err := h.inf.SetWatchErrorHandlerWithContext(func(ctx context.Context, r *cache.Reflector, err error) {
			listErrors(kind)
			cache.DefaultWatchErrorHandler(ctx, r, err)
		}); err != nil {
			return nil, fmt.Errorf("set %s watch error handler: %w", kind, err)
		}
		if _, err := h.inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { w.events(kind, "add"); upsert(obj) },
			UpdateFunc: func(_, obj any) { w.events(kind, "update"); upsert(obj) },
			DeleteFunc: func(obj any) { w.events(kind, "delete"); onDelete(obj) },
		}); err != nil {
			return nil, fmt.Errorf("add %s handler: %w", kind, err)
		}
	}
	return w, nil
}

// Run starts the informers, waits for their first lists, and keeps them
// running until ctx is done. ready is called once the view is complete.
func (w *Watcher) Run(ctx context.Context, ready func()) error {
	w.core.Start(ctx.Done())
	go w.pods.RunWithContext(ctx)
	w.meta.Start(ctx.Done())
	start := time.Now()
	if !cache.WaitForCacheSync(ctx.Done(), w.pods.HasSynced, w.services.HasSynced, w.nodes.HasSynced,
		w.replicaSets.HasSynced, w.jobs.HasSynced) {
		w.core.Shutdown()
		w.meta.Shutdown()
		return ctx.Err()
	}
	w.logger.Info("informers synced", "took", time.Since(start).Round(time.Millisecond), "version", w.view.Version())
	if ready != nil {
		ready()
	}
	<-ctx.Done()
	w.core.Shutdown()
	w.meta.Shutdown()
	return nil
}

func ownerIndex(ns, kind, name string) string { return ns + "/" + kind + "/" + name }

// workload names the pod's top owner from the owner stores. The pods of a
// ReplicaSet or Job share its owner's Workload message.
func (w *Watcher) workload(p *pod) *metadatav1.Workload {
	kind, name := p.ownerKind, p.ownerName
	var store cache.Store
	switch kind {
	case "":
		return &metadatav1.Workload{Kind: "pod", Name: p.pb.GetName()}
	case "ReplicaSet":
		store = w.replicaSets.GetStore()
	case "Job":
		store = w.jobs.GetStore()
	}
	if store != nil {
		if obj, ok, _ := store.GetByKey(p.pb.GetNamespace() + "/" + name); ok {
			if o, ok := obj.(*owner); ok {
				return o.workload
			}
		}
	}
	return &metadatav1.Workload{Kind: lowerKind(kind), Name: name}
}

func (w *Watcher) upsertPod(obj any) {
	p, ok := obj.(*pod)
	if !ok {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.setPod(p)
}

// setPod records p with its workload; w.mu is held.
//
// The informer's slim pod and the view share one message: a pod fresh from
// the transform has no workload yet and nobody else has seen it, so it gets
// its workload in place. A pod the view already has is copied when its
// workload changes (its owner arrived or changed), since the stream may be
// reading the old message.
func (w *Watcher) setPod(p *pod) {
	pb, wl := p.pb, w.workload(p)
	switch {
	case pb.Workload == nil:
		pb.Workload = wl
	case !proto.Equal(pb.Workload, wl):
		pb = &metadatav1.Pod{
			Uid: pb.Uid, Name: pb.Name, Namespace: pb.Namespace, Node: pb.Node, Ips: pb.Ips,
			HostNetwork: pb.HostNetwork, ContainerIds: pb.ContainerIds, Phase: pb.Phase,
			DeletionTimeUnixNano: pb.DeletionTimeUnixNano, CreationTimeUnixNano: pb.CreationTimeUnixNano,
			Workload: wl,
		}
	}
	w.view.Set(view.Key{Kind: metadatav1.ObjectKind_OBJECT_KIND_POD, ID: pb.Uid}, &metadatav1.Delta{Object: &metadatav1.Delta_Pod{Pod: pb}})
}

func (w *Watcher) deletePod(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	p, ok := obj.(*pod)
	if !ok {
		return
	}
	t := time.Now().UnixNano()
	if dt := p.pb.GetDeletionTimeUnixNano(); dt != 0 && dt < t {
		t = dt
	}
	w.view.Delete(view.Key{Kind: metadatav1.ObjectKind_OBJECT_KIND_POD, ID: p.pb.GetUid()}, t)
}

// ownerChanged returns the handler of a ReplicaSet's or Job's change: it
// names the owned pods' workload again.
func (w *Watcher) ownerChanged(kind string) func(any) {
	return func(obj any) {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		o, ok := obj.(*owner)
		if !ok {
			return
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		objs, err := w.pods.GetIndexer().ByIndex(byOwner, ownerIndex(o.namespace, kind, o.name))
		if err != nil {
			return
		}
		for _, obj := range objs {
			if p, ok := obj.(*pod); ok {
				w.setPod(p)
			}
		}
	}
}

func (w *Watcher) upsertService(obj any) {
	if s, ok := obj.(*service); ok {
		w.view.Set(view.Key{Kind: metadatav1.ObjectKind_OBJECT_KIND_SERVICE, ID: s.pb.GetUid()}, &metadatav1.Delta{Object: &metadatav1.Delta_Service{Service: s.pb}})
	}
}

func (w *Watcher) deleteService(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	if s, ok := obj.(*service); ok {
		w.view.Delete(view.Key{Kind: metadatav1.ObjectKind_OBJECT_KIND_SERVICE, ID: s.pb.GetUid()}, time.Now().UnixNano())
	}
}

func (w *Watcher) upsertNode(obj any) {
	if n, ok := obj.(*node); ok {
		w.view.Set(view.Key{Kind: metadatav1.ObjectKind_OBJECT_KIND_NODE, ID: n.pb.GetName()}, &metadatav1.Delta{Object: &metadatav1.Delta_Node{Node: n.pb}})
	}
}

func (w *Watcher) deleteNode(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	if n, ok := obj.(*node); ok {
		w.view.Delete(view.Key{Kind: metadatav1.ObjectKind_OBJECT_KIND_NODE, ID: n.pb.GetName()}, time.Now().UnixNano())
	}
}
