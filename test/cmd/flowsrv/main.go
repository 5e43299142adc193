// Command flowsrv is the end-to-end tests' server: it accepts connections,
// reads an exact request size from each and answers with an exact response
// size, for a number of rounds, and closes after the client does. Other
// modes echo, serve load until killed, serve requests that carry their own
// sizes, or push a fixed amount when told to on standard input.
package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	request := flag.Int64("request-bytes", 1000, "bytes to read from each connection")
	response := flag.Int64("response-bytes", 1000, "bytes to write to each connection")
	conns := flag.Int("conns", 1, "connections to serve before exiting")
	rounds := flag.Int("rounds", 1, "request/response rounds on each connection; 0: until the client closes")
	echo := flag.Bool("echo", false, "send back whatever arrives, until the client closes (ignores the sizes and rounds)")
	forever := flag.Bool("forever", false, "accept connections until killed (ignores --conns); each is served until the client closes")
	sized := flag.Bool("sized", false, "each request starts with its own request and response sizes (flowcli --mix; ignores the sizes and rounds)")
	push := flag.Int64("push", 0, "on each connection, wait for a line on standard input, then write this many bytes and print \"sent N\" (ignores the sizes and rounds)")
	flag.Parse()

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "flowsrv:", err)
		os.Exit(1)
	}
	// The test waits for this line before it starts the client.
	fmt.Printf("listening %s\n", ln.Addr())

	handle := func(c net.Conn) error {
		switch {
		case *echo:
			return serveEcho(c)
		case *sized:
			return serveSized(c)
		case *push > 0:
			return servePush(c, *push)
		case *rounds == 0 || *forever:
			return serveLoop(c, *request, *response)
		default:
			return serve(c, *rounds, *request, *response)
		}
	}
	if *forever {
		for {
			c, err := ln.Accept()
			if err != nil {
				fmt.Fprintln(os.Stderr, "flowsrv: accept:", err)
				os.Exit(1)
			}
			go func() {
				if err := handle(c); err != nil {
					fmt.Fprintln(os.Stderr, "flowsrv:", err)
				}
			}()
		}
	}

	var wg sync.WaitGroup
	errs := make(chan error, *conns)
	for range *conns {
		c, err := ln.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, "flowsrv: accept:", err)
			os.Exit(1)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- handle(c)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			fmt.Fprintln(os.Stderr, "flowsrv:", err)
			os.Exit(1)
		}
	}
}

func serve(c net.Conn, rounds int, request, response int64) error {
	defer c.Close()
	for range rounds {
		if _, err := io.CopyN(io.Discard, c, request); err != nil {
			return fmt.Errorf("read request: %w", err)
		}
		if _, err := io.CopyN(c, zeroReader{}, response); err != nil {
			return fmt.Errorf("write response: %w", err)
		}
	}
	return waitClose(c)
}

// waitClose waits for the client to close first, so that every byte is
// acknowledged.
func waitClose(c net.Conn) error {
	n, err := io.Copy(io.Discard, c)
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("wait for close: %w", err)
	}
	if n != 0 {
		return fmt.Errorf("client sent %d bytes more than the request", n)
	}
	return nil
}

// serveLoop answers request after request with buffers allocated once,
// until the client closes between two requests. It is the load server.
func serveLoop(c net.Conn, request, response int64) error {
	defer c.Close()
	req, resp := make([]byte, request), make([]byte, response)
	for {
		if _, err := io.ReadFull(c, req); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
				return nil
			}
			return fmt.Errorf("read request: %w", err)
		}
		if _, err := c.Write(resp); err != nil {
			if errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
				return nil
			}
			return fmt.Errorf("write response: %w", err)
		}
	}
}

// serveSized reads an 8-byte header (request size, response size, both
// big-endian uint32), the request, and writes the response, until the
// client closes.
func serveSized(c net.Conn) error {
	defer c.Close()
	var hdr [8]byte
	buf := make([]byte, 64<<10)
	for {
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("read header: %w", err)
		}
		req, resp := int64(binary.BigEndian.Uint32(hdr[:4])), int64(binary.BigEndian.Uint32(hdr[4:]))
		if _, err := io.CopyBuffer(io.Discard, io.LimitReader(c, req), buf); err != nil {
			return fmt.Errorf("read request: %w", err)
		}
		if _, err := io.CopyN(c, zeroReader{}, resp); err != nil {
			return fmt.Errorf("write response: %w", err)
		}
	}
}

var stdin = bufio.NewReader(os.Stdin)
var stdinMu sync.Mutex

// servePush waits for a line on standard input, writes n bytes in one call
// (it blocks while the client does not read), reports it, and waits for the
// client to close.
func servePush(c net.Conn, n int64) error {
	defer c.Close()
	stdinMu.Lock()
	_, err := stdin.ReadString('\n')
	stdinMu.Unlock()
	if err != nil {
		return fmt.Errorf("wait for the go-ahead on stdin: %w", err)
	}
	fmt.Println("sending")
	w, err := c.Write(make([]byte, n))
	if err != nil {
		return fmt.Errorf("push: %w", err)
	}
	fmt.Printf("sent %d\n", w)
	return waitClose(c)
}

func serveEcho(c net.Conn) error {
	defer c.Close()
	if _, err := io.Copy(c, c); err != nil {
		return fmt.Errorf("echo: %w", err)
	}
	return nil
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
