package probe

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

// sampleRing reads the sampling iterator's ring buffer in place. The
// iterator has submitted every record by the time its read() returns, so
// the ring is drained without waiting, and records are handed out where
// they lie: no copy, no lock, one store of the consumer position per drain.
type sampleRing struct {
	cons []byte  // the consumer page
	prod []byte  // the producer page, then the data pages mapped twice
	data []byte  // the data, twice: a record that wraps is contiguous
	mask uint64  // data size - 1
	size uint64  // data size
	pos  *uint64 // consumer position, in cons
	end  *uint64 // producer position, in prod
}

// The kernel's ring record header: length with two flag bits, then the
// record's page offset.
const (
	ringHdrBytes = 8
	ringBusyBit  = 1 << 31
	ringDiscard  = 1 << 30
)

func newSampleRing(m *ebpf.Map) (*sampleRing, error) {
	page := os.Getpagesize()
	size := int(m.MaxEntries())
	cons, err := unix.Mmap(m.FD(), 0, page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap sample ring consumer page: %w", err)
	}
	prod, err := unix.Mmap(m.FD(), int64(page), page+2*size, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("mmap sample ring data: %w", err), unix.Munmap(cons))
	}
	return &sampleRing{
		cons: cons,
		prod: prod,
		data: prod[page:],
		mask: uint64(size - 1),
		size: uint64(size),
		pos:  (*uint64)(unsafe.Pointer(&cons[0])),
		end:  (*uint64)(unsafe.Pointer(&prod[0])),
	}, nil
}

// drain calls fn with each record in the ring until it is empty, and hands
// the space back to the kernel. fn must not keep the record.
func (r *sampleRing) drain(fn func(*tcpEvent)) error {
	return r.drainRecords(eventSize, func(p unsafe.Pointer) { fn((*tcpEvent)(p)) })
}

// drainRecords is drain for records of size bytes.
func (r *sampleRing) drainRecords(size int, fn func(unsafe.Pointer)) error {
	end := atomic.LoadUint64(r.end)
	pos := atomic.LoadUint64(r.pos)
	var err error
	for pos < end {
		if end-pos > r.size {
			err = fmt.Errorf("sample ring: producer %d ahead of consumer %d", end, pos)
			break
		}
		// The atomic load orders the record's contents after the kernel's
		// commit of its header.
		hdr := atomic.LoadUint32((*uint32)(unsafe.Pointer(&r.data[pos&r.mask])))
		if hdr&ringBusyBit != 0 {
			// Not committed: the walk that reserved it is still running.
			err = errors.New("sample ring: record still being written")
			break
		}
		n := uint64(hdr &^ (ringBusyBit | ringDiscard))
		if hdr&ringDiscard == 0 {
			if n < uint64(size) {
				err = fmt.Errorf("sample ring: %d-byte record, want %d", n, size)
				break
			}
			fn(unsafe.Pointer(&r.data[(pos+ringHdrBytes)&r.mask]))
		}
		pos += (ringHdrBytes + n + 7) &^ 7
	}
	atomic.StoreUint64(r.pos, pos)
	return err
}

// skip drops whatever the ring holds.
func (r *sampleRing) skip() {
	atomic.StoreUint64(r.pos, atomic.LoadUint64(r.end))
}

func (r *sampleRing) close() error {
	return errors.Join(unix.Munmap(r.prod), unix.Munmap(r.cons))
}

// ringWaiter waits for a ring buffer's producer to wake its readers in the
// Go runtime's network poller, rather than in the blocking epoll_wait of
// ringbuf.Reader. A goroutine blocked in a system call holds its thread,
// and the runtime's monitor (sysmon) takes the thread's processor back
// after 10 ms, which sets the monitor polling every 20 µs again: with the
// event reader waiting 100 ms at a time, sysmon was 14% of the collector's
// CPU under connection churn. Here the reader only ever asks the ring
// without waiting (its deadline is in the past) and the wait is a parked
// goroutine.
type ringWaiter struct {
	f  *os.File // a duplicate of the ring map's descriptor, non-blocking
	rc syscall.RawConn
	// kick is set by interrupt until the reader has seen what it was
	// interrupted for: a wait then returns at once.
	kick   atomic.Bool
	closed atomic.Bool
}

// newRingWaiter returns a waiter for the ring buffer m, or an error if the
// runtime's poller does not take its descriptor.
func newRingWaiter(m *ebpf.Map) (*ringWaiter, error) {
	fd, err := unix.FcntlInt(uintptr(m.FD()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("duplicate ring descriptor: %w", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("ring descriptor: %w", err)
	}
	f := os.NewFile(uintptr(fd), "ring")
	// Only a descriptor in the poller has deadlines.
	if err := f.SetReadDeadline(time.Time{}); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("ring descriptor not pollable: %w", err)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	return &ringWaiter{f: f, rc: rc}, nil
}

// wait returns when the producer wakes the ring's readers (or woke them
// since the last wait), after d, after interrupt, or with an error
// wrapping os.ErrClosed after close.
func (w *ringWaiter) wait(d time.Duration) error {
	if err := w.f.SetReadDeadline(time.Now().Add(d)); err != nil {
		return w.closedErr(err)
	}
	if w.kick.Load() {
		// An interrupt that came before the deadline above was set.
		if err := w.f.SetReadDeadline(time.Now()); err != nil {
			return w.closedErr(err)
		}
	}
	calls := 0
	err := w.rc.Read(func(uintptr) bool {
		calls++
		return calls > 1 // the first call waits, the second is after a wakeup
	})
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return nil
	}
	return w.closedErr(err)
}

// closedErr is err, or os.ErrClosed once close has begun: the poller's own
// error for a closed descriptor (from the read or from SetReadDeadline,
// which os.File returns unwrapped) is not os.ErrClosed.
func (w *ringWaiter) closedErr(err error) error {
	if err != nil && w.closed.Load() {
		return fmt.Errorf("ring: %w", os.ErrClosed)
	}
	return err
}

// interrupt ends the current or next wait until done is called.
func (w *ringWaiter) interrupt() {
	w.kick.Store(true)
	_ = w.f.SetReadDeadline(time.Now())
}

// done says that the reader has seen what interrupt was for.
func (w *ringWaiter) done() { w.kick.Store(false) }

func (w *ringWaiter) close() error {
	w.closed.Store(true)
	return w.f.Close()
}

// pollReader reads a ring buffer, waiting for records in a ringWaiter
// (the Go poller) where the poller takes the ring's descriptor, and in
// ringbuf.Reader's own blocking wait, eventWait at a time, where it does
// not. The process, DNS and UDP rings read through it: each blocking wait
// would set sysmon polling every 20 µs again.
type pollReader struct {
	r    *ringbuf.Reader
	wake *ringWaiter // nil: r waits itself
	sync *ringSync
}

// ringSync lets a caller wait until a ring's reader has returned every
// record submitted before the caller's flush and has been called again, so
// that a reader that handles each record before it reads the next has
// handled them all. The TCP event ring and the pollReaders use it.
type ringSync struct {
	mu       sync.Mutex    // serialises wait
	flushed  chan struct{} // the reader caught up with a flush
	failures atomic.Uint64 // waits that gave up
}

func newRingSync() *ringSync { return &ringSync{flushed: make(chan struct{}, 1)} }

// caughtUp is the reader's, when ReadInto returned ringbuf.ErrFlushed:
// every record submitted before the flush has been returned.
func (s *ringSync) caughtUp(w *ringWaiter) {
	if w != nil {
		w.done()
	}
	select {
	case s.flushed <- struct{}{}:
	default:
	}
}

// wait flushes r, wakes w (nil: r waits itself) so that the reader sees the
// flush without waiting out eventWait, and returns once the reader caught
// up. It needs a goroutine reading, and gives up (counted) when ctx is done.
func (s *ringSync) wait(ctx context.Context, r *ringbuf.Reader, w *ringWaiter) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.flushed: // left over from a wait that gave up
	default:
	}
	if err := r.Flush(); err != nil {
		s.failures.Add(1)
		return fmt.Errorf("flush: %w", err)
	}
	if w != nil {
		w.interrupt()
	}
	select {
	case <-s.flushed:
		return nil
	case <-ctx.Done():
		s.failures.Add(1)
		return ctx.Err()
	}
}

func newPollReader(m *ebpf.Map) (*pollReader, error) {
	r, err := ringbuf.NewReader(m)
	if err != nil {
		return nil, err
	}
	p := &pollReader{r: r, sync: newRingSync()}
	if w, err := newRingWaiter(m); err == nil {
		p.wake = w
		r.SetDeadline(time.Unix(0, 1)) // ReadInto never blocks
	}
	return p, nil
}

// read fills rec with the next record, waiting for one. After close its
// error wraps os.ErrClosed or ringbuf.ErrClosed.
func (p *pollReader) read(rec *ringbuf.Record) error {
	for {
		if p.wake == nil {
			p.r.SetDeadline(time.Now().Add(eventWait))
		}
		err := p.r.ReadInto(rec)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, ringbuf.ErrFlushed):
			p.sync.caughtUp(p.wake)
		case errors.Is(err, os.ErrDeadlineExceeded):
			if p.wake != nil {
				if err := p.wake.wait(eventWait); err != nil {
					return err
				}
			}
		default:
			return err
		}
	}
}

// close ends a read under way and any later one.
func (p *pollReader) close() error {
	var err error
	if p.wake != nil {
		err = p.wake.close()
	}
	return errors.Join(err, p.r.Close())
}
