package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
)

// initramfs is the content of a guest's initial root file system, written
// as an uncompressed cpio archive in the "newc" format the kernel unpacks.
type initramfs struct {
	dirs    map[string]bool
	entries map[string]entry
}

type entry struct {
	mode   uint32 // type and permission bits
	host   string // a regular file's content, from the host
	data   []byte // or its content in memory; a symbolic link's target
	rmajor uint32
	rminor uint32
}

const (
	modeDir  = 0o040000
	modeFile = 0o100000
	modeLink = 0o120000
	modeChar = 0o020000
)

func newInitramfs() *initramfs {
	return &initramfs{dirs: map[string]bool{}, entries: map[string]entry{}}
}

func (r *initramfs) mkdirAll(p string) {
	for p != "." && p != "/" && p != "" {
		r.dirs[p] = true
		p = path.Dir(p)
	}
}

func (r *initramfs) add(p string, e entry) {
	r.mkdirAll(path.Dir(p))
	r.entries[p] = e
}

func (r *initramfs) file(p, host string, perm uint32) {
	r.add(p, entry{mode: modeFile | perm, host: host})
}

func (r *initramfs) bytes(p string, data []byte, perm uint32) {
	r.add(p, entry{mode: modeFile | perm, data: data})
}

func (r *initramfs) symlink(p, target string) {
	r.add(p, entry{mode: modeLink | 0o777, data: []byte(target)})
}

func (r *initramfs) charDev(p string, major, minor uint32) {
	r.add(p, entry{mode: modeChar | 0o600, rmajor: major, rminor: minor})
}

// write writes the archive to file name.
func (r *initramfs) write(name string) error {
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	cw := &cpioWriter{w: w}
	var dirs []string
	for d := range r.dirs {
		dirs = append(dirs, d)
	}
	sort.Strings(dirs) // parents first
	for _, d := range dirs {
		if _, isEntry := r.entries[d]; !isEntry {
			cw.header(d, modeDir|0o755, 0, 0, 0)
		}
	}
	var names []string
	for n := range r.entries {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		e := r.entries[n]
		switch {
		case e.host != "":
			src, err := os.Open(e.host)
			if err != nil {
				f.Close()
				return err
			}
			fi, err := src.Stat()
			if err == nil {
				cw.header(n, e.mode, uint32(fi.Size()), 0, 0)
				var copied int64
				copied, err = io.Copy(w, src)
				if err == nil && copied != fi.Size() {
					err = fmt.Errorf("%s changed while copied", e.host)
				}
				cw.pad(fi.Size())
			}
			src.Close()
			if err != nil {
				f.Close()
				return err
			}
		default:
			cw.header(n, e.mode, uint32(len(e.data)), e.rmajor, e.rminor)
			_, _ = w.Write(e.data) // a bufio.Writer keeps its first error for Flush
			cw.pad(int64(len(e.data)))
		}
	}
	cw.header("TRAILER!!!", 0, 0, 0, 0)
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

type cpioWriter struct {
	w   *bufio.Writer
	ino uint32
}

func (c *cpioWriter) header(name string, mode, size, rmajor, rminor uint32) {
	c.ino++
	nlink := uint32(1)
	if mode&0o170000 == modeDir {
		nlink = 2
	}
	fmt.Fprintf(c.w, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, size, 0, 0, rmajor, rminor, len(name)+1, 0)
	// A bufio.Writer keeps its first error; write reports it at Flush.
	_, _ = c.w.WriteString(name)
	_ = c.w.WriteByte(0)
	c.pad(int64(110 + len(name) + 1))
}

func (c *cpioWriter) pad(n int64) {
	for ; n%4 != 0; n++ {
		_ = c.w.WriteByte(0)
	}
}
