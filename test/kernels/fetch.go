package main

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// The Debian archive the kernels and the guests' userland come from. The
// suites are those of the kernels in the matrix; the userland (busybox,
// iproute2) is bookworm's for both architectures.
const (
	mirror       = "http://deb.debian.org/debian"
	keyring      = "/usr/share/keyrings/debian-archive-keyring.gpg"
	userlandFrom = "bookworm"
)

var aptSuites = []string{"bullseye", "bookworm", "bookworm-backports"}

// userland are the packages unpacked into each guest's sysroot: a shell
// for the tests' exec of /bin/sh, and ip for their network namespaces,
// with the libraries ip needs. closure checks that nothing is missing.
var userland = []string{
	"busybox-static", "iproute2",
	"libc6", "libbpf1", "libelf1", "libmnl0", "libbsd0", "libcap2", "zlib1g", "libmd0",
}

// guestTools are the dynamically linked programs copied into the guest,
// with the libraries they need (found by their ELF dynamic sections).
var guestTools = []string{"usr/bin/ip", "bin/ip", "sbin/ip"}

// apt runs apt-get or apt-cache on the private configuration under dir:
// its own sources, lists and package cache, so the machine's apt setup is
// neither needed nor changed.
type apt struct {
	dir string
}

func (a apt) opts() []string {
	return []string{
		"-o", "Dir::Etc::sourcelist=" + filepath.Join(a.dir, "sources.list"),
		"-o", "Dir::Etc::sourceparts=-",
		"-o", "Dir::State::Lists=" + filepath.Join(a.dir, "lists"),
		"-o", "Dir::Cache=" + filepath.Join(a.dir, "cache"),
		"-o", "APT::Architectures::=amd64",
		"-o", "APT::Architectures::=arm64",
		"-o", "Debug::NoLocking=1",
		"-q",
	}
}

// ensure writes the sources and fetches the package lists once; later runs
// use the cached lists, so a warm cache needs no network.
func (a apt) ensure(ctx context.Context) error {
	if _, err := os.Stat(filepath.Join(a.dir, "lists", "ok")); err == nil {
		return nil
	}
	for _, d := range []string{"lists/partial", "cache/archives/partial"} {
		if err := os.MkdirAll(filepath.Join(a.dir, d), 0o755); err != nil {
			return err
		}
	}
	var src strings.Builder
	for _, s := range aptSuites {
		fmt.Fprintf(&src, "deb [arch=amd64,arm64 signed-by=%s] %s %s main\n", keyring, mirror, s)
	}
	if err := os.WriteFile(filepath.Join(a.dir, "sources.list"), []byte(src.String()), 0o644); err != nil {
		return err
	}
	slog.Info("fetching Debian package lists", "suites", aptSuites)
	if _, err := a.run(ctx, "", "apt-get", "update"); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(a.dir, "lists", "ok"), nil, 0o644)
}

func (a apt) run(ctx context.Context, dir, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, append(a.opts(), args...)...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, stderr.Bytes())
	}
	return out, nil
}

// download fetches packages into dir.
func (a apt) download(ctx context.Context, dir string, pkgs ...string) error {
	_, err := a.run(ctx, dir, "apt-get", append([]string{"download"}, pkgs...)...)
	return err
}

// retry runs fetch, and when it fails, fetches the package lists again
// (the cached ones may name versions the archive no longer has) and runs
// it once more.
func (a apt) retry(ctx context.Context, fetch func() error) error {
	err := fetch()
	if err == nil || ctx.Err() != nil {
		return err
	}
	slog.Warn("download failed; fetching the package lists again", "err", err)
	if rmErr := os.Remove(filepath.Join(a.dir, "lists", "ok")); rmErr != nil {
		return errors.Join(err, rmErr)
	}
	if err := a.ensure(ctx); err != nil {
		return err
	}
	return fetch()
}

// kernelImage returns the cached vmlinuz of k and its release, downloading
// the kernel package on first use: the newest image that Debian's cloud
// meta-package of k's architecture depends on in k's version series.
func (a apt) kernelImage(ctx context.Context, cache string, k kernel) (path, release string, err error) {
	err = a.retry(ctx, func() error {
		var err error
		path, release, err = a.kernelImageOnce(ctx, cache, k)
		return err
	})
	return path, release, err
}

func (a apt) kernelImageOnce(ctx context.Context, cache string, k kernel) (path, release string, err error) {
	dir := filepath.Join(cache, k.id())
	path = filepath.Join(dir, "vmlinuz")
	if b, err := os.ReadFile(filepath.Join(dir, "release")); err == nil {
		if _, err := os.Stat(path); err == nil {
			return path, strings.TrimSpace(string(b)), nil
		}
	}
	meta := "linux-image-cloud-" + k.arch + ":" + k.arch
	out, err := a.run(ctx, "", "apt-cache", "show", meta)
	if err != nil {
		return "", "", err
	}
	pkg, version := "", ""
	for _, stanza := range strings.Split(string(out), "\n\n") {
		fields := map[string]string{}
		for line := range strings.SplitSeq(stanza, "\n") {
			if k, v, ok := strings.Cut(line, ": "); ok {
				fields[k] = v
			}
		}
		if !strings.HasPrefix(fields["Version"], k.series+".") {
			continue
		}
		dep := strings.Fields(fields["Depends"])
		if len(dep) < 3 || dep[1] != "(=" || !strings.HasPrefix(dep[0], "linux-image-") {
			return "", "", fmt.Errorf("%s %s: unexpected Depends %q", meta, fields["Version"], fields["Depends"])
		}
		pkg, version = dep[0], strings.TrimSuffix(strings.TrimSuffix(dep[2], ","), ")")
		break
	}
	if pkg == "" {
		return "", "", fmt.Errorf("no %s in the %s series in %v", meta, k.series, aptSuites)
	}
	slog.Info("downloading kernel", "package", pkg, "version", version, "arch", k.arch)
	tmp, err := os.MkdirTemp(cache, "dl-")
	if err != nil {
		return "", "", err
	}
	defer os.RemoveAll(tmp)
	if err := a.download(ctx, tmp, pkg+":"+k.arch+"="+version); err != nil {
		return "", "", err
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return "", "", fmt.Errorf("apt-get download %s: %d packages", pkg, len(debs))
	}
	root := filepath.Join(tmp, "root")
	if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", debs[0], root).CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("dpkg-deb -x %s: %w\n%s", debs[0], err, out)
	}
	images, _ := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	if len(images) != 1 {
		return "", "", fmt.Errorf("%s: %d kernel images in /boot", pkg, len(images))
	}
	release = strings.TrimPrefix(filepath.Base(images[0]), "vmlinuz-")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", err
	}
	if err := os.Rename(images[0], path); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "release"), []byte(release+"\n"), 0o644); err != nil {
		return "", "", err
	}
	return path, release, nil
}

// sysroot returns the cached directory holding bookworm's userland
// packages of arch unpacked, downloading them on first use.
func (a apt) sysroot(ctx context.Context, cache, arch string) (dir string, err error) {
	err = a.retry(ctx, func() error {
		var err error
		dir, err = a.sysrootOnce(ctx, cache, arch)
		return err
	})
	return dir, err
}

func (a apt) sysrootOnce(ctx context.Context, cache, arch string) (string, error) {
	dir := filepath.Join(cache, "sysroot-"+arch)
	if _, err := os.Stat(filepath.Join(dir, ".ok")); err == nil {
		return dir, nil
	}
	slog.Info("downloading the guest userland", "arch", arch, "packages", userland)
	tmp, err := os.MkdirTemp(cache, "dl-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	var pkgs []string
	for _, p := range userland {
		pkgs = append(pkgs, p+":"+arch+"/"+userlandFrom)
	}
	if err := a.download(ctx, tmp, pkgs...); err != nil {
		return "", err
	}
	_ = os.RemoveAll(dir)
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	for _, deb := range debs {
		if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", deb, dir).CombinedOutput(); err != nil {
			return "", fmt.Errorf("dpkg-deb -x %s: %w\n%s", deb, err, out)
		}
	}
	return dir, os.WriteFile(filepath.Join(dir, ".ok"), nil, 0o644)
}

// closure returns the files of the sysroot that the guest needs, relative
// to it: busybox and the dynamically linked tools with their interpreter
// and every library they load, transitively. A library that cannot be
// found is an error that names it.
func closure(root string) (map[string]string, error) {
	files := map[string]string{} // path in the guest → path on the host
	bb := filepath.Join(root, "bin", "busybox")
	if _, err := os.Stat(bb); err != nil {
		return nil, fmt.Errorf("busybox: %w", err)
	}
	files["bin/busybox"] = bb
	var libDirs []string
	for _, d := range []string{"lib", "usr/lib"} {
		ents, _ := os.ReadDir(filepath.Join(root, d))
		for _, e := range ents {
			if e.IsDir() && strings.HasSuffix(e.Name(), "-linux-gnu") {
				libDirs = append(libDirs, filepath.Join(d, e.Name()))
			}
		}
	}
	queue := []string{}
	for _, t := range guestTools {
		if _, err := os.Stat(filepath.Join(root, t)); err == nil {
			queue = append(queue, t)
			break
		}
	}
	if len(queue) == 0 {
		return nil, fmt.Errorf("ip: not in %s", root)
	}
	for len(queue) > 0 {
		rel := queue[0]
		queue = queue[1:]
		if _, ok := files[rel]; ok {
			continue
		}
		host, err := resolveIn(root, rel)
		if err != nil {
			return nil, err
		}
		files[rel] = host
		f, err := elf.Open(host)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", rel, err)
		}
		libs, err := f.ImportedLibraries()
		var interp string
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				b := make([]byte, p.Filesz)
				if _, err := p.ReadAt(b, 0); err == nil {
					interp = strings.TrimRight(string(b), "\x00")
				}
			}
		}
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", rel, err)
		}
		if interp != "" {
			queue = append(queue, strings.TrimPrefix(interp, "/"))
		}
	next:
		for _, lib := range libs {
			for _, d := range libDirs {
				if _, err := os.Stat(filepath.Join(root, d, lib)); err == nil {
					queue = append(queue, filepath.Join(d, lib))
					continue next
				}
			}
			return nil, fmt.Errorf("%s needs %s: not in the sysroot's %v (add its package to userland)", rel, lib, libDirs)
		}
	}
	return files, nil
}

// resolveIn follows symbolic links inside root, as the guest will see
// them, and returns the host path of the file.
func resolveIn(root, rel string) (string, error) {
	p := rel
	for range 16 {
		host := filepath.Join(root, p)
		fi, err := os.Lstat(host)
		if err != nil {
			// usr-merged layouts: /lib → usr/lib.
			if alt, ok := strings.CutPrefix(p, "lib"); ok {
				if _, err2 := os.Lstat(filepath.Join(root, "usr", "lib"+alt)); err2 == nil {
					p = "usr/lib" + alt
					continue
				}
			}
			return "", fmt.Errorf("%s: %w", rel, err)
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			return host, nil
		}
		target, err := os.Readlink(host)
		if err != nil {
			return "", err
		}
		if filepath.IsAbs(target) {
			p = strings.TrimPrefix(target, "/")
		} else {
			p = filepath.Join(filepath.Dir(p), target)
		}
	}
	return "", fmt.Errorf("%s: too many symbolic links", rel)
}

// ensureQemu installs Debian's qemu system emulators when one is missing.
func ensureQemu(ctx context.Context) error {
	var missing []string
	for bin, pkg := range map[string]string{"qemu-system-x86_64": "qemu-system-x86", "qemu-system-aarch64": "qemu-system-arm"} {
		if _, err := exec.LookPath(bin); err != nil {
			missing = append(missing, pkg)
		}
	}
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		return errors.New("dpkg-deb not found: the kernel matrix needs a Debian-based host")
	}
	if len(missing) == 0 {
		return nil
	}
	slog.Info("installing qemu", "packages", missing)
	run := func(args ...string) error {
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("apt-get %s: %w\n%s", strings.Join(args, " "), err, lastLines(out, 20))
		}
		return nil
	}
	if err := run("update", "-qq"); err != nil {
		return err
	}
	return run(append([]string{"install", "-y", "-qq", "--no-install-recommends"}, missing...)...)
}

// lastLines returns the last n lines of b.
func lastLines(b []byte, n int) string {
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}
