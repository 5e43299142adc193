// Package metadata owns the reducer's Kubernetes metadata: the cache of the
// pods, services and nodes that a k8s-watcher streams, kept exactly as the
// watcher says (an object goes when the watcher deletes it, never by
// eviction), and the gRPC service that receives the stream. The cache feeds
// the resolver: pods by UID, by pod IP as a local and as a remote address;
// services by ClusterIP; nodes by InternalIP.
package metadata

import (
	"net/netip"
	"strings"
	"sync"
	"time"

	metadatav1 "github.com/weir-project/weir/proto/weir/metadata/v1"
	"github.com/weir-project/weir/reducer/internal/aggregate"
	"github.com/weir-project/weir/reducer/internal/resolve"
)

// Workload kinds that metadata names besides a pod's owner kinds.
const (
	KindPod     = "pod"
	KindService = "service"
	KindNode    = "node"
)

// Sinks are where the cache puts what it knows, one per rank.
type Sinks struct {
	Pod, Service, Node resolve.Sink
}

// SinksOf returns the sinks of a metadata consumer such as match.Engine.
func SinksOf(m interface {
	Metadata(resolve.Rank) resolve.Sink
}) Sinks {
	return Sinks{Pod: m.Metadata(resolve.RankPod), Service: m.Metadata(resolve.RankService), Node: m.Metadata(resolve.RankNode)}
}

// pod is a pod of the cache.
type pod struct {
	pb  *metadatav1.Pod
	ips []netip.Addr
}

// claims reports whether p owns its IPs at now: a pod on the host network
// has the node's, and a pod that finished, or whose deletion time has
// passed, has let them go for another pod to reuse.
func (p *pod) claims(now int64) bool {
	if p.pb.GetHostNetwork() {
		return false
	}
	switch p.pb.GetPhase() {
	case metadatav1.PodPhase_POD_PHASE_SUCCEEDED, metadatav1.PodPhase_POD_PHASE_FAILED:
		return false
	}
	if d := p.pb.GetDeletionTimeUnixNano(); d != 0 && d <= now {
		return false
	}
	return true
}

// Cache is the authoritative metadata of one cluster. It is safe for
// concurrent use.
type Cache struct {
	mu    sync.Mutex
	sinks Sinks
	now   func() time.Time

	pods     map[string]*pod                // by UID
	services map[string]*metadatav1.Service // by UID
	nodes    map[string]*metadatav1.Node    // by name
	nodePods map[string]map[string]*pod     // node name → pods by UID
	ipPods   map[netip.Addr][]*pod          // pods that list the address
	ipOwner  map[netip.Addr]*pod            // the pod the address names now
	svcIP    map[netip.Addr]*metadatav1.Service
	nodeIP   map[netip.Addr]*metadatav1.Node

	invalid uint64 // addresses that did not parse
}

// NewCache returns an empty cache that puts into sinks.
func NewCache(sinks Sinks) *Cache {
	return &Cache{
		sinks:    sinks,
		now:      time.Now,
		pods:     make(map[string]*pod),
		services: make(map[string]*metadatav1.Service),
		nodes:    make(map[string]*metadatav1.Node),
		nodePods: make(map[string]map[string]*pod),
		ipPods:   make(map[netip.Addr][]*pod),
		ipOwner:  make(map[netip.Addr]*pod),
		svcIP:    make(map[netip.Addr]*metadatav1.Service),
		nodeIP:   make(map[netip.Addr]*metadatav1.Node),
	}
}

// Counts returns the number of pods, services and nodes.
func (c *Cache) Counts() (pods, services, nodes int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.pods), len(c.services), len(c.nodes)
}

// Invalid returns how many addresses did not parse.
func (c *Cache) Invalid() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.invalid
}

// Apply applies one change.
func (c *Cache) Apply(d *metadatav1.Delta) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.apply(d)
}

// ApplyAll applies changes in order.
func (c *Cache) ApplyAll(ds []*metadatav1.Delta) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, d := range ds {
		c.apply(d)
	}
}

func (c *Cache) apply(d *metadatav1.Delta) {
	switch o := d.GetObject().(type) {
	case *metadatav1.Delta_Pod:
		c.setPod(o.Pod)
	case *metadatav1.Delta_Service:
		c.setService(o.Service)
	case *metadatav1.Delta_Node:
		c.setNode(o.Node)
	case *metadatav1.Delta_Deleted:
		switch o.Deleted.GetKind() {
		case metadatav1.ObjectKind_OBJECT_KIND_POD:
			c.deletePod(o.Deleted.GetId())
		case metadatav1.ObjectKind_OBJECT_KIND_SERVICE:
			c.deleteService(o.Deleted.GetId())
		case metadatav1.ObjectKind_OBJECT_KIND_NODE:
			c.deleteNode(o.Deleted.GetId())
		}
	}
}

// ID is an object's identity in the cache, for a snapshot's sweep.
type ID struct {
	Kind metadatav1.ObjectKind
	ID   string
}

// IDOf returns the identity of the object a delta carries.
func IDOf(d *metadatav1.Delta) (ID, bool) {
	switch o := d.GetObject().(type) {
	case *metadatav1.Delta_Pod:
		return ID{metadatav1.ObjectKind_OBJECT_KIND_POD, o.Pod.GetUid()}, true
	case *metadatav1.Delta_Service:
		return ID{metadatav1.ObjectKind_OBJECT_KIND_SERVICE, o.Service.GetUid()}, true
	case *metadatav1.Delta_Node:
		return ID{metadatav1.ObjectKind_OBJECT_KIND_NODE, o.Node.GetName()}, true
	}
	return ID{}, false
}

// Sweep deletes every object not in keep: the end of a snapshot. It returns
// how many it deleted.
func (c *Cache) Sweep(keep map[ID]struct{}) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for uid := range c.pods {
		if _, ok := keep[ID{metadatav1.ObjectKind_OBJECT_KIND_POD, uid}]; !ok {
			c.deletePod(uid)
			n++
		}
	}
	for uid := range c.services {
		if _, ok := keep[ID{metadatav1.ObjectKind_OBJECT_KIND_SERVICE, uid}]; !ok {
			c.deleteService(uid)
			n++
		}
	}
	for name := range c.nodes {
		if _, ok := keep[ID{metadatav1.ObjectKind_OBJECT_KIND_NODE, name}]; !ok {
			c.deleteNode(name)
			n++
		}
	}
	return n
}

func (c *Cache) parseIPs(ss []string) []netip.Addr {
	out := make([]netip.Addr, 0, len(ss))
	for _, s := range ss {
		a, err := netip.ParseAddr(s)
		if err != nil {
			c.invalid++
			continue
		}
		out = append(out, a.Unmap())
	}
	return out
}

// podWorkload is what a pod names.
func (c *Cache) podWorkload(p *metadatav1.Pod) aggregate.Workload {
	w := aggregate.Workload{
		Name:      p.GetWorkload().GetName(),
		Kind:      strings.ToLower(p.GetWorkload().GetKind()),
		Namespace: p.GetNamespace(),
		Node:      p.GetNode(),
		Pod:       p.GetName(),
	}
	if w.Kind == "" || w.Name == "" {
		w.Kind, w.Name = KindPod, p.GetName()
	}
	if n := c.nodes[p.GetNode()]; n != nil {
		w.Zone = n.GetZone()
	}
	return w
}

func (c *Cache) setPod(pb *metadatav1.Pod) {
	uid := pb.GetUid()
	if uid == "" {
		return
	}
	p := &pod{pb: pb, ips: c.parseIPs(pb.GetIps())}
	touched := make(map[netip.Addr]struct{}, 2)
	if old := c.pods[uid]; old != nil {
		c.unlinkPod(old, touched)
	}
	c.pods[uid] = p
	if node := pb.GetNode(); node != "" {
		m := c.nodePods[node]
		if m == nil {
			m = make(map[string]*pod)
			c.nodePods[node] = m
		}
		m[uid] = p
	}
	for _, a := range p.ips {
		c.ipPods[a] = append(c.ipPods[a], p)
		touched[a] = struct{}{}
	}
	c.sinks.Pod.Put(resolve.PodKey(uid), c.podWorkload(pb))
	for a := range touched {
		c.settleIP(a)
	}
}

// unlinkPod removes p from the indexes and records the addresses it had.
func (c *Cache) unlinkPod(p *pod, touched map[netip.Addr]struct{}) {
	if m := c.nodePods[p.pb.GetNode()]; m != nil {
		delete(m, p.pb.GetUid())
		if len(m) == 0 {
			delete(c.nodePods, p.pb.GetNode())
		}
	}
	for _, a := range p.ips {
		ps := c.ipPods[a]
		for i, q := range ps {
			if q == p {
				ps = append(ps[:i], ps[i+1:]...)
				break
			}
		}
		if len(ps) == 0 {
			delete(c.ipPods, a)
		} else {
			c.ipPods[a] = ps
		}
		touched[a] = struct{}{}
	}
}

func (c *Cache) deletePod(uid string) {
	p := c.pods[uid]
	if p == nil {
		return
	}
	touched := make(map[netip.Addr]struct{}, 2)
	c.unlinkPod(p, touched)
	delete(c.pods, uid)
	c.sinks.Pod.Delete(resolve.PodKey(uid))
	for a := range touched {
		c.settleIP(a)
	}
}

// settleIP names address a after its pods changed: the newest pod that
// still claims it, or nothing. A deleted or finished pod never names its
// address again, so a flow that starts after the deletion does not take
// its name, even when another pod got the address first.
func (c *Cache) settleIP(a netip.Addr) {
	now := c.now().UnixNano()
	var owner *pod
	for _, p := range c.ipPods[a] {
		if !p.claims(now) {
			continue
		}
		if owner == nil || p.pb.GetCreationTimeUnixNano() >= owner.pb.GetCreationTimeUnixNano() {
			owner = p
		}
	}
	if owner == nil {
		if _, had := c.ipOwner[a]; had {
			delete(c.ipOwner, a)
			c.sinks.Pod.Delete(resolve.IPKey(a))
			c.sinks.Pod.Delete(resolve.LocalIPKey(a))
		}
		return
	}
	c.ipOwner[a] = owner
	w := c.podWorkload(owner.pb)
	c.sinks.Pod.Put(resolve.IPKey(a), w)
	c.sinks.Pod.Put(resolve.LocalIPKey(a), w)
}

func serviceWorkload(s *metadatav1.Service) aggregate.Workload {
	return aggregate.Workload{Name: s.GetName(), Kind: KindService, Namespace: s.GetNamespace()}
}

func (c *Cache) setService(s *metadatav1.Service) {
	uid := s.GetUid()
	if uid == "" {
		return
	}
	if old := c.services[uid]; old != nil {
		c.unlinkService(old)
	}
	c.services[uid] = s
	w := serviceWorkload(s)
	for _, a := range c.parseIPs(s.GetClusterIps()) {
		c.svcIP[a] = s
		c.sinks.Service.Put(resolve.IPKey(a), w)
	}
}

func (c *Cache) unlinkService(s *metadatav1.Service) {
	for _, a := range c.parseIPs(s.GetClusterIps()) {
		if c.svcIP[a] == s {
			delete(c.svcIP, a)
			c.sinks.Service.Delete(resolve.IPKey(a))
		}
	}
}

func (c *Cache) deleteService(uid string) {
	if s := c.services[uid]; s != nil {
		c.unlinkService(s)
		delete(c.services, uid)
	}
}

func nodeWorkload(n *metadatav1.Node) aggregate.Workload {
	return aggregate.Workload{Name: n.GetName(), Kind: KindNode, Zone: n.GetZone(), Node: n.GetName()}
}

func (c *Cache) setNode(n *metadatav1.Node) {
	name := n.GetName()
	if name == "" {
		return
	}
	old := c.nodes[name]
	if old != nil {
		c.unlinkNode(old)
	}
	c.nodes[name] = n
	w := nodeWorkload(n)
	for _, a := range c.parseIPs(n.GetInternalIps()) {
		c.nodeIP[a] = n
		c.sinks.Node.Put(resolve.IPKey(a), w)
	}
	if old == nil || old.GetZone() != n.GetZone() {
		c.renamePodsOf(name)
	}
}

func (c *Cache) unlinkNode(n *metadatav1.Node) {
	for _, a := range c.parseIPs(n.GetInternalIps()) {
		if c.nodeIP[a] == n {
			delete(c.nodeIP, a)
			c.sinks.Node.Delete(resolve.IPKey(a))
		}
	}
}

func (c *Cache) deleteNode(name string) {
	if n := c.nodes[name]; n != nil {
		c.unlinkNode(n)
		delete(c.nodes, name)
		c.renamePodsOf(name)
	}
}

// renamePodsOf names again the pods of a node whose zone changed.
func (c *Cache) renamePodsOf(node string) {
	touched := make(map[netip.Addr]struct{})
	for uid, p := range c.nodePods[node] {
		c.sinks.Pod.Put(resolve.PodKey(uid), c.podWorkload(p.pb))
		for _, a := range p.ips {
			touched[a] = struct{}{}
		}
	}
	for a := range touched {
		c.settleIP(a)
	}
}

// Lookup returns what the metadata names address a, in the resolver's
// order: a pod, a service, a node.
func (c *Cache) Lookup(a netip.Addr) (aggregate.Workload, bool) {
	a = a.Unmap()
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.ipOwner[a]; p != nil {
		return c.podWorkload(p.pb), true
	}
	if s := c.svcIP[a]; s != nil {
		return serviceWorkload(s), true
	}
	if n := c.nodeIP[a]; n != nil {
		return nodeWorkload(n), true
	}
	return aggregate.Workload{}, false
}
