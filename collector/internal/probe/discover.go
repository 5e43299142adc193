package probe

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Discover finds the TCP sockets that already exist, in every network
// namespace, and calls fn for each: EventListen for a listener, and
// EventExisting for a connected socket not yet tracked, which becomes
// tracked (sampled from now on, with a close event). An EventExisting
// carries the socket's counters at discovery, which are the baseline, and
// the inode of its file. Call it once after Open; a second call reports the
// listeners again but no socket already tracked.
//
// The namespaces are those of every thread in Config.ProcRoot and the ones
// mounted in /run/netns, or only those of Config.NetNS. A namespace that
// goes away meanwhile is skipped. If some cannot be entered (setns needs
// CAP_SYS_ADMIN), the open files of every process are walked instead
// (discoverFiles), which finds every socket a process holds, in every
// namespace, with its owner.
func (p *Probe) Discover(fn func(Event)) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return fmt.Errorf("discover: %w", ErrClosed)
	}
	var events []Event
	var errs []error
	done := make(chan struct{})
	go func() {
		defer close(done)
		paths := p.netns
		if len(paths) == 0 {
			paths = netnsPaths(p.procRoot)
		}
		events, errs = p.discoverAll(paths)
		// The namespaces setns may not enter (no CAP_SYS_ADMIN): see discover_files.go.
		events, errs = p.discoverNotEntered(events, errs)
	}()
	<-done
	for _, ev := range events {
		fn(ev)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("discover: %w", err)
	}
	return nil
}

// discoverAll runs the discovery iterator in each namespace, entering it on
// a locked thread. It runs on a goroutine of its own: if the thread cannot
// get back to its own namespace, it stays locked and dies with the goroutine.
func (p *Probe) discoverAll(paths []string) ([]Event, []error) {
	runtime.LockOSThread()
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return nil, []error{fmt.Errorf("own network namespace: %w", err)}
	}
	defer self.Close()

	var events []Event
	var errs []error
	var st unix.Stat_t
	_ = unix.Fstat(int(self.Fd()), &st)
	entered := false
	for _, path := range paths {
		evs, moved, err := p.discoverIn(path, st.Ino)
		entered = entered || moved
		if err != nil {
			errs = append(errs, err)
		}
		events = append(events, evs...)
	}
	if !entered {
		// Never left: nothing to return from (setns needs CAP_SYS_ADMIN,
		// which a least-privilege collector does not have).
		runtime.UnlockOSThread()
		return events, errs
	}
	if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
		return events, append(errs, fmt.Errorf("return to own network namespace: %w", err))
	}
	runtime.UnlockOSThread()
	return events, errs
}

// discoverIn runs the discovery iterator in the network namespace at path;
// it enters the namespace unless it is the thread's own (inode self), and
// reports whether it did.
func (p *Probe) discoverIn(path string, self uint64) ([]Event, bool, error) {
	ns, err := os.Open(path)
	if err != nil {
		if gone(err) {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("open %s: %w", path, err)
	}
	defer ns.Close()
	var st unix.Stat_t
	entered := false
	if err := unix.Fstat(int(ns.Fd()), &st); err != nil || st.Ino != self {
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			return nil, false, fmt.Errorf("enter %s: %w", path, err)
		}
		entered = true
	}
	events, err := p.discoverHere(path)
	return events, entered, err
}

// discoverHere runs the discovery iterator in the thread's namespace.
func (p *Probe) discoverHere(path string) ([]Event, error) {
	// The iterator walks the namespace of the thread that opens it.
	events, err := p.readDiscovered(p.discover)
	if err != nil {
		return events, fmt.Errorf("iter/tcp in %s: %w", path, err)
	}
	return events, nil
}

// gone: the process or mount that held a namespace went away.
func gone(err error) bool {
	return errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH)
}

// netnsPaths returns one path per distinct network namespace: of every
// thread in procRoot, and mounted in /run/netns.
func netnsPaths(procRoot string) []string {
	var paths []string
	seen := map[uint64]bool{}
	// Glob metacharacters in procRoot are taken literally.
	root := escapeGlob(procRoot)
	for _, pattern := range []string{root + "/[0-9]*/ns/net", root + "/[0-9]*/task/[0-9]*/ns/net", "/run/netns/*"} {
		matches, _ := filepath.Glob(pattern) // the patterns are valid
		for _, path := range matches {
			var st unix.Stat_t
			if err := unix.Stat(path, &st); err != nil || seen[st.Ino] {
				continue
			}
			seen[st.Ino] = true
			paths = append(paths, path)
		}
	}
	return paths
}

// escapeGlob quotes the characters filepath.Match treats specially.
func escapeGlob(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// readDiscovered reads every discovered record of one run of an iterator
// (iter/tcp or iter/task_file).
func (p *Probe) readDiscovered(it *link.Iter) ([]Event, error) {
	r, err := it.Open()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	var events []Event
	var decodeErr error
	err = readRecords(r, p.buf, discoveredSize, func(raw []byte) {
		ev, err := decodeDiscovered(raw)
		if err != nil {
			decodeErr = err
			return
		}
		events = append(events, ev)
	}, nil)
	return events, errors.Join(err, decodeErr)
}
