package encode

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// TestHandlesSmallestFree: handles come out smallest free first, against a
// sorted-slice model, over random gets and puts.
func TestHandlesSmallestFree(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var h handles
	var used []uint32 // the model: handles out
	for range 20_000 {
		if len(used) > 0 && rng.IntN(2) == 0 {
			i := rng.IntN(len(used))
			h.put(used[i])
			used = slices.Delete(used, i, i+1)
			continue
		}
		want := uint32(1)
		slices.Sort(used)
		for _, u := range used {
			if u != want {
				break
			}
			want++
		}
		if got := h.get(); got != want {
			t.Fatalf("get %d, want %d (out: %d handles)", got, want, len(used))
		}
		used = append(used, want)
	}
}
