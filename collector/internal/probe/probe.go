// Package probe loads and attaches weir's TCP eBPF programs and reads what
// they record: per-socket counters from a kernel hash map and lifecycle
// events from a ring buffer.
package probe

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"sync"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
)

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -go-package probe -target amd64,arm64 -type event -type sock_info tcp ../../../bpf/tcp.c -- -I../../../bpf/headers -Wall -Werror
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -go-package probe -target amd64,arm64 tcpIter ../../../bpf/tcp_iter.c -- -I../../../bpf/headers -Wall -Werror

// Config sizes the kernel maps.
type Config struct {
	SocketMapEntries uint32 // max sockets tracked in the kernel hash map (flag --socket-map-entries, default 65536)
	RingBytes        uint32 // ring buffer size in bytes, power of two and multiple of the page size (flag --ring-bytes, default 1<<20)
}

// DefaultConfig returns the default map sizes.
func DefaultConfig() Config {
	return Config{SocketMapEntries: 65536, RingBytes: 1 << 20}
}

// Validate reports the first bad field, named by its flag.
func (c Config) Validate() error {
	if c.SocketMapEntries == 0 {
		return errors.New("--socket-map-entries: must be at least 1")
	}
	page := uint32(os.Getpagesize())
	if c.RingBytes == 0 || c.RingBytes&(c.RingBytes-1) != 0 || c.RingBytes%page != 0 {
		return fmt.Errorf("--ring-bytes: %d is not a power of two and a multiple of the page size (%d)", c.RingBytes, page)
	}
	return nil
}

// tracepoints are the sock tracepoints the programs attach to, by program name.
var tracepoints = []struct {
	group, name string
	prog        func(*tcpPrograms) *ebpf.Program
}{
	{"sock", "inet_sock_set_state", func(p *tcpPrograms) *ebpf.Program { return p.InetSockSetState }},
	{"sock", "sock_send_length", func(p *tcpPrograms) *ebpf.Program { return p.SockSendLength }},
	{"sock", "sock_recv_length", func(p *tcpPrograms) *ebpf.Program { return p.SockRecvLength }},
}

// Indexes into the drops array; they match enum drop_reason in bpf/tcp.c.
const (
	dropRingFull uint32 = 0
	dropMapFull  uint32 = 1
)

// samplesBatch is how many socket map entries one batch lookup returns.
const samplesBatch = 256

// Probe is the loaded and attached set of programs.
type Probe struct {
	objs    tcpObjects
	iter    tcpIterObjects
	links   []link.Link
	refresh *link.Iter // refreshes the counters of the socks map
	reader  *ringbuf.Reader

	readMu  sync.Mutex // serialises ReadEvent
	record  ringbuf.Record
	flushed chan struct{} // ReadEvent has returned every event before a Sync's flush
	syncMu  sync.Mutex    // serialises Sync

	mu      sync.Mutex // guards closed and the buffers below
	closed  bool
	keys    []uint64
	values  []tcpSockInfo
	perCPU  []uint64
	comms   map[[16]int8]string // interned owner comms, so polling does not allocate per socket
	closeMu sync.Once
}

// maxComms bounds the comm cache; it is emptied when it grows past this.
const maxComms = 4096

// Open mounts tracefs at /sys/kernel/tracing if it is not mounted, loads the
// programs with the map sizes from cfg, and attaches them.
func Open(cfg Config) (*Probe, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if _, err := tracefs(); err != nil {
		return nil, err
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("remove memlock limit: %w", err)
	}
	spec, err := loadTcp()
	if err != nil {
		return nil, err
	}
	spec.Maps[tcpMapSocks].MaxEntries = cfg.SocketMapEntries
	spec.Maps[tcpMapEvents].MaxEntries = cfg.RingBytes
	if err := spec.Variables[tcpVarWakeupBytes].Set(uint64(cfg.RingBytes / 4)); err != nil {
		return nil, fmt.Errorf("set wakeup_bytes: %w", err)
	}

	p := &Probe{flushed: make(chan struct{}, 1)}
	if err := spec.LoadAndAssign(&p.objs, nil); err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return nil, fmt.Errorf("load programs: %+v", verr)
		}
		return nil, fmt.Errorf("load programs: %w", err)
	}
	if err := p.loadIter(cfg); err != nil {
		return nil, errors.Join(err, p.release())
	}
	for _, tp := range tracepoints {
		l, err := link.Tracepoint(tp.group, tp.name, tp.prog(&p.objs.tcpPrograms), nil)
		if err != nil {
			return nil, errors.Join(fmt.Errorf("attach %s:%s: %w", tp.group, tp.name, err), p.release())
		}
		p.links = append(p.links, l)
	}
	p.reader, err = ringbuf.NewReader(p.objs.Events)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("open ring buffer: %w", err), p.release())
	}
	p.keys = make([]uint64, samplesBatch)
	p.values = make([]tcpSockInfo, samplesBatch)
	p.perCPU = make([]uint64, 0, 8)
	p.comms = make(map[[16]int8]string)
	return p, nil
}

// loadIter loads and attaches the iterator that refreshes the socks map.
func (p *Probe) loadIter(cfg Config) error {
	spec, err := loadTcpIter()
	if err != nil {
		return err
	}
	spec.Maps[tcpIterMapSocks].MaxEntries = cfg.SocketMapEntries
	opts := &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{tcpIterMapSocks: p.objs.Socks}}
	if err := spec.LoadAndAssign(&p.iter, opts); err != nil {
		return fmt.Errorf("load iterator: %w", err)
	}
	p.refresh, err = link.AttachIter(link.IterOptions{Program: p.iter.RefreshCounters})
	if err != nil {
		return fmt.Errorf("attach iterator tcp: %w", err)
	}
	return nil
}

// runRefresh runs the iterator once over all TCP sockets.
func (p *Probe) runRefresh() error {
	r, err := p.refresh.Open()
	if err != nil {
		return fmt.Errorf("refresh counters: %w", err)
	}
	defer r.Close()
	var buf [1]byte // the program writes nothing: the first read ends the walk
	for {
		_, err := r.Read(buf[:])
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("refresh counters: %w", err)
		}
	}
}

// eventWait is the longest an event waits in the ring before ReadEvent
// returns it. The programs wake the reader only when a quarter of the ring
// is full, so a steady trickle of events costs no wakeup per event.
const eventWait = 100 * time.Millisecond

// ReadEvent blocks for the next lifecycle event; after Close it returns an
// error wrapping ErrClosed.
func (p *Probe) ReadEvent() (Event, error) {
	p.readMu.Lock()
	defer p.readMu.Unlock()
	for {
		p.reader.SetDeadline(time.Now().Add(eventWait))
		err := p.reader.ReadInto(&p.record)
		switch {
		case err == nil:
			return decodeEvent(p.record.RawSample)
		case errors.Is(err, os.ErrDeadlineExceeded):
			// The ring is empty; wait again.
		case errors.Is(err, ringbuf.ErrFlushed):
			// Every event submitted before the flush has been returned.
			select {
			case p.flushed <- struct{}{}:
			default:
			}
		case errors.Is(err, os.ErrClosed) || errors.Is(err, ringbuf.ErrClosed):
			return Event{}, fmt.Errorf("read event: %w", ErrClosed)
		default:
			return Event{}, fmt.Errorf("read event: %w", err)
		}
	}
}

// Sync returns once ReadEvent has returned every event submitted before the
// call, so that a poll after it sees no socket whose open event is still in
// the ring. It needs a goroutine calling ReadEvent, and gives up when ctx is
// done.
func (p *Probe) Sync(ctx context.Context) error {
	p.syncMu.Lock()
	defer p.syncMu.Unlock()
	select {
	case <-p.flushed: // left over from a Sync that gave up
	default:
	}
	if err := p.reader.Flush(); err != nil {
		return fmt.Errorf("flush events: %w", err)
	}
	select {
	case <-p.flushed:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("sync events: %w", ctx.Err())
	}
}

// decodeEvent turns a ring buffer record into an Event.
func decodeEvent(raw []byte) (Event, error) {
	var e tcpEvent
	if len(raw) < int(unsafe.Sizeof(e)) {
		return Event{}, fmt.Errorf("decode event: %d bytes, want %d", len(raw), unsafe.Sizeof(e))
	}
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&e)), unsafe.Sizeof(e)), raw)

	ev := Event{
		Kind:       EventKind(e.Kind),
		Role:       Role(e.Role),
		Sock:       e.Sk,
		LocalAddr:  addr(e.Family, &e.Saddr),
		LocalPort:  e.Sport,
		RemoteAddr: addr(e.Family, &e.Daddr),
		RemotePort: e.Dport,
		NetNS:      e.Netns,
		Owner:      Owner{PID: e.Pid, Comm: comm(&e.Comm)},
		Counters: Counters{
			BytesAcked:    e.Counters.BytesAcked,
			BytesReceived: e.Counters.BytesReceived,
			SegsDelivered: e.Counters.Delivered,
			DataSegsIn:    e.Counters.DataSegsIn,
		},
	}
	if ev.Kind < EventOpen || ev.Kind > EventListen {
		return Event{}, fmt.Errorf("decode event: unknown kind %d", e.Kind)
	}
	return ev, nil
}

const (
	afInet  = 2
	afInet6 = 10
)

// addr converts a kernel address; v4-mapped v6 addresses become v4.
func addr(family uint16, b *[16]uint8) netip.Addr {
	switch family {
	case afInet:
		return netip.AddrFrom4([4]byte(b[:4]))
	case afInet6:
		return netip.AddrFrom16(*b).Unmap()
	}
	return netip.Addr{}
}

// comm converts a NUL-terminated kernel comm.
func comm(c *[16]int8) string {
	b := unsafe.Slice((*byte)(unsafe.Pointer(c)), len(c))
	for i, x := range b {
		if x == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

// Samples calls fn for every entry of the kernel socket map. It first
// refreshes every entry's counters from its tcp_sock, so they are current as
// of the call. It is safe to call concurrently with ReadEvent.
func (p *Probe) Samples(fn func(Sample)) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return fmt.Errorf("samples: %w", ErrClosed)
	}
	if err := p.runRefresh(); err != nil {
		return fmt.Errorf("samples: %w", err)
	}
	var cursor ebpf.MapBatchCursor
	for {
		n, err := p.objs.Socks.BatchLookup(&cursor, p.keys, p.values, nil)
		for i := range n {
			v := &p.values[i]
			fn(Sample{
				Sock:  p.keys[i],
				Owner: Owner{PID: v.Pid, Comm: p.internComm(&v.Comm)},
				Counters: Counters{
					BytesAcked:    v.Counters.BytesAcked,
					BytesReceived: v.Counters.BytesReceived,
					SegsDelivered: v.Counters.Delivered,
					DataSegsIn:    v.Counters.DataSegsIn,
				},
			})
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("samples: batch lookup: %w", err)
		}
	}
}

// internComm returns comm(c), reusing the string of an earlier call.
func (p *Probe) internComm(c *[16]int8) string {
	if s, ok := p.comms[*c]; ok {
		return s
	}
	if len(p.comms) >= maxComms {
		clear(p.comms)
	}
	s := comm(c)
	p.comms[*c] = s
	return s
}

// Drops returns the cumulative loss counters (summed over CPUs).
func (p *Probe) Drops() (Drops, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return Drops{}, fmt.Errorf("drops: %w", ErrClosed)
	}
	ring, err := p.sumDrops(dropRingFull)
	if err != nil {
		return Drops{}, err
	}
	full, err := p.sumDrops(dropMapFull)
	if err != nil {
		return Drops{}, err
	}
	return Drops{RingFull: ring, MapFull: full}, nil
}

func (p *Probe) sumDrops(reason uint32) (uint64, error) {
	if err := p.objs.Drops.Lookup(reason, &p.perCPU); err != nil {
		return 0, fmt.Errorf("drops: lookup %d: %w", reason, err)
	}
	var sum uint64
	for _, n := range p.perCPU {
		sum += n
	}
	return sum, nil
}

// Close detaches and frees everything; idempotent.
func (p *Probe) Close() error {
	var err error
	p.closeMu.Do(func() {
		// Closing the reader first unblocks a pending ReadEvent.
		err = p.reader.Close()
		p.readMu.Lock()
		defer p.readMu.Unlock()
		p.mu.Lock()
		defer p.mu.Unlock()
		p.closed = true
		err = errors.Join(err, p.release())
	})
	return err
}

// release detaches the links and frees the maps and programs.
func (p *Probe) release() error {
	var errs []error
	for _, l := range p.links {
		if err := l.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach: %w", err))
		}
	}
	p.links = nil
	if p.refresh != nil {
		if err := p.refresh.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach iterator: %w", err))
		}
		p.refresh = nil
	}
	if err := p.iter.Close(); err != nil {
		errs = append(errs, fmt.Errorf("free iterator: %w", err))
	}
	if err := p.objs.Close(); err != nil {
		errs = append(errs, fmt.Errorf("free objects: %w", err))
	}
	return errors.Join(errs...)
}
