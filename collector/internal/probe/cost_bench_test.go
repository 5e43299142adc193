package probe

import (
	"net"
	"testing"
)

// reportProgramCost reports each program's ns/run between two readings of
// ProgramStats, and its runs per iteration.
func reportProgramCost(b *testing.B, before, after []ProgramStats) {
	b.Helper()
	for i, s := range after {
		runs := s.Runs - before[i].Runs
		if runs == 0 {
			continue
		}
		ns := float64((s.RunTime - before[i].RunTime).Nanoseconds())
		b.ReportMetric(ns/float64(runs), s.Name+"-ns/run")
		b.ReportMetric(float64(runs)/float64(b.N), s.Name+"-runs/op")
	}
}

// openForCost opens a probe with the default programs, and the UDP ones
// with udp, and the kernel's run-time statistics on, and reads its events
// in the background.
func openForCost(b *testing.B, udp bool) *Probe {
	b.Helper()
	requirePrivileged(b)
	cfg := DefaultConfig()
	cfg.Stats = true
	cfg.UDP.Enabled = udp
	p, err := Open(cfg)
	if err != nil {
		b.Fatalf("Open: %v", err)
	}
	b.Cleanup(func() { p.Close() })
	go func() {
		for {
			if _, err := p.ReadEvent(); err != nil {
				return
			}
		}
	}()
	go func() {
		for {
			if _, err := p.ReadUDP(); err != nil {
				return
			}
		}
	}()
	return p
}

// BenchmarkKeepAlive is one request and response of 100 bytes each on a
// kept-alive loopback connection per iteration, with the default programs
// attached: the TCP cost on the hot path of established traffic (no
// program runs per message). With UDP, the UDP send and receive programs
// run for these TCP messages too: BenchmarkKeepAlive/udp shows that cost.
func BenchmarkKeepAlive(b *testing.B) {
	b.Run("default", func(b *testing.B) { benchKeepAlive(b, false) })
	b.Run("udp", func(b *testing.B) { benchKeepAlive(b, true) })
}

func benchKeepAlive(b *testing.B, udp bool) {
	p := openForCost(b, udp)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	cp := dialPair(b, ln)
	defer cp.close()
	cp.exchange(b, 100, 100)
	before, err := p.ProgramStats()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		cp.exchange(b, 100, 100)
	}
	after, err := p.ProgramStats()
	if err != nil {
		b.Fatal(err)
	}
	reportProgramCost(b, before, after)
}

// BenchmarkUDP is one 100-byte datagram and its echo between two
// unconnected loopback sockets per iteration: each side's sendmsg and
// recvmsg hooks and the send and receive programs, with a remote looked up
// in the socket's slots.
func BenchmarkUDP(b *testing.B) {
	p := openForCost(b, true)
	srv, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	cli, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer cli.Close()
	msg, buf := make([]byte, 100), make([]byte, 2048)
	to := srv.LocalAddr()
	round := func() {
		if _, err := cli.WriteTo(msg, to); err != nil {
			b.Fatal(err)
		}
		n, from, err := srv.ReadFrom(buf)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := srv.WriteTo(buf[:n], from); err != nil {
			b.Fatal(err)
		}
		if _, _, err := cli.ReadFrom(buf); err != nil {
			b.Fatal(err)
		}
	}
	round()
	before, err := p.ProgramStats()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		round()
	}
	after, err := p.ProgramStats()
	if err != nil {
		b.Fatal(err)
	}
	reportProgramCost(b, before, after)
}
