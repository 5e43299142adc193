package probe

import (
	"errors"
	"fmt"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// The socket storage paths sample their sockets at each poll with a walk
// over the storage map (iter/bpf_sk_storage_map): every socket with
// storage, once. A kernel can have that iterator and still refuse it: a
// security policy (a BPF LSM program, or a lockdown) answers EPERM at load.
// This was seen on Linux 6.18, where iter/tcp, iter/task_file and socket
// storage in tracing programs load, and iter/bpf_sk_storage_map and
// iter/bpf_map_elem do not. There the walks go over the processes' open
// files instead (iter/task_file with bpf_sock_from_file: bpf/tcp_iter.c's
// sample_files and bpf/udp.c's sample_udp_files). Such a walk visits a
// socket once per process that holds it, and does not visit one that no
// process holds (an orphan, a connection in a listener's accept queue), so
// SampleWalk and SampleUDP report it as incomplete: the callers then remove
// repeats and do not take a socket's absence for its end.

// walkFiles reports, once per process, whether the storage paths walk the
// open files: only when the kernel refuses the storage map's iterator with
// EPERM and permits the open files' walk. Its error names the missing
// feature when neither walk loads.
var walkFiles = sync.OnceValues(func() (bool, error) {
	refused, err := iterRefused("bpf_sk_storage_map")
	if !refused || err != nil {
		return false, err
	}
	if ferr := fileWalkPermitted(); ferr != nil {
		return false, fmt.Errorf("iter/bpf_sk_storage_map: not permitted by this kernel, and the walk over open files instead: %w", ferr)
	}
	return true, nil
})

// iterRefused reports whether the kernel refuses an iterator program over
// target with EPERM; another failure to load it is the missing feature's
// error.
func iterRefused(target string) (bool, error) {
	err := loadTracing(ebpf.AttachTraceIter, target, nil)
	switch {
	case err == nil:
		return false, nil
	case errors.Is(err, unix.EPERM):
		return true, nil
	}
	return false, feature("iter/"+target, err)
}

// fileWalkPermitted probes iter/task_file and bpf_sock_from_file in it.
func fileWalkPermitted() error {
	if err := feature("iter/task_file", loadTracing(ebpf.AttachTraceIter, "task_file", nil)); err != nil {
		return err
	}
	// struct bpf_iter__task_file { meta; task; u32 fd; file; }: file at 24.
	body := asm.Instructions{
		asm.LoadMem(asm.R1, asm.R1, 24, asm.DWord),
		asm.JEq.Imm(asm.R1, 0, "out"),
		asm.FnSockFromFile.Call(),
		asm.Mov.Imm(asm.R0, 0).WithSymbol("out"),
	}
	return feature("bpf_sock_from_file in iter/task_file", loadTracing(ebpf.AttachTraceIter, "task_file", body))
}

// hashWalkRun reports, once per process, whether the hashmap path walks
// sk_hash with hash_walk_samples (bpf/tcp_hash.c: a raw_tp program that
// SampleWalk runs, going over the map with bpf_for_each_map_elem) because
// the kernel refuses iter/bpf_map_elem with EPERM.
var hashWalkRun = sync.OnceValues(func() (bool, error) { return iterRefused("bpf_map_elem") })

// runWalk runs a walk program (hash_walk_samples) until it has gone over
// every entry, calling drain after each run; it reports whether one run
// did: a walk resumed after a full ring may repeat or miss an entry.
func runWalk(prog *ebpf.Program, drain func() error) (complete bool, err error) {
	const full = 1 << 31
	var skip uint64
	for runs := 0; ; runs++ {
		ret, err := prog.Run(&ebpf.RunOptions{Context: []uint64{skip}})
		if err != nil {
			return false, fmt.Errorf("run the walk: %w", err)
		}
		if err := drain(); err != nil {
			return false, err
		}
		if ret&full == 0 {
			return runs == 0, nil
		}
		if next := uint64(ret &^ full); next > skip {
			skip = next
		} else {
			// Not even one entry fit in the emptied ring.
			return false, fmt.Errorf("run the walk: the sample ring holds no record after %d entries", skip)
		}
	}
}

// useWalk makes the program named mapWalk in spec the walk that the kernel
// permits: the open files' walk, filesWalk, when files is set, so that the
// loaders assign whichever walk under one name.
func useWalk(spec *ebpf.CollectionSpec, mapWalk, filesWalk string, files bool) {
	if files {
		spec.Programs[mapWalk] = spec.Programs[filesWalk]
	}
	delete(spec.Programs, filesWalk)
}

// walkName names a walk for the start log and errors.
func walkName(files bool) string {
	if files {
		return "iter/task_file (the kernel refuses iter/bpf_sk_storage_map)"
	}
	return "iter/bpf_sk_storage_map"
}

// SampleWalks names the walk that samples the TCP sockets (and UDP's, with
// the storage paths): iter/bpf_sk_storage_map, iter/task_file where the
// kernel refuses that, or iter/bpf_map_elem on the hashmap path.
func (p *Probe) SampleWalks() string {
	if p.path == PathHashmap {
		if p.sampleRun != nil {
			return "bpf_for_each_map_elem (the kernel refuses iter/bpf_map_elem)"
		}
		return "iter/bpf_map_elem"
	}
	return walkName(p.fileWalk)
}
