package sockets

import (
	"errors"
	"fmt"
	"testing"

	"github.com/weir-project/weir/collector/internal/probe"
)

// scriptedReader returns its results in order, then ErrClosed.
type scriptedReader struct {
	results []readResult
}

type readResult struct {
	ev  probe.Event
	err error
}

func (r *scriptedReader) ReadEvent() (probe.Event, error) {
	if len(r.results) == 0 {
		return probe.Event{}, fmt.Errorf("read event: %w", probe.ErrClosed)
	}
	res := r.results[0]
	r.results = r.results[1:]
	return res.ev, res.err
}

func TestFollow(t *testing.T) {
	bad := errors.New("decode event: short record")
	tests := []struct {
		name       string
		results    []readResult
		wantLive   int
		wantErrors float64
	}{
		{name: "closed at once"},
		{
			name:     "events until closed",
			results:  []readResult{{ev: existing(1, 1, curl, probe.Counters{})}, {ev: existing(2, 2, curl, probe.Counters{})}, {ev: closeEv(1, probe.Counters{})}},
			wantLive: 1,
		},
		{
			name:       "unreadable events are skipped and counted",
			results:    []readResult{{err: bad}, {ev: existing(1, 1, curl, probe.Counters{})}, {err: bad}},
			wantLive:   1,
			wantErrors: 2,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tab, reg := newTable(t, nil)
			if err := tab.Follow(&scriptedReader{results: tc.results}); err != nil {
				t.Fatal(err)
			}
			if tab.Live() != tc.wantLive {
				t.Fatalf("live %d, want %d", tab.Live(), tc.wantLive)
			}
			if got := metricValue(t, reg, "weir_collector_event_errors_total"); got != tc.wantErrors {
				t.Fatalf("event errors %v, want %v", got, tc.wantErrors)
			}
		})
	}
}
