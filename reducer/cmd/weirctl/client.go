package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	observerv1 "github.com/weir-project/weir/proto/weir/observer/v1"
)

// common are the flags of every command.
type common struct {
	server                 string
	tlsCert, tlsKey, tlsCA string
	output                 string
	timeout                time.Duration
}

// flags returns a flag set for command name with the common flags;
// outputs lists the -o values it accepts, the first being the default.
func (c *common) flags(name string, stderr io.Writer, outputs ...string) *flag.FlagSet {
	fs := flag.NewFlagSet("weirctl "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	server := "localhost:7000"
	if s := os.Getenv("WEIR_SERVER"); s != "" {
		server = s
	}
	fs.StringVar(&c.server, "server", server, "reducer gRPC address, host:port (env WEIR_SERVER)")
	fs.StringVar(&c.tlsCert, "tls-cert", "", "client certificate (PEM) for mTLS")
	fs.StringVar(&c.tlsKey, "tls-key", "", "client private key (PEM)")
	fs.StringVar(&c.tlsCA, "tls-ca", "", "CA (PEM) that the reducer's certificate must chain to")
	fs.DurationVar(&c.timeout, "timeout", 10*time.Second, "time limit of a request (not of a followed stream)")
	if len(outputs) > 0 {
		fs.StringVar(&c.output, "o", outputs[0], "output: "+strings.Join(outputs, ", "))
		fs.StringVar(&c.output, "output", outputs[0], "output: "+strings.Join(outputs, ", "))
	}
	return fs
}

// parse parses args and checks the common flags.
func (c *common) parse(fs *flag.FlagSet, args []string, outputs ...string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "%s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return errUsage
	}
	if len(outputs) > 0 && !contains(outputs, c.output) {
		fmt.Fprintf(fs.Output(), "%s: -o %q: want one of %s\n", fs.Name(), c.output, strings.Join(outputs, ", "))
		return errUsage
	}
	if _, _, err := net.SplitHostPort(c.server); err != nil {
		fmt.Fprintf(fs.Output(), "%s: --server %q: want host:port\n", fs.Name(), c.server)
		return errUsage
	}
	n := 0
	for _, v := range []string{c.tlsCert, c.tlsKey, c.tlsCA} {
		if v != "" {
			n++
		}
	}
	if n != 0 && n != 3 {
		fmt.Fprintf(fs.Output(), "%s: set --tls-cert, --tls-key and --tls-ca together for mTLS, or none for plaintext\n", fs.Name())
		return errUsage
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// dial returns a client of the reducer's Observer API.
func (c *common) dial() (observerv1.ObserverServiceClient, func(), error) {
	creds := insecure.NewCredentials()
	if c.tlsCert != "" {
		tc, err := c.tlsConfig()
		if err != nil {
			return nil, nil, err
		}
		creds = credentials.NewTLS(tc)
	}
	conn, err := grpc.NewClient(c.server, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, nil, fmt.Errorf("--server %s: %w", c.server, err)
	}
	return observerv1.NewObserverServiceClient(conn), func() { _ = conn.Close() }, nil
}

func (c *common) tlsConfig() (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(c.tlsCert, c.tlsKey)
	if err != nil {
		return nil, fmt.Errorf("--tls-cert/--tls-key: %w", err)
	}
	pem, err := os.ReadFile(c.tlsCA)
	if err != nil {
		return nil, fmt.Errorf("--tls-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("--tls-ca %s: no certificate in PEM", c.tlsCA)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS13}, nil
}

// explain turns an RPC error into one that says what to do.
func (c *common) explain(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	msg := st.Message()
	tlsFlags := c.tlsCert != ""
	switch {
	case st.Code() == codes.Unimplemented:
		return fmt.Errorf("the server at %s does not serve the Observer API (is it a weir reducer of this version?): %s", c.server, msg)
	case st.Code() == codes.PermissionDenied:
		return fmt.Errorf("the reducer refused the identity of --tls-cert %s: weirctl needs an observer certificate (spiffe://<trust-domain>/observer/<name>, from weirctl certs --observers): %s", c.tlsCert, msg)
	case st.Code() == codes.ResourceExhausted:
		return errors.New(msg)
	case st.Code() == codes.DeadlineExceeded:
		return fmt.Errorf("the reducer at %s did not answer within --timeout %s", c.server, c.timeout)
	case st.Code() != codes.Unavailable:
		return fmt.Errorf("%s: %s", strings.ToLower(st.Code().String()), msg)
	case strings.Contains(msg, "connection refused"), strings.Contains(msg, "no such host"), strings.Contains(msg, "i/o timeout"):
		return fmt.Errorf("cannot reach the reducer at %s (%s): is weir-reducer running, and is --server right?", c.server, lastPart(msg))
	case tlsFlags && strings.Contains(msg, "first record does not look like a TLS handshake"):
		return fmt.Errorf("the reducer at %s speaks plaintext, not TLS: drop --tls-cert, --tls-key and --tls-ca (or start the reducer with its --tls-* flags)", c.server)
	case tlsFlags && (strings.Contains(msg, "certificate signed by unknown authority") || strings.Contains(msg, "certificate is not valid") || strings.Contains(msg, "x509")):
		return fmt.Errorf("the reducer's certificate does not verify against --tls-ca %s (%s)", c.tlsCA, lastPart(msg))
	case tlsFlags && (strings.Contains(msg, "bad certificate") || strings.Contains(msg, "unknown certificate authority") || strings.Contains(msg, "certificate required")):
		return fmt.Errorf("the reducer at %s refused the client certificate --tls-cert %s: it must be signed by the CA of the reducer's --tls-ca", c.server, c.tlsCert)
	case tlsFlags && (strings.Contains(msg, "broken pipe") || strings.Contains(msg, "connection reset") || strings.Contains(msg, "EOF")):
		return fmt.Errorf("the reducer at %s closed the TLS connection (%s): it probably refused the client certificate --tls-cert %s, which must be signed by the CA of the reducer's --tls-ca", c.server, lastPart(msg), c.tlsCert)
	case !tlsFlags:
		return fmt.Errorf("the reducer at %s closed the connection (%s): it probably requires mTLS; pass --tls-cert, --tls-key and --tls-ca", c.server, lastPart(msg))
	}
	return fmt.Errorf("the reducer at %s is unavailable: %s", c.server, msg)
}

// lastPart returns the innermost cause of a gRPC transport message.
func lastPart(msg string) string {
	msg = strings.Trim(msg, `"`)
	if i := strings.LastIndex(msg, ": "); i >= 0 && i+2 < len(msg) {
		return msg[i+2:]
	}
	return msg
}

// unary returns a context for one request.
func (c *common) unary(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.timeout)
}
