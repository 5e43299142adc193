package match

import (
	"reflect"
	"testing"
)

// TestScratchReuse: a batch's scratch map is cleared in place for a batch
// that its table has about the room for, replaced by a small one for a
// batch much smaller than that room (also after batches that shrank bit by
// bit), and by one sized at once for a batch much larger.
func TestScratchReuse(t *testing.T) {
	var s scratch[uint32, int]
	steps := []struct {
		n        int
		replaced bool
	}{
		{10, true}, // the first
		{10, false},
		{2000, true}, // much larger than the room
		{1500, false},
		{13000, true},
		{8000, false},
		{3300, false},
		{900, true}, // room for 13,000
		{10, false},
		{100, false},
	}
	for i, c := range steps {
		before := reflect.ValueOf(s.m).UnsafePointer()
		s.reuse(c.n)
		if len(s.m) != 0 {
			t.Errorf("step %d (batch of %d): %d entries left", i, c.n, len(s.m))
		}
		if got := reflect.ValueOf(s.m).UnsafePointer() != before; got != c.replaced {
			t.Errorf("step %d (batch of %d): replaced %v, want %v", i, c.n, got, c.replaced)
		}
		for k := range c.n {
			s.m[uint32(k)] = k
		}
	}
}
