package e2e

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weir-project/weir/test/internal/harness"
)

// rpcLoad is the traffic of the overhead benchmark: 64 connections doing
// 64-byte request/response round trips as fast as they can, and 1,000 new
// connections a second, all on loopback inside this test process.
type rpcLoad struct {
	ln   net.Listener
	addr string
	wg   sync.WaitGroup
}

func startRPCServer(tb testing.TB) *rpcLoad {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	l := &rpcLoad{ln: ln, addr: ln.Addr().String()}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			l.wg.Add(1)
			go func() {
				defer l.wg.Done()
				defer c.Close()
				buf := make([]byte, 64)
				for {
					if _, err := io.ReadFull(c, buf); err != nil {
						return
					}
					if _, err := c.Write(buf); err != nil {
						return
					}
				}
			}()
		}
	}()
	tb.Cleanup(func() {
		_ = ln.Close()
		l.wg.Wait()
	})
	return l
}

// run drives the load for d and returns the round trips completed per
// second on the 64 persistent connections.
func (l *rpcLoad) run(tb testing.TB, d time.Duration) float64 {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var rpcs atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, 65)
	for range 64 {
		c, err := net.Dial("tcp", l.addr)
		if err != nil {
			tb.Fatal(err)
		}
		wg.Go(func() {
			defer c.Close()
			buf := make([]byte, 64)
			for ctx.Err() == nil {
				if _, err := c.Write(buf); err != nil {
					errc <- err
					return
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					errc <- err
					return
				}
				rpcs.Add(1)
			}
		})
	}
	wg.Go(func() {
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				c, err := net.Dial("tcp", l.addr)
				if err != nil {
					errc <- err
					return
				}
				_ = c.Close()
			}
		}
	})
	start := time.Now()
	wg.Wait()
	elapsed := time.Since(start)
	close(errc)
	for err := range errc {
		if !errors.Is(err, net.ErrClosed) {
			tb.Fatal(err)
		}
	}
	return float64(rpcs.Load()) / elapsed.Seconds()
}

// BenchmarkPrivilegedOverhead measures what the collector costs the traffic
// it watches (P1) and the CPU it uses itself (P2). It runs the same loopback
// load, 64 connections of 64-byte request/response plus 1,000 new
// connections a second, without and with weir (collector and reducer, 5 s
// interval), alternating twice, and reports the ratio of the round trips per
// second with weir to those without (target ≥ 0.98) and the collector's CPU
// during the runs with weir, in millicores (target ≤ 20). The machine has two
// cores that the load saturates, so the ratio is noisy: compare several runs.
func BenchmarkPrivilegedOverhead(b *testing.B) {
	harness.RequireRoot(b)
	const phase = 5 * time.Second
	load := startRPCServer(b)
	load.run(b, time.Second) // warm up

	var without, with, colCPU, wall float64
	for range max(b.N, 2) {
		without += load.run(b, phase)

		w := harness.StartWeir(b, harness.WeirOptions{Interval: 5 * time.Second})
		time.Sleep(time.Second) // the probe is attached once /healthz answers
		cpu0 := cpuOrFatal(b, w.Collector)
		t0 := time.Now()
		with += load.run(b, phase)
		colCPU += cpuOrFatal(b, w.Collector) - cpu0
		wall += time.Since(t0).Seconds()
		w.Collector.Stop(5 * time.Second)
		w.Reducer.Stop(5 * time.Second)
	}
	b.ReportMetric(with/without, "ratio")
	b.ReportMetric(1000*colCPU/wall, "collector-mcores")
	b.ReportMetric(without/float64(max(b.N, 2)), "rpc/s-without")
}
