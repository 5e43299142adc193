package view

import (
	"fmt"
	"testing"

	"go.uber.org/goleak"

	metadatav1 "github.com/weir-project/weir/proto/weir/metadata/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func podDelta(uid, name string, ips ...string) *metadatav1.Delta {
	return &metadatav1.Delta{Object: &metadatav1.Delta_Pod{Pod: &metadatav1.Pod{Uid: uid, Name: name, Ips: ips}}}
}

func podKey(uid string) Key { return Key{Kind: metadatav1.ObjectKind_OBJECT_KIND_POD, ID: uid} }

func names(ds []*metadatav1.Delta) []string {
	var out []string
	for _, d := range ds {
		switch {
		case d.GetPod() != nil:
			out = append(out, fmt.Sprintf("%d:%s", d.GetVersion(), d.GetPod().GetName()))
		case d.GetDeleted() != nil:
			out = append(out, fmt.Sprintf("%d:-%s", d.GetVersion(), d.GetDeleted().GetId()))
		}
	}
	return out
}

func TestViewCoalescesAndResumes(t *testing.T) {
	v := New(7, 2)
	v.Set(podKey("a"), podDelta("a", "a1"))
	v.Set(podKey("b"), podDelta("b", "b1"))
	v.Set(podKey("a"), podDelta("a", "a1")) // no change
	if got := v.Version(); got != 2 {
		t.Fatalf("version %d after an unchanged Set, want 2", got)
	}
	v.MarkSent(2)
	v.Set(podKey("a"), podDelta("a", "a2"))
	v.Set(podKey("a"), podDelta("a", "a3")) // coalesces a2
	ds, ok, co := v.Since(2, 10)
	if !ok || co != 1 || fmt.Sprint(names(ds)) != "[4:a3]" {
		t.Fatalf("Since(2) = %v %v coalesced %d, want [4:a3] true 1", names(ds), ok, co)
	}
	ds, ok, _ = v.Since(0, 10)
	if !ok || fmt.Sprint(names(ds)) != "[2:b1 4:a3]" {
		t.Fatalf("Since(0) = %v %v", names(ds), ok)
	}
	snap, ver := v.Snapshot()
	if ver != 4 || len(snap) != 2 {
		t.Fatalf("snapshot %v at %d", names(snap), ver)
	}
	v.Delete(podKey("a"), 1)
	v.Delete(podKey("a"), 2) // already gone
	v.Set(podKey("c"), podDelta("c", "c1"))
	v.Delete(podKey("c"), 3)
	v.Set(podKey("d"), podDelta("d", "d1"))
	v.Delete(podKey("d"), 4) // third tombstone: the oldest (a, version 5) goes
	if s := v.Stats(); s.Tombstones != 2 || s.TombstonesDropped != 1 || s.Objects[metadatav1.ObjectKind_OBJECT_KIND_POD] != 1 {
		t.Fatalf("stats %+v", s)
	}
	if _, ok, _ := v.Since(4, 10); ok {
		t.Fatal("Since(4) resumed across a forgotten deletion")
	}
	ds, ok, _ = v.Since(5, 10)
	if !ok || fmt.Sprint(names(ds)) != "[7:-c 9:-d]" {
		t.Fatalf("Since(5) = %v %v", names(ds), ok)
	}
	ds, ok, _ = v.Since(9, 10)
	if !ok || len(ds) != 0 {
		t.Fatalf("Since(9) = %v %v", names(ds), ok)
	}
	// A deleted object that comes back is a new state.
	v.Set(podKey("c"), podDelta("c", "c2"))
	if s := v.Stats(); s.Tombstones != 1 {
		t.Fatalf("tombstones %d after c came back, want 1", s.Tombstones)
	}
}

// BenchmarkViewSet measures a change of one of 5,000 pods.
func BenchmarkViewSet(b *testing.B) {
	b.ReportAllocs()
	v := New(1, 1000)
	for i := range 5000 {
		id := fmt.Sprint(i)
		v.Set(podKey(id), podDelta(id, id))
	}
	for i := 0; b.Loop(); i++ {
		id := fmt.Sprint(i % 5000)
		v.Set(podKey(id), podDelta(id, fmt.Sprint(i)))
	}
}
