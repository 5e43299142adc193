// Package probe loads and attaches weir's eBPF programs and reads what they
// record: TCP lifecycle events (closes, listens, failed connects, late
// resets) from a ring buffer, and the counters of every tracked TCP socket
// (bytes, segments, retransmits, resets, smoothed RTT) and every UDP
// socket's remotes, in every network namespace, from iterators over the
// kernel's socket storage.
package probe

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"structs"
	"sync"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -go-package probe -target amd64,arm64 -type event tcp ../../../bpf/tcp.c -- -I../../../bpf/headers -mcpu=v3 -Wall -Werror
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -go-package probe -target amd64,arm64 -type discovered tcpIter ../../../bpf/tcp_iter.c -- -I../../../bpf/headers -mcpu=v3 -Wall -Werror
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -go-package probe -target amd64,arm64 -type udp_record udp ../../../bpf/udp.c -- -I../../../bpf/headers -mcpu=v3 -Wall -Werror
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -go-package probe -target amd64,arm64 costFloor ../../../bpf/cost_floor.c -- -I../../../bpf/headers -mcpu=v3 -Wall -Werror

// Config sizes the ring buffers and turns on run-time statistics.
type Config struct {
	RingBytes uint32 // ring buffer size in bytes, power of two and multiple of the page size (flag --ring-bytes, default 1<<20)
	// SampleRingBytes sizes the ring that one Samples walk writes into: 144
	// bytes per live tracked socket (a 136-byte record and its 8-byte
	// header). A power of two, at least a page (flag --sample-ring-bytes).
	// The default, 16 MiB, holds 116,508 sockets (over the default --max-sockets); a walk over more falls back
	// to a chunked walk (see Samples). The ring is locked kernel memory,
	// allocated at load and mapped once into the collector.
	SampleRingBytes uint32
	// Stats keeps the kernel's BPF run-time statistics on while the probe
	// is open, so that ProgramStats reports run counts and run times.
	// They cost a clock read per program run.
	Stats bool
	// ProcRoot is where the host's /proc is mounted; Discover finds the
	// network namespaces through it. Empty means /proc.
	ProcRoot string
	// NetNS are network namespace files (/run/netns/x, /proc/PID/ns/net)
	// that Discover looks in instead of every namespace (flag --netns).
	NetNS []string
	// UDP turns on and sizes the UDP accounting.
	UDP UDPConfig
	// Path is how the TCP state changes and UDP sizes are hooked (flag
	// --probe-path); empty is auto.
	Path Path
}

// DefaultConfig returns the default configuration.
func DefaultConfig() Config {
	return Config{RingBytes: 1 << 20, SampleRingBytes: defaultSampleRingBytes, ProcRoot: "/proc", UDP: DefaultUDPConfig(), Path: defaultPath}
}

// defaultPath is auto; this package's tests set it from $WEIR_PROBE_PATH.
var defaultPath = PathAuto

// defaultSampleRingBytes holds the samples of 65,536 sockets, rounded up
// to a power of two.
const defaultSampleRingBytes = 16 << 20

// The default holds the samples of 65,536 sockets.
var _ [defaultSampleRingBytes - 65536*(eventSize+8)]struct{}

// Validate reports the first bad field, named by its flag.
func (c Config) Validate() error {
	page := uint32(os.Getpagesize())
	if c.RingBytes == 0 || c.RingBytes&(c.RingBytes-1) != 0 || c.RingBytes%page != 0 {
		return fmt.Errorf("--ring-bytes: %d is not a power of two and a multiple of the page size (%d)", c.RingBytes, page)
	}
	if c.SampleRingBytes < page || c.SampleRingBytes&(c.SampleRingBytes-1) != 0 {
		return fmt.Errorf("--sample-ring-bytes: %d is not a power of two of at least the page size (%d)", c.SampleRingBytes, page)
	}
	if _, err := ParsePath(string(c.Path)); err != nil {
		return fmt.Errorf("--probe-path: %w", err)
	}
	return c.UDP.Validate()
}

// tcpObjs is what Open loads of bpf/tcp.c: its maps, the reset programs,
// and the state-change program of the chosen path.
type tcpObjs struct {
	tcpMaps
	tcpResets
	state     *ebpf.Program
	stateName string // the program's C name
}

// tcpResets are the reset programs, tp_btf on every path.
type tcpResets struct {
	TcpSendReset    *ebpf.Program `ebpf:"tcp_send_reset"`
	TcpReceiveReset *ebpf.Program `ebpf:"tcp_receive_reset"`
}

func (o *tcpObjs) Close() error {
	var errs []error
	for _, prog := range []*ebpf.Program{o.state, o.TcpSendReset, o.TcpReceiveReset} {
		if prog != nil {
			errs = append(errs, prog.Close())
		}
	}
	return errors.Join(append(errs, o.tcpMaps.Close())...)
}

// loadTCP loads the TCP programs of path (tracepoint or fentry) and
// attaches them; on failure nothing is left loaded.
func loadTCP(spec *ebpf.CollectionSpec, path Path) (tcpObjs, []link.Link, error) {
	var o tcpObjs
	switch path {
	case PathTracepoint:
		var l struct {
			tcpMaps
			tcpResets
			State *ebpf.Program `ebpf:"inet_sock_set_state"`
		}
		if err := spec.LoadAndAssign(&l, loadOptions(nil)); err != nil {
			return o, nil, loadError("TCP programs (tracepoint path)", err)
		}
		o = tcpObjs{tcpMaps: l.tcpMaps, tcpResets: l.tcpResets, state: l.State, stateName: tcpProgInetSockSetState}
	case PathFentry:
		var l struct {
			tcpMaps
			tcpResets
			State *ebpf.Program `ebpf:"fentry_inet_sk_state_store"`
		}
		if err := spec.LoadAndAssign(&l, loadOptions(nil)); err != nil {
			return o, nil, fentryError(loadError("TCP programs (fentry path)", err))
		}
		o = tcpObjs{tcpMaps: l.tcpMaps, tcpResets: l.tcpResets, state: l.State, stateName: tcpProgFentryInetSkStateStore}
	default:
		return o, nil, fmt.Errorf("TCP programs: no path %q", path)
	}
	var links []link.Link
	for _, tp := range []struct {
		name string
		prog *ebpf.Program
	}{
		{spec.Programs[o.stateName].SectionName, o.state},
		{"tp_btf/tcp_send_reset", o.TcpSendReset},
		{"tp_btf/tcp_receive_reset", o.TcpReceiveReset},
	} {
		l, err := link.AttachTracing(link.TracingOptions{Program: tp.prog})
		if err != nil {
			for _, l := range links {
				l.Close()
			}
			if path == PathFentry {
				err = fentryError(err)
			}
			return tcpObjs{}, nil, errors.Join(fmt.Errorf("attach %s: %w", tp.name, err), o.Close())
		}
		links = append(links, l)
	}
	return o, links, nil
}

// Indexes into the drops array; they match enum drop_reason in bpf/tcp.h.
const (
	dropRingFull    uint32 = 0
	dropStorageFull uint32 = 1
	dropFallback    uint32 = 2
	dropUDPRing     uint32 = 3
	dropUDPStorage  uint32 = 4
	dropUDPUnknown  uint32 = 5
	dropUDPFallback uint32 = 6
)

// Probe is the loaded and attached set of programs.
type Probe struct {
	objs     tcpObjs
	path     Path      // the path the TCP programs took
	features []Feature // what this kernel and path deliver
	iter     tcpIterObjects
	links    []link.Link
	sampler  *link.Iter // writes a sample per tracked socket
	// fileWalk: the sampler walks the processes' open files, so its walks
	// are never complete (walk.go).
	fileWalk bool
	// sampleRun, on the hashmap path where the kernel refuses
	// iter/bpf_map_elem, is the walk that SampleWalk runs instead of
	// reading sampler (hashWalkRun); p.iter holds it.
	sampleRun *ebpf.Program
	discover  *link.Iter // finds the sockets of the namespace that opens it
	reader    *ringbuf.Reader
	wake      *ringWaiter // waits for the event ring; nil: reader waits itself
	samples   *sampleRing // the sampling iterator's ring
	udp       *udpProbe   // nil unless Config.UDP.Enabled
	stats     io.Closer   // holds BPF run-time statistics on; nil unless Config.Stats
	procRoot  string      // where Discover looks for network namespaces
	netns     []string    // the namespaces Discover looks in; empty: all

	readMu sync.Mutex // serialises ReadEvent
	record ringbuf.Record
	// eventComms are the owner comms of events, interned so that reading
	// an event does not allocate; guarded by readMu.
	eventComms map[[16]int8]string
	sync       *ringSync // ReadEvent has returned every event before a Sync's flush

	mu      sync.Mutex // guards closed and the buffers below; serialises Samples and Discover
	closed  bool
	buf     []byte // iterator reads
	perCPU  []uint64
	comms   map[[16]int8]string // interned owner comms, so polling does not allocate per socket
	closeMu sync.Once
}

// maxComms bounds the comm cache; it is emptied when it grows past this.
const maxComms = 4096

// checked is Check, run once per process: the kernel does not change.
var checked = sync.OnceValue(Check)

// iterBufBytes is the size of one read from an iterator.
const iterBufBytes = 64 << 10

// Open loads the programs with the sizes from cfg and attaches them.
func Open(cfg Config) (*Probe, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	// A kernel that lacks a feature every path needs is named here, with
	// the release that has it, rather than by a verifier log.
	if err := checked(); err != nil {
		return nil, err
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("remove memlock limit: %w", err)
	}
	spec, err := loadTcp()
	if err != nil {
		return nil, err
	}
	spec.Maps[tcpMapEvents].MaxEntries = cfg.RingBytes
	if err := spec.Variables[tcpVarWakeupBytes].Set(uint64(cfg.RingBytes / 4)); err != nil {
		return nil, fmt.Errorf("set wakeup_bytes: %w", err)
	}
	// The open files' walk does not reach orphans: the programs sample
	// them into the event ring instead (EventOrphan).
	if files, err := walkFiles(); err == nil && files {
		if err := spec.Variables[tcpVarOrphanSamples].Set(uint8(1)); err != nil {
			return nil, fmt.Errorf("set orphan_samples: %w", err)
		}
	}

	procRoot := cfg.ProcRoot
	if procRoot == "" {
		procRoot = "/proc"
	}
	p := &Probe{sync: newRingSync(), procRoot: procRoot, netns: cfg.NetNS}
	if cfg.Stats {
		p.stats, err = ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
		if err != nil {
			return nil, fmt.Errorf("enable run-time statistics: %w", err)
		}
	}
	path := cfg.Path
	if path == "" {
		path = PathAuto
	}
	// Auto takes the hash-map path where the kernel lacks socket storage
	// in tracing programs; a forced storage path there is refused by name
	// (path_hash.go).
	if path, err = storageOrHashmap(path); err != nil {
		return nil, errors.Join(err, p.release())
	}
	switch path {
	case PathHashmap:
		if err := p.openHashmap(cfg); err != nil {
			return nil, errors.Join(err, p.release())
		}
	case PathKprobe:
		return nil, errors.Join(kprobeRefusal(), p.release())
	case PathAuto:
		// The tracepoint where it is, else fentry.
		objs, links, err := loadTCP(spec, PathTracepoint)
		p.path = PathTracepoint
		if err != nil {
			var ferr error
			objs, links, ferr = loadTCP(spec, PathFentry)
			if ferr != nil {
				return nil, errors.Join(fmt.Errorf("no path for TCP: tracepoint: %w; fentry: %w", err, ferr), p.release())
			}
			p.path = PathFentry
		}
		p.objs, p.links = objs, links
	default:
		objs, links, err := loadTCP(spec, path)
		if err != nil {
			return nil, errors.Join(fmt.Errorf("--probe-path=%s: %w", path, err), p.release())
		}
		p.objs, p.links, p.path = objs, links, path
	}
	p.features = append(p.features,
		Feature{Name: "tcp", Enabled: true, Reason: p.objs.stateName},
		Feature{Name: "tcp_resets", Enabled: true, Reason: "tp_btf/tcp_send_reset, tp_btf/tcp_receive_reset"})
	// The hashmap path loaded its own iterators (path_hash.go).
	if p.path != PathHashmap {
		if err := p.loadIter(cfg); err != nil {
			return nil, errors.Join(err, p.release())
		}
	}
	if err := p.loadUDP(cfg.UDP, udpPathOf(cfg.Path, path)); err != nil {
		return nil, errors.Join(err, p.release())
	}
	p.reader, err = ringbuf.NewReader(p.objs.Events)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("open ring buffer: %w", err), p.release())
	}
	if w, err := newRingWaiter(p.objs.Events); err == nil {
		// The reader never blocks: ReadEvent waits in w.
		p.wake = w
		p.reader.SetDeadline(time.Unix(0, 1))
	}
	p.samples, err = newSampleRing(p.iter.Samples)
	if err != nil {
		if p.wake != nil {
			err = errors.Join(err, p.wake.close())
		}
		return nil, errors.Join(err, p.reader.Close(), p.release())
	}
	p.buf = make([]byte, iterBufBytes)
	p.perCPU = make([]uint64, 0, 8)
	p.comms = make(map[[16]int8]string)
	p.eventComms = make(map[[16]int8]string)
	return p, nil
}

// fentryError says what EPERM means for an fentry or fexit program.
func fentryError(err error) error {
	if errors.Is(err, unix.EPERM) {
		return fmt.Errorf("the kernel does not permit fentry/fexit programs here (no BPF trampolines, or a lockdown): %w", err)
	}
	return err
}

// loadError spells out a verifier log.
func loadError(what string, err error) error {
	var verr *ebpf.VerifierError
	if errors.As(err, &verr) {
		return fmt.Errorf("load %s: %+v", what, verr)
	}
	return fmt.Errorf("load %s: %w", what, err)
}

// loadIter loads the iterators, sharing the socket storage and the drops
// array, and attaches them. The sampling walk is the storage map's, or
// the open files' where the kernel refuses that (walkFiles).
func (p *Probe) loadIter(cfg Config) error {
	files, err := walkFiles()
	if err != nil {
		return err
	}
	spec, err := loadTcpIter()
	if err != nil {
		return err
	}
	spec.Maps[tcpIterMapSamples].MaxEntries = cfg.SampleRingBytes
	useWalk(spec, tcpIterProgSampleSockets, tcpIterProgSampleFiles, files)
	opts := &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{
		tcpIterMapSkStates: p.objs.SkStates,
		tcpIterMapDrops:    p.objs.Drops,
	}}
	var o struct {
		tcpIterMaps
		Sample   *ebpf.Program `ebpf:"sample_sockets"`
		Discover *ebpf.Program `ebpf:"discover_sockets"`
	}
	if err := spec.LoadAndAssign(&o, loadOptions(opts)); err != nil {
		return loadError("iterators", err)
	}
	p.iter = tcpIterObjects{tcpIterMaps: o.tcpIterMaps, tcpIterPrograms: tcpIterPrograms{SampleSockets: o.Sample, DiscoverSockets: o.Discover}}
	p.fileWalk = files
	it := link.IterOptions{Program: o.Sample, Map: p.objs.SkStates}
	if files {
		it.Map = nil
	}
	p.sampler, err = link.AttachIter(it)
	if err != nil {
		return fmt.Errorf("attach %s: %w", walkName(files), err)
	}
	p.discover, err = link.AttachIter(link.IterOptions{Program: o.Discover})
	if err != nil {
		return fmt.Errorf("attach iter/tcp: %w", err)
	}
	return nil
}

// eventWait is the longest an event waits in the ring before ReadEvent
// returns it. The programs wake the reader only when the data waiting
// passes a multiple of a quarter of the ring, so a steady trickle of events
// costs no wakeup per event.
const eventWait = 100 * time.Millisecond

// ReadEvent blocks for the next lifecycle event; after Close it returns an
// error wrapping ErrClosed.
func (p *Probe) ReadEvent() (Event, error) {
	p.readMu.Lock()
	defer p.readMu.Unlock()
	for {
		if p.wake == nil {
			p.reader.SetDeadline(time.Now().Add(eventWait))
		}
		err := p.reader.ReadInto(&p.record)
		switch {
		case err == nil:
			return p.decodeRingEvent(p.record.RawSample)
		case errors.Is(err, os.ErrDeadlineExceeded):
			// The ring is empty; wait again.
			if p.wake == nil {
				continue
			}
			if err := p.wake.wait(eventWait); errors.Is(err, os.ErrClosed) {
				return Event{}, fmt.Errorf("read event: %w", ErrClosed)
			} else if err != nil {
				return Event{}, fmt.Errorf("wait for events: %w", err)
			}
		case errors.Is(err, ringbuf.ErrFlushed):
			// Every event submitted before the flush has been returned.
			p.sync.caughtUp(p.wake)
		case errors.Is(err, os.ErrClosed) || errors.Is(err, ringbuf.ErrClosed):
			return Event{}, fmt.Errorf("read event: %w", ErrClosed)
		default:
			return Event{}, fmt.Errorf("read event: %w", err)
		}
	}
}

// Sync returns once ReadEvent has returned every event submitted before the
// call, so that a poll after it sees no socket whose close or listen event
// is still in the ring. It needs a goroutine calling ReadEvent, and gives up when ctx is
// done.
func (p *Probe) Sync(ctx context.Context) error {
	if err := p.sync.wait(ctx, p.reader, p.wake); err != nil {
		return fmt.Errorf("sync events: %w", err)
	}
	return nil
}

// The parts of struct event, as bpf2go lays them out.
type (
	rawEndpoint = struct {
		_      structs.HostLayout
		Cookie uint64
		Saddr  [16]uint8
		Daddr  [16]uint8
		Netns  uint32
		Sport  uint16
		Dport  uint16
		Family uint16
		Role   uint8
		Kind   uint8
		Reason uint8
		Pad    [3]uint8
	}
	rawOwner = struct {
		_         structs.HostLayout
		StartTime uint64
		CgroupId  uint64
		Pid       uint32
		Pad       uint32
		Comm      [16]int8
	}
	rawCounters = struct {
		_             structs.HostLayout
		BytesAcked    uint64
		BytesReceived uint64
		Delivered     uint32
		DataSegsIn    uint32
		TotalRetrans  uint32
		SrttUs        uint32
		RstSent       uint32
		RstReceived   uint32
	}
)

// The iterators write the same struct event as the ring carries.
var (
	_ rawEndpoint = tcpEvent{}.Endpoint
	_ rawOwner    = tcpEvent{}.Owner
	_ rawCounters = tcpEvent{}.Counters
	_ tcpEvent    = tcpEvent(tcpIterDiscovered{}.Event)
)

const (
	eventSize      = int(unsafe.Sizeof(tcpEvent{}))
	discoveredSize = int(unsafe.Sizeof(tcpIterDiscovered{}))
)

// decodeRingEvent is decodeEvent with the owner's comm interned. readMu
// is held.
func (p *Probe) decodeRingEvent(raw []byte) (Event, error) {
	if len(raw) < eventSize {
		return decodeEvent(raw)
	}
	e := (*tcpEvent)(unsafe.Pointer(unsafe.SliceData(raw)))
	return eventWith(e, intern(p.eventComms, &e.Owner.Comm))
}

// decodeEvent turns a ring buffer record into an Event.
func decodeEvent(raw []byte) (Event, error) {
	if len(raw) < eventSize {
		return Event{}, fmt.Errorf("decode event: %d bytes, want %d", len(raw), eventSize)
	}
	return eventOf((*tcpEvent)(unsafe.Pointer(unsafe.SliceData(raw))))
}

// decodeDiscovered turns a record of the discovery iterator into an Event.
func decodeDiscovered(raw []byte) (Event, error) {
	if len(raw) < discoveredSize {
		return Event{}, fmt.Errorf("decode discovered socket: %d bytes, want %d", len(raw), discoveredSize)
	}
	d := (*tcpIterDiscovered)(unsafe.Pointer(unsafe.SliceData(raw)))
	ev, err := eventOf((*tcpEvent)(&d.Event))
	ev.Inode = d.Inode
	return ev, err
}

func eventOf(e *tcpEvent) (Event, error) {
	return eventWith(e, comm(&e.Owner.Comm))
}

// eventWith is eventOf with the owner's comm already decoded.
func eventWith(e *tcpEvent, comm string) (Event, error) {
	kind := e.Endpoint.Kind
	if kind < uint8(EventClose) || kind > uint8(EventOrphan) {
		return Event{}, fmt.Errorf("decode event: unknown kind %d", kind)
	}
	return Event{
		Kind:     EventKind(kind),
		Reason:   FailReason(e.Endpoint.Reason),
		Endpoint: endpoint(&e.Endpoint),
		Owner:    owner(&e.Owner, comm),
		Counters: counters(&e.Counters),
	}, nil
}

func endpoint(e *rawEndpoint) Endpoint {
	return Endpoint{
		Cookie:     e.Cookie,
		Role:       Role(e.Role),
		LocalAddr:  addr(e.Family, &e.Saddr),
		LocalPort:  e.Sport,
		RemoteAddr: addr(e.Family, &e.Daddr),
		RemotePort: e.Dport,
		NetNS:      e.Netns,
	}
}

// userHZ is the unit of /proc/PID/stat times: clock ticks per second.
const userHZ = 100

func owner(o *rawOwner, comm string) Owner {
	return Owner{
		PID:       o.Pid,
		StartTime: o.StartTime / (uint64(time.Second) / userHZ),
		CgroupID:  o.CgroupId,
		Comm:      comm,
	}
}

func counters(c *rawCounters) Counters {
	return Counters{
		BytesAcked:    c.BytesAcked,
		BytesReceived: c.BytesReceived,
		SegsDelivered: c.Delivered,
		DataSegsIn:    c.DataSegsIn,
		Retransmits:   c.TotalRetrans,
		SRTT:          time.Duration(c.SrttUs) * time.Microsecond,
		ResetsSent:    c.RstSent,
		ResetsRecv:    c.RstReceived,
	}
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

// Samples calls fn for every live tracked socket, in every network
// namespace, with its counters read by the kernel during the call. Closed
// sockets are not reported: their final counters came with their close
// event. It is safe to call concurrently with ReadEvent.
//
// A walk is a single pass over the kernel's socket storage: every socket
// that lives through the call is reported exactly once, and sockets opened
// or freed meanwhile are reported at most once. That holds while the
// samples fit in the sample ring (Config.SampleRingBytes). Past that, the
// rest of the walk goes through the iterator's seq_file, which the kernel
// hands over in chunks of about 270 sockets, resuming each by position in
// a hash bucket of the storage map: sockets opened or freed in between
// shift the positions, so such a walk can repeat a socket (with counters no
// older) or miss one. The kernel also splits a read after a million storage
// elements, so a walk over more sockets than that is chunked too.
// Drops.SampleFallbacks counts the records of chunked walks, and SampleWalk
// tells the caller that a walk was not complete: only then does the caller
// have to remove repeats, and not take a socket's absence for its end.
func (p *Probe) Samples(fn func(Sample)) error {
	_, err := p.SampleWalk(fn)
	return err
}

// SampleWalk is Samples, and also reports whether the walk was a single
// pass. When complete is false, a socket may have been reported twice or
// not at all (see Samples).
func (p *Probe) SampleWalk(fn func(Sample)) (complete bool, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false, fmt.Errorf("samples: %w", ErrClosed)
	}
	// Records left by a walk that failed midway are stale.
	p.samples.skip()
	emit := func(s *tcpEvent) {
		fn(Sample{
			Endpoint: endpoint(&s.Endpoint),
			Owner:    owner(&s.Owner, p.internComm(&s.Owner.Comm)),
			Counters: counters(&s.Counters),
		})
	}
	if p.sampleRun != nil {
		complete, err = runWalk(p.sampleRun, func() error { return p.samples.drain(emit) })
		if err != nil {
			return false, fmt.Errorf("samples: %w", err)
		}
		return complete, nil
	}
	r, err := p.sampler.Open()
	if err != nil {
		return false, fmt.Errorf("samples: open iterator: %w", err)
	}
	defer r.Close()
	complete = !p.fileWalk
	err = readRecords(r, p.buf, eventSize, func(raw []byte) {
		// The sample ring was full: this walk is chunked.
		complete = false
		emit((*tcpEvent)(unsafe.Pointer(unsafe.SliceData(raw))))
	}, func(again bool) error {
		if again {
			// The kernel stops a read after a million objects and the
			// next read resumes by position, as after a chunk.
			complete = false
		}
		// Between reads, so that a chunked walk gets ring space back.
		return p.samples.drain(emit)
	})
	if err != nil {
		return false, fmt.Errorf("samples: %w", err)
	}
	return complete, nil
}

// readRecords reads r to the end and calls fn with each size-byte record,
// in buf; records may straddle reads. fn must not keep the slice. If after
// is not nil, it is called after each read, with again set when the read
// failed with EAGAIN, which is then retried.
func readRecords(r io.Reader, buf []byte, size int, fn func([]byte), after func(again bool) error) error {
	n := 0 // bytes in buf not yet handed to fn
	for {
		m, err := r.Read(buf[n:])
		again := errors.Is(err, unix.EAGAIN)
		if after != nil {
			if aerr := after(again); aerr != nil {
				return aerr
			}
		}
		if again {
			continue
		}
		n += m
		off := 0
		for ; n-off >= size; off += size {
			fn(buf[off : off+size])
		}
		n = copy(buf, buf[off:n])
		if errors.Is(err, io.EOF) || (err == nil && m == 0) {
			if n != 0 {
				return fmt.Errorf("read iterator: %d bytes left over, records are %d", n, size)
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("read iterator: %w", err)
		}
	}
}

// internComm returns comm(c), reusing the string of an earlier call.
func (p *Probe) internComm(c *[16]int8) string { return intern(p.comms, c) }

// intern returns comm(c) from m, adding it; m is emptied when it grows
// past maxComms.
func intern(m map[[16]int8]string, c *[16]int8) string {
	if s, ok := m[*c]; ok {
		return s
	}
	if len(m) >= maxComms {
		clear(m)
	}
	s := comm(c)
	m[*c] = s
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
	full, err := p.sumDrops(dropStorageFull)
	if err != nil {
		return Drops{}, err
	}
	fallbacks, err := p.sumDrops(dropFallback)
	if err != nil {
		return Drops{}, err
	}
	var udp [4]uint64
	for i, reason := range []uint32{dropUDPRing, dropUDPStorage, dropUDPUnknown, dropUDPFallback} {
		if udp[i], err = p.sumDrops(reason); err != nil {
			return Drops{}, err
		}
	}
	// The wire's ring_full and map_full count UDP's losses of the same kinds.
	return Drops{RingFull: ring + udp[0], StorageFull: full + udp[1], SampleFallbacks: fallbacks,
		UDPRingFull: udp[0], UDPStorageFull: udp[1], UDPUnattributed: udp[2], UDPSampleFallbacks: udp[3]}, nil
}

func (p *Probe) sumDrops(reason uint32) (uint64, error) {
	if err := p.objs.Drops.Lookup(reason, &p.perCPU); err != nil {
		return 0, fmt.Errorf("drops: lookup %d: %w", reason, err)
	}
	return sumPerCPU(p.perCPU), nil
}

// sumPerCPU adds up the per-CPU values of one map entry.
func sumPerCPU(per []uint64) uint64 {
	var sum uint64
	for _, n := range per {
		sum += n
	}
	return sum
}

// ProgramStats returns the run count and run time of each of the probe's
// programs, named by their C functions.
func (p *Probe) ProgramStats() ([]ProgramStats, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, fmt.Errorf("program stats: %w", ErrClosed)
	}
	progs := []namedProgram{
		{p.objs.stateName, p.objs.state},
		{tcpProgTcpSendReset, p.objs.TcpSendReset},
		{tcpProgTcpReceiveReset, p.objs.TcpReceiveReset},
		{tcpIterProgSampleSockets, p.iter.SampleSockets},
		{tcpIterProgDiscoverSockets, p.iter.DiscoverSockets},
	}
	if p.udp != nil {
		progs = append(progs, p.udp.programs()...)
	}
	return programStats(progs)
}

// Path returns the path the TCP programs took (tracepoint or fentry).
func (p *Probe) Path() Path { return p.path }

// Features returns what this kernel and path deliver, and what not, with
// why: tcp, tcp_resets, udp (off unless Config.UDP.Enabled, or when no
// path has UDP sizes), udp_drop_remotes (the remote of a dropped
// datagram: Linux 6.10).
func (p *Probe) Features() []Feature { return p.features }

// Close detaches and frees everything; idempotent.
func (p *Probe) Close() error {
	var err error
	p.closeMu.Do(func() {
		// Closing the readers first unblocks a pending ReadEvent or ReadUDP.
		err = p.reader.Close()
		if p.wake != nil {
			err = errors.Join(err, p.wake.close())
		}
		if p.udp != nil && p.udp.reader != nil {
			err = errors.Join(err, p.udp.reader.close())
			p.udp.reader = nil
		}
		p.readMu.Lock()
		defer p.readMu.Unlock()
		p.mu.Lock()
		defer p.mu.Unlock()
		p.closed = true
		err = errors.Join(err, p.samples.close(), p.release())
	})
	return err
}

// release detaches the links and frees the maps and programs.
func (p *Probe) release() error {
	var errs []error
	if p.udp != nil {
		if err := p.udp.close(); err != nil {
			errs = append(errs, fmt.Errorf("free UDP programs: %w", err))
		}
		p.udp = nil
	}
	for _, l := range p.links {
		if err := l.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach: %w", err))
		}
	}
	p.links = nil
	for _, it := range []**link.Iter{&p.sampler, &p.discover} {
		if *it != nil {
			if err := (*it).Close(); err != nil {
				errs = append(errs, fmt.Errorf("detach iterator: %w", err))
			}
			*it = nil
		}
	}
	if err := p.iter.Close(); err != nil {
		errs = append(errs, fmt.Errorf("free iterator: %w", err))
	}
	if err := p.objs.Close(); err != nil {
		errs = append(errs, fmt.Errorf("free objects: %w", err))
	}
	if p.stats != nil {
		if err := p.stats.Close(); err != nil {
			errs = append(errs, fmt.Errorf("disable run-time statistics: %w", err))
		}
		p.stats = nil
	}
	return errors.Join(errs...)
}
