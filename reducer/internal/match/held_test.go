package match

import (
	"slices"
	"testing"
)

// TestHeldQueue pushes flows born at a few times and pops them off in
// steps that end inside and at the ends of runs: the times that stay are
// those of the flows that stay.
func TestHeldQueue(t *testing.T) {
	var q heldQueue
	born := map[flowID]int64{}
	var want []flowID
	for id := flowID(1); id <= 20; id++ {
		b := int64(id/4) * 10 // runs of 4 (3 for the first)
		q.push(id, b)
		born[id] = b
		want = append(want, id)
	}
	for _, n := range []int{0, 1, 2, 4, 5, 3, 5} {
		q.pop(n)
		want = want[n:]
		if !slices.Equal(q.ids, want) {
			t.Fatalf("after pop(%d): ids %v, want %v", n, q.ids, want)
		}
		i := 0
		for _, r := range q.runs {
			if r.n <= 0 {
				t.Fatalf("after pop(%d): empty run %+v", n, r)
			}
			for _, id := range q.ids[i : i+r.n] {
				if born[id] != r.born {
					t.Fatalf("after pop(%d): flow %d born %d, its run says %d", n, id, born[id], r.born)
				}
			}
			i += r.n
		}
		if i != len(q.ids) {
			t.Fatalf("after pop(%d): runs cover %d of %d flows", n, i, len(q.ids))
		}
	}
	if len(q.ids) != 0 || len(q.runs) != 0 {
		t.Fatalf("left %v %v", q.ids, q.runs)
	}
}
