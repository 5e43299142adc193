package ingest

import (
	"testing"
	"time"
)

// TestGate: close waits for the message being applied, and after it the
// worker applies none.
func TestGate(t *testing.T) {
	g := new(gate)
	if !g.enter() {
		t.Fatal("a new gate is closed")
	}
	closed := make(chan struct{})
	go func() { g.close(); close(closed) }()
	select {
	case <-closed:
		t.Fatal("close returned while a message was being applied")
	case <-time.After(50 * time.Millisecond):
	}
	g.leave()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("close did not return once the message was applied")
	}
	if g.enter() {
		t.Fatal("the gate let a message in after close")
	}
}
