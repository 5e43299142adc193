package proc

import (
	"errors"
	"maps"
	"os"
	"slices"
	"testing"

	"go.uber.org/goleak"

	"github.com/weir-project/weir/collector/internal/probe"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func testFS(t *testing.T) *FS {
	t.Helper()
	fs, err := New("testdata/proc")
	if err != nil {
		t.Fatal(err)
	}
	return fs
}

func TestSocketOwners(t *testing.T) {
	got, err := testFS(t).SocketOwners()
	if err != nil {
		t.Fatal(err)
	}
	curl := probe.Owner{PID: 100, StartTime: 5000, Comm: "curl"}
	want := map[uint64]probe.Owner{
		1001: curl,
		1002: curl, // shared with pid 200: the lowest pid wins
		2001: {PID: 200, StartTime: 6000, Comm: "nginx worker"},
		3001: {PID: 300, StartTime: 7000, Comm: "redis"},
	}
	if !maps.Equal(got, want) {
		t.Fatalf("owners %v, want %v", got, want)
	}
}

func TestCgroupPath(t *testing.T) {
	tests := []struct {
		name      string
		pid       uint32
		startTime uint64
		want      string
		wantErr   error
	}{
		{name: "cgroup v2", pid: 100, startTime: 5000, want: "/system.slice/curl.service"},
		{name: "hybrid: the unified line wins", pid: 200, startTime: 6000, want: "/system.slice/nginx.service"},
		{name: "v1 only: memory before cpu", pid: 300, want: "/kubepods/pod1/c1"},
		{name: "v1 only: name=systemd first", pid: 400, want: "/s"},
		{name: "start time not checked", pid: 100, want: "/system.slice/curl.service"},
		{name: "pid reused", pid: 100, startTime: 4999, wantErr: ErrReused},
		{name: "no such process", pid: 999, wantErr: os.ErrNotExist},
	}
	fs := testFS(t)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := fs.CgroupPath(tc.pid, tc.startTime)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("error %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("%q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestProcess(t *testing.T) {
	fs := testFS(t)
	got, err := fs.Process(200)
	if err != nil {
		t.Fatal(err)
	}
	if want := (probe.Owner{PID: 200, StartTime: 6000, Comm: "nginx worker"}); got != want {
		t.Fatalf("%+v, want %+v", got, want)
	}
	if _, err := fs.Process(999); err == nil {
		t.Fatal("want an error for a missing process")
	}
}

func TestSocketInode(t *testing.T) {
	tests := []struct {
		target string
		want   uint64
		ok     bool
	}{
		{"socket:[12345]", 12345, true},
		{"socket:[]", 0, false},
		{"socket:[12x]", 0, false},
		{"pipe:[12345]", 0, false},
		{"/dev/null", 0, false},
		{"socket:[1", 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.target, func(t *testing.T) {
			got, ok := socketInode(tc.target)
			if got != tc.want || ok != tc.ok {
				t.Fatalf("%d %v, want %d %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}

// TestSelfOnRealProc reads this process on the real /proc: stat, cgroup,
// and a scan of every process's file descriptors.
func TestSelfOnRealProc(t *testing.T) {
	fs, err := New("/proc")
	if err != nil {
		t.Fatal(err)
	}
	self, err := fs.Process(uint32(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	if self.StartTime == 0 || self.Comm == "" {
		t.Fatalf("self %+v", self)
	}
	if _, err := fs.CgroupPath(self.PID, self.StartTime); err != nil {
		t.Fatal(err)
	}
	if _, err := fs.SocketOwners(); err != nil {
		t.Fatal(err)
	}
}

func TestDetails(t *testing.T) {
	fs := testFS(t)
	d, err := fs.Details(200, 6000, 20)
	if err != nil {
		t.Fatal(err)
	}
	if d.PPID != 12473 {
		t.Errorf("ppid %d, want 12473", d.PPID)
	}
	if d.Cmdline != "nginx: worker proces" {
		t.Errorf("cmdline %q", d.Cmdline)
	}
	want := []string{"/system.slice/nginx.service", "/legacy", "/system.slice/nginx.service"}
	if !slices.Equal(d.Cgroups, want) {
		t.Errorf("cgroups %q, want %q (unified first)", d.Cgroups, want)
	}
	if _, err := fs.Details(200, 5999, 20); !errors.Is(err, ErrReused) {
		t.Errorf("reused pid: %v", err)
	}
	if _, err := fs.Details(999, 0, 20); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("no process: %v", err)
	}
}

func TestTruncate(t *testing.T) {
	for _, tc := range []struct {
		in   string
		n    int
		want string
	}{
		{"abc", 5, "abc"},
		{"abcdef", 3, "abc"},
		{"aé", 2, "a"},
		{"", 0, ""},
	} {
		if got := truncate(tc.in, tc.n); got != tc.want {
			t.Errorf("truncate(%q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
		}
	}
}
