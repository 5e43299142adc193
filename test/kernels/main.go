// Command kernels runs the collector's privileged tests on other kernels:
// Debian's cloud kernels booted under qemu (TCG), each from an initramfs
// that holds the test binaries, a static init and a small userland. It
// prints one summary line per kernel and probe path, and fails when a test
// fails on a kernel or a program does not load.
//
//	cd test && go run ./kernels [-kernels 6.1-amd64,...] [-run REGEXP] [-j N]
//	cd test && go run ./kernels -bench [-bench-paths fentry,hashmap] [-bench-cpus 2]
//
// -bench runs test/e2e's overhead benchmark in the 6.1 amd64 guest instead
// (bench.go): P1 and P1-churn on each fallback path, as ratios within the
// guest; make bench runs it.
//
// Kernels, the guest userland and the package lists are cached under
// ~/.cache/weir/kernels; qemu is installed with apt-get when missing.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"
)

// kernel is one kernel of the matrix: Debian's cloud image of a version
// series from a suite.
type kernel struct {
	series string // the upstream version series, e.g. "6.1"
	suite  string // the Debian suite it comes from (documentation; the series picks the package)
	arch   string // Debian architecture: amd64 or arm64
}

func (k kernel) id() string { return k.series + "-" + k.arch }

// kernels is the matrix.
var kernels = []kernel{
	{series: "5.10", suite: "bullseye", arch: "amd64"},
	{series: "6.1", suite: "bookworm", arch: "amd64"},
	{series: "6.12", suite: "bookworm-backports", arch: "amd64"},
	{series: "6.1", suite: "bookworm", arch: "arm64"},
}

// probePath is one way the collector can attach its programs, forced for
// the probe package's tests by $WEIR_PROBE_PATH (see the top of
// collector/internal/probe/probe_test.go). Adding a path is one line here.
type probePath struct {
	name string
	env  []string
}

var paths = []probePath{
	{name: "tracepoint", env: []string{"WEIR_PROBE_PATH=tracepoint"}},
	{name: "fentry", env: []string{"WEIR_PROBE_PATH=fentry"}},
	// Per-socket state in a hash map, for kernels whose tracing programs
	// have no socket storage (5.10, where auto takes it); forced elsewhere.
	{name: "hashmap", env: []string{"WEIR_PROBE_PATH=hashmap"}},
	{name: "auto", env: nil}, // the collector's own choice at start-up
}

// suite is one test binary run in each guest: a privileged collector
// package built with go test -c, the tests to run in it and the paths to
// run them on. A binary's privileged tests that no suite runs are printed
// by name in every report; they run on the host in make test.
type suite struct {
	name   string      // the binary's name in the guest
	pkg    string      // the package's import path
	run    string      // -test.run
	skip   string      // -test.skip
	paths  []string    // the paths this suite runs on
	narrow []narrowing // fewer tests on some paths and kernels, for time
}

// narrowing runs only some of a suite's tests on a path, on the kernels
// where that path is not the one auto takes; the report names the tests
// it leaves out.
type narrowing struct {
	path string
	full *regexp.Regexp // kernel ids that run the whole suite on path
	run  string         // -test.run elsewhere
}

// narrowed returns the -test.run of s on path in kernel id, and whether it
// is a narrowing of s.run.
func (s suite) narrowed(path, id string) (string, bool) {
	for _, n := range s.narrow {
		if n.path == path && !n.full.MatchString(id) {
			return n.run, true
		}
	}
	return s.run, false
}

var suites = []suite{
	{
		// Every privileged test of the probe package on each forced path,
		// but for the slowest under TCG: the sampling stress tests, the
		// run-time statistics, and the test that forces each path in turn
		// (the runs per path and the collector's ProbePath do that here).
		name: "probe", pkg: "github.com/weir-project/weir/collector/internal/probe",
		run:   "^TestPrivileged",
		skip:  "^TestPrivileged(SamplesExactlyOnce|SamplesFallback|ProgramStats|ForcedPath)$",
		paths: []string{"tracepoint", "fentry", "hashmap"},
		// The hashmap path runs every test on 5.10, where auto takes it.
		// On the kernels that have the storage paths, it runs the exact
		// bytes of loopback, cross-namespace and accepted connections,
		// closes, failed connects, resets after the close and discovery,
		// to keep the matrix within its time.
		narrow: []narrowing{{
			path: "hashmap",
			full: regexp.MustCompile(`^5\.10-`),
			run:  "^TestPrivileged(LoopbackCounts|OtherNetNSIdle|AcceptedOwner|Close|Refused|LingerReset|Discover)$",
		}},
	},
	{
		// The whole collector against a test reducer: exact bytes end to
		// end on the path it picks itself, and each forced path's refusal
		// or success at start-up.
		name: "collector", pkg: "github.com/weir-project/weir/collector/cmd/weir-collector",
		run:   "^TestPrivileged(Run|ProbePath)$",
		paths: []string{"auto"},
	},
}

// knownFailure is a test that fails on some kernels of the matrix for a
// reason already reported and not yet fixed. It still runs; its failure
// is printed with the reason, in the kernel's line too, and does not fail
// the run. When it passes, the report says to remove it from this list.
type knownFailure struct {
	kernels *regexp.Regexp // kernel ids (e.g. 6.1-amd64)
	test    string         // suite.Test
	why     string
}

// knownFailures is empty: every failure in a guest fails the run.
var knownFailures []knownFailure

func main() {
	os.Exit(run())
}

func run() int {
	home, _ := os.UserHomeDir()
	var (
		cacheDir = flag.String("cache", filepath.Join(home, ".cache", "weir", "kernels"), "cache of kernels, userland and package lists")
		only     = flag.String("kernels", "", "comma-separated kernel ids to run (e.g. 6.1-amd64); empty: all")
		runRE    = flag.String("run", "", "run only the tests matching this regexp (in addition to each suite's filter)")
		jobs     = flag.Int("j", 4, "guests booted at once (TCG guests often wait on timers: four on two cores finish sooner than two)")
		timeout  = flag.Duration("timeout", 10*time.Minute, "time limit of one guest")
		fetch    = flag.Bool("fetch", false, "only fetch the kernels, qemu and the userland, then exit")
		verbose  = flag.Bool("v", false, "print every guest's console")
		strict   = flag.Bool("strict", os.Getenv("WEIR_KERNELS_STRICT") == "1", "fail a kernel on which some test runs on no path (env WEIR_KERNELS_STRICT=1)")

		bench        = flag.Bool("bench", false, "instead of the tests: test/e2e's overhead benchmark (P1, P1-churn) in the 6.1 amd64 guest, once per path of -bench-paths")
		benchPaths   = flag.String("bench-paths", "fentry,hashmap", "with -bench: the collector's --probe-path values to measure")
		benchCPUs    = flag.Int("bench-cpus", 2, "with -bench: the guest's vCPUs")
		benchRounds  = flag.Int("bench-rounds", 2, "with -bench: runs of the benchmark per path, in one boot, the paths' order reversed every other round; the figures are medians over every pair of every run")
		benchShort   = flag.Bool("bench-short", false, "with -bench: two pairs of 1 s windows per load instead of five of 5 s (checks that it works; no figures)")
		benchTimeout = flag.Duration("bench-timeout", 45*time.Minute, "with -bench: time limit of the guest")
	)
	flag.Parse()
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	selected := kernels
	if *only != "" {
		selected = nil
		for _, k := range kernels {
			for id := range strings.SplitSeq(*only, ",") {
				if k.id() == id {
					selected = append(selected, k)
				}
			}
		}
		if len(selected) == 0 {
			fmt.Fprintf(os.Stderr, "kernels: no kernel matches -kernels %q\n", *only)
			return 2
		}
	}

	if *bench {
		return runBench(ctx, benchOptions{cache: *cacheDir, paths: strings.Split(*benchPaths, ","), cpus: *benchCPUs, rounds: *benchRounds,
			memMB: 2048, short: *benchShort, timeout: *benchTimeout, verbose: *verbose})
	}

	start := time.Now()
	if err := os.MkdirAll(*cacheDir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "kernels:", err)
		return 1
	}
	if err := ensureQemu(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "kernels:", err)
		return 1
	}
	a := apt{dir: filepath.Join(*cacheDir, "apt")}
	if err := a.ensure(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "kernels:", err)
		return 1
	}
	guests := make([]*guest, len(selected))
	arches := map[string]*archBuild{}
	for i, k := range selected {
		img, release, err := a.kernelImage(ctx, *cacheDir, k)
		if err != nil {
			fmt.Fprintf(os.Stderr, "kernels: %s: %v\n", k.id(), err)
			return 1
		}
		if arches[k.arch] == nil {
			root, err := a.sysroot(ctx, *cacheDir, k.arch)
			if err != nil {
				fmt.Fprintf(os.Stderr, "kernels: userland %s: %v\n", k.arch, err)
				return 1
			}
			arches[k.arch] = &archBuild{arch: k.arch, sysroot: root}
		}
		guests[i] = &guest{kernel: k, image: img, release: release, build: arches[k.arch]}
	}
	fetched := time.Since(start)
	if *fetch {
		fmt.Printf("kernels: fetched in %.1fs\n", fetched.Seconds())
		return 0
	}

	buildStart := time.Now()
	for _, b := range arches {
		if err := b.prepare(ctx, filepath.Join(*cacheDir, "build", b.arch)); err != nil {
			fmt.Fprintf(os.Stderr, "kernels: build %s: %v\n", b.arch, err)
			return 1
		}
	}
	built := time.Since(buildStart)

	sem := make(chan struct{}, max(*jobs, 1))
	var wg sync.WaitGroup
	var mu sync.Mutex // one guest's report at a time
	for _, g := range guests {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			g.boot(ctx, *timeout, *runRE, filepath.Join(*cacheDir, "build", "guest-"+g.kernel.id()))
			mu.Lock()
			defer mu.Unlock()
			g.report(os.Stdout, *verbose)
		})
	}
	wg.Wait()

	fmt.Printf("\nkernel matrix: fetch %.1fs, build %.1fs, guests %.1fs, total %.1fs\n",
		fetched.Seconds(), built.Seconds(), time.Since(buildStart.Add(built)).Seconds(), time.Since(start).Seconds())
	status := 0
	for _, g := range guests {
		for _, l := range g.summary() {
			fmt.Println(l)
		}
		if !g.ok(*strict) {
			status = 1
		}
	}
	if status == 0 {
		fmt.Println("kernel matrix: pass. A FAIL line above is a kernel gap the collector names (\"not supported\")")
		fmt.Println("  or a known failure listed in test/kernels/main.go; -strict (WEIR_KERNELS_STRICT=1) fails on gaps too")
	} else {
		fmt.Println("kernel matrix: FAIL")
	}
	return status
}
