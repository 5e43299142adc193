package probe

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
)

// Floor is one of bpf/cost_floor.c's programs attached to
// sock:inet_sock_set_state, with its ring read and thrown away in the
// background: a lower bound of what the TCP program costs, for the
// benchmarks (BenchmarkChurnFloor here, BenchmarkPrivilegedOverheadFloor in
// test/e2e through floorsink). The collector never opens one.
type Floor struct {
	objs    costFloorObjects
	prog    *ebpf.Program
	link    link.Link
	reader  *ringbuf.Reader
	done    chan struct{}
	records atomic.Uint64
}

// OpenFloor loads cost_floor.c and attaches floor_minimal when minimal,
// else floor_empty. Run-time statistics are the caller's to enable.
func OpenFloor(minimal bool) (f *Floor, err error) {
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("remove memlock limit: %w", err)
	}
	f = &Floor{done: make(chan struct{})}
	if err := loadCostFloorObjects(&f.objs, loadOptions(nil)); err != nil {
		return nil, loadError("cost floor programs", err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, f.release())
		}
	}()
	f.prog = f.objs.FloorEmpty
	if minimal {
		f.prog = f.objs.FloorMinimal
	}
	if f.link, err = link.AttachTracing(link.TracingOptions{Program: f.prog}); err != nil {
		return nil, fmt.Errorf("attach the cost floor program: %w", err)
	}
	if f.reader, err = ringbuf.NewReader(f.objs.FloorEvents); err != nil {
		return nil, fmt.Errorf("cost floor ring: %w", err)
	}
	go f.drain()
	return f, nil
}

// drain reads the ring until it is closed. floor_minimal never wakes its
// reader, so it polls every 10 ms.
func (f *Floor) drain() {
	defer close(f.done)
	var rec ringbuf.Record
	for {
		f.reader.SetDeadline(time.Now().Add(10 * time.Millisecond))
		err := f.reader.ReadInto(&rec)
		switch {
		case err == nil:
			f.records.Add(1)
		case errors.Is(err, os.ErrDeadlineExceeded):
		default:
			return
		}
	}
}

// Stats is the attached program's run-time statistics.
func (f *Floor) Stats() (ProgramStats, error) {
	s, err := programStats([]namedProgram{{"inet_sock_set_state", f.prog}})
	if err != nil {
		return ProgramStats{}, err
	}
	return s[0], nil
}

// Records is the number of ring records read so far.
func (f *Floor) Records() uint64 { return f.records.Load() }

// RingFull is the number of records the program could not write because
// the ring was full.
func (f *Floor) RingFull() (uint64, error) {
	var perCPU []uint64
	if err := f.objs.Drops.Lookup(dropRingFull, &perCPU); err != nil {
		return 0, fmt.Errorf("cost floor drops: %w", err)
	}
	var n uint64
	for _, v := range perCPU {
		n += v
	}
	return n, nil
}

// Close detaches the program and stops the reader.
func (f *Floor) Close() error {
	err := f.release()
	if f.reader != nil {
		<-f.done
	}
	return err
}

func (f *Floor) release() error {
	var errs []error
	if f.link != nil {
		errs = append(errs, f.link.Close())
	}
	if f.reader != nil {
		errs = append(errs, f.reader.Close())
	}
	errs = append(errs, f.objs.Close())
	return errors.Join(errs...)
}
