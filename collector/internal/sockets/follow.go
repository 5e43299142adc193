package sockets

import (
	"errors"
	"time"

	"github.com/weir-project/weir/collector/internal/probe"
)

// EventReader is the kernel's lifecycle event stream.
type EventReader interface {
	// ReadEvent blocks for the next event; after the reader is closed it
	// returns an error wrapping probe.ErrClosed.
	ReadEvent() (probe.Event, error)
}

// Follow applies the events of r to the table until r is closed. Unreadable
// events are counted and skipped; after many in a row it slows down rather
// than spin.
func (t *Table) Follow(r EventReader) error {
	failures := 0
	for {
		ev, err := r.ReadEvent()
		if errors.Is(err, probe.ErrClosed) {
			return nil
		}
		if err != nil {
			t.m.eventErrors.Inc()
			failures++
			if failures > 10 {
				time.Sleep(100 * time.Millisecond)
			}
			continue
		}
		failures = 0
		t.Apply(ev)
	}
}
