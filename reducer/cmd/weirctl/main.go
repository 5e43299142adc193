// Command weirctl reads the reducer's Observer API: flows as they happen
// (observe), the service map (map) and the reducer's status (status).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `weirctl reads a weir reducer's Observer API.

Usage:
  weirctl <command> [flags]

Commands:
  observe   print flow events (open, counters, close), like hubble observe
  map       print the service map: a table sorted by bytes, JSON or Graphviz dot
  status    print the reducer's status: collectors, losses, table sizes
  certs     write a CA and certificates for the reducer, nodes, the
            k8s-watcher and observers (mTLS with identities)
  version   print weirctl's version

Every command takes --server (default localhost:7000) and, for mTLS,
--tls-cert, --tls-key and --tls-ca. Run 'weirctl <command> -h' for its flags.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run runs one command and returns the exit code: 0, 1 for a failure, 2
// for bad usage.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var cmd func(context.Context, []string, io.Writer, io.Writer) error
	switch args[0] {
	case "observe":
		cmd = observe
	case "map":
		cmd = serviceMap
	case "status":
		cmd = statusCmd
	case "certs":
		cmd = certs
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, "weirctl", version)
		return 0
	case "help", "-h", "--help", "-help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "weirctl: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	err := cmd(ctx, args[1:], stdout, stderr)
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	case ctx.Err() != nil:
		return 0 // interrupted
	}
	fmt.Fprintln(stderr, "weirctl:", err)
	return 1
}

// errUsage marks an error that the flag package already reported.
var errUsage = errors.New("usage")
