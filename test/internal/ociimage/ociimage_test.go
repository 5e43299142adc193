package ociimage

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// packages are the main packages of the images, by name.
var packages = map[string]string{
	"weir-collector":   "github.com/weir-project/weir/collector/cmd/weir-collector",
	"weir-reducer":     "github.com/weir-project/weir/reducer/cmd/weir-reducer",
	"weir-k8s-watcher": "github.com/weir-project/weir/k8s-watcher/cmd/weir-k8s-watcher",
	"weirctl":          "github.com/weir-project/weir/reducer/cmd/weirctl",
}

// probes run each image's binary, out of its layer, on this machine.
var probes = map[string]struct {
	args []string
	want string // in the output
}{
	"weir-collector":   {args: []string{"--version"}, want: "weir-collector "},
	"weir-reducer":     {args: []string{"-h"}, want: "-http-addr"},
	"weir-k8s-watcher": {args: []string{"-h"}, want: "-kubeconfig"},
	"weirctl":          {args: []string{"version"}, want: "weirctl "},
}

// imagesDir returns the directory of the tarballs under test: those of
// `make images` ($WEIR_BIN_DIR/images), or else ones this test builds.
func imagesDir(t *testing.T) (dir, repo, tag string) {
	t.Helper()
	if bin := os.Getenv("WEIR_BIN_DIR"); bin != "" {
		dir := filepath.Join(bin, "images")
		if _, err := os.Stat(filepath.Join(dir, "weir-collector.tar")); err == nil {
			repo, tag := os.Getenv("WEIR_IMAGE_REPO"), os.Getenv("WEIR_IMAGE_TAG")
			if repo == "" {
				repo = "ghcr.io/weir-project"
			}
			if tag == "" {
				tag = "dev"
			}
			return dir, repo, tag
		}
		if os.Getenv("CI") == "true" {
			t.Fatalf("no image tarballs in %s: make test runs make images first", dir)
		}
	}
	// Outside make: build the static binaries and the images here.
	ctx, cancel := context.WithTimeout(t.Context(), 8*time.Minute)
	defer cancel()
	binDir, dir := t.TempDir(), t.TempDir()
	args := []string{"build", "-trimpath", "-ldflags", "-s -w -X main.version=test", "-o", binDir + "/"}
	for _, s := range Images {
		args = append(args, packages[s.Name])
	}
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	o := Options{Repo: "example.test/weir", Tag: "t1", Version: "test", Revision: "0123abc",
		Source: "https://github.com/weir-project/weir", Licenses: "NOASSERTION",
		Created: time.Unix(1700000000, 0).UTC(), Arch: runtime.GOARCH}
	for _, s := range Images {
		if _, err := o.Write(s, filepath.Join(binDir, s.Name), filepath.Join(dir, s.Name+".tar")); err != nil {
			t.Fatal(err)
		}
	}
	return dir, o.Repo, o.Tag
}

func TestImages(t *testing.T) {
	dir, repo, tag := imagesDir(t)
	for _, s := range Images {
		t.Run(s.Name, func(t *testing.T) {
			path := filepath.Join(dir, s.Name+".tar")
			ref, err := name.NewTag(repo + "/" + s.Name + ":" + tag)
			if err != nil {
				t.Fatal(err)
			}
			// The tarball names its image by the reference that
			// `ctr images import` and `docker load` will tag it with.
			m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(path) })
			if err != nil {
				t.Fatalf("manifest.json of %s: %v", path, err)
			}
			if len(m) != 1 || !slices.Equal(m[0].RepoTags, []string{ref.String()}) {
				t.Fatalf("%s names %+v, want one image tagged %s", path, m, ref)
			}
			img, err := tarball.ImageFromPath(path, &ref)
			if err != nil {
				t.Fatal(err)
			}
			cf, err := img.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			checkConfig(t, s, cf)
			files := readLayers(t, img)
			checkFiles(t, s, files)
			checkBinary(t, s, cf, files[BinDir[1:]+"/"+s.Name].data)
		})
	}
}

func checkConfig(t *testing.T, s Spec, cf *v1.ConfigFile) {
	t.Helper()
	if cf.OS != "linux" || cf.Architecture != runtime.GOARCH {
		t.Errorf("platform %s/%s, want linux/%s", cf.OS, cf.Architecture, runtime.GOARCH)
	}
	if want := []string{BinDir + "/" + s.Name}; !slices.Equal(cf.Config.Entrypoint, want) {
		t.Errorf("entrypoint %q, want %q", cf.Config.Entrypoint, want)
	}
	if len(cf.Config.Cmd) != 0 {
		t.Errorf("cmd %q, want none", cf.Config.Cmd)
	}
	if cf.Config.User != "65532:65532" {
		t.Errorf("user %q, want 65532:65532 (non-root by default)", cf.Config.User)
	}
	for _, k := range []string{"source", "version", "revision", "title", "licenses", "created", "description"} {
		if cf.Config.Labels["org.opencontainers.image."+k] == "" {
			t.Errorf("label org.opencontainers.image.%s missing; labels %v", k, cf.Config.Labels)
		}
	}
	if got := cf.Config.Labels["org.opencontainers.image.title"]; got != s.Name {
		t.Errorf("title %q, want %q", got, s.Name)
	}
	if got := cf.Config.Labels["org.opencontainers.image.source"]; !strings.HasPrefix(got, "https://") {
		t.Errorf("source %q is not a URL", got)
	}
	if _, err := time.Parse(time.RFC3339, cf.Config.Labels["org.opencontainers.image.created"]); err != nil {
		t.Errorf("created: %v", err)
	}
	for _, p := range s.Ports {
		if _, ok := cf.Config.ExposedPorts[strconv.Itoa(p)+"/tcp"]; !ok {
			t.Errorf("port %d not exposed: %v", p, cf.Config.ExposedPorts)
		}
	}
}

type file struct {
	hdr  *tar.Header
	data []byte
}

func readLayers(t *testing.T, img v1.Image) map[string]file {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 {
		t.Errorf("%d layers, want 1", len(layers))
	}
	files := make(map[string]file)
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			data, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			files[strings.TrimPrefix(h.Name, "./")] = file{hdr: h, data: data}
		}
		_ = rc.Close()
	}
	return files
}

func checkFiles(t *testing.T, s Spec, files map[string]file) {
	t.Helper()
	bin, ok := files[BinDir[1:]+"/"+s.Name]
	if !ok {
		t.Fatalf("no %s/%s in the image", BinDir, s.Name)
	}
	if bin.hdr.Mode != 0o755 || bin.hdr.Uid != 0 {
		t.Errorf("binary mode %o uid %d, want 755 owned by root (not writable by the user)", bin.hdr.Mode, bin.hdr.Uid)
	}
	if !strings.Contains(string(files["etc/passwd"].data), "nonroot:x:65532:65532:") {
		t.Errorf("/etc/passwd does not name uid 65532: %q", files["etc/passwd"].data)
	}
	if tmp, ok := files["tmp/"]; !ok || tmp.hdr.Mode != 0o1777 {
		t.Errorf("no /tmp with mode 1777")
	}
	for _, sh := range []string{"bin/sh", "usr/bin/sh", "bin/busybox"} {
		if _, ok := files[sh]; ok {
			t.Errorf("the image has a shell: /%s", sh)
		}
	}
}

func checkBinary(t *testing.T, s Spec, cf *v1.ConfigFile, exe []byte) {
	t.Helper()
	if err := CheckStatic(bytes.NewReader(exe)); err != nil {
		t.Fatalf("binary: %v", err)
	}
	if s.Name == "weir-collector" {
		// bpf2go embeds the eBPF objects of this architecture: tcp,
		// tcp_iter, udp, dns, proc.
		if n := countBPFObjects(exe); n < 5 {
			t.Errorf("%d eBPF ELF objects embedded in the collector, want 5", n)
		}
	}
	if cf.Architecture != runtime.GOARCH {
		return // cannot run it here
	}
	path := filepath.Join(t.TempDir(), s.Name)
	if err := os.WriteFile(path, exe, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	p := probes[s.Name]
	out, err := exec.CommandContext(ctx, path, p.args...).CombinedOutput()
	if err != nil && !strings.Contains(string(out), p.want) {
		t.Fatalf("%s %v: %v\n%s", s.Name, p.args, err, out)
	}
	if !strings.Contains(string(out), p.want) {
		t.Errorf("%s %v printed %q, want it to contain %q", s.Name, p.args, out, p.want)
	}
	if v := cf.Config.Labels["org.opencontainers.image.version"]; p.want == s.Name+" " && !strings.Contains(string(out), s.Name+" "+v) {
		t.Errorf("%s %v printed %q, want the version label %q", s.Name, p.args, out, v)
	}
}

// countBPFObjects counts the little-endian ELF files for the BPF machine
// (EM_BPF) inside exe.
func countBPFObjects(exe []byte) int {
	n := 0
	magic := []byte("\x7fELF\x02\x01")
	for i := 0; ; {
		j := bytes.Index(exe[i:], magic)
		if j < 0 {
			return n
		}
		i += j
		if i+20 <= len(exe) && elf.Machine(binary.LittleEndian.Uint16(exe[i+18:])) == elf.EM_BPF {
			n++
		}
		i += len(magic)
	}
}
