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
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	for range 100 {
		cp := dialPair(b, ln)
		defer cp.close()
	}
	before, err := p.ProgramStats()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	conns := 0
	for b.Loop() {
		cp := dialPair(b, ln)
		cp.exchange(b, 100, 100)
		cp.close()
		if conns++; conns%50 == 0 {
			if err := p.Samples(func(Sample) {}); err != nil {
				b.Fatal(err)
			}
		}
	}
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
