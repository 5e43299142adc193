// Command flowcli is the end-to-end tests' client: it opens connections,
// sends an exact request size on each, reads an exact response size, keeps
// the connections open until its standard input closes, then closes them.
package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"os"
)

func main() {
	connect := flag.String("connect", "", "server address host:port")
	request := flag.Int64("request-bytes", 1000, "bytes to send on each connection")
	response := flag.Int64("response-bytes", 1000, "bytes to read from each connection")
	conns := flag.Int("conns", 1, "connections to open")
	hold := flag.Bool("hold", false, "keep the connections open until standard input closes")
	flag.Parse()
	if *connect == "" {
		fmt.Fprintln(os.Stderr, "flowcli: --connect is required")
		os.Exit(2)
	}

	open := make([]net.Conn, 0, *conns)
	for i := range *conns {
		c, err := net.Dial("tcp", *connect)
		if err != nil {
			fmt.Fprintf(os.Stderr, "flowcli: connection %d: %v\n", i, err)
			os.Exit(1)
		}
		if _, err := io.CopyN(c, zeroReader{}, *request); err != nil {
			fmt.Fprintf(os.Stderr, "flowcli: connection %d: write: %v\n", i, err)
			os.Exit(1)
		}
		if _, err := io.CopyN(io.Discard, c, *response); err != nil {
			fmt.Fprintf(os.Stderr, "flowcli: connection %d: read: %v\n", i, err)
			os.Exit(1)
		}
		open = append(open, c)
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
