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
	apiVIP6  = "2001:2::99"
)

// dnsServer answers the test zone on each udp=ADDR argument (and over TCP
// on each dnstcp=ADDR) until stdin closes, and accepts TCP connections on
// each tcp=ADDR, reading them to the end.
func dnsServer(args []string) error {
	for _, a := range args {
		var err error
		switch kind, addr, _ := strings.Cut(a, "="); kind {
		case "udp":
			err = serveDNS(addr)
		case "dnstcp":
			err = serveDNSTCP(addr)
		case "tcp":
			err = serveSink(addr)
		default:
			err = fmt.Errorf("argument %q", a)
		}
		if err != nil {
			return err
		}
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	return nil
}

// serveSink accepts TCP connections on addr and reads them to the end.
func serveSink(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
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
	return nil
}

// serveDNS answers the test zone on addr.
func serveDNS(addr string) error {
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return err
	}
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
	return nil
}

// serveDNSTCP answers the test zone over TCP on addr (RFC 7766): each
// answer goes in three segments, its length prefix alone, then its first
// ten bytes, then the rest, so that the collector reassembles it.
func serveDNSTCP(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					var l [2]byte
					if _, err := io.ReadFull(r, l[:]); err != nil {
						return
					}
					in := make([]byte, int(l[0])<<8|int(l[1]))
					if _, err := io.ReadFull(r, in); err != nil {
						return
					}
					out, ok := answer(in)
					if !ok {
						continue // slow.example.com: never answered
					}
					// Go sets TCP_NODELAY: each write is a segment of its own.
					for _, part := range [][]byte{{byte(len(out) >> 8), byte(len(out))}, out[:10], out[10:]} {
						if _, err := c.Write(part); err != nil {
							return
						}
						time.Sleep(2 * time.Millisecond)
					}
				}
			}()
		}
	}()
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
	rr := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 300}
	switch {
	case name == apiName && q.Type == dnsmessage.TypeA:
		_ = b.AResource(rr, dnsmessage.AResource{A: netip.MustParseAddr(apiVIP).As4()})
	case name == apiName && q.Type == dnsmessage.TypeAAAA:
		_ = b.AAAAResource(rr, dnsmessage.AAAAResource{AAAA: netip.MustParseAddr(apiVIP6).As16()})
	}
	out, err := b.Finish()
	return out, err == nil
}

// dnsClient resolves each name through the server (a UDP socket to port 53,
// by Go's resolver; over TCP when server is "tcp/ADDR") for network ("ip4": A, "ip6": AAAA), printing "lookup
// NAME RESULT", then connects to api.example.com port 80, sends n bytes,
// prints "sent" and holds the connection until stdin closes.
func dnsClient(server, network string, n int, names []string) error {
	transport := "udp"
	if addr, ok := strings.CutPrefix(server, "tcp/"); ok {
		// Go's resolver frames its queries for TCP on a stream connection.
		transport, server = "tcp", addr
	}
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, transport, server)
	}}
	var api net.IP
	for _, name := range names {
		ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
		ips, err := r.LookupIP(ctx, network, name)
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
	helpers["dnsserver"] = dnsServer
	helpers["dnsclient"] = func(args []string) error {
		n, err := strconv.Atoi(args[2])
		if err != nil {
			return err
		}
		return dnsClient(args[0], args[1], n, args[3:])
	}
}
