// Command floorsink is a test tool that weir does not ship. It loads kernel
// programs, reads everything they produce, and throws it away: nothing is
// kept, encoded or sent. test/e2e's BenchmarkPrivilegedOverheadFloor runs
// it in place of the collector, to show what watching the traffic costs
// before any work of the collector's own.
//
// With --programs weir (the default) it loads the collector's TCP programs
// as weir-collector does (the default probe configuration; not the process
// programs, which run per fork, exec and exit, not per connection), reads
// every lifecycle event, and walks the sockets every --interval, as the
// collector does. With --programs minimal it loads bpf/cost_floor.c's floor_minimal
// instead: only the socket storage and ring calls that any program
// reporting each socket's end with its owner makes (see probe.OpenFloor).
//
// It prints "ready" once the programs are attached. For each "stats" line
// on its standard input it prints "stats events=N unreadable=N
// ring_full=N". SIGTERM or SIGINT stops it.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/weir-project/weir/collector/internal/probe"
)

func main() {
	programs := flag.String("programs", "weir", "weir (the collector's TCP programs) or minimal (cost_floor.c's floor_minimal)")
	interval := flag.Duration("interval", 5*time.Second, "time between two walks of the sockets (weir), as the collector's --interval")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var err error
	switch *programs {
	case "weir":
		err = sinkWeir(ctx, *interval)
	case "minimal":
		err = sinkMinimal(ctx)
	default:
		err = fmt.Errorf("--programs: want weir or minimal, got %q", *programs)
	}
	if err != nil {
		slog.Error("floorsink", "err", err)
		os.Exit(1)
	}
}

// answerStats answers each "stats" line on standard input with the line that
// read returns.
func answerStats(read func() (string, error)) {
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		if sc.Text() != "stats" {
			continue
		}
		line, err := read()
		if err != nil {
			slog.Error("read counters", "err", err)
			continue
		}
		fmt.Println(line)
	}
}

func sinkWeir(ctx context.Context, interval time.Duration) error {
	if interval <= 0 {
		return fmt.Errorf("--interval must be positive, got %s", interval)
	}
	p, err := probe.Open(probe.DefaultConfig())
	if err != nil {
		return err
	}
	defer p.Close()

	// Unreadable events are counted and skipped, as the collector does.
	var events, unreadable atomic.Uint64
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		for {
			_, err := p.ReadEvent()
			if errors.Is(err, probe.ErrClosed) {
				return
			}
			if err != nil {
				unreadable.Add(1)
				continue
			}
			events.Add(1)
		}
	}()
	go answerStats(func() (string, error) {
		d, err := p.Drops()
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("stats events=%d unreadable=%d ring_full=%d", events.Load(), unreadable.Load(), d.RingFull), nil
	})
	fmt.Println("ready")

	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			err := p.Close()
			<-readDone
			return err
		case <-tick.C:
			if _, err := p.SampleWalk(func(probe.Sample) {}); err != nil {
				return fmt.Errorf("walk: %w", err)
			}
		}
	}
}

func sinkMinimal(ctx context.Context) error {
	f, err := probe.OpenFloor(true)
	if err != nil {
		return err
	}
	go answerStats(func() (string, error) {
		full, err := f.RingFull()
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("stats events=%d unreadable=0 ring_full=%d", f.Records(), full), nil
	})
	fmt.Println("ready")
	<-ctx.Done()
	return f.Close()
}
