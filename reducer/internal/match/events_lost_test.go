package match

import "testing"

func TestEventsLost(t *testing.T) {
	e, _ := newTestEngine(t, true)
	a := openSession(t, e, "node-a", 1)
	_, cancel := e.Subscribe("tiny", 1)
	defer cancel()
	apply(t, e, a, Batch{Sequence: 1, Processes: []Process{{Handle: 1, Comm: "curl"}}, Sockets: []Socket{clientEnd},
		Stats: statsOf(stat{1, 100, 0, 2, 0})})
	// socket open fits; flow open and flow update do not.
	if got := e.EventsLost("tiny"); got != 2 {
		t.Errorf("EventsLost(tiny) = %d, want 2", got)
	}
	if got := e.EventsLost("nobody"); got != 0 {
		t.Errorf("EventsLost(nobody) = %d, want 0", got)
	}
}
