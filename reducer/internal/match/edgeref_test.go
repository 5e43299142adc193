package match

import (
	"testing"
	"time"
	"unsafe"
)

// TestEdgeRefsGoWithFlows: the references a flow holds to its edges, and
// those a socket holds to its session and process, are given back when
// they leave the table, whether the ends close or their session expires.
func TestEdgeRefsGoWithFlows(t *testing.T) {
	e, c := newTestEngine(t, false)
	a, b := openSession(t, e, "a", 1), openSession(t, e, "b", 1)
	curl := []Process{{Handle: 1, Comm: "curl"}}
	nginx := []Process{{Handle: 1, Comm: "nginx"}}
	apply := func(s *Session, batch Batch) {
		t.Helper()
		if err := e.Apply(s, &batch); err != nil {
			t.Fatal(err)
		}
	}
	apply(a, Batch{Processes: curl, Sockets: []Socket{clientEnd}, Stats: statsOf(stat{1, 100, 500, 2, 3})})
	apply(b, Batch{Processes: nginx, Sockets: []Socket{serverEnd}, Stats: statsOf(stat{1, 500, 100, 3, 2})})
	// A one-sided flow, whose session expires.
	lone := sock(2, 1, RoleClient, "10.0.0.1:40001", "198.51.100.7:443", true)
	apply(a, Batch{Sockets: []Socket{lone}, Stats: statsOf(stat{2, 10, 10, 1, 1})})
	c.advance(10 * time.Second)
	e.Sweep()
	if e.store.Held() == 0 {
		t.Fatal("no edge held by the live flows")
	}
	apply(a, Batch{Closed: []uint32{1}})
	apply(b, Batch{Closed: []uint32{1}})
	e.Detach(a)
	e.Detach(b)
	c.advance(3 * time.Minute)
	e.Sweep()
	if sockets, flows, _ := e.Counts(); sockets != 0 || flows != 0 {
		t.Fatalf("%d sockets, %d flows left", sockets, flows)
	}
	if n := e.store.Held(); n != 0 {
		t.Fatalf("%d edges still held", n)
	}
	if s, p := e.sessTab.len(), e.procTab.len(); s != 0 || p != 0 {
		t.Fatalf("%d sessions and %d processes still held by sockets", s, p)
	}
	if n := unsafe.Sizeof(socket{}); n != 32 {
		t.Errorf("a socket record is %d bytes, want 32", n)
	}
	if n := unsafe.Sizeof(flow{}); n != 120 {
		t.Errorf("a flow record is %d bytes, want 120", n)
	}
}

// TestDeadEdgeReplaced: an edge that expires while a flow still refers to
// it (the direction without an active connection, quiet for the series
// TTL) keeps its slot until the flow moves on, and the flow's next traffic
// counts on a new edge of the same key.
func TestDeadEdgeReplaced(t *testing.T) {
	e, c := newTestEngine(t, false)
	a := openSession(t, e, "a", 1)
	apply := func(batch Batch) {
		t.Helper()
		if err := e.Apply(a, &batch); err != nil {
			t.Fatal(err)
		}
	}
	apply(Batch{Processes: []Process{{Handle: 1, Comm: "curl"}}, Sockets: []Socket{clientEnd}, Stats: statsOf(stat{1, 100, 500, 2, 3})})
	held := e.store.Held()
	// Only the client's direction has traffic from now on: the other
	// edge, with no active connection, expires.
	for range 4 {
		c.advance(2 * time.Minute)
		apply(Batch{Stats: statsOf(stat{1, 10, 0, 1, 0})})
		e.Sweep()
	}
	sameLines(t, edgeLines(e), []string{"curl/process -> 10.0.0.2/external bytes=140 packets=6 opened=1 active=1"})
	if got := e.store.Held(); got != held {
		t.Fatalf("%d edges held after one expired, want %d (the dead one keeps its slot)", got, held)
	}
	apply(Batch{Stats: statsOf(stat{1, 0, 7, 0, 1})})
	sameLines(t, edgeLines(e), []string{
		"curl/process -> 10.0.0.2/external bytes=140 packets=6 opened=1 active=1",
		"10.0.0.2/external -> curl/process bytes=7 packets=1 opened=0 active=0",
	})
	if got := e.store.Held(); got != held {
		t.Fatalf("%d edges held after the new edge, want %d", got, held)
	}
}
