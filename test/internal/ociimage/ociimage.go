// Package ociimage builds the container images of weir's binaries without a
// container engine: one static binary in one layer, a non-root user, OCI
// labels, written as an image tarball that `ctr images import` and
// `docker load` accept.
package ociimage

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// UID and GID are the default user of every image: the "nonroot" user of
// distroless images. The collector's pod runs as 0 with only the
// capabilities it needs (see the README).
const (
	UID = 65532
	GID = 65532
)

// BinDir is where the binary lies inside the image.
const BinDir = "/usr/local/bin"

// Spec describes one image.
type Spec struct {
	// Name is the binary's name, the image's name and its title.
	Name        string
	Description string
	// Ports are exposed TCP ports (documentation only).
	Ports []int
}

// Images are weir's four images.
var Images = []Spec{
	{Name: "weir-collector", Description: "weir's per-node eBPF collector of TCP and UDP socket counters", Ports: []int{7011}},
	{Name: "weir-reducer", Description: "weir's reducer: joins both ends of each flow and serves the dependency map", Ports: []int{7000, 7010}},
	{Name: "weir-k8s-watcher", Description: "weir's Kubernetes watcher: streams pods, services and nodes to the reducer", Ports: []int{7012}},
	{Name: "weirctl", Description: "weir's command line client of the reducer's Observer API"},
}

// Options are the values shared by every image.
type Options struct {
	// Repo is the image repository prefix, e.g. ghcr.io/weir-project.
	Repo string
	// Tag of every image, e.g. dev or 0.1.0.
	Tag string
	// Version and Revision are the labels' version and git commit.
	Version, Revision string
	// Source is the repository URL of the labels.
	Source string
	// Licenses is an SPDX expression.
	Licenses string
	// Created is the image's creation time (the commit's, for
	// reproducible images).
	Created time.Time
	// Arch is the GOARCH of the binaries.
	Arch string
	// CACerts is a CA bundle put at /etc/ssl/certs/ca-certificates.crt
	// (the OTLP exporter's system roots); empty: none.
	CACerts string
}

// Validate names the first missing option.
func (o *Options) Validate() error {
	switch {
	case o.Repo == "":
		return errors.New("repo is empty")
	case o.Tag == "":
		return errors.New("tag is empty")
	case o.Version == "":
		return errors.New("version is empty")
	case o.Arch == "":
		return errors.New("arch is empty")
	}
	return nil
}

// Ref returns the image reference of spec, e.g.
// ghcr.io/weir-project/weir-collector:dev.
func (o *Options) Ref(s Spec) (name.Tag, error) {
	return name.NewTag(o.Repo + "/" + s.Name + ":" + o.Tag)
}

// Labels returns the OCI annotations of spec's image.
func (o *Options) Labels(s Spec) map[string]string {
	l := map[string]string{
		"org.opencontainers.image.title":       s.Name,
		"org.opencontainers.image.description": s.Description,
		"org.opencontainers.image.version":     o.Version,
		"org.opencontainers.image.revision":    o.Revision,
		"org.opencontainers.image.source":      o.Source,
		"org.opencontainers.image.licenses":    o.Licenses,
		"org.opencontainers.image.created":     o.Created.UTC().Format(time.RFC3339),
	}
	for k, v := range l {
		if v == "" {
			delete(l, k)
		}
	}
	return l
}

// Image builds spec's image around the static binary at bin.
func (o *Options) Image(s Spec, bin string) (v1.Image, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	exe, err := os.ReadFile(bin)
	if err != nil {
		return nil, fmt.Errorf("read binary: %w", err)
	}
	if err := CheckStatic(bytes.NewReader(exe)); err != nil {
		return nil, fmt.Errorf("%s: %w", bin, err)
	}
	var ca []byte
	if o.CACerts != "" {
		if ca, err = os.ReadFile(o.CACerts); err != nil {
			return nil, fmt.Errorf("read CA bundle: %w", err)
		}
	}
	layerTar, err := o.rootfs(s, exe, ca)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer), tarball.WithCompressedCaching)
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:     layer,
		MediaType: types.OCILayer,
		History: v1.History{
			Created:   v1.Time{Time: o.Created},
			CreatedBy: "weir-images " + s.Name,
			Comment:   "static binary " + filepath.Join(BinDir, s.Name),
		},
	})
	if err != nil {
		return nil, fmt.Errorf("append layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.Architecture = o.Arch
	cf.OS = "linux"
	cf.Created = v1.Time{Time: o.Created}
	cf.Config = v1.Config{
		Entrypoint: []string{filepath.Join(BinDir, s.Name)},
		User:       strconv.Itoa(UID) + ":" + strconv.Itoa(GID),
		WorkingDir: "/",
		Env:        []string{"PATH=" + BinDir, "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"},
		Labels:     o.Labels(s),
	}
	if len(ca) == 0 {
		cf.Config.Env = cf.Config.Env[:1]
	}
	if len(s.Ports) > 0 {
		cf.Config.ExposedPorts = make(map[string]struct{}, len(s.Ports))
		for _, p := range s.Ports {
			cf.Config.ExposedPorts[strconv.Itoa(p)+"/tcp"] = struct{}{}
		}
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("set config: %w", err)
	}
	return mutate.Annotations(img, o.Labels(s)).(v1.Image), nil
}

// Write builds spec's image from bin and writes it to path as an image
// tarball tagged with its reference.
func (o *Options) Write(s Spec, bin, path string) (name.Tag, error) {
	ref, err := o.Ref(s)
	if err != nil {
		return name.Tag{}, fmt.Errorf("reference: %w", err)
	}
	img, err := o.Image(s, bin)
	if err != nil {
		return name.Tag{}, err
	}
	tmp := path + ".tmp"
	if err := tarball.WriteToFile(tmp, ref, img); err != nil {
		_ = os.Remove(tmp)
		return name.Tag{}, fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return name.Tag{}, fmt.Errorf("write %s: %w", path, err)
	}
	return ref, nil
}

// rootfs returns the image's only layer: the binary, /etc/passwd and
// /etc/group naming the non-root user, a /tmp, and the CA bundle if any.
func (o *Options) rootfs(s Spec, exe, ca []byte) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mt := o.Created
	dir := func(p string, mode int64) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: p + "/", Mode: mode, ModTime: mt, Format: tar.FormatPAX})
	}
	file := func(p string, mode int64, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: p, Mode: mode, Size: int64(len(data)), ModTime: mt, Format: tar.FormatPAX}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	passwd := fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n", UID, GID)
	group := fmt.Sprintf("root:x:0:\nnonroot:x:%d:\n", GID)
	steps := []func() error{
		func() error { return dir("etc", 0o755) },
		func() error { return file("etc/passwd", 0o644, []byte(passwd)) },
		func() error { return file("etc/group", 0o644, []byte(group)) },
		func() error { return dir("tmp", 0o1777) },
		func() error { return dir("usr", 0o755) },
		func() error { return dir("usr/local", 0o755) },
		func() error { return dir("usr/local/bin", 0o755) },
		func() error { return file("usr/local/bin/"+s.Name, 0o755, exe) },
	}
	if len(ca) > 0 {
		steps = append(steps,
			func() error { return dir("etc/ssl", 0o755) },
			func() error { return dir("etc/ssl/certs", 0o755) },
			func() error { return file("etc/ssl/certs/ca-certificates.crt", 0o644, ca) })
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return nil, fmt.Errorf("layer tar: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("layer tar: %w", err)
	}
	return buf.Bytes(), nil
}

// CheckStatic returns an error unless r is a statically linked ELF
// executable: no program interpreter and no shared libraries needed.
func CheckStatic(r io.ReaderAt) error {
	f, err := elf.NewFile(r)
	if err != nil {
		return fmt.Errorf("not an ELF executable: %w", err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return errors.New("dynamically linked (has a program interpreter); build with CGO_ENABLED=0")
		}
	}
	libs, err := f.ImportedLibraries()
	if err != nil {
		return fmt.Errorf("read dynamic section: %w", err)
	}
	if len(libs) > 0 {
		return fmt.Errorf("needs shared libraries %v; build with CGO_ENABLED=0", libs)
	}
	return nil
}
