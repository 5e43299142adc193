package match

// handleTable maps a session's socket handles to sockets. A collector hands
// out the smallest free handle, so a session's handles are dense: they are
// indices into a slice (4 bytes a socket, one load to find one) while they
// stay below twice the live count plus a margin; any handle beyond, which
// a collector that does not reuse its handles sends, goes to a map.
type handleTable struct {
	dense  []sockID // by handle; 0 is none
	sparse map[uint32]sockID
	n      int // handles held, in both
	// wait is how many more deletes pass before shrink scans the dense
	// part again, after a scan that could not shrink it (a live handle
	// near its top): each scan is paid for by len/8 deletes.
	wait int
}

// handleMargin is the slack of the dense part over twice the live count.
const handleMargin = 1024

func (t *handleTable) get(h uint32) (sockID, bool) {
	if int64(h) < int64(len(t.dense)) {
		id := t.dense[h]
		return id, id != 0
	}
	id, ok := t.sparse[h]
	return id, ok
}

// set holds id (not 0) under h, which is free.
func (t *handleTable) set(h uint32, id sockID) {
	t.n++
	if int64(h) >= int64(len(t.dense)) {
		if limit := 2*t.n + handleMargin; int64(h) < int64(limit) {
			t.grow(min(max(int(h)+1, 2*len(t.dense)), limit))
		}
	}
	if int64(h) < int64(len(t.dense)) {
		t.dense[h] = id
		return
	}
	if t.sparse == nil {
		t.sparse = make(map[uint32]sockID)
	}
	t.sparse[h] = id
}

// grow makes the dense part n long and moves into it the handles of the
// map below n.
func (t *handleTable) grow(n int) {
	if n <= cap(t.dense) {
		t.dense = t.dense[:n]
	} else {
		d := make([]sockID, n)
		copy(d, t.dense)
		t.dense = d
	}
	for h, id := range t.sparse {
		if int64(h) < int64(n) {
			t.dense[h] = id
			delete(t.sparse, h)
		}
	}
}

// del frees h.
func (t *handleTable) del(h uint32) {
	if int64(h) < int64(len(t.dense)) {
		if t.dense[h] == 0 {
			return
		}
		t.dense[h] = 0
	} else {
		if _, ok := t.sparse[h]; !ok {
			return
		}
		delete(t.sparse, h)
	}
	t.n--
	if t.wait > 0 {
		t.wait--
		return
	}
	if len(t.dense) > 4*handleMargin && 8*t.n < len(t.dense) {
		t.shrink()
	}
}

// shrink lets the dense part go down to what the live handles need, after
// most of them closed (e.g. after a burst of connections).
func (t *handleTable) shrink() {
	top := 0
	for h, id := range t.dense {
		if id != 0 {
			top = h + 1
		}
	}
	n := max(top, 2*t.n+handleMargin)
	if n >= len(t.dense) {
		t.wait = len(t.dense) / 8
		return
	}
	d := make([]sockID, n)
	copy(d, t.dense[:n])
	t.dense = d
}

// len returns the number of handles held.
func (t *handleTable) len() int { return t.n }

// all calls fn for every handle held.
func (t *handleTable) all(fn func(h uint32, id sockID)) {
	for h, id := range t.dense {
		if id != 0 {
			fn(uint32(h), id)
		}
	}
	for h, id := range t.sparse {
		fn(h, id)
	}
}
