package cgroups

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

func inode(t *testing.T, p string) uint64 {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

// TestIndex walks a directory tree standing in for a cgroup2 mount (a
// cgroup's id is its directory's inode number there).
func TestIndex(t *testing.T) {
	root := t.TempDir()
	pod := filepath.Join(root, "kubepods", "besteffort", "pod"+uid)
	if err := os.MkdirAll(filepath.Join(pod, id), 0o755); err != nil {
		t.Fatal(err)
	}
	x := NewIndex(root)
	now := time.Unix(1000, 0)
	x.now = func() time.Time { return now }
	want := "/kubepods/besteffort/pod" + uid + "/" + id
	if p, ok := x.Path(inode(t, filepath.Join(pod, id))); !ok || p != want {
		t.Fatalf("Path = %q, %v; want %q", p, ok, want)
	}
	if p, ok := x.Path(inode(t, root)); !ok || p != "/" {
		t.Errorf("root: Path = %q, %v", p, ok)
	}
	if _, ok := x.Path(0); ok {
		t.Error("id 0 found")
	}

	// A cgroup created after the walk has a larger id than any it saw: it
	// is walked for at once. An id no walk saw, below those, is looked for
	// again only after MinWalk.
	late := filepath.Join(root, "kubepods", "burstable")
	if err := os.Mkdir(late, 0o755); err != nil {
		t.Fatal(err)
	}
	if p, ok := x.Path(inode(t, late)); !ok || p != "/kubepods/burstable" {
		t.Errorf("new cgroup: Path = %q, %v", p, ok)
	}
	walked := x.walked
	now = now.Add(time.Second / 2)
	below := x.maxID - 1
	for x.paths[below] != "" {
		below--
	}
	if _, ok := x.Path(below); ok || !x.walked.Equal(walked) {
		t.Errorf("an unknown id below the last walk's: found %v, walked again %v", ok, !x.walked.Equal(walked))
	}
	if _, ok := x.Path(x.maxID + 1000); ok || x.walked.Equal(walked) {
		t.Errorf("an id above the last walk's: found %v, walked again %v", ok, !x.walked.Equal(walked))
	}
	now = now.Add(time.Second)
	walked = x.walked
	if _, ok := x.Path(below); ok || x.walked.Equal(walked) {
		t.Errorf("after MinWalk: found %v, walked again %v", ok, !x.walked.Equal(walked))
	}
}
