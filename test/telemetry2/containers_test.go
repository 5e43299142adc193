package telemetry2

import (
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weir-project/weir/test/internal/harness"
)

// TestPrivilegedContainers places processes in cgroups whose paths have the
// shapes docker, containerd, cri-o and podman give them, on the v1 and the
// unified hierarchies of this hybrid host; each sends a known number of
// bytes over TCP to a server in the test process. Outside Kubernetes, each
// is the container workload of its short id, and its bytes are exact.
func TestPrivilegedContainers(t *testing.T) {
	harness.RequireRoot(t)
	for _, h := range []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup/pids", "/sys/fs/cgroup/systemd"} {
		if _, err := os.Stat(filepath.Join(h, "cgroup.procs")); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("cgroup hierarchy %s: %v", h, err)
			}
			t.Skipf("cgroup hierarchy %s: %v", h, err)
		}
	}
	w := harness.StartWeir(t, harness.WeirOptions{})

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(io.Discard, c)
			}()
		}
	}()

	uid := strings.Join([]string{randomHex(t, 4), randomHex(t, 2), randomHex(t, 2), randomHex(t, 2), randomHex(t, 6)}, "-")
	uidUnderscores := strings.ReplaceAll(uid, "-", "_")
	cases := []struct {
		name string
		dir  func(id string) string
	}{
		{"docker v1 cgroupfs", func(id string) string { return "/sys/fs/cgroup/pids/docker/" + id }},
		{"docker unified systemd", func(id string) string {
			return "/sys/fs/cgroup/unified/system.slice/docker-" + id + ".scope"
		}},
		{"containerd unified systemd", func(id string) string {
			return "/sys/fs/cgroup/unified/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" +
				uidUnderscores + ".slice/cri-containerd-" + id + ".scope"
		}},
		{"cri-o v1 cgroupfs", func(id string) string {
			return "/sys/fs/cgroup/systemd/kubepods/besteffort/pod" + uid + "/crio-" + id
		}},
		{"podman unified", func(id string) string { return "/sys/fs/cgroup/unified/machine.slice/libpod-" + id + ".scope" }},
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	type placed struct {
		name, id string
		bytes    int
	}
	var all []placed
	for i, tc := range cases {
		id := randomHex(t, 32)
		dir := tc.dir(id)
		makeCgroup(t, dir)
		n := 1000*(i+1) + 7
		p := harness.Start(t, "helper-"+tc.name, self, "weir-helper", "tcp-exec", ln.Addr().String(), strconv.Itoa(n))
		p.WaitLine(t, "ready", 30*time.Second)
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(p.PID())), 0); err != nil {
			t.Fatalf("%s: place pid %d: %v", tc.name, p.PID(), err)
		}
		t.Cleanup(func() {
			// The cgroup goes once its process is gone.
			p.Stop(5 * time.Second)
		})
		p.Send(t, "go")
		p.WaitLine(t, "sent", 30*time.Second)
		all = append(all, placed{tc.name, id, n})
	}
	for _, c := range all {
		short := c.id[:12]
		harness.WaitFor(t, w.MetricsURL, 60*time.Second, c.name+": bytes of container "+short, func(m harness.Metrics) bool {
			return m.Sum("weir_tcp_bytes_total", map[string]string{"src_workload": short, "src_kind": "container"}) == float64(c.bytes)
		})
	}
}

// makeCgroup creates dir and its missing parents, and removes those it
// created when the test ends (after the processes in them are gone).
func makeCgroup(t *testing.T, dir string) {
	t.Helper()
	var created []string
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil {
			break
		} else if !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		created = append(created, d)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// Registered first, so it runs after the cleanups that stop the
	// processes.
	t.Cleanup(func() {
		for _, d := range created {
			for i := 0; i < 50; i++ {
				if err := os.Remove(d); err == nil || errors.Is(err, os.ErrNotExist) {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	})
}
