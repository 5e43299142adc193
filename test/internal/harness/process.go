package harness

import (
	"bufio"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Process is a child process whose output the test can read.
type Process struct {
	Name   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	stderr *syncBuffer
	done   chan struct{}
	err    error
}

// Start runs argv[0] with argv[1:] and stops it (SIGTERM, then SIGKILL) when
// the test ends. Its stderr is printed if the test failed.
func Start(t testing.TB, name string, argv ...string) *Process {
	t.Helper()
	p := &Process{
		Name:   name,
		cmd:    exec.Command(argv[0], argv[1:]...),
		lines:  make(chan string, 1024),
		stderr: &syncBuffer{},
		done:   make(chan struct{}),
	}
	p.cmd.Stderr = p.stderr
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case p.lines <- sc.Text():
			default: // nobody reads: the test only waits for the first lines
			}
		}
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.Stop(5 * time.Second)
		if t.Failed() {
			t.Logf("--- stderr of %s:\n%s", name, p.Stderr())
		}
	})
	return p
}

// PID is the process id.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Stderr is what the process has written to stderr so far.
func (p *Process) Stderr() string { return p.stderr.String() }

// WaitLine waits for a stdout line that starts with prefix and returns it.
func (p *Process) WaitLine(t testing.TB, prefix string, timeout time.Duration) string {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case l := <-p.lines:
			if strings.HasPrefix(l, prefix) {
				return l
			}
		case <-p.done:
			t.Fatalf("%s exited (%v) before printing %q; stderr:\n%s", p.Name, p.err, prefix, p.Stderr())
		case <-deadline:
			t.Fatalf("%s did not print %q within %s", p.Name, prefix, timeout)
		}
	}
}

// Send writes line and a newline to the process's standard input.
func (p *Process) Send(t testing.TB, line string) {
	t.Helper()
	if _, err := io.WriteString(p.stdin, line+"\n"); err != nil {
		t.Fatalf("write to the stdin of %s: %v", p.Name, err)
	}
}

// CloseStdin closes the process's standard input.
func (p *Process) CloseStdin() { _ = p.stdin.Close() }

// Wait waits for the process to exit on its own and returns its error.
func (p *Process) Wait(timeout time.Duration) error {
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		return fmt.Errorf("%s still running after %s", p.Name, timeout)
	}
}

// Alive reports whether the process is still running.
func (p *Process) Alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Stop sends SIGTERM, and SIGKILL after grace.
func (p *Process) Stop(grace time.Duration) {
	if !p.Alive() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}
