// Package telemetry runs weir's real binaries against real TCP and UDP
// traffic between network namespaces, with loss, resets and unanswered SYNs
// made by nftables, and checks the TCP health and UDP metrics on the
// reducer's Prometheus scrape against what the kernel itself counted.
package telemetry

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/weir-project/weir/test/internal/harness"
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

// helper is a child process that the test runs inside a network namespace,
// under a name of its own:
//
//	sink ADDR [MODE]: listens on ADDR and prints "listening". In mode
//	  drain (the default) each connection is read to its end, answered
//	  "done" and closed. In modes okwait and linger0, it reads one line and
//	  answers "ok"; then okwait reads to the end and closes, and linger0
//	  closes at once with SO_LINGER 0 (a RST).
//	send ADDR N: connects, sends N bytes, shuts down its side, reads to the
//	  end and prints "done".
//	trickle ADDR N D: connects, sends N bytes every 100 ms for D, then
//	  closes and prints "done".
//	linger ADDR: connects, sends a line, waits for "ok", closes with
//	  SO_LINGER 0 and prints "done".
//	hello ADDR: connects, sends a line, reads until the server's end (or
//	  its RST) and prints "done".
//	connect ADDR: connects and prints "result " and ok, refused, timeout
//	  or the error.
//	udp-echo ADDR: a UDP socket on ADDR that answers each datagram with
//	  the same bytes; prints "listening".
//	udp-deaf ADDR: a UDP socket on ADDR that never reads; prints
//	  "listening" and waits for stdin to close.
//	udp-send ADDR... : sends, to each ADDR in turn, the datagrams of sizes
//	  read from stdin lines ("SIZE COUNT"), reading the echo of each when
//	  the line says "echo"; prints "sent" after each line.
func helper(args []string) error {
	in := bufio.NewReader(os.Stdin)
	switch args[0] {
	case "sink":
		ln, err := net.Listen("tcp", args[1])
		if err != nil {
			return err
		}
		fmt.Println("listening")
		mode := "drain"
		if len(args) > 2 {
			mode = args[2]
		}
		for {
			c, err := ln.Accept()
			if err != nil {
				return err
			}
			go func() {
				defer c.Close()
				if mode == "drain" {
					_, _ = io.Copy(io.Discard, c)
					_, _ = c.Write([]byte("done"))
					return
				}
				r := bufio.NewReader(c)
				if _, err := r.ReadString('\n'); err != nil {
					return
				}
				_, _ = c.Write([]byte("ok\n"))
				if mode == "linger0" {
					_ = c.(*net.TCPConn).SetLinger(0)
					return
				}
				_, _ = io.Copy(io.Discard, r)
			}()
		}
	case "send":
		n, err := strconv.Atoi(args[2])
		if err != nil {
			return err
		}
		c, err := net.Dial("tcp", args[1])
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := c.Write(make([]byte, n)); err != nil {
			return err
		}
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			return err
		}
		if _, err := io.Copy(io.Discard, c); err != nil {
			return err
		}
		fmt.Println("done")
		return nil
	case "trickle":
		n, err := strconv.Atoi(args[2])
		if err != nil {
			return err
		}
		d, err := time.ParseDuration(args[3])
		if err != nil {
			return err
		}
		c, err := net.Dial("tcp", args[1])
		if err != nil {
			return err
		}
		defer c.Close()
		for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
			if _, err := c.Write(make([]byte, n)); err != nil {
				return err
			}
		}
		fmt.Println("done")
		return nil
	case "linger":
		c, err := net.Dial("tcp", args[1])
		if err != nil {
			return err
		}
		if _, err := c.Write([]byte("hi\n")); err != nil {
			return err
		}
		if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
			return err
		}
		if err := c.(*net.TCPConn).SetLinger(0); err != nil {
			return err
		}
		if err := c.Close(); err != nil {
			return err
		}
		fmt.Println("done")
		return nil
	case "hello":
		c, err := net.Dial("tcp", args[1])
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := c.Write([]byte("hi\n")); err != nil {
			return err
		}
		// The server's answer, then its end (a RST may come first).
		_, _ = io.Copy(io.Discard, c)
		fmt.Println("done")
		return nil
	case "connect":
		c, err := net.DialTimeout("tcp", args[1], time.Minute)
		switch {
		case err == nil:
			c.Close()
			fmt.Println("result ok")
		case errors.Is(err, syscall.ECONNREFUSED):
			fmt.Println("result refused")
		case errors.Is(err, syscall.ETIMEDOUT):
			fmt.Println("result timeout")
		default:
			fmt.Println("result", err)
		}
		return nil
	case "udp-echo", "udp-deaf":
		c, err := net.ListenPacket("udp", args[1])
		if err != nil {
			return err
		}
		defer c.Close()
		fmt.Println("listening")
		if args[0] == "udp-deaf" {
			_, _ = io.Copy(io.Discard, in)
			return nil
		}
		buf := make([]byte, 65536)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return err
			}
			if _, err := c.WriteTo(buf[:n], from); err != nil {
				return err
			}
		}
	case "udp-send":
		c, err := net.ListenPacket("udp", ":0")
		if err != nil {
			return err
		}
		defer c.Close()
		var peers []*net.UDPAddr
		for _, a := range args[1:] {
			ua, err := net.ResolveUDPAddr("udp", a)
			if err != nil {
				return err
			}
			peers = append(peers, ua)
		}
		buf := make([]byte, 65536)
		for {
			line, err := in.ReadString('\n')
			if err != nil {
				return nil
			}
			f := strings.Fields(line)
			size, _ := strconv.Atoi(f[0])
			count, _ := strconv.Atoi(f[1])
			echo := len(f) > 2 && f[2] == "echo"
			for _, p := range peers {
				for range count {
					if _, err := c.WriteTo(make([]byte, size), p); err != nil {
						return err
					}
					if echo {
						_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
						if _, _, err := c.ReadFrom(buf); err != nil {
							return err
						}
					}
				}
			}
			fmt.Println("sent")
		}
	}
	return fmt.Errorf("unknown helper %q", args[0])
}

// namedHelper copies the test binary under a unique name, so that the
// processes started from it have a comm (and a workload) no other test
// process has, and returns its path and that name.
func namedHelper(t *testing.T, prefix string) (path, comm string) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	comm = prefix + randomHex(t, 4)
	path = filepath.Join(t.TempDir(), comm)
	src, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	return path, comm
}

// startIn runs the helper at path inside host's namespace.
func startIn(t *testing.T, h harness.Host, path string, args ...string) *harness.Process {
	t.Helper()
	argv := h.Exec(append([]string{path, "weir-helper"}, args...)...)
	return harness.Start(t, filepath.Base(path)+" "+args[0], argv...)
}

// randomHex returns n random bytes in hex.
func randomHex(t testing.TB, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// snmp returns a counter of /proc/net/snmp (e.g. "Tcp", "RetransSegs")
// inside host's namespace.
func snmp(t *testing.T, h harness.Host, group, name string) uint64 {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", h.NS, "cat", "/proc/net/snmp").Output()
	if err != nil {
		t.Fatalf("read /proc/net/snmp in %s: %v", h.NS, err)
	}
	var header []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != group+":" {
			continue
		}
		if header == nil {
			header = f
			continue
		}
		for i, k := range header {
			if k == name && i < len(f) {
				v, err := strconv.ParseUint(f[i], 10, 64)
				if err != nil {
					t.Fatalf("%s %s: %v", group, name, err)
				}
				return v
			}
		}
	}
	t.Fatalf("%s %s not in /proc/net/snmp", group, name)
	return 0
}

// nft runs an nft script inside host's namespace; the namespace's deletion
// removes the rules.
func nft(t *testing.T, h harness.Host, script string) {
	t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("nft: %v (apt-get install -y nftables)", err)
		}
		t.Skipf("nft: %v (apt-get install -y nftables)", err)
	}
	cmd := exec.Command("ip", "netns", "exec", h.NS, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft in %s: %v\n%s\n%s", h.NS, err, script, out)
	}
}

// hostPort joins an address and a port, with brackets for IPv6.
func hostPort(addr string, port int) string {
	return net.JoinHostPort(addr, strconv.Itoa(port))
}

// families are the address families every test runs over.
var families = []struct {
	name string
	addr func(harness.Host) string
}{
	{"ipv4", func(h harness.Host) string { return h.IPv4 }},
	{"ipv6", func(h harness.Host) string { return h.IPv6 }},
}
