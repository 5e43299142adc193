// Package security tests weir as an operator would expose it: loopback by
// default, mTLS identities bound to nodes, epochs that cannot lock a node
// out, limits under abuse, certificates rotating under traffic, and a
// collector with only the capabilities it needs. Every test runs the real
// binaries; the network namespaces they create use 198.18.0.0/15 only.
package security

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
	"github.com/weir-project/weir/test/internal/harness"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(int) {
		if peerDir != "" {
			_ = os.RemoveAll(peerDir)
		}
	}))
}

// The traffic peers run as copies of flowsrv and flowcli named after this
// test process, so that their edge is this process's only.
var (
	srvName = fmt.Sprintf("ssrv%d", os.Getpid())
	cliName = fmt.Sprintf("scli%d", os.Getpid())

	peerOnce sync.Once
	peerDir  string
	peerErr  error
)

func peerBin(t testing.TB, name string) string {
	t.Helper()
	peerOnce.Do(func() {
		bin := harness.Binaries(t)
		if peerDir, peerErr = os.MkdirTemp("", "weir-sec-peers-"); peerErr != nil {
			return
		}
		// World-readable: the collector runs as nobody in one test.
		_ = os.Chmod(peerDir, 0o755)
		for from, to := range map[string]string{"flowsrv": srvName, "flowcli": cliName} {
			b, err := os.ReadFile(filepath.Join(bin, from))
			if err != nil {
				peerErr = err
				return
			}
			if err := os.WriteFile(filepath.Join(peerDir, to), b, 0o755); err != nil {
				peerErr = err
				return
			}
		}
	})
	if peerErr != nil {
		t.Fatal(peerErr)
	}
	if name == "flowsrv" {
		return filepath.Join(peerDir, srvName)
	}
	return filepath.Join(peerDir, cliName)
}

// transfer moves request bytes up and response bytes down on each of conns
// loopback connections between the two peers.
func transfer(t *testing.T, conns, request, response int) {
	t.Helper()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(harness.FreePort(t)))
	srv := harness.Start(t, "flowsrv", peerBin(t, "flowsrv"), "-listen", addr, "-conns", strconv.Itoa(conns),
		"-request-bytes", strconv.Itoa(request), "-response-bytes", strconv.Itoa(response))
	srv.WaitLine(t, "listening", 10*time.Second)
	cli := harness.Start(t, "flowcli", peerBin(t, "flowcli"), "-connect", addr, "-conns", strconv.Itoa(conns),
		"-request-bytes", strconv.Itoa(request), "-response-bytes", strconv.Itoa(response))
	if err := cli.Wait(60 * time.Second); err != nil {
		t.Fatalf("flowcli: %v\n%s", err, cli.Stderr())
	}
	if err := srv.Wait(10 * time.Second); err != nil {
		t.Fatalf("flowsrv: %v\n%s", err, srv.Stderr())
	}
}

// waitEdge waits for the peers' edge to show exactly up and down bytes
// over opened connections.
func waitEdge(t *testing.T, metricsURL string, up, down, opened float64) {
	t.Helper()
	c2s := map[string]string{"src_workload": cliName, "dst_workload": srvName}
	s2c := map[string]string{"src_workload": srvName, "dst_workload": cliName}
	harness.WaitFor(t, metricsURL, 20*time.Second, fmt.Sprintf("the edge with %v bytes up, %v down, %v opened", up, down, opened), func(m harness.Metrics) bool {
		u, _ := m.Value("weir_tcp_bytes_total", c2s)
		d, _ := m.Value("weir_tcp_bytes_total", s2c)
		o, _ := m.Value("weir_tcp_connections_opened_total", c2s)
		return u == up && d == down && o == opened
	})
}

// certsDir runs weirctl certs into a new directory.
func certsDir(t *testing.T, args ...string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "pki")
	weirctl(t, append([]string{"certs", "--dir", dir}, args...)...)
	return dir
}

// weirctl runs weirctl and fails the test if it fails.
func weirctl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(filepath.Join(harness.Binaries(t), "weirctl"), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("weirctl %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// tlsFlags are the --tls-* flags for the files name.pem and name-key.pem
// of dir.
func tlsFlags(dir, name string) []string {
	return []string{"--tls-cert", filepath.Join(dir, name+".pem"), "--tls-key", filepath.Join(dir, name+"-key.pem"), "--tls-ca", filepath.Join(dir, "ca.pem")}
}

// clientTLS is a client configuration presenting dir's name certificate.
func clientTLS(t *testing.T, dir, name string) *tls.Config {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	ca, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	return &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool, MinVersion: tls.VersionTLS13}
}

// inNetNS returns a dialer whose sockets are made in the named network
// namespace: on a locked thread that enters it and comes back.
func inNetNS(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		type result struct {
			c   net.Conn
			err error
		}
		done := make(chan result, 1)
		go func() {
			runtime.LockOSThread()
			self, err := os.Open("/proc/thread-self/ns/net")
			if err != nil {
				runtime.UnlockOSThread()
				done <- result{nil, err}
				return
			}
			defer self.Close()
			target, err := os.Open("/run/netns/" + ns)
			if err != nil {
				runtime.UnlockOSThread()
				done <- result{nil, err}
				return
			}
			defer target.Close()
			if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
				runtime.UnlockOSThread()
				done <- result{nil, err}
				return
			}
			var d net.Dialer
			c, err := d.DialContext(ctx, network, addr)
			if unix.Setns(int(self.Fd()), unix.CLONE_NEWNET) == nil {
				runtime.UnlockOSThread() // else the thread dies with the goroutine
			}
			done <- result{c, err}
		}()
		r := <-done
		return r.c, r.err
	}
}

// httpIn is an HTTP client whose connections start in namespace ns.
func httpIn(ns string) *http.Client {
	return &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DialContext: inNetNS(ns), DisableKeepAlives: true}}
}

// ingestClient opens a gRPC connection to addr, made with dial (the
// default dialer when nil) and creds (plaintext when nil).
func ingestClient(t *testing.T, addr string, dial func(context.Context, string, string) (net.Conn, error), tc *tls.Config) ingestv1.IngestServiceClient {
	t.Helper()
	creds := insecure.NewCredentials()
	if tc != nil {
		creds = credentials.NewTLS(tc)
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(creds), grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(64 << 20))}
	if dial != nil {
		opts = append(opts, grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) { return dial(ctx, "tcp", a) }))
	}
	conn, err := grpc.NewClient("passthrough:///"+addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return ingestv1.NewIngestServiceClient(conn)
}

// session sends a hello and batches on a new stream and returns the error
// that ended it, or nil once every batch was acked.
func session(ctx context.Context, c ingestv1.IngestServiceClient, hello *ingestv1.Hello, batches ...*ingestv1.Batch) error {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	st, err := c.Stream(ctx)
	if err != nil {
		return err
	}
	if err := st.Send(&ingestv1.StreamRequest{Kind: &ingestv1.StreamRequest_Hello{Hello: hello}}); err != nil {
		_, err = st.Recv()
		return err
	}
	if _, err := st.Recv(); err != nil { // welcome
		return err
	}
	for _, b := range batches {
		if err := st.Send(&ingestv1.StreamRequest{Kind: &ingestv1.StreamRequest_Batch{Batch: b}}); err != nil {
			_, err = st.Recv()
			return err
		}
		resp, err := st.Recv()
		if err != nil {
			return err
		}
		if resp.GetAck().GetSequence() != b.GetSequence() {
			return fmt.Errorf("ack %v for batch %d", resp, b.GetSequence())
		}
	}
	return st.CloseSend()
}

func hello(node string, epoch uint64) *ingestv1.Hello {
	return &ingestv1.Hello{ProtocolVersion: 1, NodeName: node, BootId: "sec-boot", Epoch: epoch}
}

// injected is a batch that would create a fake edge of 123,456,789 bytes.
func injected() *ingestv1.Batch {
	return &ingestv1.Batch{Sequence: 1,
		Processes: []*ingestv1.Process{{Handle: 1, Pid: 4242, Comm: "rq-injected"}},
		Sockets: []*ingestv1.Socket{{Handle: 1, Process: 1, Role: ingestv1.Role_ROLE_CLIENT, LocalAddr: []byte{198, 18, 9, 1}, LocalPort: 40000,
			RemoteAddr: []byte{198, 18, 9, 2}, RemotePort: 443, NewConnection: true}},
		Stats: &ingestv1.SocketStats{HandleGaps: []uint32{1}, BytesSent: []uint64{123_456_789}, BytesReceived: []uint64{1},
			SegmentsSent: []uint64{1}, SegmentsReceived: []uint64{1}},
	}
}
