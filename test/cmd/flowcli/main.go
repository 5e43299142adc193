// Command flowcli is the end-to-end tests' client: it opens connections and,
// on each, sends an exact request size and reads an exact response size, for
// a number of rounds. It keeps the connections open until its standard input
// closes when asked to, then closes them. Other modes generate load for the
// overhead benchmarks (--load), varied realistic traffic (--mix), or drain a
// push from the server with splice(2) instead of recv (--splice).
package main

import (
	"bufio"
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
	step := flag.Int64("step", 0, "connection i sends --request-bytes + i*step and reads --response-bytes + i*step per round, so that every connection's counts differ")
	hold := flag.Bool("hold", false, "keep the connections open until standard input closes")
	more := flag.Bool("more", false, "with --hold: every line on standard input runs the rounds once more on every connection, then prints \"done\" again")
	splice := flag.Int64("splice", 0, "open one connection, print \"connected\", wait for a line on standard input, then drain this many bytes with splice(2) to /dev/null (no recv), print \"drained N\" and hold it until standard input closes")
	load := flag.String("load", "", "keepalive: --conns connections doing request/response as fast as they can; churn: --dialers concurrent loops of dial, request, response, close")
	dialers := flag.Int("dialers", 32, "with --load churn: concurrent dial loops")
	duration := flag.Duration("duration", 5*time.Second, "with --load or --mix: how long to measure")
	warmup := flag.Duration("warmup", 500*time.Millisecond, "with --load: load before the measurement starts")
	mix := flag.Bool("mix", false, "varied traffic to flowsrv --sized for --duration: each connection follows one of several profiles (chatty, uploader, downloader, sporadic, on/off)")
	seed := flag.Uint64("seed", 1, "with --mix: random seed")
	flag.Parse()
	if *connect == "" || *conns < 1 || *rounds < 1 {
		fmt.Fprintln(os.Stderr, "flowcli: --connect is required, --conns and --rounds must be at least 1")
		os.Exit(2)
	}
	var err error
	switch {
	case *load != "":
		err = runLoad(*load, *connect, *conns, *dialers, *request, *response, *warmup, *duration)
	case *mix:
		err = runMix(*connect, *conns, *duration, *seed)
	case *splice > 0:
		err = runSplice(*connect, *splice)
	default:
		err = run(*connect, *conns, *rounds, *pace, *request, *response, *step, *vary, *hold, *more)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "flowcli:", err)
		os.Exit(1)
	}
}

func run(connect string, conns, rounds int, pace time.Duration, request, response, step int64, vary, hold, more bool) error {
	open := make([]net.Conn, 0, conns)
	for i := range conns {
		c, err := net.Dial("tcp", connect)
		if err != nil {
			return fmt.Errorf("connection %d: %w", i, err)
		}
		open = append(open, c)
	}
	stdin := bufio.NewReader(os.Stdin)
	for {
		var wg sync.WaitGroup
		errs := make(chan error, len(open))
		for i, c := range open {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for r := range rounds {
					if r > 0 {
						time.Sleep(pace)
					}
					req, resp := request+int64(i)*step, response+int64(i)*step
					if vary {
						req = 1 + rand.Int64N(request)
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
			return err
		}
		// The test waits for this line: every byte has been sent and received.
		fmt.Printf("done %d\n", len(open))
		if !hold {
			break
		}
		if !more {
			_, _ = io.Copy(io.Discard, os.Stdin)
			break
		}
		if _, err := stdin.ReadString('\n'); err != nil {
			break // standard input closed
		}
	}
	for _, c := range open {
		if err := c.Close(); err != nil {
			return fmt.Errorf("close: %w", err)
		}
	}
	return nil
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
