package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// The overhead benchmark in a guest (go run ./kernels -bench): test/e2e's
// BenchmarkPrivilegedOverhead, built with go test -c, runs inside Debian's
// 6.1 kernel against the collector forced onto each fallback path, with
// the same load (flowcli, flowsrv), the same bridged namespaces and the
// same interleaved windows without and with the collector as on the host.
// Its P1 and P1-churn are ratios within one guest, so the slowness of TCG
// falls on both arms; TCG's costs are not a real CPU's, so the figures are
// only indicative.

// benchKernel is the guest the benchmark boots.
var benchKernel = kernel{series: "6.1", suite: "bookworm", arch: "amd64"}

// benchModules are the modules of the kernel package that the bridged
// namespaces need (Debian builds veth and the bridge as modules), in load
// order.
var benchModules = []string{"kernel/net/llc/llc.ko", "kernel/net/802/stp.ko", "kernel/net/bridge/bridge.ko", "kernel/drivers/net/veth.ko"}

// benchBinaries are the binaries test/e2e's harness starts from
// $WEIR_BIN_DIR.
var benchBinaries = []string{
	"github.com/weir-project/weir/collector/cmd/weir-collector",
	"github.com/weir-project/weir/reducer/cmd/weir-reducer",
	"github.com/weir-project/weir/test/cmd/flowsrv",
	"github.com/weir-project/weir/test/cmd/flowcli",
}

// benchPlan and benchRun are the guest init's Plan and Run
// (test/kernels/guest), as JSON.
type benchPlan struct {
	Runs []benchRun `json:"runs"`
}

type benchRun struct {
	Path  string   `json:"path"`
	Suite string   `json:"suite"`
	Bin   string   `json:"bin"`
	Args  []string `json:"args"`
	Env   []string `json:"env"`
}

type benchOptions struct {
	cache   string
	paths   []string
	cpus    int
	memMB   int
	rounds  int  // runs of the benchmark per path, the paths' order reversed every other round
	short   bool // two pairs of 1 s windows per load instead of five of 5 s (a check that it works)
	timeout time.Duration
	verbose bool
}

// benchResult is one run of the benchmark: its metrics, and the ratio
// (with ÷ without) of each of its pairs of windows per load, from its log.
type benchResult struct {
	path    string
	metrics map[string]string
	pairs   map[string][]float64 // "keepalive", "churn"
	without map[string][]float64 // the rate of each pair's window without the collector
	exit    int
	ended   bool
}

// pairLog is the benchmark's log line of one load's pairs, and pairRatio
// one pair in it: "; <with>/<without>=<ratio> (".
var (
	pairLog   = regexp.MustCompile(`overhead_test\.go:\d+: (keepalive|churn) pairs, `)
	pairRatio = regexp.MustCompile(`; ([0-9.]+)/([0-9.]+)=([0-9.]+) \(`)
)

// runBench fetches and builds what the guest needs, boots it once, runs
// the benchmark on each path in turn and prints its figures.
func runBench(ctx context.Context, o benchOptions) int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "kernels -bench:", err)
		return 1
	}
	start := time.Now()
	if err := os.MkdirAll(o.cache, 0o755); err != nil {
		return fail(err)
	}
	if err := ensureQemu(ctx); err != nil {
		return fail(err)
	}
	a := apt{dir: filepath.Join(o.cache, "apt")}
	if err := a.ensure(ctx); err != nil {
		return fail(err)
	}
	k := benchKernel
	img, release, err := a.kernelImage(ctx, o.cache, k)
	if err != nil {
		return fail(err)
	}
	var mods []string
	err = a.retry(ctx, func() error {
		var err error
		mods, err = a.kernelModules(ctx, o.cache, k, release, benchModules)
		return err
	})
	if err != nil {
		return fail(fmt.Errorf("modules: %w", err))
	}
	root, err := a.sysroot(ctx, o.cache, k.arch)
	if err != nil {
		return fail(err)
	}
	b := &archBuild{arch: k.arch, sysroot: root}
	dir := filepath.Join(o.cache, "build", "bench-"+k.id())
	if err := b.prepare(ctx, filepath.Join(o.cache, "build", k.arch)); err != nil {
		return fail(err)
	}
	r := b.base
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
		return fail(err)
	}
	if err := goBuild(ctx, k.arch, append([]string{"build", "-o", filepath.Join(dir, "bin") + "/"}, benchBinaries...)...); err != nil {
		return fail(err)
	}
	for _, p := range benchBinaries {
		name := filepath.Base(p)
		r.file("weir/bin/"+name, filepath.Join(dir, "bin", name), 0o755)
	}
	if err := goBuild(ctx, k.arch, "test", "-c", "-o", filepath.Join(dir, "e2e.test"), "github.com/weir-project/weir/test/e2e"); err != nil {
		return fail(err)
	}
	r.file("tests/e2e.test", filepath.Join(dir, "e2e.test"), 0o755)
	var insmod []string
	for i, m := range mods {
		name := fmt.Sprintf("modules/%d-%s", i, filepath.Base(m))
		r.file(name, m, 0o644)
		insmod = append(insmod, "insmod /"+name)
	}
	// harness.Host.Sysctl runs sysctl; the modules load with insmod.
	r.symlink("bin/sysctl", "busybox")
	r.symlink("bin/insmod", "busybox")

	plan := benchPlan{Runs: []benchRun{{Path: "setup", Suite: "modules", Bin: "/bin/sh", Args: []string{"-c", "set -e; " + strings.Join(insmod, "; ")}}}}
	var order []string
	for i := range max(o.rounds, 1) {
		for j := range o.paths {
			if i%2 == 1 {
				j = len(o.paths) - 1 - j
			}
			order = append(order, o.paths[j])
		}
	}
	for _, p := range order {
		env := []string{"CI=true", "WEIR_BIN_DIR=/weir/bin", "WEIR_COLLECTOR_START_TIMEOUT=3m",
			"WEIR_BENCH_COLLECTOR_ARGS=--probe-path=" + p}
		if !o.short {
			env = append(env, "WEIR_BENCH_FULL=1")
		}
		plan.Runs = append(plan.Runs, benchRun{Path: p, Suite: "overhead", Bin: "/tests/e2e.test", Env: env,
			Args: []string{"-test.run", "^$", "-test.bench", "^BenchmarkPrivilegedOverhead$", "-test.benchtime", "1x",
				"-test.v", "-test.timeout", "30m"}})
	}
	pj, err := json.MarshalIndent(plan, "", "  ")
	if err != nil {
		return fail(err)
	}
	r.bytes("plan.json", pj, 0o644)
	initrd := filepath.Join(dir, "initrd.cpio")
	if err := r.write(initrd); err != nil {
		return fail(fmt.Errorf("initramfs: %w", err))
	}
	prepared := time.Since(start)

	slog.Info("booting the benchmark guest", "kernel", release, "cpus", o.cpus, "runs", order, "short", o.short)
	bootStart := time.Now()
	qctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	cmd := exec.CommandContext(qctx, "qemu-system-x86_64", "-accel", "tcg,thread=multi", "-cpu", "max,cx16=off",
		"-m", strconv.Itoa(o.memMB), "-smp", strconv.Itoa(o.cpus),
		"-kernel", img, "-initrd", initrd,
		"-append", "console=ttyS0 panic=-1 quiet mitigations=off",
		"-nodefaults", "-display", "none", "-serial", "stdio", "-no-reboot")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return fail(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return fail(err)
	}
	logPath := filepath.Join(dir, "console.log")
	results, done, bootErr := parseBench(out, logPath, o.verbose)
	werr := cmd.Wait()
	switch {
	case qctx.Err() == context.DeadlineExceeded:
		bootErr = fmt.Sprintf("no power-off within %v", o.timeout)
	case werr != nil:
		bootErr = fmt.Sprintf("qemu: %v %s", werr, strings.TrimSpace(stderr.String()))
	case bootErr == "" && !done:
		bootErr = "the guest stopped before its plan ended (kernel panic or crash)"
	}

	fmt.Printf("\nkernel bench: %s %s, %d vCPU (TCG), prepare %.1fs, guest %.1fs; console in %s\n",
		release, k.arch, o.cpus, prepared.Seconds(), time.Since(bootStart).Seconds(), logPath)
	status := 0
	if bootErr != "" {
		fmt.Println("kernel bench: FAIL:", bootErr)
		status = 1
	}
	if len(results) == 0 || results[0].path != "setup" || !results[0].ended || results[0].exit != 0 {
		fmt.Println("kernel bench: FAIL: loading the modules", strings.Join(benchModules, ", "))
		status = 1
	}
	id := "guest-" + k.series
	for _, p := range o.paths {
		var ka, ch, kaWithout, chWithout []float64
		runs := 0
		for _, res := range results {
			if res.path != p {
				continue
			}
			if !res.ended || res.exit != 0 || res.metrics["ratio"] == "" {
				fmt.Printf("kernel bench: FAIL: %s: a run of the benchmark did not finish (see %s)\n", p, logPath)
				status = 1
				continue
			}
			if d := res.metrics["collector-dropped"]; d != "0" {
				fmt.Printf("kernel bench: FAIL: %s: the collector dropped %s sockets or events: it did less than its work\n", p, d)
				status = 1
			}
			runs++
			ka, ch = append(ka, res.pairs["keepalive"]...), append(ch, res.pairs["churn"]...)
			kaWithout, chWithout = append(kaWithout, res.without["keepalive"]...), append(chWithout, res.without["churn"]...)
		}
		if runs == 0 || len(ka) == 0 || len(ch) == 0 {
			fmt.Printf("kernel bench: FAIL: %s: no pairs measured\n", p)
			status = 1
			continue
		}
		// Same form as make bench's host figures: P<n> value ratio (spread),
		// the median over every pair of every run on the path.
		fmt.Printf("P1-%s-%s %.3f ratio (spread %.3f–%.3f, %d pairs in %d runs; %.0f req/s without)\n",
			id, p, median(ka), slices.Min(ka), slices.Max(ka), len(ka), runs, median(kaWithout))
		fmt.Printf("P1-churn-%s-%s %.3f ratio (spread %.3f–%.3f, %d pairs in %d runs; %.0f conn/s without)\n",
			id, p, median(ch), slices.Min(ch), slices.Max(ch), len(ch), runs, median(chWithout))
	}
	if status == 0 {
		fmt.Printf("kernel bench: the ratios above are under qemu TCG (%d vCPU on a shared host): only indicative\n", o.cpus)
	}
	return status
}

// parseBench copies the console to logPath (and to stderr when verbose)
// and collects the benchmark's metrics per run.
func parseBench(r io.Reader, logPath string, verbose bool) (results []*benchResult, done bool, bootErr string) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, false, err.Error()
	}
	defer f.Close()
	w := io.Writer(f)
	if verbose {
		w = io.MultiWriter(f, os.Stderr)
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var cur *benchResult
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		fmt.Fprintln(w, line)
		if rest, ok := strings.CutPrefix(line, marker+" "); ok {
			fs := strings.Fields(rest)
			switch {
			case len(fs) == 3 && fs[0] == "begin":
				cur = &benchResult{path: fs[1], metrics: map[string]string{}, exit: -1,
					pairs: map[string][]float64{}, without: map[string][]float64{}}
				results = append(results, cur)
				slog.Info("guest", "begin", fs[1])
			case len(fs) >= 5 && fs[0] == "end" && cur != nil:
				cur.ended = true
				cur.exit, _ = strconv.Atoi(strings.TrimPrefix(fs[3], "exit="))
				slog.Info("guest", "end", fs[1], "exit", cur.exit, "seconds", strings.TrimPrefix(fs[4], "seconds="))
				cur = nil
			case len(fs) >= 1 && fs[0] == "done":
				done = true
			case len(fs) >= 1 && fs[0] == "setup-failed":
				bootErr = "guest setup: " + strings.TrimPrefix(rest, "setup-failed ")
			}
			continue
		}
		if cur == nil {
			continue
		}
		if m := pairLog.FindStringSubmatch(line); m != nil {
			for _, p := range pairRatio.FindAllStringSubmatch(line, -1) {
				wo, err1 := strconv.ParseFloat(p[2], 64)
				r, err2 := strconv.ParseFloat(p[3], 64)
				if err1 == nil && err2 == nil {
					cur.pairs[m[1]] = append(cur.pairs[m[1]], r)
					cur.without[m[1]] = append(cur.without[m[1]], wo)
				}
			}
		}
		// BenchmarkPrivilegedOverhead-2  1  NNN ns/op  V unit  V unit …
		if fs := strings.Fields(line); len(fs) > 3 && strings.HasPrefix(fs[0], "BenchmarkPrivilegedOverhead") {
			for i := 2; i+1 < len(fs); i += 2 {
				cur.metrics[fs[i+1]] = fs[i]
			}
		}
	}
	return results, done, bootErr
}

// kernelModules returns the named modules of k's kernel package (release),
// extracted once into the cache.
func (a apt) kernelModules(ctx context.Context, cache string, k kernel, release string, names []string) ([]string, error) {
	dir := filepath.Join(cache, k.id(), "modules-"+release)
	var paths []string
	missing := false
	for _, n := range names {
		p := filepath.Join(dir, n)
		paths = append(paths, p)
		if _, err := os.Stat(p); err != nil {
			missing = true
		}
	}
	if !missing {
		return paths, nil
	}
	pkg := "linux-image-" + release
	slog.Info("downloading kernel modules", "package", pkg, "modules", names)
	tmp, err := os.MkdirTemp(cache, "dl-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	if err := a.download(ctx, tmp, pkg+":"+k.arch); err != nil {
		return nil, err
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return nil, fmt.Errorf("apt-get download %s: %d packages", pkg, len(debs))
	}
	root := filepath.Join(tmp, "root")
	if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", debs[0], root).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("dpkg-deb -x %s: %w\n%s", debs[0], err, out)
	}
	for i, n := range names {
		src := filepath.Join(root, "lib", "modules", release, n)
		b, err := os.ReadFile(src)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", pkg, err)
		}
		if err := os.MkdirAll(filepath.Dir(paths[i]), 0o755); err != nil {
			return nil, err
		}
		if err := os.WriteFile(paths[i], b, 0o644); err != nil {
			return nil, err
		}
	}
	return paths, nil
}

// goBuild runs go with args in the workspace, static (CGO off) for arch.
func goBuild(ctx context.Context, arch string, args ...string) error {
	root, err := repoRoot(ctx)
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+goarch[arch].goarch)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
