package match

import "testing"

func TestEventsLost(t *testing.T) {
	e, _ := newTestEngine(t, true)
	a := openSession(t, e, "node-a", 1)
	_, cancel := e.Subscribe("tiny", 1)
	defer cancel()
	apply(t, e, a, Batch{Sequence: 1, Processes: []Process{{Handle: 1, Comm: "curl"}}, Sockets: []Socket{clientEnd},
		Stats: statsOf(stat{1, 100, 0, 2, 0}), Closed: []uint32{1}})
	// socket open fits; flow open, socket close and flow close do not.
	if got := e.EventsLost("tiny"); got != 3 {
		t.Errorf("EventsLost(tiny) = %d, want 3", got)
	}
	if got := e.EventsLost("nobody"); got != 0 {
		t.Errorf("EventsLost(nobody) = %d, want 0", got)
	}
}
