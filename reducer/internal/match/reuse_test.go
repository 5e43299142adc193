package match

import (
	"reflect"
	"testing"
)

// TestReuse: a scratch map is cleared in place for a batch of about its
// last size, replaced by a small one for a batch much smaller than a big
// last one, and by one sized at once for a batch much larger.
func TestReuse(t *testing.T) {
	filled := func(l int) map[uint32]int {
		m := make(map[uint32]int)
		for i := range l {
			m[uint32(i)] = i
		}
		return m
	}
	for _, c := range []struct {
		last, n  int
		replaced bool
	}{
		{0, 10, false},
		{10, 10, false},
		{2000, 1500, false},
		{2000, 100, true},    // a big table for a small batch
		{100, 13000, true},   // a small table for a big batch
		{13000, 8000, false}, // big after big
	} {
		m := filled(c.last)
		before := reflect.ValueOf(m).UnsafePointer()
		reuse(&m, c.n)
		if len(m) != 0 {
			t.Errorf("last %d, batch %d: %d entries left", c.last, c.n, len(m))
		}
		if got := reflect.ValueOf(m).UnsafePointer() != before; got != c.replaced {
			t.Errorf("last %d, batch %d: replaced %v, want %v", c.last, c.n, got, c.replaced)
		}
	}
}
