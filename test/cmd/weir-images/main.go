// Command weir-images writes the OCI image tarballs of weir's binaries
// (`make images`): one image per static binary of --bin-dir, as
// <out-dir>/<name>.tar, tagged <repo>/<name>:<tag>.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"time"

	"github.com/weir-project/weir/test/internal/ociimage"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("weir-images", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		o       ociimage.Options
		binDir  = fs.String("bin-dir", "bin/static", "directory of the static binaries")
		outDir  = fs.String("out-dir", "bin/images", "directory the tarballs are written to")
		created = fs.String("created", "", "creation time: RFC 3339 or Unix seconds (default: now)")
	)
	fs.StringVar(&o.Repo, "repo", "ghcr.io/weir-project", "image repository prefix")
	fs.StringVar(&o.Tag, "tag", "dev", "image tag")
	fs.StringVar(&o.Version, "version", "dev", "org.opencontainers.image.version")
	fs.StringVar(&o.Revision, "revision", "", "org.opencontainers.image.revision (git commit)")
	fs.StringVar(&o.Source, "source", "https://github.com/weir-project/weir", "org.opencontainers.image.source")
	fs.StringVar(&o.Licenses, "licenses", "Apache-2.0 AND (GPL-2.0-only OR BSD-2-Clause)", "org.opencontainers.image.licenses (SPDX)")
	fs.StringVar(&o.Arch, "arch", runtime.GOARCH, "GOARCH of the binaries")
	fs.StringVar(&o.CACerts, "ca-certs", "", "CA bundle to put at /etc/ssl/certs/ca-certificates.crt (empty: none)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	t, err := parseTime(*created)
	if err != nil {
		fmt.Fprintf(stderr, "weir-images: --created: %v\n", err)
		return 2
	}
	o.Created = t
	if err := o.Validate(); err != nil {
		fmt.Fprintf(stderr, "weir-images: %v\n", err)
		return 2
	}
	if err := os.MkdirAll(*outDir, 0o755); err != nil {
		fmt.Fprintf(stderr, "weir-images: %v\n", err)
		return 1
	}
	for _, s := range ociimage.Images {
		out := filepath.Join(*outDir, s.Name+".tar")
		ref, err := o.Write(s, filepath.Join(*binDir, s.Name), out)
		if err != nil {
			fmt.Fprintf(stderr, "weir-images: %s: %v\n", s.Name, err)
			return 1
		}
		fmt.Fprintf(stdout, "%s\t%s\n", out, ref)
	}
	return 0
}

func parseTime(s string) (time.Time, error) {
	if s == "" {
		return time.Now().UTC().Truncate(time.Second), nil
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return time.Unix(n, 0).UTC(), nil
	}
	return time.Parse(time.RFC3339, s)
}
