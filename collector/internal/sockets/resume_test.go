package sockets

import (
	"testing"

	"github.com/weir-project/weir/collector/internal/probe"
)

// TestRollback: drains the reducer never confirmed are undone for the next
// epoch: a new connection they announced is new again, the deltas they
// took are taken again, a socket they reported closed is reported again;
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
	drain(tab)
	// Drain 3, lost: socket 2 closes at 40.
	apply(t, tab, closeEv(2, ctr(40, 0, 2, 0)))
	if c := drain(tab); len(c.Closed) != 1 {
		t.Fatalf("drain 3 closed %v, want socket 2", c.Closed)
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
	if n := tab.Rollback(); n != 1 {
		// The drain just made is unconfirmed; undoing it gives it back once more.
		t.Fatalf("second Rollback undid %d drains, want 1", n)
	}
	tab.Confirm(tab.Drains())
	if n := tab.Rollback(); n != 0 {
		t.Errorf("Rollback after Confirm undid %d drains, want 0", n)
	}
}
