package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// profile is how one connection of --mix behaves: the pause between two
// requests and the sizes of each request and response, drawn per request.
type profile struct {
	name       string
	gap        func(r *rand.Rand) time.Duration
	req, resp  func(r *rand.Rand) int64
	onOff      bool // alternates bursts of a few seconds with idle periods of a few seconds
	weightPerc int
}

func uniform(lo, hi int64) func(r *rand.Rand) int64 {
	return func(r *rand.Rand) int64 { return lo + r.Int64N(hi-lo+1) }
}

func expGap(mean time.Duration) func(r *rand.Rand) time.Duration {
	return func(r *rand.Rand) time.Duration { return time.Duration(r.ExpFloat64() * float64(mean)) }
}

// profiles are loosely those of a service's connections: RPC clients with
// small requests and medium answers, uploads, downloads, connections used
// now and then (idle across whole report intervals), and bursty ones.
var profiles = []profile{
	{name: "chatty", gap: expGap(100 * time.Millisecond), req: uniform(40, 600), resp: uniform(100, 4000), weightPerc: 40},
	{name: "uploader", gap: expGap(300 * time.Millisecond), req: uniform(4<<10, 64<<10), resp: uniform(16, 64), weightPerc: 15},
	{name: "downloader", gap: expGap(300 * time.Millisecond), req: uniform(40, 120), resp: uniform(8<<10, 128<<10), weightPerc: 15},
	{name: "sporadic", gap: func(r *rand.Rand) time.Duration {
		return 1500*time.Millisecond + time.Duration(r.Int64N(int64(2500*time.Millisecond)))
	},
		req: uniform(20, 300), resp: uniform(20, 1500), weightPerc: 15},
	{name: "on-off", gap: expGap(50 * time.Millisecond), req: uniform(100, 2000), resp: uniform(100, 8000), onOff: true, weightPerc: 15},
}

func pick(r *rand.Rand) profile {
	n := r.IntN(100)
	for _, p := range profiles {
		if n < p.weightPerc {
			return p
		}
		n -= p.weightPerc
	}
	return profiles[0]
}

// runMix opens conns connections to flowsrv --sized, each following a
// profile drawn at random (seeded), for d. It prints the profile counts,
// then "done N requests" when it has closed every connection.
func runMix(addr string, conns int, d time.Duration, seed uint64) error {
	end := time.Now().Add(d)
	var wg sync.WaitGroup
	var requests atomic.Int64
	errs := make(chan error, conns)
	count := map[string]int{}
	for i := range conns {
		r := rand.New(rand.NewPCG(seed, uint64(i)))
		p := pick(r)
		count[p.name]++
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return fmt.Errorf("connection %d: %w", i, err)
		}
		wg.Go(func() {
			defer c.Close()
			var hdr [8]byte
			buf := make([]byte, 64<<10)
			burstEnd := time.Now().Add(time.Duration(r.Int64N(int64(4 * time.Second))))
			// Start at a random point, so connections do not move in step.
			time.Sleep(time.Duration(r.Int64N(int64(time.Second))))
			for time.Now().Before(end) {
				if p.onOff && time.Now().After(burstEnd) {
					time.Sleep(3*time.Second + time.Duration(r.Int64N(int64(3*time.Second))))
					burstEnd = time.Now().Add(2*time.Second + time.Duration(r.Int64N(int64(2*time.Second))))
					continue
				}
				req, resp := p.req(r), p.resp(r)
				binary.BigEndian.PutUint32(hdr[:4], uint32(req))
				binary.BigEndian.PutUint32(hdr[4:], uint32(resp))
				if _, err := c.Write(hdr[:]); err != nil {
					errs <- fmt.Errorf("connection %d: write: %w", i, err)
					return
				}
				if _, err := io.CopyBuffer(c, io.LimitReader(zeroReader{}, req), buf); err != nil {
					errs <- fmt.Errorf("connection %d: write: %w", i, err)
					return
				}
				if _, err := io.CopyBuffer(io.Discard, io.LimitReader(c, resp), buf); err != nil {
					errs <- fmt.Errorf("connection %d: read: %w", i, err)
					return
				}
				requests.Add(1)
				time.Sleep(p.gap(r))
			}
		})
	}
	fmt.Printf("profiles %v\n", count)
	wg.Wait()
	close(errs)
	for err := range errs {
		return err
	}
	fmt.Printf("done %d requests\n", requests.Load())
	return nil
}
