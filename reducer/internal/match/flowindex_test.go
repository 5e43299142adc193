package match

import (
	"math/rand/v2"
	"testing"
)

// TestFlowIndex holds flowIndex to a map under random inserts, head
// changes and deletes of keys that collide often (few addresses and
// ports), through its growth and shrinking.
func TestFlowIndex(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	keys := map[flowID]flowKey{}
	x := newFlowIndex(func(id flowID) *flowKey {
		k, ok := keys[id]
		if !ok {
			t.Fatalf("index holds unknown flow %d", id)
		}
		return &k
	})
	want := map[flowKey]flowID{}
	next := flowID(0)
	randKey := func() flowKey {
		return flowKey{a: uint32(r.IntN(50)), b: uint32(r.IntN(50)), pa: uint16(r.IntN(300)), pb: uint16(80 + r.IntN(2))}
	}
	for step := range 60_000 {
		k := randKey()
		grow := step < 30_000 || step > 50_000
		switch head, ok := want[k]; {
		case !ok && (grow || r.IntN(4) == 0):
			next++
			keys[next] = k
			x.set(k, next)
			want[k] = next
		case ok && r.IntN(3) == 0:
			// A newer flow of the chain becomes its head.
			next++
			keys[next] = k
			x.set(k, next)
			want[k] = next
			delete(keys, head)
		case ok:
			x.del(k)
			delete(want, k)
			delete(keys, head)
		}
		if x.len() != len(want) {
			t.Fatalf("step %d: %d chains, want %d", step, x.len(), len(want))
		}
		if step%4001 == 0 {
			for k, id := range want {
				if got := x.get(k); got != id {
					t.Fatalf("step %d: get(%v) = %d, want %d", step, k, got, id)
				}
			}
			if x.get(flowKey{a: 99, b: 99}) != 0 {
				t.Fatal("an absent key was found")
			}
		}
	}
	if len(x.slots) < 4*x.len()/3 {
		t.Fatalf("%d slots for %d chains", len(x.slots), x.len())
	}
}
