package probe

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -go-package probe -target amd64,arm64 -type discovered discoverFiles ../../../bpf/discover_files.c -- -I../../../bpf/headers -mcpu=v3 -Wall -Werror

// The file walk writes the same record as the per-namespace walk.
var _ tcpIterDiscovered = tcpIterDiscovered(discoverFilesDiscovered{})

// discoverFiles finds the connected and listening TCP sockets that some
// process holds open, in every network namespace, without entering any:
// an iter/task_file walk over the open files of every process in the PID
// namespace of Config.ProcRoot's processes (the host's, with hostPID). Each
// socket not yet tracked gets its storage, with the owner set to the
// process that holds it, and an Event as Discover reports it (with that
// owner). Only the namespaces of Config.NetNS when it is set.
//
// The program is loaded for the walk and released after it.
func (p *Probe) discoverFiles() ([]Event, error) {
	if p.path == PathHashmap {
		return nil, errHashmapFiles
	}
	w, err := p.loadFilesWalk()
	if err != nil {
		return nil, err
	}
	defer w.close()
	return p.walkFiles(w)
}

// filesWalk is the loaded and attached iter/task_file program.
type filesWalk struct {
	objs discoverFilesObjects
	it   *link.Iter
}

func (w *filesWalk) close() {
	w.it.Close()
	w.objs.Close()
}

// loadFilesWalk loads the file walk, sharing the socket storage and the
// drops array, for the namespaces of Config.NetNS (all when empty).
func (p *Probe) loadFilesWalk() (*filesWalk, error) {
	spec, err := loadDiscoverFiles()
	if err != nil {
		return nil, err
	}
	var inodes []uint32
	for _, path := range p.netns {
		var st unix.Stat_t
		if err := unix.Stat(path, &st); err != nil {
			if gone(err) {
				continue
			}
			return nil, fmt.Errorf("network namespace %s: %w", path, err)
		}
		inodes = append(inodes, uint32(st.Ino))
	}
	if len(p.netns) > 0 {
		if limit := spec.Maps[discoverFilesMapNetnsFilter].MaxEntries; len(inodes) > int(limit) {
			return nil, fmt.Errorf("iter/task_file: %d network namespaces, at most %d", len(inodes), limit)
		}
		if err := spec.Variables[discoverFilesVarFilterNetns].Set(uint8(1)); err != nil {
			return nil, fmt.Errorf("set filter_netns: %w", err)
		}
	}
	w := &filesWalk{}
	opts := &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{
		discoverFilesMapSkStates: p.objs.SkStates,
		discoverFilesMapDrops:    p.objs.Drops,
	}}
	if err := spec.LoadAndAssign(&w.objs, loadOptions(opts)); err != nil {
		return nil, loadError("iter/task_file", err)
	}
	for _, ino := range inodes {
		if err := w.objs.NetnsFilter.Put(ino, uint8(1)); err != nil {
			w.objs.Close()
			return nil, fmt.Errorf("netns_filter: %w", err)
		}
	}
	w.it, err = link.AttachIter(link.IterOptions{Program: w.objs.DiscoverFiles})
	if err != nil {
		w.objs.Close()
		return nil, fmt.Errorf("attach iter/task_file: %w", err)
	}
	return w, nil
}

// walkFiles runs the walk once and decodes its records.
func (p *Probe) walkFiles(w *filesWalk) ([]Event, error) {
	events, err := p.readDiscovered(w.it)
	if err != nil {
		return events, fmt.Errorf("iter/task_file: %w", err)
	}
	return events, nil
}

// discoverNotEntered completes the per-namespace walk when setns was
// refused for some namespaces (EPERM: no CAP_SYS_ADMIN): the file walk
// finds the sockets held by processes in every namespace, and those errors
// are then dropped. The namespaces walked already are not repeated: their
// sockets are tracked, and only listeners found by iter/tcp (which have no
// storage) are reported again, now with their owner.
func (p *Probe) discoverNotEntered(events []Event, errs []error) ([]Event, []error) {
	var rest []error
	for _, err := range errs {
		if !errors.Is(err, unix.EPERM) {
			rest = append(rest, err)
		}
	}
	if len(rest) == len(errs) {
		return events, errs
	}
	found, err := p.discoverFiles()
	events = append(events, found...)
	if err != nil {
		return events, append(errs, err)
	}
	return events, rest
}
