package main

import (
	"fmt"
	"io"
	"regexp"
	"slices"
	"sort"
	"strings"
)

// tailLines is how many lines of a failed test's output the report shows:
// enough for a verifier log's last instructions and its verdict.
const tailLines = 25

// report prints what happened in one guest: its programs, and per path
// and suite each test's result; failures with the last lines of their
// output.
func (g *guest) report(w io.Writer, verbose bool) {
	fmt.Fprintf(w, "\n=== kernel %s %s (Debian %s, %s): boot %.1fs, guest total %.1fs\n",
		g.release, g.kernel.arch, g.kernel.suite, g.kernel.series, g.booted.Seconds(), g.total.Seconds())
	if verbose || g.bootErr != "" {
		start := 0
		if !verbose && len(g.console) > 60 {
			start = len(g.console) - 60
		}
		for _, l := range g.console[start:] {
			fmt.Fprintf(w, "  | %s\n", l)
		}
	}
	if g.bootErr != "" {
		fmt.Fprintf(w, "  FAIL: %s\n", g.bootErr)
	}
	for _, p := range g.progs {
		switch p.verdict {
		case "ok":
		case "unsupported":
			fmt.Fprintf(w, "  program %s/%s: no attach target here: %s\n", p.object, p.name, p.detail)
		default:
			fmt.Fprintf(w, "  program %s/%s rejected: %s\n", p.object, p.name, p.detail)
			for _, l := range p.log {
				fmt.Fprintf(w, "      %s\n", l)
			}
		}
	}
	leftOutMu.Lock()
	var out []string
	for _, s := range suites {
		if names := leftOut[s.name]; len(names) > 0 && !slices.Contains(out, names[0]) {
			out = append(out, names...)
		}
	}
	leftOutMu.Unlock()
	if len(out) > 0 {
		fmt.Fprintf(w, "  left out of the guests for time (make test runs them on the host): %s\n", strings.Join(out, ", "))
	}
	for _, r := range g.runs {
		pass, fail, unsup, skip := r.counts()
		fmt.Fprintf(w, "  %s/%s: %d passed, %d failed, %d not supported, %d skipped in %.1fs (exit %d)\n",
			r.path, r.suite, len(pass), len(fail), len(unsup), len(skip), r.seconds, r.exit)
		if out := g.narrowedOut(r); len(out) > 0 {
			fmt.Fprintf(w, "    left out on this path here for time (they run on it on the kernels where auto takes it): %s\n", strings.Join(out, ", "))
		}
		for _, t := range r.tests {
			switch {
			case t.result == "PASS" && t.known != "":
				fmt.Fprintf(w, "    pass  %s (%s): it was a known failure here; remove it from knownFailures in test/kernels/main.go\n", t.name, t.seconds)
			case t.result == "PASS":
				fmt.Fprintf(w, "    pass  %s (%s)\n", t.name, t.seconds)
			case t.unsupported() != "":
				fmt.Fprintf(w, "    not supported  %s: %s\n", t.name, t.unsupported())
			case t.result == "SKIP":
				fmt.Fprintf(w, "    SKIP  %s: %s\n", t.name, lastOf(t.output, 2))
			default:
				what := "FAIL"
				if t.known != "" && t.result == "FAIL" {
					what = "KNOWN FAILURE (" + t.known + ")"
				}
				if t.result == "" {
					what = "FAIL (the test binary died in it)"
				}
				fmt.Fprintf(w, "    %s  %s (%s)\n", what, t.name, t.seconds)
				start := max(len(t.output)-tailLines, 0)
				for _, l := range t.output[start:] {
					fmt.Fprintf(w, "      %s\n", l)
				}
			}
		}
		if !r.ended || (r.exit != 0 && len(fail) == 0) {
			fmt.Fprintf(w, "    FAIL: the test binary exited %d without a failed test; its last lines:\n", r.exit)
			start := max(len(r.output)-tailLines, 0)
			for _, l := range r.output[start:] {
				fmt.Fprintf(w, "      %s\n", l)
			}
		}
	}
}

// counts sorts a run's tests by outcome. A failed test whose output says
// "not supported" (the collector's ErrNotSupported, which names the
// missing kernel feature) is not supported, not failed.
func (r *runResult) counts() (pass, fail, unsup, skip []*testResult) {
	pass, fail, unsup, skip, _ = r.countsKnown()
	fail = append(fail, r.knownFails()...)
	return
}

// knownFails are the failed tests that knownFailures explains.
func (r *runResult) knownFails() []*testResult {
	_, _, _, _, known := r.countsKnown()
	return known
}

// countsKnown sorts as counts does, with the known failures apart.
func (r *runResult) countsKnown() (pass, fail, unsup, skip, known []*testResult) {
	for _, t := range r.tests {
		switch {
		case t.result == "PASS":
			pass = append(pass, t)
		case t.unsupported() != "":
			unsup = append(unsup, t)
		case t.known != "" && t.result == "FAIL":
			known = append(known, t)
		case t.result == "SKIP":
			skip = append(skip, t)
		default:
			fail = append(fail, t)
		}
	}
	return
}

func (r *runResult) failed() bool {
	_, fail, _, skip, known := r.countsKnown()
	if len(fail) == 0 && len(skip) == 0 && len(known) > 0 && r.ended {
		return false // the non-zero exit is the known failures'
	}
	// Under CI=true a privileged test never skips: a skip hides something.
	return len(fail) > 0 || len(skip) > 0 || !r.ended || r.exit != 0 && len(fail) == 0 && !r.onlyUnsupported()
}

// onlyUnsupported: the binary's non-zero exit is explained by its
// unsupported tests alone.
func (r *runResult) onlyUnsupported() bool {
	pass, fail, unsup, skip, known := r.countsKnown()
	return len(unsup)+len(known) > 0 && len(fail) == 0 && len(skip) == 0 && len(pass)+len(unsup)+len(known) == len(r.tests)
}

// summary returns the kernel's summary lines: one per path, then one for
// the programs, then one naming the tests that no path could run.
func (g *guest) summary() []string {
	release := g.release
	var lines []string
	if g.bootErr != "" {
		for _, p := range paths {
			lines = append(lines, fmt.Sprintf("kernel %s %s %s FAIL (0 tests): %s", release, g.kernel.arch, p.name, g.bootErr))
		}
		return lines
	}
	unsupByTest := map[string][]string{} // test → paths it could not run on
	ranSomewhere := map[string]bool{}
	for _, p := range paths {
		n, failed := 0, false
		var fails, unsup, known []string
		reasons := map[string]bool{}
		for _, r := range g.runs {
			if r.path != p.name {
				continue
			}
			pass, fail, us, skip, kn := r.countsKnown()
			n += len(pass)
			for _, t := range kn {
				known = append(known, r.suite+"."+t.name+" ("+t.known+")")
			}
			for _, t := range pass {
				ranSomewhere[r.suite+"."+t.name] = true
			}
			for _, t := range append(fail, skip...) {
				fails = append(fails, r.suite+"."+t.name)
			}
			for _, t := range us {
				unsup = append(unsup, r.suite+"."+t.name)
				unsupByTest[r.suite+"."+t.name] = append(unsupByTest[r.suite+"."+t.name], p.name)
				reasons[reason(t.unsupported())] = true
			}
			if r.failed() {
				failed = true
				if len(fail)+len(skip) == 0 {
					fails = append(fails, r.suite+" (exit "+fmt.Sprint(r.exit)+")")
				}
			}
		}
		verdict := "pass"
		switch {
		case failed || len(known) > 0:
			verdict = "FAIL"
		case n == 0 && len(unsup) > 0:
			verdict = "unsupported" // the kernel does not permit this path
		}
		l := fmt.Sprintf("kernel %s %s %s %s (%d tests)", release, g.kernel.arch, p.name, verdict, n)
		if len(fails) > 0 {
			l += "; failed: " + strings.Join(fails, ", ")
		}
		if len(known) > 0 {
			l += "; known failures (listed in test/kernels, not failing the run): " + strings.Join(known, ", ")
		}
		if len(unsup) > 0 {
			l += fmt.Sprintf("; not supported on this path: %s (%s)", strings.Join(unsup, ", "), strings.Join(keys(reasons), "; "))
		}
		if p.name == "auto" {
			if c := g.collectorChoice(); c != "" {
				l += "; " + c
			}
		}
		lines = append(lines, l)
	}

	loaded, failedProgs := 0, []string{}
	var unsupProgs []string
	for _, p := range g.progs {
		switch p.verdict {
		case "ok":
			loaded++
		case "unsupported":
			unsupProgs = append(unsupProgs, p.object+"/"+p.name)
		default:
			failedProgs = append(failedProgs, p.object+"/"+p.name)
		}
	}
	// Each program loaded on its own: what the collector can pick from on
	// this kernel. Variants made for other kernels are rejected here by
	// design, so this line informs; the tests above load what each path
	// needs and fail with the verifier log when it does not load.
	l := fmt.Sprintf("kernel %s %s programs: %d of %d load on their own", release, g.kernel.arch, loaded, len(g.progs))
	if len(failedProgs) > 0 {
		l += "; rejected by the verifier: " + strings.Join(failedProgs, ", ")
	}
	if len(unsupProgs) > 0 {
		l += "; no attach target here: " + strings.Join(unsupProgs, ", ")
	}
	lines = append(lines, l)

	if missing := g.missing(unsupByTest, ranSomewhere); len(missing) > 0 {
		why := map[string]bool{}
		for _, r := range g.runs {
			for _, t := range r.tests {
				if slices.Contains(missing, r.suite+"."+t.name) && t.unsupported() != "" {
					why[reason(t.unsupported())] = true
				}
			}
		}
		lines = append(lines, fmt.Sprintf("kernel %s %s any-path FAIL (%d tests run on no path; the collector names what the kernel lacks: %s): %s",
			release, g.kernel.arch, len(missing), strings.Join(keys(why), "; "), strings.Join(missing, ", ")))
	}
	return lines
}

// missing returns the tests that no path could run on this kernel.
func (g *guest) missing(unsupByTest map[string][]string, ran map[string]bool) []string {
	var out []string
	for t := range unsupByTest {
		if !ran[t] {
			out = append(out, t)
		}
	}
	sort.Strings(out)
	return out
}

// ok tells whether the guest passed: it booted and powered off, every
// program loaded or lacks only its attach target, and no test failed. With
// strict, a test that no path could run fails the kernel too.
func (g *guest) ok(strict bool) bool {
	if g.bootErr != "" || len(g.progs) == 0 {
		return false
	}
	for _, p := range g.progs {
		if p.name == "-" { // an object that did not parse
			return false
		}
	}
	unsupByTest := map[string][]string{}
	ran := map[string]bool{}
	for _, r := range g.runs {
		if r.failed() {
			return false
		}
		pass, _, us, _ := r.counts()
		for _, t := range pass {
			ran[r.suite+"."+t.name] = true
		}
		for _, t := range us {
			unsupByTest[r.suite+"."+t.name] = append(unsupByTest[r.suite+"."+t.name], r.path)
		}
	}
	return !strict || len(g.missing(unsupByTest, ran)) == 0
}

// reason shortens a "not supported" line to the feature it names.
func reason(line string) string {
	if i := strings.LastIndex(line, ": not supported"); i >= 0 {
		head := line[:i]
		if j := strings.LastIndex(head, ": "); j >= 0 {
			head = head[j+2:]
		}
		return head + ": not supported"
	}
	return line
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func lastOf(lines []string, n int) string {
	start := max(len(lines)-n, 0)
	return strings.TrimSpace(strings.Join(lines[start:], " "))
}

// narrowedOut names the tests of a run's suite that a narrowing left out
// on its path and kernel: those of the suite's own filter that the
// narrowed filter does not match.
func (g *guest) narrowedOut(r *runResult) []string {
	for _, s := range suites {
		if s.name != r.suite {
			continue
		}
		run, ok := s.narrowed(r.path, g.kernel.id())
		if !ok {
			return nil
		}
		keep := regexp.MustCompile(run)
		leftOutMu.Lock()
		all := listed[s.name]
		leftOutMu.Unlock()
		var out []string
		for _, name := range all {
			if !keep.MatchString(name) {
				out = append(out, name)
			}
		}
		return out
	}
	return nil
}

var (
	chosenLine  = regexp.MustCompile(`msg="probe path chosen" asked=(\S+) path=(\S+)`)
	notCollLine = regexp.MustCompile(`msg="signal not collected" feature=(\S+) reason=("(?:[^"\\]|\\.)*"|\S+)`)
)

// collectorChoice says what the collector logged when it started on auto
// (TestPrivilegedProbePath/auto, with --udp): the path it took and each
// signal it does not collect on this kernel, by name, with the reason.
func (g *guest) collectorChoice() string {
	for _, r := range g.runs {
		if r.path != "auto" || r.suite != "collector" {
			continue
		}
		path := ""
		var off []string
		for _, t := range r.tests {
			inAuto := false
			for _, l := range t.output {
				if m := chosenLine.FindStringSubmatch(l); m != nil {
					inAuto = m[1] == "auto"
					if inAuto {
						path, off = m[2], nil
					}
					continue
				}
				if m := notCollLine.FindStringSubmatch(l); m != nil && inAuto {
					off = append(off, m[1]+" ("+strings.Trim(m[2], `"`)+")")
				}
			}
		}
		if path == "" {
			return ""
		}
		out := "the collector on auto took path=" + path
		if len(off) > 0 {
			out += ", signals not collected: " + strings.Join(off, ", ")
		}
		return out
	}
	return ""
}
