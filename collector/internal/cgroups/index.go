package cgroups

import (
	"io/fs"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// Index finds a cgroup v2 directory by its id, as the kernel reports it
// (bpf_get_current_cgroup_id: the directory's inode number on the cgroup2
// mount). It names the cgroup of a process that has exited before /proc
// was read, as long as the cgroup itself remains (a pod's outlives its
// processes). A miss walks the mount again: at once for an id above any
// the last walk saw (kernfs hands out ids in increasing order, so that
// cgroup is newer than the walk), else at most once per second.
type Index struct {
	root    string
	minWalk time.Duration
	now     func() time.Time

	mu     sync.Mutex
	paths  map[uint64]string
	maxID  uint64 // the largest id of the last walk
	walked time.Time
}

// NewIndex returns an index of the cgroup2 mount at root (e.g.
// /sys/fs/cgroup, or /sys/fs/cgroup/unified on a hybrid host).
func NewIndex(root string) *Index {
	return &Index{root: root, minWalk: time.Second, now: time.Now}
}

// Path returns the path of cgroup id relative to the mount, e.g.
// /kubepods/besteffort/pod<uid>/<id>; false if no such cgroup is found.
func (x *Index) Path(id uint64) (string, bool) {
	if id == 0 {
		return "", false
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if p, ok := x.paths[id]; ok {
		return p, true
	}
	if now := x.now(); x.paths == nil || id > x.maxID || now.Sub(x.walked) >= x.minWalk {
		x.walked = now
		x.paths, x.maxID = x.walk()
	}
	p, ok := x.paths[id]
	return p, ok
}

// walk maps the id of each directory under the mount to its path; cgroups
// removed since the last walk are left out.
func (x *Index) walk() (map[uint64]string, uint64) {
	paths := make(map[uint64]string)
	var maxID uint64
	_ = filepath.WalkDir(x.root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil // a cgroup removed during the walk
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return nil
		}
		rel, err := filepath.Rel(x.root, p)
		if err != nil {
			return nil
		}
		if rel == "." {
			rel = ""
		}
		paths[st.Ino] = "/" + rel
		maxID = max(maxID, st.Ino)
		return nil
	})
	return paths, maxID
}
