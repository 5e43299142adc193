package consumers

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weir-project/weir/test/internal/harness"
)

// Names of the test's client and server executables: copies of flowcli and
// flowsrv under names of their own, so that the edges of this package's
// traffic carry workloads that no other test's traffic has (a collector sees
// every namespace of the machine).
const (
	cliName = "wcons-cli"
	srvName = "wcons-srv"
)

var (
	peersOnce sync.Once
	peersDir  string
	peersErr  error
)

// peers returns the paths of the renamed flowcli and flowsrv.
func peers(t testing.TB) (cli, srv string) {
	t.Helper()
	bin := harness.Binaries(t)
	peersOnce.Do(func() {
		peersDir, peersErr = os.MkdirTemp("", "weir-consumers-")
		if peersErr != nil {
			return
		}
		for from, to := range map[string]string{"flowcli": cliName, "flowsrv": srvName} {
			b, err := os.ReadFile(filepath.Join(bin, from))
			if err != nil {
				peersErr = err
				return
			}
			if err := os.WriteFile(filepath.Join(peersDir, to), b, 0o755); err != nil {
				peersErr = err
				return
			}
		}
	})
	if peersErr != nil {
		t.Fatal(peersErr)
	}
	return filepath.Join(peersDir, cliName), filepath.Join(peersDir, srvName)
}

var (
	ctlOnce sync.Once
	ctlPath string
	ctlErr  error
)

// weirctl returns the path of weirctl: $WEIR_BIN_DIR/weirctl, or one built
// once per test process.
func weirctl(t testing.TB) string {
	t.Helper()
	if dir := os.Getenv("WEIR_BIN_DIR"); dir != "" {
		return filepath.Join(dir, "weirctl")
	}
	ctlOnce.Do(func() {
		dir, err := os.MkdirTemp("", "weirctl-")
		if err != nil {
			ctlErr = err
			return
		}
		ctlPath = filepath.Join(dir, "weirctl")
		cmd := exec.Command("go", "build", "-o", ctlPath, "github.com/weir-project/weir/reducer/cmd/weirctl")
		if out, err := cmd.CombinedOutput(); err != nil {
			ctlErr = fmt.Errorf("go build weirctl: %w\n%s", err, out)
		}
	})
	if ctlErr != nil {
		t.Fatal(ctlErr)
	}
	return ctlPath
}

// runCtl runs weirctl to completion and returns its stdout, stderr and exit code.
func runCtl(t testing.TB, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, weirctl(t), args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Env = append(os.Environ(), "NO_COLOR=1")
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("weirctl %s: %v", strings.Join(args, " "), err)
	}
	return out.String(), errb.String(), code
}

// lineReader runs a process and collects every line of its stdout.
type lineReader struct {
	cmd   *exec.Cmd
	mu    sync.Mutex
	lines []string
	done  chan struct{}
	errb  bytes.Buffer
}

func startLines(t testing.TB, argv ...string) *lineReader {
	t.Helper()
	r := &lineReader{cmd: exec.Command(argv[0], argv[1:]...), done: make(chan struct{})}
	r.cmd.Stderr = &r.errb
	r.cmd.Env = append(os.Environ(), "NO_COLOR=1")
	out, err := r.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(r.done)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			r.mu.Lock()
			r.lines = append(r.lines, sc.Text())
			r.mu.Unlock()
		}
		_ = r.cmd.Wait()
	}()
	t.Cleanup(r.stop)
	return r
}

func (r *lineReader) snapshot() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.lines...)
}

func (r *lineReader) stop() {
	select {
	case <-r.done:
		return
	default:
	}
	_ = r.cmd.Process.Signal(os.Interrupt)
	select {
	case <-r.done:
	case <-time.After(5 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.done
	}
}

// otelcolManifest is the collector builder manifest; OUTPUT is replaced by
// the build directory.
const otelcolManifest = "testdata/otelcol-manifest.yaml"

// builderVersion is the OpenTelemetry Collector builder (ocb) version; the
// manifest's modules match it.
const builderVersion = "v0.161.0"

// otelcol returns the path of an OpenTelemetry Collector with the OTLP
// receiver and the file exporter, built with the collector builder under
// ~/.cache/weir/otelcol/ on first use (about a minute) and reused after.
func otelcol(t testing.TB) string {
	t.Helper()
	manifest, err := os.ReadFile(otelcolManifest)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(manifest)
	cache := os.Getenv("WEIR_CACHE")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			t.Fatal(err)
		}
		cache = filepath.Join(home, ".cache", "weir")
	}
	root := filepath.Join(cache, "otelcol")
	dir := filepath.Join(root, builderVersion+"-"+hex.EncodeToString(sum[:6]))
	bin := filepath.Join(dir, "otelcol-weir")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	t.Logf("building the OpenTelemetry Collector into %s (once; about a minute)", dir)
	builder := filepath.Join(root, "bin", "builder-"+builderVersion)
	if _, err := os.Stat(builder); err != nil {
		tmp := filepath.Join(root, "bin", "tmp")
		cmd := exec.Command("go", "install", "go.opentelemetry.io/collector/cmd/builder@"+builderVersion)
		cmd.Env = append(os.Environ(), "GOWORK=off", "GOBIN="+tmp)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go install builder: %v\n%s", err, out)
		}
		if err := os.Rename(filepath.Join(tmp, "builder"), builder); err != nil {
			t.Fatal(err)
		}
	}
	build := dir + ".tmp"
	_ = os.RemoveAll(build)
	if err := os.MkdirAll(build, 0o755); err != nil {
		t.Fatal(err)
	}
	m := filepath.Join(build, "manifest.yaml")
	if err := os.WriteFile(m, bytes.ReplaceAll(manifest, []byte("OUTPUT"), []byte(build)), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(builder, "--config", m)
	cmd.Env = append(os.Environ(), "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("collector builder: %v\n%s", err, out)
	}
	_ = os.RemoveAll(dir)
	if err := os.Rename(build, dir); err != nil {
		t.Fatal(err)
	}
	return bin
}

// otelCollector is a running OpenTelemetry Collector that writes what it
// receives to a file, one JSON line per export.
type otelCollector struct {
	t    testing.TB
	bin  string
	addr string
	dir  string
	n    int
	proc *harness.Process
	file string
}

// startOtelcol starts a collector on a free loopback port.
func startOtelcol(t testing.TB) *otelCollector {
	t.Helper()
	c := &otelCollector{t: t, bin: otelcol(t), addr: fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t)), dir: t.TempDir()}
	c.start()
	return c
}

// start (re)starts the collector on its address, writing to a new file.
func (c *otelCollector) start() {
	c.t.Helper()
	c.n++
	c.file = filepath.Join(c.dir, fmt.Sprintf("metrics-%d.jsonl", c.n))
	cfg := fmt.Sprintf(`receivers:
  otlp:
    protocols:
      grpc:
        endpoint: %s
exporters:
  file:
    path: %s
    flush_interval: 100ms
service:
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
  pipelines:
    metrics:
      receivers: [otlp]
      exporters: [file]
`, c.addr, c.file)
	path := filepath.Join(c.dir, fmt.Sprintf("config-%d.yaml", c.n))
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		c.t.Fatal(err)
	}
	c.proc = harness.Start(c.t, "otelcol", c.bin, "--config", path)
	deadline := time.Now().Add(20 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", c.addr, time.Second)
		if err == nil {
			_ = conn.Close()
			return
		}
		if time.Now().After(deadline) || !c.proc.Alive() {
			c.t.Fatalf("otelcol did not listen on %s: %v\n%s", c.addr, err, c.proc.Stderr())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop stops the collector; its file stays.
func (c *otelCollector) stop() { c.proc.Stop(10 * time.Second) }

// files returns every file the collector has written, oldest first.
func (c *otelCollector) files() []string {
	var out []string
	for i := 1; i <= c.n; i++ {
		out = append(out, filepath.Join(c.dir, fmt.Sprintf("metrics-%d.jsonl", i)))
	}
	return out
}

// readExports parses the JSON lines of the collector's file exporter.
func readExports(t testing.TB, files ...string) []export {
	t.Helper()
	var out []export
	for _, f := range files {
		b, err := os.ReadFile(f)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range bytes.Split(b, []byte("\n")) {
			if len(bytes.TrimSpace(line)) == 0 {
				continue
			}
			e, err := parseExport(line)
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			out = append(out, e)
		}
	}
	return out
}

// atoi64 parses the string form of an int64 in OTLP JSON.
func atoi64(s string) int64 {
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}
