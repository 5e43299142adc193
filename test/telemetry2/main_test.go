// Package telemetry2 runs weir's real binaries against real processes,
// cgroups, DNS servers and NAT rules on this kernel, and checks the process,
// container, DNS and NAT signals on the reducer's Prometheus scrape.
package telemetry2

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"syscall"
	"testing"

	"go.uber.org/goleak"
)

// TestMain runs the test binary as a helper process when its first
// argument is "weir-helper", else the tests.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "weir-helper" {
		if err := helper(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

// helper is a child process the test places (in a cgroup, a namespace)
// before it acts:
//
//	tcp ADDR N: waits for a line on stdin, connects to ADDR, sends N bytes,
//	prints "sent", and holds the connection until stdin closes.
//	tcp-exec ADDR N: the same, but on the line it first executes itself
//	again (same pid, same stdin), as a container runtime's init executes
//	the container's program once it is placed in its cgroups: the process
//	is then read at an exec that happened inside them.
func helper(args []string) error {
	in := bufio.NewReader(os.Stdin)
	switch args[0] {
	case "tcp", "tcp-exec", "tcp-now":
		n, err := strconv.Atoi(args[2])
		if err != nil {
			return err
		}
		if args[0] != "tcp-now" {
			fmt.Println("ready")
			if _, err := in.ReadString('\n'); err != nil {
				return err
			}
		}
		if args[0] == "tcp-exec" {
			self, err := os.Executable()
			if err != nil {
				return err
			}
			return syscall.Exec(self, []string{self, "weir-helper", "tcp-now", args[1], args[2]}, os.Environ())
		}
		c, err := net.Dial("tcp", args[1])
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := c.Write(make([]byte, n)); err != nil {
			return err
		}
		fmt.Println("sent")
		_, _ = io.Copy(io.Discard, in)
		return nil
	}
	if h, ok := helpers[args[0]]; ok {
		return h(args[1:])
	}
	return fmt.Errorf("unknown helper %q", args[0])
}

// helpers are the other helper modes, by name.
var helpers = map[string]func(args []string) error{}

// randomHex returns n random bytes in hex.
func randomHex(t testing.TB, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}
