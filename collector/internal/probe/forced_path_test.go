// The privileged tests of this package load the real programs into the
// running kernel (root needed; under CI=true they fail instead of
// skipping). WEIR_PROBE_PATH forces the probe path every test's
// DefaultConfig takes: auto (the default), tracepoint, fentry, hashmap or
// kprobe (refused: see Path). A kernel matrix runs this package's test binary
// once per path the kernel permits, e.g.
//
//	WEIR_PROBE_PATH=fentry ./probe.test -test.run Privileged
//
// TestPrivilegedForcedPath prints what each forced path gives on the
// kernel at hand (the refusal's reason where it cannot run).

package probe

import (
	"errors"
	"strings"
	"testing"
)

// TestPrivilegedForcedPath forces each path. The kprobe path is refused
// with its reason. The hashmap path works on every kernel that passes
// Check. The fentry path either works (a connection is sampled with its
// owners, as on the tracepoint path) or fails with a message that names
// fentry and the kernel's reason (on a kernel without BPF trampolines, or
// one that does not permit attaching them); the storage paths are refused
// by the missing feature where the kernel's tracing programs have no
// socket storage. Auto still opens: on the tracepoint path where the
// kernel has it, on hashmap where the storage paths cannot run.
func TestPrivilegedForcedPath(t *testing.T) {
	requirePrivileged(t)
	t.Run("kprobe", func(t *testing.T) {
		cfg := DefaultConfig()
		cfg.Path = PathKprobe
		p, err := Open(cfg)
		if err == nil {
			p.Close()
			t.Fatal("Open with the kprobe path succeeded")
		}
		if !strings.Contains(err.Error(), "--probe-path=kprobe") || !strings.Contains(err.Error(), "socket storage") {
			t.Errorf("refusal %q does not name the path and the reason", err)
		}
		t.Logf("kprobe: %v", err)
	})
	for _, path := range []Path{PathTracepoint, PathFentry, PathHashmap} {
		t.Run(string(path), func(t *testing.T) {
			cfg := udpConfig()
			cfg.Path = path
			storageErr := checkStorage()
			if path == PathTracepoint && tracepointArgs("sock_send_length") == 0 && storageErr == nil {
				// UDP sizes need the 6.3 tracepoints on this path: named, and TCP without UDP.
				if _, err := Open(cfg); err == nil || !strings.Contains(err.Error(), "tp_btf/sock_send_length (Linux 6.3): not supported") {
					t.Errorf("tracepoint path with UDP on a kernel without sock_send_length: %v", err)
				}
				cfg.UDP.Enabled = false
			}
			r, err := tryOpenRecorded(t, cfg)
			if err != nil {
				if path == PathHashmap || path == PathTracepoint && storageErr == nil && tracepointArgs("inet_sock_set_state") > 0 {
					t.Fatalf("the kernel has what the %s path needs, but: %v", path, err)
				}
				if storageErr != nil && !errors.Is(err, ErrNotSupported) {
					t.Errorf("storage path on a kernel without socket storage in tracing programs: %v does not wrap ErrNotSupported", err)
				}
				if !strings.Contains(err.Error(), "--probe-path="+string(path)) {
					t.Errorf("error %q does not name the path", err)
				}
				t.Logf("%s path not available here (printed, not skipped): %v", path, err)
				return
			}
			if got := r.p.Path(); got != path {
				t.Errorf("Path() = %s, want %s", got, path)
			}
			me := readSelf(t)
			ln := listen(t, "tcp4", "127.0.0.1:0")
			cp := dialPair(t, ln)
			defer cp.close()
			cp.exchange(t, 1000, 2000)
			client, server := addrPort(t, cp.client.LocalAddr()), addrPort(t, cp.server.LocalAddr())
			c := waitSample(t, r.p, client.Port(), server.Port())
			s := waitSample(t, r.p, server.Port(), client.Port())
			seen := waitCounters(t, r.p, map[uint64]Counters{
				c.Cookie: {BytesAcked: 1000, BytesReceived: 2000},
				s.Cookie: {BytesAcked: 2000, BytesReceived: 1000},
			})
			for cookie, smp := range seen {
				if smp.Owner != me.owner() {
					t.Errorf("%#x: owner %+v, want %+v", cookie, smp.Owner, me.owner())
				}
			}
			cp.close()
			r.wait(t, "client close", onPorts(EventClose, client.Port(), server.Port()))
			r.wait(t, "server close", onPorts(EventClose, server.Port(), client.Port()))
		})
	}
	t.Run("auto", func(t *testing.T) {
		cfg := DefaultConfig()
		cfg.Path = PathAuto
		p, err := Open(cfg)
		if err != nil {
			t.Fatalf("Open auto: %v", err)
		}
		defer p.Close()
		want := PathTracepoint
		switch {
		case checkStorage() != nil:
			want = PathHashmap
		case tracepointArgs("inet_sock_set_state") == 0:
			want = PathFentry
		}
		if p.Path() != want {
			t.Errorf("auto took %s, want %s", p.Path(), want)
		}
		for _, f := range p.Features() {
			t.Logf("feature %s enabled=%v: %s", f.Name, f.Enabled, f.Reason)
		}
	})
}

// tryOpenRecorded is openRecorded that returns Open's error.
func tryOpenRecorded(t *testing.T, cfg Config) (*recorder, error) {
	t.Helper()
	p, err := Open(cfg)
	if err != nil {
		return nil, err
	}
	p.Close()
	return openRecorded(t, cfg), nil
}
