package probe

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"
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
