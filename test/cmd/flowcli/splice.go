package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
)

// runSplice connects, waits for a line on standard input, then moves n bytes
// from the socket into a pipe and from the pipe to /dev/null with splice(2):
// the socket is never read with recv, read or recvmsg, so the kernel's
// sock_recv_length tracepoint never fires for it. Then it holds the idle
// connection until standard input closes.
func runSplice(addr string, n int64) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	fmt.Println("connected")
	stdin := bufio.NewReader(os.Stdin)
	if _, err := stdin.ReadString('\n'); err != nil {
		return fmt.Errorf("wait for the go-ahead on stdin: %w", err)
	}
	got, err := spliceDrain(c.(*net.TCPConn), n)
	if err != nil {
		return fmt.Errorf("splice after %d bytes: %w", got, err)
	}
	fmt.Printf("drained %d\n", got)
	_, _ = io.Copy(io.Discard, stdin)
	return nil
}

func spliceDrain(c *net.TCPConn, n int64) (int64, error) {
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return 0, err
	}
	defer null.Close()
	var p [2]int
	if err := syscall.Pipe2(p[:], syscall.O_CLOEXEC); err != nil {
		return 0, err
	}
	defer syscall.Close(p[0])
	defer syscall.Close(p[1])
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	const spliceMove, spliceNonblock = 0x1, 0x2
	var total int64
	for total < n {
		var moved int64
		var serr error
		// The socket is non-blocking: wait for it to be readable through
		// the runtime's poller, and splice inside the callback.
		err := rc.Read(func(fd uintptr) bool {
			moved, serr = syscall.Splice(int(fd), nil, p[1], nil, int(min(n-total, 64<<10)), spliceMove|spliceNonblock)
			return !errors.Is(serr, syscall.EAGAIN)
		})
		if err != nil {
			return total, err
		}
		if serr != nil {
			return total, serr
		}
		if moved == 0 {
			return total, io.ErrUnexpectedEOF
		}
		for left := moved; left > 0; {
			m, err := syscall.Splice(p[0], nil, int(null.Fd()), nil, int(left), spliceMove)
			if err != nil {
				return total, err
			}
			left -= m
		}
		total += moved
	}
	return total, nil
}
