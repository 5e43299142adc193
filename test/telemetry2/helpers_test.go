package telemetry2

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// The DNS zone of the test server: api.example.com has an address,
// slow.example.com is never answered, every other name is NXDOMAIN.
const (
	apiName  = "api.example.com."
	slowName = "slow.example.com."
	apiVIP   = "198.18.0.99" // routed to the server host, which DNATs it
)

// dnsServer answers the test zone on addr (UDP) until stdin closes, and
// accepts TCP connections on sink, reading them to the end.
func dnsServer(addr, sink string) error {
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return err
	}
	defer pc.Close()
	ln, err := net.Listen("tcp", sink)
	if err != nil {
		return err
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(io.Discard, c)
			}()
		}
	}()
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if out, ok := answer(buf[:n]); ok {
				_, _ = pc.WriteTo(out, from)
			}
		}
	}()
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	return nil
}

func answer(in []byte) ([]byte, bool) {
	var p dnsmessage.Parser
	h, err := p.Start(in)
	if err != nil {
		return nil, false
	}
	q, err := p.Question()
	if err != nil {
		return nil, false
	}
	name := strings.ToLower(q.Name.String())
	if name == slowName {
		return nil, false
	}
	rh := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired}
	if name != apiName {
		rh.RCode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, rh)
	_ = b.StartQuestions()
	_ = b.Question(q)
	_ = b.StartAnswers()
	if name == apiName && q.Type == dnsmessage.TypeA {
		vip := netip.MustParseAddr(apiVIP).As4()
		_ = b.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 300}, dnsmessage.AResource{A: vip})
	}
	out, err := b.Finish()
	return out, err == nil
}

// dnsClient resolves each name through the server (a UDP socket to port 53,
// by Go's resolver), printing "lookup NAME RESULT", then connects to
// api.example.com port 80, sends n bytes, prints "sent" and holds the
// connection until stdin closes.
func dnsClient(server string, n int, names []string) error {
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", server)
	}}
	var api net.IP
	for _, name := range names {
		ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
		ips, err := r.LookupIP(ctx, "ip4", name)
		cancel()
		var dnsErr *net.DNSError
		switch {
		case err == nil:
			fmt.Println("lookup", name, ips[0])
			if name == apiName {
				api = ips[0]
			}
		case errors.As(err, &dnsErr) && dnsErr.IsNotFound:
			fmt.Println("lookup", name, "notfound")
		case errors.As(err, &dnsErr) && dnsErr.IsTimeout:
			fmt.Println("lookup", name, "timeout")
		default:
			fmt.Println("lookup", name, "error", err)
		}
	}
	if api == nil {
		return errors.New("api.example.com not resolved")
	}
	c, err := net.Dial("tcp", net.JoinHostPort(api.String(), "80"))
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Write(make([]byte, n)); err != nil {
		return err
	}
	fmt.Println("sent")
	_, _ = io.Copy(io.Discard, bufio.NewReader(os.Stdin))
	return nil
}

func init() {
	helpers["dnsserver"] = func(args []string) error { return dnsServer(args[0], args[1]) }
	helpers["dnsclient"] = func(args []string) error {
		n, err := strconv.Atoi(args[1])
		if err != nil {
			return err
		}
		return dnsClient(args[0], n, args[2:])
	}
}
