// Package resolve turns the ends of flows into workloads, from the metadata
// that its sources feed it, and tells its owner which flows to resolve again
// when that metadata changes.
package resolve

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/weir-project/weir/reducer/internal/aggregate"
)

// Workload kinds that the resolver makes up itself, without metadata.
const (
	KindProcess   = "process"
	KindContainer = "container"
	KindExternal  = "external"
)

// Unknown is the local end of a socket whose owning process is not known.
var Unknown = aggregate.Workload{Name: "unknown", Kind: KindProcess}

// KeyKind is what a metadata key is.
type KeyKind uint8

// Kinds of metadata keys: each is a reverse index from the key to the flows
// resolved through it.
const (
	// KeyIP is an address, cluster-wide: a pod, service or node IP, or an
	// address a DNS answer named.
	KeyIP KeyKind = iota + 1
	// KeyCgroup is a cgroup v2 id on a node: a pod or a container.
	KeyCgroup
	// KeyNetns is a network namespace (its inode) on a node: a pod.
	KeyNetns
	// KeyPod is a pod UID, as a cgroup path names it: the local end of a
	// socket of a process in that pod.
	KeyPod
	// KeyLocalIP is an address as the local end of a socket: a pod's IP
	// names the pod for the sockets in the pod's network namespace (host
	// network pods have none: their address is the node's).
	KeyLocalIP
)

// Key names a piece of metadata.
type Key struct {
	Kind KeyKind
	Node string     // KeyCgroup and KeyNetns
	Addr netip.Addr // KeyIP
	ID   uint64     // the cgroup id or the netns inode
	UID  string     // KeyPod
}

// IPKey is the key of an address.
func IPKey(a netip.Addr) Key { return Key{Kind: KeyIP, Addr: a.Unmap()} }

// CgroupKey is the key of a cgroup of a node.
func CgroupKey(node string, id uint64) Key { return Key{Kind: KeyCgroup, Node: node, ID: id} }

// PodKey is the key of a pod by its UID.
func PodKey(uid string) Key { return Key{Kind: KeyPod, UID: uid} }

// LocalIPKey is the key of an address as a socket's local end.
func LocalIPKey(a netip.Addr) Key { return Key{Kind: KeyLocalIP, Addr: a.Unmap()} }

// NetnsKey is the key of a network namespace of a node.
func NetnsKey(node string, inode uint32) Key {
	return Key{Kind: KeyNetns, Node: node, ID: uint64(inode)}
}

// Rank orders the sources that name the same key: the lowest rank wins, in
// the order of the resolution rules (a pod before a service before a node
// before a DNS name).
type Rank uint8

// Ranks of metadata sources.
const (
	RankPod Rank = iota
	RankContainer
	RankService
	RankNode
	RankDNS
	// RankTest is for tests and tools; it loses to every other source.
	RankTest
)

// Sink receives a source's metadata. It is safe for concurrent use.
type Sink interface {
	// Put names the workload of k, replacing what this source said of k
	// before.
	Put(k Key, w aggregate.Workload)
	// Delete takes back what this source said of k.
	Delete(k Key)
}

// Source is a feed of metadata, e.g. a Kubernetes watcher's stream of pods,
// services and nodes, or the DNS answers collectors see.
type Source interface {
	// Run feeds sink until ctx is done.
	Run(ctx context.Context, sink Sink) error
}

// SourceFunc adapts a function to Source.
type SourceFunc func(ctx context.Context, sink Sink) error

// Run calls f.
func (f SourceFunc) Run(ctx context.Context, sink Sink) error { return f(ctx, sink) }

// Endpoint is one end of a flow, as its owner knows it.
type Endpoint struct {
	Addr netip.Addr
	// Local is set when a collector reports this end; the fields below are
	// then its socket's.
	Local bool
	Node  string
	Netns uint32
	// Known is set when the socket's owning process is known; Comm and
	// CgroupID are then the process's.
	Known    bool
	Comm     string
	CgroupID uint64
	// Container is the short id of the process's container, from its
	// cgroup path; empty outside a container.
	Container string
	// PodUID is the UID of the process's pod, from its cgroup path; empty
	// outside a pod.
	PodUID string
}

// maxKeys is the number of keys an end resolves through at most.
const maxKeys = 3

// keyID is a key in use by flows, interned.
type keyID uint32

// setID is a key set in use by flows, interned: the keys that one end
// resolved through, in order. Ends of many flows share one (the sockets of
// one process in one network namespace, the flows to one address), so that
// a flow records a 4-byte id per end rather than its keys.
type setID uint32

// Uses records the key set each end of one flow was resolved through, and
// where the end is in that set's list of flow ends. Its owner keeps one per
// flow and hands it to every call for that flow.
type Uses struct {
	set [2]setID
	pos [2]uint32 // the end's index in its set's flows
}

// move records that the end of the flow at position from of set s's flows
// is now at position to.
func (u *Uses) move(s setID, from, to uint32) {
	for i := range u.set {
		if u.set[i] == s && u.pos[i] == from {
			u.pos[i] = to
			return
		}
	}
}

// slot is a key in use and the key sets that hold it: the reverse index
// from a key to the flows resolved through it goes through its sets.
type slot struct {
	key  Key
	sets []setID
	// named: the metadata names key as w (its winning entry), kept up to
	// date by the sinks, so that resolving through an interned key needs
	// no lookup of the table.
	named bool
	w     aggregate.Workload
}

// keySet is a key set in use and the flow ends resolved through it: a flow
// is listed once per end, so twice when both of its ends use the set. A
// flow's Uses records its positions, so that taking an end out is a swap
// with the last.
type keySet[F comparable] struct {
	ids   [maxKeys]keyID // 0 beyond the set's keys
	flows []F
}

// keys returns the ids of the set's keys.
func (s *keySet[F]) keys() []keyID {
	n := 0
	for n < maxKeys && s.ids[n] != 0 {
		n++
	}
	return s.ids[:n]
}

// entry is what one source said of a key.
type entry struct {
	rank Rank
	w    aggregate.Workload
}

// Resolver resolves flow ends, F being its owner's flow handle. Sinks may be
// used from any goroutine; the other methods are for the owner, who calls
// them under its own lock.
//
// It keeps reverse indexes from the keys that resolutions went through (an
// address, a cgroup, a network namespace) to the flows that used them,
// whether or not metadata existed for them then: from each key to the key
// sets that hold it, and from each set to the flow ends resolved through
// it. When a source puts or
// deletes metadata that changes what a key names, Changed hands the owner
// the flows of that key, and the owner resolves them again at its next
// settle. The owner decides what moves: in match, what was counted stays on
// the old edge (a counter never goes back), and new traffic and the active
// connection count on the new one.
type Resolver[F comparable] struct {
	mu      sync.Mutex
	table   map[Key][]entry // sorted by rank
	changed map[Key]struct{}
	ids     map[Key]keyID
	slots   []slot // by keyID; 0 is unused
	free    []keyID
	setIDs  map[[maxKeys]keyID]setID
	sets    []keySet[F] // by setID; 0 is unused
	freeSet []setID
	pending atomic.Bool
	// uses returns the Uses of a flow; without it the resolver keeps the
	// Uses it was handed in usesOf.
	uses   func(F) *Uses
	usesOf map[F]*Uses
	// recent are the key sets most recently resolved into, newest first:
	// the ends of a burst of new flows (one process's connections) mostly
	// share a set, which is then found by comparing keys, without hashing
	// them. A dropped set's slot holds no keys, so a stale id never matches.
	recent [4]setID
}

// New returns an empty resolver. It remembers the Uses of each flow that
// it is handed; see NewWithUses.
func New[F comparable]() *Resolver[F] {
	return NewWithUses[F](nil)
}

// NewWithUses returns an empty resolver that finds the Uses of a flow with
// uses, e.g. in the owner's record of the flow.
func NewWithUses[F comparable](uses func(F) *Uses) *Resolver[F] {
	r := &Resolver[F]{
		table:   make(map[Key][]entry),
		changed: make(map[Key]struct{}),
		ids:     make(map[Key]keyID),
		slots:   make([]slot, 1),
		setIDs:  make(map[[maxKeys]keyID]setID),
		sets:    make([]keySet[F], 1),
		uses:    uses,
	}
	if uses == nil {
		r.usesOf = make(map[F]*Uses)
	}
	return r
}

// usesOfFlow returns the Uses of f.
func (r *Resolver[F]) usesOfFlow(f F) *Uses {
	if r.uses != nil {
		return r.uses(f)
	}
	return r.usesOf[f]
}

// Sink returns the sink of a source of the given rank.
func (r *Resolver[F]) Sink(rank Rank) Sink { return sink[F]{r: r, rank: rank} }

type sink[F comparable] struct {
	r    *Resolver[F]
	rank Rank
}

func (s sink[F]) Put(k Key, w aggregate.Workload) {
	r := s.r
	r.mu.Lock()
	defer r.mu.Unlock()
	es := r.table[k]
	before, had := winner(es)
	i, found := slices.BinarySearchFunc(es, s.rank, func(e entry, r Rank) int { return int(e.rank) - int(r) })
	if found {
		es[i].w = w
	} else {
		es = slices.Insert(es, i, entry{rank: s.rank, w: w})
	}
	r.table[k] = es
	after, has := winner(es)
	r.touch(k, before, had, after, has)
}

func (s sink[F]) Delete(k Key) {
	r := s.r
	r.mu.Lock()
	defer r.mu.Unlock()
	es := r.table[k]
	before, had := winner(es)
	i, found := slices.BinarySearchFunc(es, s.rank, func(e entry, r Rank) int { return int(e.rank) - int(r) })
	if !found {
		return
	}
	es = slices.Delete(es, i, i+1)
	if len(es) == 0 {
		delete(r.table, k)
	} else {
		r.table[k] = es
	}
	after, has := winner(es)
	r.touch(k, before, had, after, has)
}

// winner returns the workload that a key's entries name, if any.
func winner(es []entry) (aggregate.Workload, bool) {
	if len(es) == 0 {
		return aggregate.Workload{}, false
	}
	return es[0].w, true
}

// touch records a change of k when its winner changed and a flow uses k.
func (r *Resolver[F]) touch(k Key, before aggregate.Workload, had bool, after aggregate.Workload, has bool) {
	if had == has && before == after {
		return
	}
	id, used := r.ids[k]
	if !used {
		return
	}
	r.slots[id].named, r.slots[id].w = has, after
	r.changed[k] = struct{}{}
	r.pending.Store(true)
}

// Resolve returns the workload of end i (0 or 1) of flow f and records in
// u and in the reverse indexes the keys it went through, so that metadata
// arriving for them later re-resolves f.
//
// A local end is, in order: what the metadata says of its pod (by the UID
// in its cgroup path), of its cgroup, of its network namespace, of its
// address as a local address (a pod IP), else its process's container (by short id), else its
// process's comm. A remote end is what the
// metadata says of its address, else the address itself, of kind external.
func (r *Resolver[F]) Resolve(f F, u *Uses, i int, ep Endpoint) aggregate.Workload {
	keys, n := keysOf(ep)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.usesOf != nil {
		r.usesOf[f] = u
	}
	r.reindex(f, u, i, keys[:n])
	w, ok := aggregate.Workload{}, false
	for _, id := range r.sets[u.set[i]].keys() {
		if sl := &r.slots[id]; sl.named {
			w, ok = sl.w, true
			break
		}
	}
	return r.finish(w, ok, ep)
}

// Lookup returns the workload of an end as Resolve does, for a caller that
// keeps no flow (e.g. the DNS edges of an interval): metadata arriving later
// does not revise it.
func (r *Resolver[F]) Lookup(ep Endpoint) aggregate.Workload {
	keys, n := keysOf(ep)
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.name(keys[:n], ep)
}

// keysOf returns the keys an end resolves through, in order.
func keysOf(ep Endpoint) ([maxKeys]Key, int) {
	var keys [maxKeys]Key
	n := 0
	if ep.Local {
		if ep.Known && ep.PodUID != "" {
			keys[n] = PodKey(ep.PodUID)
			n++
		}
		if ep.Known && ep.CgroupID != 0 {
			keys[n] = CgroupKey(ep.Node, ep.CgroupID)
			n++
		}
		keys[n] = NetnsKey(ep.Node, ep.Netns)
		n++
		// A pod UID names the pod already: its IP would name the same.
		if a := ep.Addr.Unmap(); ep.PodUID == "" && a.IsValid() && !a.IsLoopback() && !a.IsUnspecified() {
			keys[n] = LocalIPKey(a)
			n++
		}
	} else {
		keys[n] = IPKey(ep.Addr)
		n++
	}
	return keys, n
}

// name returns the workload of an end, with the comm of the process that
// owns its socket, if known. r.mu is held.
func (r *Resolver[F]) name(keys []Key, ep Endpoint) aggregate.Workload {
	w := r.workload(keys, ep)
	if ep.Local && ep.Known {
		w.Process = ep.Comm
	}
	return w
}

// workload returns what the metadata of keys names, else what the end says
// of itself, without the process. r.mu is held.
func (r *Resolver[F]) workload(keys []Key, ep Endpoint) aggregate.Workload {
	for _, k := range keys {
		if es := r.table[k]; len(es) > 0 {
			return r.fallback(es[0].w, true, ep)
		}
	}
	return r.fallback(aggregate.Workload{}, false, ep)
}

// finish returns the workload of an end whose keys' metadata named w (ok),
// with the comm of the process that owns its socket, as name does.
func (r *Resolver[F]) finish(w aggregate.Workload, ok bool, ep Endpoint) aggregate.Workload {
	w = r.fallback(w, ok, ep)
	if ep.Local && ep.Known {
		w.Process = ep.Comm
	}
	return w
}

// fallback completes what the metadata named (ok) with the end's node, or
// names the end by what it says of itself when the metadata did not.
func (r *Resolver[F]) fallback(w aggregate.Workload, ok bool, ep Endpoint) aggregate.Workload {
	if ok {
		if ep.Local && w.Node == "" {
			w.Node = ep.Node
		}
		return w
	}
	switch {
	case !ep.Local:
		return aggregate.Workload{Name: ep.Addr.String(), Kind: KindExternal}
	case ep.Known && ep.Container != "":
		return aggregate.Workload{Name: ep.Container, Kind: KindContainer, Node: ep.Node}
	case !ep.Known || ep.Comm == "":
		w := Unknown
		w.Node = ep.Node
		return w
	}
	return aggregate.Workload{Name: ep.Comm, Kind: KindProcess, Node: ep.Node}
}

// reindex makes keys the keys of end i of f.
func (r *Resolver[F]) reindex(f F, u *Uses, i int, keys []Key) {
	old, oldPos := u.set[i], u.pos[i]
	if old != 0 && r.same(&r.sets[old], keys) {
		return // the common case: an end resolved again through the same keys
	}
	id := r.recentSet(keys)
	if id == 0 {
		var ids [maxKeys]keyID
		for j, k := range keys {
			ids[j] = r.intern(k)
		}
		id = r.internSet(ids)
		copy(r.recent[1:], r.recent[:len(r.recent)-1])
		r.recent[0] = id
	}
	if id == old {
		return
	}
	s := &r.sets[id]
	u.set[i], u.pos[i] = id, uint32(len(s.flows))
	s.flows = append(s.flows, f)
	if old != 0 {
		r.unindex(old, oldPos)
	}
}

// recentSet returns the set of keys among the recent ones, or 0, and makes
// it the newest.
func (r *Resolver[F]) recentSet(keys []Key) setID {
	for j, id := range r.recent {
		if id != 0 && r.same(&r.sets[id], keys) {
			copy(r.recent[1:j+1], r.recent[:j])
			r.recent[0] = id
			return id
		}
	}
	return 0
}

// same reports whether the keys of set s are keys, by comparing the keys
// themselves: no hashing.
func (r *Resolver[F]) same(s *keySet[F], keys []Key) bool {
	ids := s.keys()
	if len(ids) != len(keys) {
		return false
	}
	for j, id := range ids {
		if r.slots[id].key != keys[j] {
			return false
		}
	}
	return true
}

// intern returns the id of k, making one if no key set holds k yet: the
// set that is made next holds it.
func (r *Resolver[F]) intern(k Key) keyID {
	if id, ok := r.ids[k]; ok {
		return id
	}
	var id keyID
	if n := len(r.free); n > 0 {
		id, r.free = r.free[n-1], r.free[:n-1]
	} else {
		id = keyID(len(r.slots))
		r.slots = append(r.slots, slot{})
	}
	r.slots[id] = slot{key: k}
	r.slots[id].w, r.slots[id].named = winner(r.table[k])
	r.ids[k] = id
	return id
}

// internSet returns the id of the key set ids, making one if no flow uses
// it yet.
func (r *Resolver[F]) internSet(ids [maxKeys]keyID) setID {
	if id, ok := r.setIDs[ids]; ok {
		return id
	}
	var id setID
	if n := len(r.freeSet); n > 0 {
		id, r.freeSet = r.freeSet[n-1], r.freeSet[:n-1]
	} else {
		id = setID(len(r.sets))
		r.sets = append(r.sets, keySet[F]{})
	}
	r.sets[id] = keySet[F]{ids: ids}
	r.setIDs[ids] = id
	for _, k := range r.sets[id].keys() {
		r.slots[k].sets = append(r.slots[k].sets, id)
	}
	return id
}

// unindex takes the flow end at position p out of the flows of set id: the
// last of the list takes its place. The set goes when no flow uses it any
// more, and with it the keys that no other set holds.
func (r *Resolver[F]) unindex(id setID, p uint32) {
	s := &r.sets[id]
	last := uint32(len(s.flows) - 1)
	if p != last {
		moved := s.flows[last]
		s.flows[p] = moved
		r.usesOfFlow(moved).move(id, last, p)
	}
	var zero F
	s.flows[last] = zero
	s.flows = s.flows[:last]
	switch {
	case len(s.flows) == 0:
		r.dropSet(id)
	case cap(s.flows) > 64 && len(s.flows) < cap(s.flows)/4:
		s.flows = slices.Clip(slices.Clone(s.flows))
	}
}

// dropSet lets the unused set id go, and the keys that no other set holds.
func (r *Resolver[F]) dropSet(id setID) {
	s := &r.sets[id]
	for _, k := range s.keys() {
		sl := &r.slots[k]
		if j := slices.Index(sl.sets, id); j >= 0 {
			last := len(sl.sets) - 1
			sl.sets[j] = sl.sets[last]
			sl.sets = sl.sets[:last]
		}
		if len(sl.sets) == 0 {
			delete(r.ids, sl.key)
			*sl = slot{}
			r.free = append(r.free, k)
		}
	}
	delete(r.setIDs, s.ids)
	*s = keySet[F]{}
	r.freeSet = append(r.freeSet, id)
}

// Forget drops f, whose ends u records, from the reverse indexes.
func (r *Resolver[F]) Forget(f F, u *Uses) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.usesOf != nil {
		r.usesOf[f] = u
	}
	for i := range u.set {
		// Taking out end 0 may move end 1 within a set both use; u
		// follows it.
		if id := u.set[i]; id != 0 {
			u.set[i] = 0
			r.unindex(id, u.pos[i])
		}
	}
	u.pos = [2]uint32{}
	if r.usesOf != nil {
		delete(r.usesOf, f)
	}
}

// Changed calls fn once for every flow resolved through a key whose
// metadata changed since the last call. It is cheap when nothing changed.
func (r *Resolver[F]) Changed(fn func(F)) {
	if !r.pending.Load() {
		return
	}
	r.mu.Lock()
	var flows []F
	seen := make(map[F]struct{})
	for k := range r.changed {
		id, ok := r.ids[k]
		if !ok {
			continue
		}
		for _, sid := range r.slots[id].sets {
			for _, f := range r.sets[sid].flows {
				if _, ok := seen[f]; !ok {
					seen[f] = struct{}{}
					flows = append(flows, f)
				}
			}
		}
	}
	clear(r.changed)
	r.pending.Store(false)
	r.mu.Unlock()
	for _, f := range flows {
		fn(f)
	}
}

// Len returns the number of metadata keys and of keys in use by flows.
func (r *Resolver[F]) Len() (metadata, indexed int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.table), len(r.ids)
}

// Fleet reports whether metadata names addr as a pod's or a node's: an
// address whose sockets a collector of the fleet may report.
func (r *Resolver[F]) Fleet(addr netip.Addr) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.table[IPKey(addr)] {
		if e.rank == RankPod || e.rank == RankNode {
			return true
		}
	}
	return false
}
