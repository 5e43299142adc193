package harness

import (
	"os"
	"strconv"
	"syscall"
	"testing"
)

// Nice sets the scheduling niceness of every thread of the test process to
// n until the test ends; the processes it starts meanwhile (the binaries
// under test and the test peers) inherit it. A benchmark that gives all of
// its processes the same raised priority keeps their shares of the CPU
// among themselves as at niceness 0, while other work on the machine (a
// build, another test) takes less from them.
func Nice(tb testing.TB, n int) {
	tb.Helper()
	before, err := syscall.Getpriority(syscall.PRIO_PROCESS, 0)
	if err != nil {
		tb.Fatalf("getpriority: %v", err)
	}
	// The raw syscall returns 20 - nice.
	prev := 20 - before
	if err := setNiceAll(n); err != nil {
		tb.Fatalf("set niceness %d: %v", n, err)
	}
	tb.Cleanup(func() { _ = setNiceAll(prev) })
}

// setNiceAll renices every thread of this process: on Linux, niceness
// belongs to each thread, and a new thread inherits its creator's.
func setNiceAll(n int) error {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	for _, task := range tasks {
		tid, err := strconv.Atoi(task.Name())
		if err != nil {
			continue
		}
		if err := syscall.Setpriority(syscall.PRIO_PROCESS, tid, n); err != nil && err != syscall.ESRCH {
			return err
		}
	}
	return nil
}
