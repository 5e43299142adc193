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
			// A dense part left long (by a live handle near its top) is
			// scanned again only after len/8 more deletes.
			if tab.wait == 0 && len(tab.dense) > 2*tab.len()+handleMargin && len(tab.dense) > 4*handleMargin && 8*tab.n < len(tab.dense) {
				t.Fatalf("step %d: dense part of %d for %d handles", step, len(tab.dense), tab.len())
			}
		}
	}
	if _, ok := tab.get(1 << 31); ok {
		t.Fatal("an absent handle was found")
	}
}

// TestHandleTableShrinksAfterBurst: after a burst of handles closes, the
// dense part shrinks to what the live ones need, once a live handle near
// its top is gone too.
func TestHandleTableShrinksAfterBurst(t *testing.T) {
	var tab handleTable
	const n = 100_000
	for h := range uint32(n) {
		tab.set(h, sockID(h+1))
	}
	for h := range uint32(n - 1) { // n-1, near the top, stays
		tab.del(h)
	}
	if got, ok := tab.get(n - 1); !ok || got != n {
		t.Fatalf("get(%d) = %d %v, want %d", n-1, got, ok, n)
	}
	if len(tab.dense) < n {
		t.Fatalf("dense part of %d cuts off the live handle %d", len(tab.dense), n-1)
	}
	// The burst's handles are reused, then the high one closes too.
	for h := range uint32(5000) {
		tab.set(h, sockID(h+1))
	}
	tab.del(n - 1)
	for h := range uint32(5000) {
		tab.del(h)
	}
	// A scan that found the high handle live waits for len/8 deletes.
	for range n / 8 {
		tab.set(0, 1)
		tab.del(0)
	}
	if len(tab.dense) > 4*handleMargin {
		t.Fatalf("dense part of %d for %d handles after the burst", len(tab.dense), tab.len())
	}
}

// BenchmarkHandleTableChurn: a session's short-lived sockets come and go
// while one long-lived socket holds a handle near the top of the dense
// part (a burst's leftover). Each delete must cost O(1), amortized: it was
// a scan of the whole dense part while that handle lived.
func BenchmarkHandleTableChurn(b *testing.B) {
	var tab handleTable
	const burst = 100_000
	for h := range uint32(burst) {
		tab.set(h, sockID(h+1))
	}
	for h := range uint32(burst - 1) {
		tab.del(h)
	}
	b.ResetTimer()
	for i := range b.N {
		h := uint32(i % 64)
		if i%64 == 0 && i > 0 {
			for k := range uint32(64) {
				tab.del(k)
			}
		}
		tab.set(h, sockID(i+1))
	}
}
