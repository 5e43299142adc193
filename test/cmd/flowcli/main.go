// Command flowcli is the end-to-end tests' client: it opens connections and,
// on each, sends an exact request size and reads an exact response size, for
// a number of rounds. It keeps the connections open until its standard input
// closes when asked to, then closes them.
package main

import (
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"time"
)

func main() {
	connect := flag.String("connect", "", "server address host:port")
	request := flag.Int64("request-bytes", 1000, "bytes to send on each connection per round")
	response := flag.Int64("response-bytes", 1000, "bytes to read from each connection per round")
	conns := flag.Int("conns", 1, "connections to open")
	rounds := flag.Int("rounds", 1, "request/response rounds on each connection")
	pace := flag.Duration("pace", 0, "pause between two rounds on a connection")
	vary := flag.Bool("vary", false, "each round sends a random size from 1 to --request-bytes and reads back as much (for flowsrv --echo)")
	hold := flag.Bool("hold", false, "keep the connections open until standard input closes")
	flag.Parse()
	if *connect == "" || *conns < 1 || *rounds < 1 {
		fmt.Fprintln(os.Stderr, "flowcli: --connect is required, --conns and --rounds must be at least 1")
		os.Exit(2)
	}

	open := make([]net.Conn, 0, *conns)
	for i := range *conns {
		c, err := net.Dial("tcp", *connect)
		if err != nil {
			fmt.Fprintf(os.Stderr, "flowcli: connection %d: %v\n", i, err)
			os.Exit(1)
		}
		open = append(open, c)
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(open))
	for i, c := range open {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range *rounds {
				if r > 0 {
					time.Sleep(*pace)
				}
				req, resp := *request, *response
				if *vary {
					req = 1 + rand.Int64N(*request)
					resp = req
				}
				if _, err := io.CopyN(c, zeroReader{}, req); err != nil {
					errs <- fmt.Errorf("connection %d: write: %w", i, err)
					return
				}
				if _, err := io.CopyN(io.Discard, c, resp); err != nil {
					errs <- fmt.Errorf("connection %d: read: %w", i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		fmt.Fprintln(os.Stderr, "flowcli:", err)
		os.Exit(1)
	}
	// The test waits for this line: every byte has been sent and received.
	fmt.Printf("done %d\n", len(open))
	if *hold {
		_, _ = io.Copy(io.Discard, os.Stdin)
	}
	for _, c := range open {
		if err := c.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "flowcli: close:", err)
			os.Exit(1)
		}
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
