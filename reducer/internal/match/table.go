package match

// table gives the records that pointer-free sockets refer to (sessions,
// processes) a 32-bit slot while any socket does: a record holds its slot
// and the count of references in its slotted fields. Slot 0 is none.
type table[T any, P interface {
	*T
	slotted
}] struct {
	recs []P // by slot; 0 is unused
	free []uint32
}

// slotted is a record with a slot and a reference count.
type slotted interface {
	slotRef() (*uint32, *int32)
}

func (s *Session) slotRef() (*uint32, *int32) { return &s.id, &s.refs }
func (p *process) slotRef() (*uint32, *int32) { return &p.id, &p.refs }

// hold returns the slot of r with one more reference; 0 for nil.
func (t *table[T, P]) hold(r P) uint32 {
	if r == nil {
		return 0
	}
	id, refs := r.slotRef()
	if *id == 0 {
		if len(t.recs) == 0 {
			t.recs = make([]P, 1)
		}
		if n := len(t.free); n > 0 {
			*id, t.free = t.free[n-1], t.free[:n-1]
			t.recs[*id] = r
		} else {
			*id = uint32(len(t.recs))
			t.recs = append(t.recs, r)
		}
	}
	*refs++
	return *id
}

// unref takes back a reference to slot i (0: none); the last frees it.
func (t *table[T, P]) unref(i uint32) {
	if i == 0 {
		return
	}
	r := t.recs[i]
	id, refs := r.slotRef()
	if *refs--; *refs == 0 {
		t.recs[i] = nil
		t.free = append(t.free, i)
		*id = 0
	}
}

// at returns the record of slot i; nil for 0.
func (t *table[T, P]) at(i uint32) P {
	if i == 0 {
		return nil
	}
	return t.recs[i]
}

// len returns the number of records held.
func (t *table[T, P]) len() int { return max(len(t.recs)-1, 0) - len(t.free) }

// sessAt returns the session of slot i.
func (e *Engine) sessAt(i uint32) *Session { return e.sessTab.at(i) }

// procAt returns the process of slot i; nil for 0 (unknown).
func (e *Engine) procAt(i uint32) *process { return e.procTab.at(i) }
