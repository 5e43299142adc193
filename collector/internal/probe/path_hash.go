package probe

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -go-package probe -target amd64,arm64 tcpHash ../../../bpf/tcp_hash.c -- -I../../../bpf/headers -mcpu=v3 -Wall -Werror

import (
	"errors"
	"fmt"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// PathHashmap keeps each TCP socket's state in a hash map keyed by the
// socket's address instead of socket storage, for kernels whose tracing
// programs cannot use socket storage (before Linux 5.11) or the socket
// cookie (before 5.12), such as 5.10 (bpf/tcp_hash.c). It hooks the same
// BTF tracepoints as PathTracepoint, and samples with iter/bpf_map_elem
// over the hash map instead of iter/bpf_sk_storage_map (or, where the
// kernel refuses that, with bpf_for_each_map_elem: hashWalkRun). Differences that
// a consumer can see: a socket's cookie is an id of the probe's own (bit
// 63 set), not the kernel's socket cookie; a socket accepted on a port
// that several processes listen on with SO_REUSEPORT gets the owner of the
// last listen() on that port. Auto takes it only where the storage paths
// cannot run. UDP (--udp) there is bpf/udp_hash.c's (udp_hash.go): each UDP
// socket's state in a hash map keyed by its address, sizes by fexit, so
// only where the kernel has BPF trampolines (x86-64 5.5; arm64 6.0).
const PathHashmap Path = "hashmap"

// storageChecked is checkStorage, run once per process.
var storageChecked = sync.OnceValue(checkStorage)

// storageOrHashmap returns the path Open takes for path: auto becomes
// hashmap where the socket storage paths cannot run; a forced tracepoint
// or fentry path there is refused, naming the missing feature.
func storageOrHashmap(path Path) (Path, error) {
	switch path {
	case PathAuto:
		if storageChecked() != nil {
			return PathHashmap, nil
		}
	case PathTracepoint, PathFentry:
		if err := storageChecked(); err != nil {
			return path, fmt.Errorf("--probe-path=%s: needs socket storage in tracing programs (--probe-path=hashmap does not): %w", path, err)
		}
	}
	return path, nil
}

// udpPathOf is the path UDP sizes take when asked was asked for and path
// taken. Taken by auto, UDP is as on auto: where the kernel has no socket
// storage in tracing programs, bpf/udp_hash.c (fexit, sockets in a hash
// map; off, with the reason, where fexit cannot attach); forced, UDP takes
// what the kernel has where it has socket storage there, and udp_hash.c
// where not.
func udpPathOf(asked, path Path) Path {
	if path != PathHashmap {
		return path
	}
	if asked == "" || asked == PathAuto || storageChecked() == nil {
		return PathAuto
	}
	return PathHashmap
}

// hashObjs is what the hashmap path loads of bpf/tcp_hash.c.
type hashObjs struct {
	Drops        *ebpf.Map     `ebpf:"drops"`
	Events       *ebpf.Map     `ebpf:"events"`
	Samples      *ebpf.Map     `ebpf:"samples"`
	SkHash       *ebpf.Map     `ebpf:"sk_hash"`
	ListenOwners *ebpf.Map     `ebpf:"listen_owners"`
	IdCounters   *ebpf.Map     `ebpf:"id_counters"`
	State        *ebpf.Program `ebpf:"hash_inet_sock_set_state"`
	SendReset    *ebpf.Program `ebpf:"hash_tcp_send_reset"`
	ReceiveReset *ebpf.Program `ebpf:"hash_tcp_receive_reset"`
	Sample       *ebpf.Program `ebpf:"hash_sample_sockets"`
	Discover     *ebpf.Program `ebpf:"hash_discover_sockets"`
}

// close frees everything; for a failure before openHashmap hands o to p.
func (o *hashObjs) close() error {
	var errs []error
	for _, m := range []*ebpf.Map{o.Drops, o.Events, o.Samples, o.SkHash, o.ListenOwners, o.IdCounters} {
		errs = append(errs, m.Close())
	}
	for _, prog := range []*ebpf.Program{o.State, o.SendReset, o.ReceiveReset, o.Sample, o.Discover} {
		errs = append(errs, prog.Close())
	}
	return errors.Join(errs...)
}

// openHashmap loads and attaches the hashmap path's programs and
// iterators into p: the same slots (p.objs, p.iter, p.sampler,
// p.discover) as the storage paths fill, so that reading events, samples,
// discovery and drops work alike. On failure, what it loaded is in p for
// p.release to free.
func (p *Probe) openHashmap(cfg Config) error {
	run, err := hashWalkRun()
	if err != nil {
		return err
	}
	spec, err := loadTcpHash()
	if err != nil {
		return err
	}
	useWalk(spec, tcpHashProgHashSampleSockets, tcpHashProgHashWalkSamples, run)
	spec.Maps[tcpHashMapEvents].MaxEntries = cfg.RingBytes
	spec.Maps[tcpHashMapSamples].MaxEntries = cfg.SampleRingBytes
	if err := spec.Variables[tcpHashVarWakeupBytes].Set(uint64(cfg.RingBytes / 4)); err != nil {
		return fmt.Errorf("set wakeup_bytes: %w", err)
	}
	var o hashObjs
	if err := spec.LoadAndAssign(&o, loadOptions(nil)); err != nil {
		return loadError("TCP programs (hashmap path)", err)
	}
	// udp.c shares tcp.c's sk_states (tcp.h): its own, for UDP where the
	// kernel has socket storage in tracing programs (checkStorage).
	tspec, err := loadTcp()
	if err != nil {
		return errors.Join(err, o.close())
	}
	storage, err := ebpf.NewMap(tspec.Maps[tcpMapSkStates])
	if err != nil {
		return errors.Join(fmt.Errorf("create sk_states for UDP: %w", err), o.close())
	}
	// The release of p frees these from now on.
	p.path = PathHashmap
	p.objs = tcpObjs{
		tcpMaps:   tcpMaps{Drops: o.Drops, Events: o.Events, SkStates: storage},
		tcpResets: tcpResets{TcpSendReset: o.SendReset, TcpReceiveReset: o.ReceiveReset},
		state:     o.State, stateName: tcpHashProgHashInetSockSetState,
	}
	p.iter = tcpIterObjects{
		tcpIterMaps:     tcpIterMaps{Samples: o.Samples},
		tcpIterPrograms: tcpIterPrograms{SampleSockets: o.Sample, DiscoverSockets: o.Discover},
	}
	// The programs and the sampling link hold the kernel's references to
	// the maps that user space never reads; the handles here go once they
	// are attached.
	defer func() {
		for _, m := range []*ebpf.Map{o.SkHash, o.ListenOwners, o.IdCounters} {
			m.Close()
		}
	}()
	for _, tp := range []struct {
		name string
		prog *ebpf.Program
	}{
		{"tp_btf/inet_sock_set_state", o.State},
		{"tp_btf/tcp_send_reset", o.SendReset},
		{"tp_btf/tcp_receive_reset", o.ReceiveReset},
	} {
		l, err := link.AttachTracing(link.TracingOptions{Program: tp.prog})
		if err != nil {
			return fmt.Errorf("attach %s: %w", tp.name, err)
		}
		p.links = append(p.links, l)
	}
	if run {
		p.sampleRun = o.Sample
	} else if p.sampler, err = link.AttachIter(link.IterOptions{Program: o.Sample, Map: o.SkHash}); err != nil {
		return fmt.Errorf("attach iter/bpf_map_elem: %w", err)
	}
	p.discover, err = link.AttachIter(link.IterOptions{Program: o.Discover})
	if err != nil {
		return fmt.Errorf("attach iter/tcp: %w", err)
	}
	return nil
}

// errHashmapFiles: the walk over processes' open files (discover_files.c)
// fills socket storage, which the hashmap path does without. Sockets in
// network namespaces that setns cannot enter are then found when they
// next change state.
var errHashmapFiles = fmt.Errorf("discover from open files on --probe-path=%s (bpf/discover_files.c keeps sockets in socket storage): %w", PathHashmap, ErrNotSupported)
