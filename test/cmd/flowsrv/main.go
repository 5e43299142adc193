// Command flowsrv is the end-to-end tests' server: it accepts connections,
// reads an exact request size from each and answers with an exact response
// size, for a number of rounds, and closes after the client does.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	request := flag.Int64("request-bytes", 1000, "bytes to read from each connection")
	response := flag.Int64("response-bytes", 1000, "bytes to write to each connection")
	conns := flag.Int("conns", 1, "connections to serve before exiting")
	rounds := flag.Int("rounds", 1, "request/response rounds on each connection")
	echo := flag.Bool("echo", false, "send back whatever arrives, until the client closes (ignores the sizes and rounds)")
	flag.Parse()

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "flowsrv:", err)
		os.Exit(1)
	}
	// The test waits for this line before it starts the client.
	fmt.Printf("listening %s\n", ln.Addr())

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
			if *echo {
				errs <- serveEcho(c)
				return
			}
			errs <- serve(c, *rounds, *request, *response)
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
	// Wait for the client to close first, so that every byte is acknowledged.
	n, err := io.Copy(io.Discard, c)
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("wait for close: %w", err)
	}
	if n != 0 {
		return fmt.Errorf("client sent %d bytes more than the request", n)
	}
	return nil
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
