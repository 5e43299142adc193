package probe

import (
	"errors"
	"net"
	"testing"
)

// BenchmarkChurn opens and closes loopback connections, one per iteration,
// with the events read as they come and a walk every 50 connections over
// 100 idle connections, and reports from the kernel's run-time
// statistics what each program costs per run and what inet_sock_set_state
// costs per connection (both its sockets, every state change).
func BenchmarkChurn(b *testing.B) {
	requirePrivileged(b)
	// The default programs (UDP off).
	cfg := DefaultConfig()
	cfg.Stats = true
	p, err := Open(cfg)
	if err != nil {
		b.Fatalf("Open: %v", err)
	}
	defer p.Close()
	go func() {
		for {
			if _, err := p.ReadUDP(); err != nil {
				return
			}
		}
	}()
	read := make(chan error, 1)
	go func() {
		for {
			if _, err := p.ReadEvent(); err != nil {
				read <- err
				return
			}
		}
	}()
	ln := churnListener(b)
	before, err := p.ProgramStats()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	conns := churnLoop(b, ln, func() {
		if err := p.Samples(func(Sample) {}); err != nil {
			b.Fatal(err)
		}
	})
	after, err := p.ProgramStats()
	if err != nil {
		b.Fatal(err)
	}
	for i, s := range after {
		runs := s.Runs - before[i].Runs
		if runs == 0 {
			continue
		}
		ns := float64((s.RunTime - before[i].RunTime).Nanoseconds())
		b.ReportMetric(ns/float64(runs), s.Name+"-ns/run")
		if s.Name == p.objs.stateName {
			b.ReportMetric(ns/float64(conns), s.Name+"-ns/conn")
			b.ReportMetric(float64(runs)/float64(conns), s.Name+"-runs/conn")
		}
	}
	if err := p.Close(); err != nil {
		b.Fatal(err)
	}
	if err := <-read; !errors.Is(err, ErrClosed) {
		b.Fatalf("ReadEvent: %v", err)
	}
}

// churnLoop opens a loopback connection to ln, moves 100 bytes each way and
// closes both ends, once per iteration of b.Loop, calling every50 (if not
// nil) after each 50th connection. It returns the connections made.
func churnLoop(b *testing.B, ln net.Listener, every50 func()) int {
	b.Helper()
	conns := 0
	for b.Loop() {
		cp := dialPair(b, ln)
		cp.exchange(b, 100, 100)
		cp.close()
		if conns++; conns%50 == 0 && every50 != nil {
			every50()
		}
	}
	return conns
}

// churnListener listens on loopback, after the programs are attached (so
// that they see the listen()), with 100 idle connections to it, all closed
// when b ends.
func churnListener(b *testing.B) net.Listener {
	b.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	for range 100 {
		cp := dialPair(b, ln)
		b.Cleanup(cp.close)
	}
	return ln
}
