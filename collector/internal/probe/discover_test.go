package probe

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestNetNSPathsProcRoot: the namespaces of the processes are looked for
// under the configured proc root, not the collector's own /proc.
func TestNetNSPathsProcRoot(t *testing.T) {
	root := filepath.Join(t.TempDir(), "host[proc]") // glob characters are literal
	for _, dir := range []string{"42/ns", "7/task/8/ns", "self/ns"} {
		if err := os.MkdirAll(filepath.Join(root, dir), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, link := range []string{"42/ns/net", "7/task/8/ns/net", "self/ns/net"} {
		if err := os.Symlink("/proc/self/ns/net", filepath.Join(root, link)); err != nil {
			t.Fatal(err)
		}
	}
	paths := netnsPaths(root)
	// One namespace, found once, through the first thread that has it.
	if !slices.Contains(paths, filepath.Join(root, "42/ns/net")) {
		t.Errorf("paths %q, want %s", paths, filepath.Join(root, "42/ns/net"))
	}
	for _, p := range paths {
		if strings.HasPrefix(p, "/proc/") || strings.HasSuffix(p, "/8/ns/net") || strings.Contains(p, "/self/") {
			t.Errorf("path %s: want only %s/<pid>/ns/net and /run/netns, each namespace once", p, root)
		}
	}
}
