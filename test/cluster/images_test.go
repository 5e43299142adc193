package cluster

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/weir-project/weir/test/internal/ociimage"
)

// The images the node runs: weir's own from `make images` ($WEIR_BIN_DIR/images,
// ghcr.io/weir-project/<name>:dev) or, without them, built here the same way;
// and the test's: the pause image of the sandboxes and the flowsrv and flowcli
// peers (weir.test/<name>:dev), static binaries in images of the same shape.

const (
	weirRepo = "ghcr.io/weir-project"
	testRepo = "weir.test"
	imageTag = "dev"
)

// nodeImages returns the image tarballs to import.
func nodeImages(t *testing.T) []string {
	t.Helper()
	dir := t.TempDir()
	opts := func(repo string) ociimage.Options {
		return ociimage.Options{Repo: repo, Tag: imageTag, Version: "test", Arch: runtime.GOARCH,
			Created: time.Unix(0, 0).UTC(), Licenses: "NOASSERTION"}
	}
	var tars []string
	made := opts(weirRepo)
	for _, name := range []string{"weir-collector", "weir-reducer", "weir-k8s-watcher"} {
		if bin := os.Getenv("WEIR_BIN_DIR"); bin != "" {
			if p := filepath.Join(bin, "images", name+".tar"); fileExists(p) {
				tars = append(tars, p)
				continue
			}
		}
		spec := ociimage.Spec{Name: name, Description: name}
		for _, s := range ociimage.Images {
			if s.Name == name {
				spec = s
			}
		}
		p := filepath.Join(dir, name+".tar")
		if _, err := made.Write(spec, staticBinary(t, name), p); err != nil {
			t.Fatal(err)
		}
		tars = append(tars, p)
	}
	test := opts(testRepo)
	for _, name := range []string{"pause", "flowsrv", "flowcli"} {
		p := filepath.Join(dir, name+".tar")
		if _, err := test.Write(ociimage.Spec{Name: name, Description: "weir test " + name}, staticBinary(t, name), p); err != nil {
			t.Fatal(err)
		}
		tars = append(tars, p)
	}
	return tars
}
