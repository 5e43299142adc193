package sockets

import (
	"testing"

	"github.com/weir-project/weir/collector/internal/probe"
)

// TestRollback: drains the reducer never confirmed are undone for the next
// epoch: a new connection they announced is new again, the deltas they
// took are taken again, a socket they reported closed is reported again,
// and so is a failed connect;
// confirmed drains stay done, and a second rollback finds nothing.
func TestRollback(t *testing.T) {
	tab, _ := newTable(t, nil)
	// Drain 1, confirmed: socket 1, new, 100 bytes.
	apply(t, tab, probe.Event{Kind: kindOpen, Endpoint: endpoint(1, probe.RoleClient, 1), Owner: curl, Counters: ctr(100, 0, 1, 0)})
	drain(tab)
	tab.Confirm(tab.Drains())
	// Drain 2, lost: socket 1 at 250; socket 2, new, 10 bytes.
	if err := tab.Poll(partial{sample(1, curl, ctr(250, 0, 2, 0))}); err != nil {
		t.Fatal(err)
	}
	apply(t, tab, probe.Event{Kind: kindOpen, Endpoint: endpoint(2, probe.RoleClient, 2), Owner: curl, Counters: ctr(10, 0, 1, 0)})
	tab.Apply(probe.Event{Kind: probe.EventFailed, Endpoint: endpoint(3, probe.RoleClient, 3), Owner: curl, Reason: probe.FailRefused})
	if c := drain(tab); len(c.Failed) != 1 {
		t.Fatalf("drain 2 failed connects %v, want socket 3's", c.Failed)
	}
	// Drain 3, lost: socket 2 closes at 40.
	apply(t, tab, closeEv(2, ctr(40, 0, 2, 0)))
	if c := drain(tab); len(c.Closed) != 1 || c.ClosedOpened[0] != 0 || c.Deltas[0].Opened != 0 {
		t.Fatalf("drain 3 closed %v (announced at %v), deltas %+v, want socket 2, announced before", c.Closed, c.ClosedOpened, c.Deltas)
	}

	if n := tab.Rollback(); n != 2 {
		t.Fatalf("Rollback undid %d drains, want 2", n)
	}
	tab.Resync()
	c := drain(tab)
	news := map[uint64]bool{}
	for _, s := range c.Opened {
		news[s.Cookie] = s.NewConnection
	}
	if len(news) != 2 || news[1] || !news[2] {
		t.Errorf("announced %v, want socket 1 not new and socket 2 new", news)
	}
	sent := map[uint64]uint64{}
	for _, d := range c.Deltas {
		sent[d.Cookie] += d.BytesSent
	}
	if sent[1] != 150 || sent[2] != 40 {
		t.Errorf("bytes sent again %v, want 150 of socket 1 and 40 of socket 2", sent)
	}
	if len(c.Closed) != 1 || c.Closed[0] != 2 {
		t.Errorf("closed again %v, want socket 2", c.Closed)
	}
	if len(c.Failed) != 1 || c.Failed[0].Cookie != 3 {
		t.Errorf("failed connects again %v, want socket 3's", c.Failed)
	}
	if n := tab.Rollback(); n != 1 {
		// The drain just made is unconfirmed; undoing it gives it back once more.
		t.Fatalf("second Rollback undid %d drains, want 1", n)
	}
	tab.Confirm(tab.Drains())
	if n := tab.Rollback(); n != 0 {
		t.Errorf("Rollback after Confirm undid %d drains, want 0", n)
	}
}

// TestRollbackUDP: the UDP records of an undone drain go out again in the
// next one, ahead of what moved since, and a confirmed drain's do not.
func TestRollbackUDP(t *testing.T) {
	tab, u := newUDP(t, 100)
	rec := probe.UDPRecord{Cookie: 1, Local: anyAddr, Remote: server, NetNS: netns, Owner: curl, BytesSent: 100, DatagramsSent: 2}
	u.Apply(rec)
	drain(tab)
	tab.Confirm(tab.Drains())
	// Records add to the remote's counters.
	rec.BytesSent, rec.DatagramsSent = 150, 3
	u.Apply(rec)
	drain(tab) // lost
	rec.BytesSent, rec.DatagramsSent = 50, 1
	u.Apply(rec)
	tab.Rollback()
	tab.Resync()
	c := drain(tab)
	var sent []uint64
	for _, d := range c.UDP {
		sent = append(sent, d.BytesSent)
	}
	if len(sent) != 2 || sent[0] != 150 || sent[1] != 50 {
		t.Errorf("UDP bytes sent per record %v, want the undone 150, then 50", sent)
	}
}

// TestRollbackFailedBound: failed connects given back by an undone drain
// keep the queue's bound; those beyond it are dropped and counted.
func TestRollbackFailedBound(t *testing.T) {
	tab, reg := newTable(t, func(c *Config) { c.MaxFailed = 1 })
	failed := func(cookie uint64) probe.Event {
		return probe.Event{Kind: probe.EventFailed, Endpoint: endpoint(cookie, probe.RoleClient, uint16(cookie)), Owner: curl, Reason: probe.FailRefused}
	}
	tab.Apply(failed(1))
	drain(tab) // lost
	tab.Apply(failed(2))
	tab.Rollback()
	c := drain(tab)
	if len(c.Failed) != 1 || c.Failed[0].Cookie != 1 {
		t.Errorf("failed connects %v, want socket 1's alone", c.Failed)
	}
	if got := metricValue(t, reg, "weir_collector_failed_connects_dropped_total"); got != 1 {
		t.Errorf("dropped failed connects = %v, want 1", got)
	}
}

// TestDrainReusesLargestSpare: a drain after a large drain and a small one
// (a node under churn: its buffer of closed sockets full, then the tick)
// reuses the large one's entries, so it grows nothing.
func TestDrainReusesLargestSpare(t *testing.T) {
	tab, _ := newTable(t, nil)
	opens := func(first, n uint64) {
		for c := first; c < first+n; c++ {
			apply(t, tab, open(c, probe.RoleClient, uint16(c), curl, ctr(100, 0, 1, 0)))
		}
	}
	opens(1, 1000)
	drain(tab)
	large := tab.rec.entries
	opens(2000, 10)
	drain(tab)
	tab.Confirm(tab.Drains())
	opens(3000, 1000)
	drain(tab)
	if got := tab.rec.entries; cap(got) != cap(large) || &got[:1][0] != &large[:1][0] {
		t.Fatalf("the third drain's entries have capacity %d, want the first drain's (%d)", cap(got), cap(large))
	}
	// Spares beyond maxSpare: the largest stay.
	tab.Confirm(tab.Drains())
	for i := range uint64(3 * maxSpare) {
		opens(5000+100*i, 5)
		drain(tab)
		tab.Confirm(tab.Drains())
	}
	opens(9000, 1000)
	drain(tab)
	if got := tab.rec.entries; cap(got) != cap(large) {
		t.Fatalf("after small drains the next large one has capacity %d, want %d", cap(got), cap(large))
	}
}

// TestSocketRecordsReused: the record of a socket reported closed is
// reused once the reducer confirmed that report, never before: a closed
// socket of a drain not confirmed is still there for a rollback.
func TestSocketRecordsReused(t *testing.T) {
	tab, _ := newTable(t, nil)
	brief := func(cookie uint64, sent uint64) probe.Event {
		ev := closeEv(cookie, ctr(sent, 0, 1, 0))
		ev.Endpoint = endpoint(cookie, probe.RoleClient, uint16(cookie))
		return ev
	}
	tab.Apply(brief(1, 10))
	drain(tab)
	first := tab.rec.entries[len(tab.rec.entries)-1].s
	tab.Confirm(tab.Drains())
	if len(tab.free) != 1 || tab.free[0] != first {
		t.Fatalf("%d records free after the confirm, want socket 1's", len(tab.free))
	}
	// Socket 2 takes socket 1's record, and is itself.
	tab.Apply(brief(2, 20))
	c := drain(tab)
	if len(tab.free) != 0 || len(c.Opened) != 1 || c.Opened[0].Cookie != 2 || len(c.Deltas) != 1 || c.Deltas[0].BytesSent != 20 {
		t.Fatalf("after reuse: %d free, changes %+v", len(tab.free), c)
	}
	// Not confirmed: socket 2's record stays its own, and a rollback
	// reports socket 2 again beside socket 3.
	tab.Apply(brief(3, 30))
	if len(tab.free) != 0 {
		t.Fatalf("%d records free before any confirm", len(tab.free))
	}
	tab.Rollback()
	tab.Resync()
	c = drain(tab)
	sent := map[uint64]uint64{}
	for _, d := range c.Deltas {
		sent[d.Cookie] += d.BytesSent
	}
	if len(c.Closed) != 2 || sent[2] != 20 || sent[3] != 30 {
		t.Fatalf("after the rollback: closed %v, sent %v, want sockets 2 (20) and 3 (30)", c.Closed, sent)
	}
	// Socket 2 was announced and closed in the drain undone, noted as
	// one entry: it is a new connection again.
	for _, o := range c.Opened {
		if !o.NewConnection {
			t.Fatalf("socket %d announced again without new_connection", o.Cookie)
		}
	}
	if len(c.Opened) != 2 {
		t.Fatalf("announced %d sockets after the rollback, want 2", len(c.Opened))
	}
	tab.Confirm(tab.Drains())
	if len(tab.free) != 2 {
		t.Fatalf("%d records free after confirming both, want 2", len(tab.free))
	}
}
