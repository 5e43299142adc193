package match

import (
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestResync(t *testing.T) {
	curl := []Process{{Handle: 1, Comm: "curl"}}
	nginx := []Process{{Handle: 1, Comm: "nginx"}}
	resent := sock(1, 1, RoleClient, "10.0.0.1:40000", "10.0.0.2:80", false)
	tests := []struct {
		name     string
		withPeer bool
		want     []string
	}{
		{
			name: "one end: no extra opened, no double bytes",
			want: []string{
				"curl/process -> 10.0.0.2/external bytes=150 packets=3 opened=1 active=1",
			},
		},
		{
			name:     "both ends: the peer's view carries the count",
			withPeer: true,
			want: []string{
				"curl/process -> 10.0.0.2/external bytes=0 packets=0 opened=1 active=0",
				// Between the drop of epoch 1 and the announcement under
				// epoch 2 the client's end was vacant: it kept its workload.
				"curl/process -> nginx/process bytes=150 packets=3 opened=0 active=1",
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e, c := newTestEngine(t, true)
			a := openSession(t, e, "node-a", 1)
			apply(t, e, a, Batch{Sequence: 1, Processes: curl, Sockets: []Socket{clientEnd}})
			var b *Session
			if tc.withPeer {
				b = openSession(t, e, "node-b", 1)
				apply(t, e, b, Batch{Sequence: 1, Processes: nginx, Sockets: []Socket{serverEnd}})
				apply(t, e, b, Batch{Sequence: 2, Stats: statsOf(stat{1, 0, 100, 0, 2})})
			}
			apply(t, e, a, Batch{Sequence: 2, Stats: statsOf(stat{1, 100, 0, 2, 0})})
			e.Detach(a)
			c.advance(10 * time.Second)

			// The collector reconnects under a new epoch, announces the
			// socket again and reports deltas from the resync baseline.
			a2 := openSession(t, e, "node-a", 2)
			apply(t, e, a2, Batch{Sequence: 1, Processes: curl, Sockets: []Socket{resent}})
			apply(t, e, a2, Batch{Sequence: 2, Stats: statsOf(stat{1, 50, 0, 1, 0})})
			if tc.withPeer {
				apply(t, e, b, Batch{Sequence: 3, Stats: statsOf(stat{1, 0, 50, 0, 1})})
			}
			sameLines(t, edgeLines(e), tc.want)
		})
	}
}

func TestSessions(t *testing.T) {
	t.Run("stale epoch", func(t *testing.T) {
		e, _ := newTestEngine(t, true)
		openSession(t, e, "node-a", 5)
		for _, epoch := range []uint64{4, 5} {
			_, err := e.Open(Hello{Node: "node-a", BootID: "boot-node-a", Epoch: epoch}, nil)
			var me *Error
			if !errors.As(err, &me) || me.Reason != ReasonStaleEpoch {
				t.Errorf("epoch %d: got %v, want a stale epoch refusal", epoch, err)
			}
		}
	})
	t.Run("a new boot starts over", func(t *testing.T) {
		e, _ := newTestEngine(t, true)
		openSession(t, e, "node-a", 5)
		if _, err := e.Open(Hello{Node: "node-a", BootID: "another-boot", Epoch: 1}, nil); err != nil {
			t.Errorf("new boot with a lower epoch: %v", err)
		}
	})
	t.Run("replacement cancels the old stream and drops its sockets", func(t *testing.T) {
		e, _ := newTestEngine(t, true)
		cancelled := false
		old, err := e.Open(Hello{Node: "node-a", BootID: "b", Epoch: 1}, func() { cancelled = true })
		if err != nil {
			t.Fatal(err)
		}
		apply(t, e, old, Batch{Sequence: 1, Processes: []Process{{Handle: 1, Comm: "curl"}}, Sockets: []Socket{clientEnd}})
		next, err := e.Open(Hello{Node: "node-a", BootID: "b", Epoch: 2}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !cancelled {
			t.Error("old stream not cancelled")
		}
		// The old sockets wait for the new session's first batch, which
		// announces again what is still live: here, nothing.
		if sockets, flows, _ := e.Counts(); sockets != 0 || flows != 1 {
			t.Errorf("sockets=%d flows=%d after replacement, want 0 1", sockets, flows)
		}
		apply(t, e, next, Batch{Sequence: 1})
		if sockets, flows, _ := e.Counts(); sockets != 0 || flows != 0 {
			t.Errorf("sockets=%d flows=%d after replacement, want 0 0", sockets, flows)
		}
		sameLines(t, edgeLines(e), []string{"curl/process -> 10.0.0.2/external bytes=0 packets=0 opened=1 active=0"})
		var me *Error
		if err := e.Apply(old, &Batch{Sequence: 2}); !errors.As(err, &me) || me.Reason != ReasonSessionReplaced {
			t.Errorf("batch on the replaced session: got %v", err)
		}
	})
	t.Run("a detached session is dropped after the session TTL", func(t *testing.T) {
		e, c := newTestEngine(t, true)
		s := openSession(t, e, "node-a", 1)
		apply(t, e, s, Batch{Sequence: 1, Processes: []Process{{Handle: 1, Comm: "curl"}}, Sockets: []Socket{clientEnd},
			Stats: statsOf(stat{1, 10, 0, 1, 0})})
		e.Detach(s)
		c.advance(2*time.Minute - time.Second)
		e.Sweep()
		if sockets, _, _ := e.Counts(); sockets != 1 {
			t.Fatalf("sockets=%d before the session TTL, want 1", sockets)
		}
		c.advance(time.Second)
		e.Sweep()
		if sockets, flows, _ := e.Counts(); sockets != 0 || flows != 0 {
			t.Fatalf("sockets=%d flows=%d after the session TTL, want 0 0", sockets, flows)
		}
		if got := testutil.ToFloat64(e.expired); got != 1 {
			t.Errorf("weir_reducer_sessions_expired_total = %v, want 1", got)
		}
		sameLines(t, edgeLines(e), []string{"curl/process -> 10.0.0.2/external bytes=10 packets=1 opened=1 active=0"})
		// No ghost edges: quiet for the series TTL, the edge goes.
		c.advance(5 * time.Minute)
		if got := edgeLines(e); len(got) != 0 {
			t.Errorf("edges after the series TTL: %v", got)
		}
		// A node whose session expired may come back with any epoch.
		openSession(t, e, "node-a", 1)
	})
}

func TestLoopback(t *testing.T) {
	procs := []Process{{Handle: 1, Comm: "curl"}, {Handle: 2, Comm: "redis-server"}}
	client := sock(1, 1, RoleClient, "127.0.0.1:50000", "127.0.0.1:6379", true)
	server := sock(2, 2, RoleServer, "127.0.0.1:6379", "127.0.0.1:50000", true)
	otherNetns := server
	otherNetns.Netns = 4026532000
	tests := []struct {
		name     string
		loopback bool
		sockets  []Socket
		stats    Stats
		want     []string
	}{
		{
			name:     "two local processes",
			loopback: true,
			sockets:  []Socket{client, server},
			stats:    statsOf(stat{1, 10, 20, 1, 2}, stat{2, 20, 10, 2, 1}),
			want: []string{
				"curl/process -> redis-server/process bytes=10 packets=1 opened=1 active=1",
				"redis-server/process -> curl/process bytes=20 packets=2 opened=0 active=0",
			},
		},
		{
			name:     "loopback off drops them",
			loopback: false,
			sockets:  []Socket{client, server},
			stats:    statsOf(stat{1, 10, 20, 1, 2}, stat{2, 20, 10, 2, 1}),
		},
		{
			name:     "each network namespace has its own loopback",
			loopback: true,
			sockets:  []Socket{client, otherNetns},
			stats:    statsOf(stat{1, 10, 0, 1, 0}, stat{2, 20, 0, 2, 0}),
			want: []string{
				"curl/process -> 127.0.0.1/external bytes=10 packets=1 opened=1 active=1",
				"127.0.0.1/external -> redis-server/process bytes=0 packets=0 opened=1 active=1",
				"redis-server/process -> 127.0.0.1/external bytes=20 packets=2 opened=0 active=0",
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e, _ := newTestEngine(t, tc.loopback)
			s := openSession(t, e, "node-a", 1)
			apply(t, e, s, Batch{Sequence: 1, Processes: procs, Sockets: tc.sockets, Stats: tc.stats})
			sameLines(t, edgeLines(e), tc.want)
			// Loopback flows of two nodes never join.
			other := openSession(t, e, "node-b", 1)
			apply(t, e, other, Batch{Sequence: 1, Processes: procs[:1], Sockets: []Socket{sock(1, 1, RoleServer, "127.0.0.1:6379", "127.0.0.1:50000", false)}})
			if sockets, _, _ := e.Counts(); sockets != len(tc.sockets)+1 {
				t.Errorf("sockets=%d, want %d", sockets, len(tc.sockets)+1)
			}
		})
	}
}

func apply(t *testing.T, e *Engine, s *Session, b Batch) {
	t.Helper()
	if err := e.Apply(s, &b); err != nil {
		t.Fatalf("batch %d: %v", b.Sequence, err)
	}
}

// TestResume: a session that replaces one of the same node and boot tells
// its collector the epoch it replaced and the last batch applied from it;
// one after a reboot, or the first, tells nothing.
func TestResume(t *testing.T) {
	e, _ := newTestEngine(t, true)
	s1 := openSession(t, e, "node-a", 1)
	if ep, seq := s1.Resume(); ep != 0 || seq != 0 {
		t.Errorf("first session resumes (%d, %d), want nothing", ep, seq)
	}
	apply(t, e, s1, Batch{Sequence: 1, Processes: []Process{{Handle: 1, Comm: "curl"}}, Sockets: []Socket{clientEnd}})
	apply(t, e, s1, Batch{Sequence: 2, Stats: statsOf(stat{1, 100, 0, 1, 0})})
	s2 := openSession(t, e, "node-a", 5)
	if ep, seq := s2.Resume(); ep != 1 || seq != 2 {
		t.Errorf("second session resumes (%d, %d), want epoch 1 at batch 2", ep, seq)
	}
	s3, err := e.Open(Hello{Node: "node-a", BootID: "another boot", Epoch: 1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if ep, seq := s3.Resume(); ep != 0 || seq != 0 {
		t.Errorf("session after a reboot resumes (%d, %d), want nothing", ep, seq)
	}
}

// TestContinuedFirstReport: a collector's first report under a new epoch
// that comes in several batches (continued) closes the sockets it did not
// announce again only after its last batch: a socket announced in a later
// batch keeps its connection, joined to its peer, with nothing counted
// twice or one-sided.
func TestContinuedFirstReport(t *testing.T) {
	curl := []Process{{Handle: 1, Comm: "curl"}}
	nginx := []Process{{Handle: 1, Comm: "nginx"}}
	e, _ := newTestEngine(t, true)
	a := openSession(t, e, "node-a", 1)
	b := openSession(t, e, "node-b", 1)
	cli2 := sock(2, 1, RoleClient, "10.0.0.1:40001", "10.0.0.2:80", true)
	srv2 := sock(2, 1, RoleServer, "10.0.0.2:80", "10.0.0.1:40001", true)
	apply(t, e, a, Batch{Sequence: 1, Processes: curl, Sockets: []Socket{clientEnd, cli2}})
	apply(t, e, b, Batch{Sequence: 1, Processes: nginx, Sockets: []Socket{serverEnd, srv2}})
	apply(t, e, a, Batch{Sequence: 2, Stats: statsOf(stat{1, 100, 0, 2, 0}, stat{2, 100, 0, 2, 0})})

	// Node a's collector is back under epoch 2; its resync comes in two
	// batches, socket 1 in the first, socket 2 in the second.
	a2 := openSession(t, e, "node-a", 2)
	again1, again2 := clientEnd, cli2
	again1.NewConnection, again2.NewConnection = false, false
	apply(t, e, a2, Batch{Sequence: 1, Continued: true, Processes: curl, Sockets: []Socket{again1}})
	apply(t, e, a2, Batch{Sequence: 2, Sockets: []Socket{again2}, Stats: statsOf(stat{1, 50, 0, 1, 0}, stat{2, 50, 0, 1, 0})})
	sameLines(t, edgeLines(e), []string{
		// Node a reported first: its opens counted before node b joined.
		"curl/process -> 10.0.0.2/external bytes=0 packets=0 opened=2 active=0",
		"curl/process -> nginx/process bytes=300 packets=6 opened=0 active=2",
	})
}
