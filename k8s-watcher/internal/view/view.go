// Package view owns the watcher's versioned view of the cluster: the current
// state of every pod, service and node as the reducer should see it, each
// change numbered, coalesced per object, so that a slow reducer costs at most
// one entry per object (plus a bounded number of deletions) however many
// changes it has not read yet.
package view

import (
	"sync"

	"google.golang.org/protobuf/proto"

	metadatav1 "github.com/weir-project/weir/proto/weir/metadata/v1"
)

// Key names an object: a pod or service by UID, a node by name.
type Key struct {
	Kind metadatav1.ObjectKind
	ID   string
}

// entry is an object's latest change, in a list ordered by version.
type entry struct {
	key        Key
	delta      *metadatav1.Delta // immutable once stored
	prev, next *entry
}

func (e *entry) deleted() bool { return e.delta.GetDeleted() != nil }

// Stats are the view's counters, for metrics.
type Stats struct {
	Objects           map[metadatav1.ObjectKind]int
	Tombstones        int
	Version           uint64
	Coalesced         uint64 // changes replaced before the stream sent them
	TombstonesDropped uint64 // deletions forgotten to bound memory
}

// View is the versioned state. It is safe for concurrent use.
type View struct {
	mu            sync.Mutex
	epoch         uint64
	version       uint64
	m             map[Key]*entry
	head, tail    *entry
	tombstones    int
	maxTombstones int
	// floor is the lowest version from which Since can still tell every
	// change: below it, deletions were forgotten.
	floor     uint64
	sent      uint64 // the stream's position, for the coalesced count
	coalesced uint64
	pendingCo uint64 // coalesced since the last Since
	dropped   uint64
	changed   chan struct{}
}

// New returns an empty view of the given epoch that remembers at most
// maxTombstones deletions for resuming streams.
func New(epoch uint64, maxTombstones int) *View {
	return &View{
		epoch:         epoch,
		m:             make(map[Key]*entry),
		maxTombstones: maxTombstones,
		changed:       make(chan struct{}, 1),
	}
}

// Epoch returns the view's epoch.
func (v *View) Epoch() uint64 { return v.epoch }

// Changed is signalled after changes.
func (v *View) Changed() <-chan struct{} { return v.changed }

// Set records the state of an object, given as a Delta whose object is set.
// A state equal to the current one is no change.
func (v *View) Set(k Key, d *metadatav1.Delta) {
	v.mu.Lock()
	defer v.mu.Unlock()
	e := v.m[k]
	if e != nil && !e.deleted() && sameObject(e.delta, d) {
		return
	}
	v.put(k, e, d)
}

// Delete records the deletion of an object at timeUnixNano.
func (v *View) Delete(k Key, timeUnixNano int64) {
	v.mu.Lock()
	defer v.mu.Unlock()
	e := v.m[k]
	if e == nil || e.deleted() {
		return
	}
	v.put(k, e, &metadatav1.Delta{Object: &metadatav1.Delta_Deleted{Deleted: &metadatav1.Deleted{
		Kind: k.Kind, Id: k.ID, TimeUnixNano: timeUnixNano}}})
	v.tombstones++
	for v.tombstones > v.maxTombstones {
		v.dropOldestTombstone()
	}
}

// put makes d the latest change of k, e being k's entry if any.
func (v *View) put(k Key, e *entry, d *metadatav1.Delta) {
	v.version++
	d.Version = v.version
	if e == nil {
		e = &entry{key: k}
		v.m[k] = e
	} else {
		if e.deleted() {
			v.tombstones--
		}
		if e.delta.GetVersion() > v.sent {
			v.coalesced++
			v.pendingCo++
		}
		v.unlink(e)
	}
	e.delta = d
	v.link(e)
	select {
	case v.changed <- struct{}{}:
	default:
	}
}

func (v *View) link(e *entry) {
	e.prev, e.next = v.tail, nil
	if v.tail != nil {
		v.tail.next = e
	} else {
		v.head = e
	}
	v.tail = e
}

func (v *View) unlink(e *entry) {
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		v.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		v.tail = e.prev
	}
	e.prev, e.next = nil, nil
}

// dropOldestTombstone forgets the oldest deletion: streams behind it must
// take a snapshot.
func (v *View) dropOldestTombstone() {
	for e := v.head; e != nil; e = e.next {
		if e.deleted() {
			if e.delta.GetVersion() > v.floor {
				v.floor = e.delta.GetVersion()
			}
			v.unlink(e)
			delete(v.m, e.key)
			v.tombstones--
			v.dropped++
			return
		}
	}
}

// Since returns up to max changes after version after, oldest first, and
// whether it could: false when deletions after it were forgotten, and the
// stream needs a snapshot. It also returns how many changes were coalesced
// since the previous call.
func (v *View) Since(after uint64, max int) (ds []*metadatav1.Delta, ok bool, coalesced uint64) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if after < v.floor || after > v.version {
		return nil, false, 0
	}
	e := v.tail
	if e != nil && e.delta.GetVersion() <= after {
		e = nil
	}
	for e != nil && e.prev != nil && e.prev.delta.GetVersion() > after {
		e = e.prev
	}
	for ; e != nil && len(ds) < max; e = e.next {
		ds = append(ds, e.delta)
	}
	coalesced, v.pendingCo = v.pendingCo, 0
	return ds, true, coalesced
}

// Snapshot returns every live object and the version it shows.
func (v *View) Snapshot() ([]*metadatav1.Delta, uint64) {
	v.mu.Lock()
	defer v.mu.Unlock()
	ds := make([]*metadatav1.Delta, 0, len(v.m)-v.tombstones)
	for e := v.head; e != nil; e = e.next {
		if !e.deleted() {
			ds = append(ds, e.delta)
		}
	}
	v.pendingCo = 0
	return ds, v.version
}

// MarkSent records the stream's position.
func (v *View) MarkSent(version uint64) {
	v.mu.Lock()
	v.sent = version
	v.mu.Unlock()
}

// Version returns the current version.
func (v *View) Version() uint64 {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.version
}

// Get returns the current state of k, if it exists.
func (v *View) Get(k Key) (*metadatav1.Delta, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	e := v.m[k]
	if e == nil || e.deleted() {
		return nil, false
	}
	return e.delta, true
}

// Stats returns the counters.
func (v *View) Stats() Stats {
	v.mu.Lock()
	defer v.mu.Unlock()
	s := Stats{Objects: make(map[metadatav1.ObjectKind]int), Tombstones: v.tombstones, Version: v.version,
		Coalesced: v.coalesced, TombstonesDropped: v.dropped}
	for k, e := range v.m {
		if !e.deleted() {
			s.Objects[k.Kind]++
		}
	}
	return s
}

// sameObject reports whether two deltas carry the same object state.
func sameObject(a, b *metadatav1.Delta) bool {
	switch {
	case a.GetPod() != nil:
		return proto.Equal(a.GetPod(), b.GetPod())
	case a.GetService() != nil:
		return proto.Equal(a.GetService(), b.GetService())
	case a.GetNode() != nil:
		return proto.Equal(a.GetNode(), b.GetNode())
	}
	return false
}
