package match

import (
	"math/rand/v2"
	"testing"
)

// TestHandleTable holds handleTable to a map under random sets and deletes
// of dense handles (a collector that reuses them), ever-growing ones, and
// huge ones.
func TestHandleTable(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var tab handleTable
	want := map[uint32]sockID{}
	next := uint32(0)
	for step := range 200_000 {
		var h uint32
		switch r.IntN(4) {
		case 0:
			h = uint32(r.IntN(3000))
		case 1:
			next++
			h = next
		case 2:
			h = r.Uint32()
		default:
			for k := range want { // an existing one
				h = k
				break
			}
		}
		if _, ok := want[h]; ok || (step > 150_000 && r.IntN(3) > 0) {
			tab.del(h)
			delete(want, h)
		} else {
			id := sockID(step + 1)
			tab.set(h, id)
			want[h] = id
		}
		if tab.len() != len(want) {
			t.Fatalf("step %d: len %d, want %d", step, tab.len(), len(want))
		}
		if step%997 == 0 {
			n := 0
			tab.all(func(h uint32, id sockID) {
				n++
				if want[h] != id {
					t.Fatalf("step %d: handle %d holds %d, want %d", step, h, id, want[h])
				}
			})
			for h, id := range want {
				if got, ok := tab.get(h); !ok || got != id {
					t.Fatalf("step %d: get(%d) = %d %v, want %d", step, h, got, ok, id)
				}
			}
			if n != len(want) {
				t.Fatalf("step %d: all visited %d, want %d", step, n, len(want))
			}
			if len(tab.dense) > 2*tab.len()+handleMargin && len(tab.dense) > 4*handleMargin && 8*tab.n < len(tab.dense) {
				t.Fatalf("step %d: dense part of %d for %d handles", step, len(tab.dense), tab.len())
			}
		}
	}
	if _, ok := tab.get(1 << 31); ok {
		t.Fatal("an absent handle was found")
	}
}
