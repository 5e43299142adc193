package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// archBuild is what every guest of one architecture shares: the static
// init, the test binaries, the BPF objects and the userland.
type archBuild struct {
	arch    string
	sysroot string
	base    *initramfs
}

// goarch maps a Debian architecture to GOARCH and to the bpf2go suffix of
// the committed objects.
var goarch = map[string]struct{ goarch, objects string }{
	"amd64": {"amd64", "x86"},
	"arm64": {"arm64", "arm64"},
}

// repoRoot is the directory of go.work.
func repoRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOWORK").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOWORK: %w", err)
	}
	w := strings.TrimSpace(string(out))
	if w == "" || w == "off" {
		return "", fmt.Errorf("not inside the weir workspace (no go.work)")
	}
	return filepath.Dir(w), nil
}

// prepare builds the init and the test binaries for b's architecture into
// dir (static, CGO off) and assembles the initramfs shared by its guests.
func (b *archBuild) prepare(ctx context.Context, dir string) error {
	root, err := repoRoot(ctx)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	ga := goarch[b.arch]
	gobuild := func(args ...string) error {
		cmd := exec.CommandContext(ctx, "go", args...)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+ga.goarch)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	r := newInitramfs()
	if err := gobuild("build", "-o", filepath.Join(dir, "init"), "github.com/weir-project/weir/test/kernels/guest"); err != nil {
		return err
	}
	r.file("init", filepath.Join(dir, "init"), 0o755)
	for _, s := range suites {
		bin := filepath.Join(dir, s.name+".test")
		if _, ok := r.entries["tests/"+s.name+".test"]; ok {
			continue // another suite runs the same binary
		}
		if err := gobuild("test", "-c", "-o", bin, s.pkg); err != nil {
			return err
		}
		r.file("tests/"+s.name+".test", bin, 0o755)
		if ga.goarch == runtime.GOARCH {
			if err := listLeftOut(ctx, s.name, bin); err != nil {
				return err
			}
		}
	}
	objs, _ := filepath.Glob(filepath.Join(root, "collector", "internal", "probe", "*_"+ga.objects+"_bpfel.o"))
	if len(objs) == 0 {
		return fmt.Errorf("no BPF objects for %s in collector/internal/probe", b.arch)
	}
	for _, o := range objs {
		name := strings.TrimSuffix(filepath.Base(o), "_"+ga.objects+"_bpfel.o")
		r.file("objects/"+name+".o", o, 0o644)
	}
	files, err := closure(b.sysroot)
	if err != nil {
		return err
	}
	for guestPath, host := range files {
		r.file(guestPath, host, 0o755)
	}
	for _, l := range []string{"sh", "mount", "umount", "cat", "ls", "sleep", "printf", "true", "false", "echo", "poweroff"} {
		r.symlink("bin/"+l, "busybox")
	}
	for _, ip := range []string{"usr/bin/ip", "bin/ip", "sbin/ip", "usr/sbin/ip"} {
		if _, ok := files[ip]; !ok {
			for have := range files {
				if filepath.Base(have) == "ip" {
					r.symlink(ip, "/"+have)
				}
			}
		}
	}
	r.charDev("dev/console", 5, 1)
	r.charDev("dev/null", 1, 3)
	for _, d := range []string{"proc", "sys", "dev", "run", "tmp", "etc", "var/run"} {
		r.mkdirAll(d)
	}
	r.bytes("etc/hosts", []byte("127.0.0.1 localhost\n::1 localhost\n"), 0o644)
	r.bytes("etc/passwd", []byte("root:x:0:0:root:/tmp:/bin/sh\n"), 0o644)
	r.bytes("etc/group", []byte("root:x:0:\n"), 0o644)
	b.base = r
	return nil
}

// leftOut are the tests of each suite that its skip filter keeps out of
// the guests, by name, for the reports.
var (
	leftOutMu sync.Mutex
	leftOut   = map[string][]string{}
	listed    = map[string][]string{} // the tests each suite's own filter selects
)

// listLeftOut lists the privileged tests of a binary that no suite runs.
func listLeftOut(ctx context.Context, name, bin string) error {
	out, err := exec.CommandContext(ctx, bin, "-test.list", "^TestPrivileged").Output()
	if err != nil {
		return fmt.Errorf("%s -test.list: %w", bin, err)
	}
	var names, kept []string
	for l := range strings.SplitSeq(string(out), "\n") {
		l = strings.TrimSpace(l)
		if !strings.HasPrefix(l, "Test") {
			continue
		}
		selected := false
		for _, s := range suites {
			if s.name != name {
				continue
			}
			run, err := regexp.Compile(s.run)
			if err != nil {
				return fmt.Errorf("suite %s: run: %w", s.name, err)
			}
			skip := regexp.MustCompile("^$")
			if s.skip != "" {
				if skip, err = regexp.Compile(s.skip); err != nil {
					return fmt.Errorf("suite %s: skip: %w", s.name, err)
				}
			}
			selected = selected || run.MatchString(l) && !skip.MatchString(l)
		}
		if !selected {
			names = append(names, name+"."+l)
		} else {
			kept = append(kept, l)
		}
	}
	leftOutMu.Lock()
	leftOut[name] = names
	listed[name] = kept
	leftOutMu.Unlock()
	return nil
}

// guest is one kernel of the matrix booted once: every path's runs of
// every suite happen in that one boot.
type guest struct {
	kernel  kernel
	image   string
	release string
	build   *archBuild

	console []string
	booted  time.Duration // qemu started → init running
	total   time.Duration
	bootErr string
	progs   []progResult
	runs    []*runResult
}

type progResult struct {
	object, name, verdict, detail string
	log                           []string
}

type runResult struct {
	path, suite string
	exit        int
	ended       bool
	seconds     float64
	tests       []*testResult
	output      []string // lines outside any test
}

type testResult struct {
	name     string
	result   string // PASS, FAIL, SKIP; empty if the binary died inside it
	seconds  string
	output   []string
	known    string // why it fails here, from knownFailures
	lastLog  string // the last line the test logged (t.Log, t.Error, t.Fatal)
	lastLine string // the last line of its output (a logged line's continuation)
}

// notSupported ends the message of the collector's ErrNotSupported, after
// the name of the missing kernel feature, in the probe package's errors
// and in weir-collector's exit message.
var notSupported = regexp.MustCompile(`: not supported( by this kernel)?$`)

// unsupported returns the line that makes a failed test unsupported: its
// last logged line ends with the collector's ErrNotSupported, wrapped
// after the name of the missing kernel feature.
func (t *testResult) unsupported() string {
	switch {
	case t.result == "PASS":
		return ""
	case notSupported.MatchString(t.lastLog):
		return t.lastLog
	case notSupported.MatchString(t.lastLine):
		return t.lastLine
	}
	return ""
}

// plan writes the guest's plan.
func (g *guest) plan(runRE string) ([]byte, error) {
	var p struct {
		Objects []string `json:"objects"`
		Runs    []struct {
			Path  string   `json:"path"`
			Suite string   `json:"suite"`
			Bin   string   `json:"bin"`
			Args  []string `json:"args"`
			Env   []string `json:"env"`
		} `json:"runs"`
	}
	for name := range g.build.base.entries {
		if strings.HasPrefix(name, "objects/") {
			p.Objects = append(p.Objects, "/"+name)
		}
	}
	for _, pp := range paths {
		for _, s := range suites {
			if !slices.Contains(s.paths, pp.name) {
				continue
			}
			run, _ := s.narrowed(pp.name, g.kernel.id())
			if runRE != "" {
				run = runRE // the caller's filter replaces the suite's
			}
			args := []string{"-test.v", "-test.count=1", "-test.timeout=8m", "-test.run", run}
			if s.skip != "" {
				args = append(args, "-test.skip", s.skip)
			}
			env := append([]string{"CI=true", "WEIR_KERNEL_MATRIX=" + g.kernel.id()}, pp.env...)
			p.Runs = append(p.Runs, struct {
				Path  string   `json:"path"`
				Suite string   `json:"suite"`
				Bin   string   `json:"bin"`
				Args  []string `json:"args"`
				Env   []string `json:"env"`
			}{pp.name, s.name, "/tests/" + s.name + ".test", args, env})
		}
	}
	return json.MarshalIndent(p, "", "  ")
}

// boot runs the guest to its end (power off, crash or timeout) and parses
// its console.
func (g *guest) boot(ctx context.Context, timeout time.Duration, runRE, dir string) {
	start := time.Now()
	defer func() { g.total = time.Since(start) }()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		g.bootErr = err.Error()
		return
	}
	plan, err := g.plan(runRE)
	if err != nil {
		g.bootErr = err.Error()
		return
	}
	r := &initramfs{dirs: g.build.base.dirs, entries: map[string]entry{}}
	for k, v := range g.build.base.entries {
		r.entries[k] = v
	}
	r.bytes("plan.json", plan, 0o644)
	initrd := filepath.Join(dir, "initrd.cpio")
	if err := r.write(initrd); err != nil {
		g.bootErr = "initramfs: " + err.Error()
		return
	}

	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var cmd *exec.Cmd
	switch g.kernel.arch {
	case "amd64":
		cmd = exec.CommandContext(ctx, "qemu-system-x86_64", "-accel", "tcg", "-cpu", "max,cx16=off", "-m", "1536", "-smp", "1",
			"-kernel", g.image, "-initrd", initrd,
			"-append", "console=ttyS0 panic=-1 quiet mitigations=off",
			"-nodefaults", "-display", "none", "-serial", "stdio", "-no-reboot")
	case "arm64":
		cmd = exec.CommandContext(ctx, "qemu-system-aarch64", "-machine", "virt", "-accel", "tcg", "-cpu", "max,pauth-impdef=on", "-m", "1536", "-smp", "1",
			"-kernel", g.image, "-initrd", initrd,
			"-append", "console=ttyAMA0 panic=-1 quiet mitigations=off",
			"-nodefaults", "-display", "none", "-serial", "stdio", "-no-reboot")
	default:
		g.bootErr = "no qemu for architecture " + g.kernel.arch
		return
	}
	out, err := cmd.StdoutPipe() // the serial console
	if err != nil {
		g.bootErr = err.Error()
		return
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		g.bootErr = err.Error()
		return
	}
	g.parse(out, start)
	err = cmd.Wait()
	switch {
	case ctx.Err() == context.DeadlineExceeded:
		g.bootErr = fmt.Sprintf("no power-off within %v", timeout)
	case err != nil:
		g.bootErr = fmt.Sprintf("qemu: %v %s", err, strings.TrimSpace(stderr.String()))
	}
	for _, r := range g.runs {
		for _, t := range r.tests {
			for _, k := range knownFailures {
				if k.test == r.suite+"."+t.name && k.kernels.MatchString(g.kernel.id()) {
					t.known = k.why
				}
			}
		}
	}
	if g.bootErr == "" && !g.done() {
		g.bootErr = "the guest stopped before its plan ended (kernel panic or crash; see its console)"
	}
}

func (g *guest) done() bool {
	for i := len(g.console) - 1; i >= 0; i-- {
		if g.console[i] == marker+" done" {
			return true
		}
	}
	return false
}

const marker = "WEIR-GUEST"

var (
	runLine     = regexp.MustCompile(`^=== RUN\s+(\S+)$`)
	testLogLine = regexp.MustCompile(`^\s+\S+_test\.go:\d+: `)
	resultLine  = regexp.MustCompile(`^--- (PASS|FAIL|SKIP): (\S+) \(([0-9.]+s)\)`)
)

// parse reads the console until it closes.
func (g *guest) parse(r io.Reader, start time.Time) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var run *runResult
	var test *testResult
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		g.console = append(g.console, line)
		if rest, ok := strings.CutPrefix(line, marker+" "); ok {
			f := strings.Fields(rest)
			switch {
			case len(f) >= 3 && f[0] == "kernel":
				g.booted = time.Since(start)
				if f[1] != g.release {
					g.bootErr = fmt.Sprintf("booted %s, want %s", f[1], g.release)
				}
			case len(f) >= 4 && f[0] == "prog":
				detail := ""
				if i := strings.Index(rest, f[3]); len(f) > 4 {
					detail = strings.TrimSpace(rest[i+len(f[3]):])
				}
				g.progs = append(g.progs, progResult{object: f[1], name: f[2], verdict: f[3], detail: detail})
			case len(f) >= 1 && f[0] == "log" && len(g.progs) > 0:
				g.progs[len(g.progs)-1].log = append(g.progs[len(g.progs)-1].log, strings.TrimPrefix(rest, "log "))
			case len(f) == 3 && f[0] == "begin":
				run = &runResult{path: f[1], suite: f[2], exit: -1}
				g.runs = append(g.runs, run)
				test = nil
			case len(f) >= 5 && f[0] == "end" && run != nil:
				run.ended = true
				run.exit, _ = strconv.Atoi(strings.TrimPrefix(f[3], "exit="))
				run.seconds, _ = strconv.ParseFloat(strings.TrimPrefix(f[4], "seconds="), 64)
				run, test = nil, nil
			case len(f) >= 1 && f[0] == "setup-failed":
				g.bootErr = "guest setup: " + strings.TrimPrefix(rest, "setup-failed ")
			}
			continue
		}
		if run == nil {
			continue
		}
		if m := runLine.FindStringSubmatch(line); m != nil && !strings.Contains(m[1], "/") {
			test = &testResult{name: m[1]}
			run.tests = append(run.tests, test)
		}
		if m := resultLine.FindStringSubmatch(line); m != nil {
			for _, t := range run.tests {
				if t.name == m[2] {
					t.result, t.seconds = m[1], m[3]
					t.output = append(t.output, line)
				}
			}
			if test != nil && test.name == m[2] {
				test = nil
			}
			continue
		}
		if test != nil {
			test.output = append(test.output, line)
			if testLogLine.MatchString(line) {
				test.lastLog = strings.TrimSpace(line)
			}
			if strings.TrimSpace(line) != "" {
				test.lastLine = strings.TrimSpace(line)
			}
		} else {
			run.output = append(run.output, line)
		}
	}
}
