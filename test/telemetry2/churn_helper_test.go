package telemetry2

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"time"
)

// churn does n rounds of: resolve api.example.com through the server (one
// A query over UDP port 53), connect to the answer's port 80, send size
// bytes, close, and run /bin/true (a fork, an exec and an exit). It prints
// "done ROUNDS" at the end.
func churn(server string, n, size int) error {
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", server)
	}}
	buf := make([]byte, size)
	for i := range n {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		ips, err := r.LookupIP(ctx, "ip4", apiName)
		cancel()
		if err != nil {
			return fmt.Errorf("round %d: %w", i, err)
		}
		c, err := net.Dial("tcp", net.JoinHostPort(ips[0].String(), "80"))
		if err != nil {
			return fmt.Errorf("round %d: %w", i, err)
		}
		if _, err := c.Write(buf); err != nil {
			c.Close()
			return fmt.Errorf("round %d: %w", i, err)
		}
		// Half-close and wait for the server's close, so that every byte
		// is acknowledged before the socket goes.
		_ = c.(*net.TCPConn).CloseWrite()
		_, _ = c.Read(make([]byte, 1))
		c.Close()
		if err := exec.Command("/bin/true").Run(); err != nil {
			return fmt.Errorf("round %d: %w", i, err)
		}
	}
	fmt.Println("done", n)
	return nil
}

func init() {
	helpers["churn"] = func(args []string) error {
		n, err := strconv.Atoi(args[1])
		if err != nil {
			return err
		}
		size, err := strconv.Atoi(args[2])
		if err != nil {
			return err
		}
		return churn(args[0], n, size)
	}
}
