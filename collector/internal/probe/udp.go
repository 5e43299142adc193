package probe

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
)

// UDPConfig turns on the UDP accounting of bpf/udp.c and sizes it.
type UDPConfig struct {
	// Enabled loads and attaches the UDP programs (flag --udp).
	Enabled bool
	// Peers is how many remote addresses a socket is reported with, at
	// most MaxUDPPeers; the rest is folded into "other peers" and counted
	// (flag --udp-peers).
	Peers uint32
	// RingBytes sizes the ring of close records: 136 bytes per remote of a
	// closing socket. A power of two and a multiple of the page size
	// (flag --udp-ring-bytes).
	RingBytes uint32
	// SampleRingBytes sizes the ring one walk of the UDP sockets writes
	// into: 144 bytes per remote of a live socket (flag
	// --udp-sample-ring-bytes). A walk over more falls back to a chunked
	// walk, as for TCP.
	SampleRingBytes uint32
	// CgroupRoot is the cgroup-v2 mount the sock_addr and sock_release
	// programs attach to; empty means the first cgroup2 mount.
	CgroupRoot string
}

// MaxUDPPeers is the most remote addresses a UDP socket has slots for.
const MaxUDPPeers = 16

// DefaultUDPConfig returns the defaults: off (the UDP programs cost every
// TCP send and receive too; see bpf/udp.c), 16 peers per socket.
func DefaultUDPConfig() UDPConfig {
	return UDPConfig{Enabled: false, Peers: MaxUDPPeers, RingBytes: 1 << 20, SampleRingBytes: 4 << 20}
}

// Validate reports the first bad field, named by its flag.
func (c UDPConfig) Validate() error {
	if !c.Enabled {
		return nil
	}
	page := uint32(os.Getpagesize())
	if c.Peers == 0 || c.Peers > MaxUDPPeers {
		return fmt.Errorf("--udp-peers: %d is not within 1 to %d", c.Peers, MaxUDPPeers)
	}
	if c.RingBytes == 0 || c.RingBytes&(c.RingBytes-1) != 0 || c.RingBytes%page != 0 {
		return fmt.Errorf("--udp-ring-bytes: %d is not a power of two and a multiple of the page size (%d)", c.RingBytes, page)
	}
	if c.SampleRingBytes < page || c.SampleRingBytes&(c.SampleRingBytes-1) != 0 {
		return fmt.Errorf("--udp-sample-ring-bytes: %d is not a power of two of at least the page size (%d)", c.SampleRingBytes, page)
	}
	return nil
}

// UDPRecordKind tells a sample from a close record.
type UDPRecordKind uint8

// Kinds of UDP records; they match enum udp_record_kind in bpf/udp.c.
const (
	UDPSample UDPRecordKind = iota
	UDPClose
)

// UDPRecord is one remote of one UDP socket: its cumulative counters when
// the walk read them (UDPSample), or its final ones (UDPClose). The
// counters are the kernel's u32 and u64 fields: the u32 ones wrap.
type UDPRecord struct {
	Kind   UDPRecordKind
	Cookie uint64
	// Local is the socket's bound address: unspecified for a socket bound
	// to any address.
	Local netip.AddrPort
	// Remote is the remote address; invalid for Other.
	Remote netip.AddrPort
	// Other: the slot of the remotes beyond the socket's cap, or whose
	// address was not known.
	Other bool
	// Slot is the remote's slot: two slots of a socket may hold the same
	// remote when two CPUs claimed one at once.
	Slot  uint8
	NetNS uint32
	Owner Owner
	// Folded counts the socket's datagrams counted under Other at the cap
	// (the same in every record of the socket).
	Folded            uint32
	BytesSent         uint64
	BytesReceived     uint64
	DatagramsSent     uint32
	DatagramsReceived uint32
	Drops             uint32 // datagrams from Remote the socket dropped (receive queue full)
}

var _ rawOwner = udpUdpRecord{}.Owner

const udpRecordSize = int(unsafe.Sizeof(udpUdpRecord{}))

// udpProbe is the UDP part of a Probe.
type udpProbe struct {
	objs    udpObjs
	hash    *udpHashObjs // bpf/udp_hash.c's, instead of objs, where tracing programs have no socket storage
	links   []link.Link
	sampler *link.Iter
	// fileWalk: the sampler walks the processes' open files, so its walks
	// are never complete (walk.go).
	fileWalk bool
	reader   *pollReader
	record   ringbuf.Record
	samples  *sampleRing
}

// udpCommon are the UDP programs of every path.
type udpCommon struct {
	UdpSendmsg4        *ebpf.Program `ebpf:"udp_sendmsg4"`
	UdpSendmsg6        *ebpf.Program `ebpf:"udp_sendmsg6"`
	UdpRecvmsg4        *ebpf.Program `ebpf:"udp_recvmsg4"`
	UdpRecvmsg6        *ebpf.Program `ebpf:"udp_recvmsg6"`
	UdpBind4           *ebpf.Program `ebpf:"udp_bind4"`
	UdpBind6           *ebpf.Program `ebpf:"udp_bind6"`
	UdpRelease         *ebpf.Program `ebpf:"udp_release"`
	UdpFailQueueRcvSkb *ebpf.Program `ebpf:"udp_fail_queue_rcv_skb"`
	SampleUdp          *ebpf.Program `ebpf:"sample_udp"`
}

// udpObjs is what loadUDP loads of bpf/udp.c: the maps, the programs of
// every path, and the size programs of the chosen path.
type udpObjs struct {
	udpMaps
	udpCommon
	sizes []namedProgram
}

func (o *udpObjs) Close() error {
	var errs []error
	for _, prog := range o.common() {
		errs = append(errs, prog.prog.Close())
	}
	for _, prog := range o.sizes {
		errs = append(errs, prog.prog.Close())
	}
	return errors.Join(append(errs, o.udpMaps.Close())...)
}

func (o *udpObjs) common() []namedProgram {
	return []namedProgram{
		{udpProgUdpSendmsg4, o.UdpSendmsg4},
		{udpProgUdpSendmsg6, o.UdpSendmsg6},
		{udpProgUdpRecvmsg4, o.UdpRecvmsg4},
		{udpProgUdpRecvmsg6, o.UdpRecvmsg6},
		{udpProgUdpBind4, o.UdpBind4},
		{udpProgUdpBind6, o.UdpBind6},
		{udpProgUdpRelease, o.UdpRelease},
		{udpProgUdpFailQueueRcvSkb, o.UdpFailQueueRcvSkb},
		{udpProgSampleUdp, o.SampleUdp},
	}
}

// udpSizesPath chooses how UDP sizes are hooked: the tracepoints on
// PathTracepoint, fexit on PathFentry; on PathAuto the tracepoints where
// the kernel has them (6.3), else fexit.
func udpSizesPath(path Path) Path {
	if path != PathAuto {
		return path
	}
	if tracepointArgs("sock_send_length") > 0 && tracepointArgs("sock_recv_length") > 0 {
		return PathTracepoint
	}
	return PathFentry
}

// loadUDP loads the UDP programs, sharing the drops array with the TCP
// programs, and attaches them. On PathAuto, a kernel where no path has UDP
// sizes turns UDP off (Probe.Features says why) instead of failing.
func (p *Probe) loadUDP(cfg UDPConfig, path Path) error {
	if !cfg.Enabled {
		p.features = append(p.features, Feature{Name: "udp", Reason: "off (--udp)"})
		return nil
	}
	if err := storageChecked(); err != nil {
		// udp.c keeps its peers in socket storage: udp_hash.c keeps them
		// in a hash map, with fexit for the sizes (the hashmap path's kernels).
		if path != PathAuto && path != PathHashmap {
			return fmt.Errorf("--probe-path=%s: UDP sockets are kept in socket storage (--probe-path=hashmap keeps them in a hash map): %w", path, err)
		}
		if herr := p.openUDPHash(cfg); herr != nil {
			if path == PathAuto {
				p.features = append(p.features, Feature{Name: "udp", Reason: "no socket storage in tracing programs (" + err.Error() + "), and the hash map's fexit programs: " + herr.Error()})
				return nil
			}
			return fmt.Errorf("--probe-path=%s: UDP programs (hash map): %w", path, herr)
		}
		p.features = append(p.features, Feature{Name: "udp", Enabled: true,
			Reason: "fexit/udp_sendmsg, udpv6_sendmsg, udp_recvmsg, udpv6_recvmsg, sockets in a hash map (no socket storage in tracing programs)"})
		p.features = append(p.features, Feature{Name: "udp_drop_remotes",
			Reason: "tp_btf/udp_fail_queue_rcv_skb has no datagram before Linux 6.10: drops are counted under other peers"})
		return nil
	}
	sizes := udpSizesPath(path)
	err := p.openUDP(cfg, sizes)
	if err != nil && path == PathAuto {
		p.features = append(p.features, Feature{Name: "udp", Reason: err.Error()})
		return nil
	}
	if err != nil {
		return fmt.Errorf("--probe-path=%s: %w", path, err)
	}
	how := "tp_btf/sock_send_length, tp_btf/sock_recv_length"
	if sizes == PathFentry {
		how = "fexit/udp_sendmsg, udpv6_sendmsg, udp_recvmsg, udpv6_recvmsg"
	}
	p.features = append(p.features, Feature{Name: "udp", Enabled: true, Reason: how})
	if tracepointArgs("udp_fail_queue_rcv_skb") >= 3 {
		p.features = append(p.features, Feature{Name: "udp_drop_remotes", Enabled: true, Reason: "tp_btf/udp_fail_queue_rcv_skb with the datagram"})
	} else {
		p.features = append(p.features, Feature{Name: "udp_drop_remotes",
			Reason: "tp_btf/udp_fail_queue_rcv_skb has no datagram before Linux 6.10: drops are counted under other peers"})
	}
	return nil
}

// openUDP loads and attaches the UDP programs with the sizes of path; on
// failure nothing is left loaded.
func (p *Probe) openUDP(cfg UDPConfig, sizes Path) (err error) {
	root := cfg.CgroupRoot
	if root == "" {
		if root, err = CgroupV2Root(); err != nil {
			return err
		}
	}
	files, err := walkFiles()
	if err != nil {
		return err
	}
	spec, err := loadUdp()
	if err != nil {
		return err
	}
	useWalk(spec, udpProgSampleUdp, udpProgSampleUdpFiles, files)
	spec.Maps[udpMapUdpEvents].MaxEntries = cfg.RingBytes
	spec.Maps[udpMapUdpSamples].MaxEntries = cfg.SampleRingBytes
	hasSkb := uint32(0)
	if tracepointArgs("udp_fail_queue_rcv_skb") >= 3 {
		hasSkb = 1
	}
	for _, v := range []struct {
		name  string
		value any
	}{
		{udpVarPeerCap, cfg.Peers},
		{udpVarUdpWakeupBytes, uint64(cfg.RingBytes / 4)},
		{udpVarFailQueueHasSkb, hasSkb},
	} {
		if err := spec.Variables[v.name].Set(v.value); err != nil {
			return fmt.Errorf("set %s: %w", v.name, err)
		}
	}
	u := &udpProbe{}
	defer func() {
		if err != nil {
			err = errors.Join(err, u.close())
		}
	}()
	opts := &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{
		udpMapDrops:    p.objs.Drops,
		udpMapSkStates: p.objs.SkStates,
	}}
	var tracing []namedProgram // attached with link.AttachTracing, by section
	switch sizes {
	case PathTracepoint:
		for _, tp := range []string{"sock_send_length", "sock_recv_length"} {
			if tracepointArgs(tp) == 0 {
				return feature("tp_btf/"+tp, ebpf.ErrNotSupported)
			}
		}
		var l struct {
			udpMaps
			udpCommon
			SockSendLength *ebpf.Program `ebpf:"sock_send_length"`
			SockRecvLength *ebpf.Program `ebpf:"sock_recv_length"`
		}
		if err := spec.LoadAndAssign(&l, loadOptions(opts)); err != nil {
			return loadError("UDP programs (tracepoint path)", err)
		}
		u.objs = udpObjs{udpMaps: l.udpMaps, udpCommon: l.udpCommon, sizes: []namedProgram{
			{udpProgSockSendLength, l.SockSendLength}, {udpProgSockRecvLength, l.SockRecvLength}}}
	case PathFentry:
		type sends struct {
			Sendmsg  *ebpf.Program `ebpf:"fexit_udp_sendmsg"`
			Sendmsg6 *ebpf.Program `ebpf:"fexit_udpv6_sendmsg"`
		}
		// udp_recvmsg lost its noblock argument in Linux 5.19: the
		// variant whose return slot matches the kernel's BTF.
		if kernelArgs("udp_recvmsg") == 6 {
			var l struct {
				udpMaps
				udpCommon
				sends
				Recvmsg  *ebpf.Program `ebpf:"fexit_udp_recvmsg_noblock"`
				Recvmsg6 *ebpf.Program `ebpf:"fexit_udpv6_recvmsg_noblock"`
			}
			if err := spec.LoadAndAssign(&l, loadOptions(opts)); err != nil {
				return fentryError(loadError("UDP programs (fentry path)", err))
			}
			u.objs = udpObjs{udpMaps: l.udpMaps, udpCommon: l.udpCommon, sizes: []namedProgram{
				{udpProgFexitUdpSendmsg, l.Sendmsg}, {udpProgFexitUdpv6Sendmsg, l.Sendmsg6},
				{udpProgFexitUdpRecvmsgNoblock, l.Recvmsg}, {udpProgFexitUdpv6RecvmsgNoblock, l.Recvmsg6}}}
			break
		}
		var l struct {
			udpMaps
			udpCommon
			sends
			Recvmsg  *ebpf.Program `ebpf:"fexit_udp_recvmsg"`
			Recvmsg6 *ebpf.Program `ebpf:"fexit_udpv6_recvmsg"`
		}
		if err := spec.LoadAndAssign(&l, loadOptions(opts)); err != nil {
			return fentryError(loadError("UDP programs (fentry path)", err))
		}
		u.objs = udpObjs{udpMaps: l.udpMaps, udpCommon: l.udpCommon, sizes: []namedProgram{
			{udpProgFexitUdpSendmsg, l.Sendmsg}, {udpProgFexitUdpv6Sendmsg, l.Sendmsg6},
			{udpProgFexitUdpRecvmsg, l.Recvmsg}, {udpProgFexitUdpv6Recvmsg, l.Recvmsg6}}}
	default:
		return fmt.Errorf("UDP programs: no path %q", sizes)
	}
	tracing = append(tracing, u.objs.sizes...)
	tracing = append(tracing, namedProgram{udpProgUdpFailQueueRcvSkb, u.objs.UdpFailQueueRcvSkb})
	for _, tp := range tracing {
		l, err := link.AttachTracing(link.TracingOptions{Program: tp.prog})
		if err != nil {
			if sizes == PathFentry {
				err = fentryError(err)
			}
			return fmt.Errorf("attach %s: %w", spec.Programs[tp.name].SectionName, err)
		}
		u.links = append(u.links, l)
	}
	for _, c := range []struct {
		name   string
		attach ebpf.AttachType
		prog   *ebpf.Program
	}{
		{"cgroup/sendmsg4", ebpf.AttachCGroupUDP4Sendmsg, u.objs.UdpSendmsg4},
		{"cgroup/sendmsg6", ebpf.AttachCGroupUDP6Sendmsg, u.objs.UdpSendmsg6},
		{"cgroup/recvmsg4", ebpf.AttachCGroupUDP4Recvmsg, u.objs.UdpRecvmsg4},
		{"cgroup/recvmsg6", ebpf.AttachCGroupUDP6Recvmsg, u.objs.UdpRecvmsg6},
		{"cgroup/bind4", ebpf.AttachCGroupInet4Bind, u.objs.UdpBind4},
		{"cgroup/bind6", ebpf.AttachCGroupInet6Bind, u.objs.UdpBind6},
		{"cgroup/sock_release", ebpf.AttachCgroupInetSockRelease, u.objs.UdpRelease},
	} {
		l, err := link.AttachCgroup(link.CgroupOptions{Path: root, Attach: c.attach, Program: c.prog})
		if err != nil {
			return fmt.Errorf("attach %s to %s: %w", c.name, root, err)
		}
		u.links = append(u.links, l)
	}
	it := link.IterOptions{Program: u.objs.SampleUdp, Map: u.objs.UdpStates}
	if files {
		it.Map = nil
	}
	u.sampler, err = link.AttachIter(it)
	if err != nil {
		return fmt.Errorf("attach %s (udp): %w", walkName(files), err)
	}
	u.fileWalk = files
	u.reader, err = newPollReader(u.objs.UdpEvents)
	if err != nil {
		return fmt.Errorf("open UDP ring buffer: %w", err)
	}
	u.samples, err = newSampleRing(u.objs.UdpSamples)
	if err != nil {
		return err
	}
	p.udp = u
	return nil
}

// UDPEnabled reports whether the UDP programs are loaded.
func (p *Probe) UDPEnabled() bool { return p.udp != nil }

// ReadUDP blocks for the next close record of a UDP socket; after Close, or
// when UDP is off, it returns an error wrapping ErrClosed.
func (p *Probe) ReadUDP() (UDPRecord, error) {
	u := p.udp
	if u == nil {
		return UDPRecord{}, fmt.Errorf("read UDP record: %w", ErrClosed)
	}
	// Close sets u.reader to nil after closing it: read it once, so that
	// a Close meanwhile ends the read with ErrClosed instead of a nil
	// reader on the next round.
	r := u.reader
	if r == nil {
		return UDPRecord{}, fmt.Errorf("read UDP record: %w", ErrClosed)
	}
	err := r.read(&u.record)
	switch {
	case err == nil:
		if len(u.record.RawSample) < udpRecordSize {
			return UDPRecord{}, fmt.Errorf("decode UDP record: %d bytes, want %d", len(u.record.RawSample), udpRecordSize)
		}
		return udpRecordOf((*udpUdpRecord)(unsafe.Pointer(unsafe.SliceData(u.record.RawSample))), comm), nil
	case errors.Is(err, os.ErrClosed) || errors.Is(err, ringbuf.ErrClosed):
		return UDPRecord{}, fmt.Errorf("read UDP record: %w", ErrClosed)
	}
	return UDPRecord{}, fmt.Errorf("read UDP record: %w", err)
}

// SampleUDP calls fn with every remote of every live UDP socket that has
// storage, in every network namespace, with its counters read during the
// call; complete is false when the walk was chunked (see Samples): a
// remote may then have been reported twice or not at all.
func (p *Probe) SampleUDP(fn func(UDPRecord)) (complete bool, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.udp == nil {
		return false, fmt.Errorf("UDP samples: %w", ErrClosed)
	}
	u := p.udp
	u.samples.skip()
	r, err := u.sampler.Open()
	if err != nil {
		return false, fmt.Errorf("UDP samples: open iterator: %w", err)
	}
	defer r.Close()
	emit := func(ptr unsafe.Pointer) {
		fn(udpRecordOf((*udpUdpRecord)(ptr), p.internComm))
	}
	complete = !u.fileWalk
	err = readRecords(r, p.buf, udpRecordSize, func(raw []byte) {
		complete = false
		emit(unsafe.Pointer(unsafe.SliceData(raw)))
	}, func(again bool) error {
		if again {
			complete = false
		}
		return u.samples.drainRecords(udpRecordSize, emit)
	})
	if err != nil {
		return false, fmt.Errorf("UDP samples: %w", err)
	}
	return complete, nil
}

func udpRecordOf(r *udpUdpRecord, commOf func(*[16]int8) string) UDPRecord {
	rec := UDPRecord{
		Kind:              UDPRecordKind(r.Kind),
		Cookie:            r.Cookie,
		Local:             netip.AddrPortFrom(addr(r.Sfamily, &r.Saddr), r.Sport),
		Other:             r.Other != 0,
		Slot:              r.Slot,
		NetNS:             r.Netns,
		Owner:             owner(&r.Owner, commOf(&r.Owner.Comm)),
		Folded:            r.Folded,
		BytesSent:         r.BytesSent,
		BytesReceived:     r.BytesRecv,
		DatagramsSent:     r.DgramsSent,
		DatagramsReceived: r.DgramsRecv,
		Drops:             r.Drops,
	}
	if !rec.Other {
		rec.Remote = netip.AddrPortFrom(addr(r.Family, &r.Daddr), r.Dport)
	}
	return rec
}

// programs lists the UDP programs for ProgramStats.
func (u *udpProbe) programs() []namedProgram {
	if u.hash != nil {
		return u.hash.programs()
	}
	return append(u.objs.common(), u.objs.sizes...)
}

// close detaches and frees the UDP programs and maps.
func (u *udpProbe) close() error {
	var errs []error
	if u.reader != nil {
		errs = append(errs, u.reader.close())
	}
	if u.samples != nil {
		errs = append(errs, u.samples.close())
	}
	for _, l := range u.links {
		if err := l.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach: %w", err))
		}
	}
	if u.sampler != nil {
		errs = append(errs, u.sampler.Close())
	}
	errs = append(errs, u.objs.Close())
	if u.hash != nil {
		errs = append(errs, u.hash.Close())
	}
	return errors.Join(errs...)
}
