package watch

import (
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	metadatav1 "github.com/weir-project/weir/proto/weir/metadata/v1"
)

// The informers keep these slim objects instead of the API's: the transform
// turns each object into one as it arrives, so that the informer's store
// holds a few hundred bytes per pod instead of the whole pod. Each gives the
// informer its name and namespace through GetObjectMeta, which is all that
// its key function needs.

// pod is a slimmed pod: its wire form without the workload, which depends
// on other objects, and its controlling owner.
type pod struct {
	pb        *metadatav1.Pod
	ownerKind string
	ownerName string
}

func (p *pod) GetObjectMeta() metav1.Object {
	return &metav1.ObjectMeta{Name: p.pb.GetName(), Namespace: p.pb.GetNamespace()}
}

// owner is a slimmed ReplicaSet or Job: its name, and the workload of its
// pods, which they share: its Deployment or CronJob, else itself.
type owner struct {
	name, namespace string
	workload        *metadatav1.Workload
}

func (o *owner) GetObjectMeta() metav1.Object {
	return &metav1.ObjectMeta{Name: o.name, Namespace: o.namespace}
}

// service is a slimmed service.
type service struct{ pb *metadatav1.Service }

func (s *service) GetObjectMeta() metav1.Object {
	return &metav1.ObjectMeta{Name: s.pb.GetName(), Namespace: s.pb.GetNamespace()}
}

// node is a slimmed node.
type node struct{ pb *metadatav1.Node }

func (n *node) GetObjectMeta() metav1.Object { return &metav1.ObjectMeta{Name: n.pb.GetName()} }

// ZoneLabel is the node label that names its zone.
const ZoneLabel = "topology.kubernetes.io/zone"

// controller returns the controlling owner reference, or the first one.
func controller(refs []metav1.OwnerReference) (kind, name string) {
	for _, r := range refs {
		if r.Controller != nil && *r.Controller {
			return r.Kind, r.Name
		}
	}
	if len(refs) > 0 {
		return refs[0].Kind, refs[0].Name
	}
	return "", ""
}

// transformPod slims a pod. It may see an object it already slimmed.
func transformPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	out := &pod{pb: &metadatav1.Pod{
		Uid:                  string(p.UID),
		Name:                 p.Name,
		Namespace:            p.Namespace,
		Node:                 p.Spec.NodeName,
		HostNetwork:          p.Spec.HostNetwork,
		Phase:                phase(p.Status.Phase),
		CreationTimeUnixNano: p.CreationTimestamp.UnixNano(),
	}}
	if p.DeletionTimestamp != nil {
		out.pb.DeletionTimeUnixNano = p.DeletionTimestamp.UnixNano()
	}
	for _, ip := range p.Status.PodIPs {
		out.pb.Ips = append(out.pb.Ips, ip.IP)
	}
	if len(out.pb.Ips) == 0 && p.Status.PodIP != "" {
		out.pb.Ips = []string{p.Status.PodIP}
	}
	for _, list := range [][]corev1.ContainerStatus{p.Status.InitContainerStatuses, p.Status.ContainerStatuses} {
		for _, c := range list {
			if c.ContainerID == "" {
				continue
			}
			id := c.ContainerID
			if i := strings.Index(id, "://"); i >= 0 {
				id = id[i+3:]
			}
			out.pb.ContainerIds = append(out.pb.ContainerIds, id)
		}
	}
	out.ownerKind, out.ownerName = controller(p.OwnerReferences)
	return out, nil
}

// transformOwner returns the transform of the metadata of a ReplicaSet or
// Job (self: "replicaset" or "job"), whose top owner is a Deployment or a
// CronJob (top).
func transformOwner(self, top string) cache.TransformFunc {
	return func(obj any) (any, error) {
		m, ok := obj.(*metav1.PartialObjectMetadata)
		if !ok {
			return obj, nil
		}
		o := &owner{name: m.Name, namespace: m.Namespace}
		if kind, name := controller(m.OwnerReferences); kind == top {
			o.workload = &metadatav1.Workload{Kind: lowerKind(kind), Name: name}
		} else {
			o.workload = &metadatav1.Workload{Kind: self, Name: m.Name}
		}
		return o, nil
	}
}

// lowerKind is a kind in lower case, without allocating for the usual ones.
func lowerKind(kind string) string {
	switch kind {
	case "Deployment":
		return "deployment"
	case "ReplicaSet":
		return "replicaset"
	case "StatefulSet":
		return "statefulset"
	case "DaemonSet":
		return "daemonset"
	case "CronJob":
		return "cronjob"
	case "Job":
		return "job"
	}
	return strings.ToLower(kind)
}

// transformService slims a service.
func transformService(obj any) (any, error) {
	s, ok := obj.(*corev1.Service)
	if !ok {
		return obj, nil
	}
	pb := &metadatav1.Service{Uid: string(s.UID), Name: s.Name, Namespace: s.Namespace, Type: string(s.Spec.Type)}
	ips := s.Spec.ClusterIPs
	if len(ips) == 0 && s.Spec.ClusterIP != "" {
		ips = []string{s.Spec.ClusterIP}
	}
	for _, ip := range ips {
		if ip != "" && ip != corev1.ClusterIPNone {
			pb.ClusterIps = append(pb.ClusterIps, ip)
		}
	}
	for _, p := range s.Spec.Ports {
		pb.Ports = append(pb.Ports, &metadatav1.ServicePort{Name: p.Name, Protocol: string(p.Protocol),
			Port: uint32(p.Port), NodePort: uint32(p.NodePort)})
	}
	return &service{pb: pb}, nil
}

// transformNode slims a node.
func transformNode(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	pb := &metadatav1.Node{Name: n.Name, Zone: n.Labels[ZoneLabel]}
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			pb.InternalIps = append(pb.InternalIps, a.Address)
		}
	}
	return &node{pb: pb}, nil
}

func phase(p corev1.PodPhase) metadatav1.PodPhase {
	switch p {
	case corev1.PodPending:
		return metadatav1.PodPhase_POD_PHASE_PENDING
	case corev1.PodRunning:
		return metadatav1.PodPhase_POD_PHASE_RUNNING
	case corev1.PodSucceeded:
		return metadatav1.PodPhase_POD_PHASE_SUCCEEDED
	case corev1.PodFailed:
		return metadatav1.PodPhase_POD_PHASE_FAILED
	}
	return metadatav1.PodPhase_POD_PHASE_UNSPECIFIED
}
