package sockets

import (
	"cmp"
	"slices"
)

// A report the reducer has not confirmed yet may be lost with its session:
// a stream cut, or a path gone silent, takes the batches in flight with
// it. The table keeps what each drain took until the reducer confirms it,
// so that a new session can hand it out again (Rollback) when the reducer
// says it never applied it. The stream tells which drains the reducer
// applied: by its acks (Confirm), or, at the next session, by the
// sequence of the last batch the reducer applied from the old one.

// maxUnconfirmedEntries bounds the sockets that unconfirmed drains keep
// (about 48 B each). A healthy session confirms each report within a
// round trip; only a session that stopped hearing from its reducer (for
// up to --ack-timeout) fills it.
const maxUnconfirmedEntries = 1 << 16

// maxFreeSockets bounds the socket records kept for reuse (Table.free):
// about one early report's worth under churn.
const maxFreeSockets = 1 << 15

// maxSpare is how many confirmed records' entries the table keeps for
// the next drains.
const maxSpare = 2

// entryFlags say what a drain did to a socket besides moving its baseline.
type entryFlags uint8

const (
	entryNewConn entryFlags = 1 << iota // announced with new_connection
	entryClosed                         // reported closed, and released
)

// drainEntry is one socket that a drain changed: its baseline before it.
type drainEntry struct {
	s     *socket
	rep   totals
	flags entryFlags
}

// drainRecord is what one drain changed, and the records it handed out
// that the table keeps no state of: failed connects and UDP deltas.
type drainRecord struct {
	gen     uint64
	entries []drainEntry
	failed  []FailedConnect
	udp     []UDPDelta
}

// keep copies the failed connects and UDP deltas of c into r.
func (r *drainRecord) keep(c *Changes) {
	if len(c.Failed) > 0 {
		r.failed = slices.Clone(c.Failed)
	}
	if len(c.UDP) > 0 {
		r.udp = slices.Clone(c.UDP)
	}
}

// size is what r counts against maxUnconfirmedEntries.
func (r *drainRecord) size() int { return len(r.entries) + len(r.failed) + len(r.udp) }

func (r *drainRecord) note(s *socket, rep totals, f entryFlags) {
	r.entries = append(r.entries, drainEntry{s: s, rep: rep, flags: f})
}

// beginDrain starts the record of a new drain, in the entries of a
// confirmed one if there is one to spare. t.mu is held.
func (t *Table) beginDrain() *drainRecord {
	t.drains++
	r := &t.rec
	*r = drainRecord{gen: t.drains}
	if n := len(t.spare); n > 0 {
		// The largest (t.spare is by capacity): a node under churn
		// alternates large drains (its buffer of closed sockets full)
		// with small ones, and a large one given a small one's entries
		// grew them again by doubling.
		r.entries, t.spare = t.spare[n-1], t.spare[:n-1]
	}
	return r
}

// putSpare keeps entries for the next drains if there is room, or in
// place of the smallest spare if they are larger; t.spare stays sorted by
// capacity. t.mu is held.
func (t *Table) putSpare(entries []drainEntry) {
	if cap(entries) == 0 {
		return
	}
	clear(entries)
	if len(t.spare) == maxSpare {
		if cap(entries) <= cap(t.spare[0]) {
			return
		}
		t.spare = slices.Delete(t.spare, 0, 1)
	}
	i, _ := slices.BinarySearchFunc(t.spare, cap(entries), func(s []drainEntry, c int) int { return cmp.Compare(cap(s), c) })
	t.spare = slices.Insert(t.spare, i, entries[:0])
}

// endDrain keeps rec until the reducer confirms it, forgetting the oldest
// records beyond maxUnconfirmedEntries. t.mu is held.
func (t *Table) endDrain(rec *drainRecord) {
	if rec.size() == 0 {
		t.putSpare(rec.entries)
		return
	}
	t.unconfirmed = append(t.unconfirmed, *rec)
	t.nEntries += rec.size()
	for t.nEntries > maxUnconfirmedEntries {
		old := t.unconfirmed[0]
		t.unconfirmed[0] = drainRecord{}
		t.unconfirmed = t.unconfirmed[1:]
		t.nEntries -= old.size()
		t.m.resumeForgotten.Add(float64(old.size()))
	}
}

// Drains returns the number of drains so far: the generation of the last
// one, which Confirm takes.
func (t *Table) Drains() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.drains
}

// Confirm forgets what the drains up to generation gen took: the reducer
// applied them.
func (t *Table) Confirm(gen uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for n < len(t.unconfirmed) && t.unconfirmed[n].gen <= gen {
		r := &t.unconfirmed[n]
		t.nEntries -= r.size()
		// A socket this drain reported closed is in no later record
		// (released, it is in no later drain) nor in the table: its
		// record can hold another socket. (Only Rollback takes a released
		// socket back, from drains it then forgets: none is confirmed.)
		for i := range r.entries {
			if e := &r.entries[i]; e.flags&entryClosed != 0 && len(t.free) < maxFreeSockets {
				t.free = append(t.free, e.s)
			}
		}
		// The next drains reuse them: a busy node's records would
		// otherwise be garbage every interval.
		t.putSpare(r.entries)
		*r = drainRecord{}
		n++
	}
	t.unconfirmed = t.unconfirmed[n:]
	if len(t.unconfirmed) == 0 {
		t.unconfirmed = nil
	}
}

// Rollback undoes every drain not confirmed: the sockets' baselines go
// back to before them, those they announced as new connections are new
// again, and those they reported closed await report again. Call it before
// Resync, so that the next epoch's first report carries all of it. It
// returns the number of drains undone.
func (t *Table) Rollback() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := len(t.unconfirmed)
	// Newest first, so that each socket ends at its baseline before the
	// oldest drain undone.
	for i := len(t.unconfirmed) - 1; i >= 0; i-- {
		es := t.unconfirmed[i].entries
		for j := len(es) - 1; j >= 0; j-- {
			e := &es[j]
			e.s.rep = e.rep
			if e.flags&entryNewConn != 0 {
				e.s.newConn = true
			}
		}
	}
	// Oldest first, so that the closed sockets, failed connects and UDP
	// records keep their order ahead of those since.
	var back []*socket
	var failed []FailedConnect
	var udp []UDPDelta
	for _, r := range t.unconfirmed {
		failed = append(failed, r.failed...)
		udp = append(udp, r.udp...)
		for _, e := range r.entries {
			if e.flags&entryClosed != 0 && e.s.state == stateReleased {
				e.s.state = stateClosed
				back = append(back, e.s)
				t.closing[e.s.Cookie] = e.s
			}
		}
	}
	if len(back) > 0 {
		t.closed = append(back, t.closed...)
	}
	if len(failed) > 0 {
		t.failed = append(failed, t.failed...)
		// The queue keeps its bound: the newest beyond it go, counted as
		// when they arrive at a full queue.
		if over := len(t.failed) - t.cfg.MaxFailed; over > 0 {
			clear(t.failed[t.cfg.MaxFailed:])
			t.failed = t.failed[:t.cfg.MaxFailed]
			t.loss.FailedDropped += uint64(over)
			t.m.failedDropped.Add(float64(over))
		}
	}
	if len(udp) > 0 {
		t.udpResend = append(udp, t.udpResend...)
	}
	clear(t.unconfirmed)
	t.unconfirmed, t.nEntries = nil, 0
	return n
}
