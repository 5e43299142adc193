package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// runLoad drives flowsrv --forever and prints one line:
//
//	requests N seconds S rate R errors E cpu C [first-error …]
//
// preceded by a line "measuring" when the window starts
// where N is the requests completed (response fully read) during the
// measured window of S seconds after the warm-up, and C the CPU seconds
// (user and system) this process used in that window.
//
// The load is closed-loop and saturating: every connection (keepalive) or
// dial loop (churn) sends its next request as soon as the previous response
// is in, with no pacing. On a small machine the client, the server and the
// kernel then use all the CPU there is, so anything else that takes CPU on
// the same path (tracepoint programs, the collector's own process) shows up
// as fewer requests per second, which is the overhead to measure. A fixed
// offered load below saturation would hide it: the ratio would be 1 until
// the machine ran out of headroom.
func runLoad(mode, addr string, conns, dialers int, request, response int64, warmup, window time.Duration) error {
	var done, failed atomic.Int64
	var stop atomic.Bool
	var wg sync.WaitGroup
	var firstErr error
	var errOnce sync.Once
	fail := func(err error) {
		failed.Add(1)
		errOnce.Do(func() { firstErr = err })
	}
	switch mode {
	case "keepalive":
		open := make([]net.Conn, 0, conns)
		for i := range conns {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				return fmt.Errorf("connection %d: %w", i, err)
			}
			open = append(open, c)
		}
		defer func() {
			for _, c := range open {
				_ = c.Close()
			}
		}()
		for _, c := range open {
			wg.Go(func() {
				req, resp := make([]byte, request), make([]byte, response)
				for !stop.Load() {
					if _, err := c.Write(req); err != nil {
						fail(err)
						return
					}
					if _, err := io.ReadFull(c, resp); err != nil {
						fail(err)
						return
					}
					done.Add(1)
				}
			})
		}
	case "churn":
		// One new connection per request; the client closes first after the
		// response, so its end holds TIME_WAIT. The test widens
		// ip_local_port_range and sets tcp_tw_reuse in the client's namespace
		// so that this does not run out of ports; the close is an ordinary
		// FIN, not an RST from SO_LINGER 0.
		for range dialers {
			wg.Go(func() {
				d := net.Dialer{Timeout: 5 * time.Second}
				req, resp := make([]byte, request), make([]byte, response)
				for !stop.Load() {
					if err := oneRequest(&d, addr, req, resp); err != nil {
						fail(err)
						time.Sleep(time.Millisecond)
						continue
					}
					done.Add(1)
				}
			})
		}
	default:
		return fmt.Errorf("--load %q: want keepalive or churn", mode)
	}
	time.Sleep(warmup)
	n0, f0, t0, c0 := done.Load(), failed.Load(), time.Now(), cpuSeconds()
	// The benchmark reads the collector's CPU and the programs' run time
	// when this line appears, and again after the result line.
	fmt.Println("measuring")
	time.Sleep(window)
	n1, f1, t1, c1 := done.Load(), failed.Load(), time.Now(), cpuSeconds()
	stop.Store(true)
	wg.Wait()
	secs := t1.Sub(t0).Seconds()
	first := ""
	if firstErr != nil && !errors.Is(firstErr, net.ErrClosed) {
		first = fmt.Sprintf(" first-error %v", firstErr)
	}
	fmt.Printf("requests %d seconds %.4f rate %.1f errors %d cpu %.4f%s\n", n1-n0, secs, float64(n1-n0)/secs, f1-f0, c1-c0, first)
	return nil
}

func oneRequest(d *net.Dialer, addr string, req, resp []byte) error {
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Write(req); err != nil {
		return err
	}
	_, err = io.ReadFull(c, resp)
	return err
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}
