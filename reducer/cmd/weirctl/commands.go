package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	observerv1 "github.com/weir-project/weir/proto/weir/observer/v1"
)

// jsonLine is the JSON form of the Observer API's messages, the same as the
// reducer's /api/v1/map: proto field names, zero values included.
var jsonLine = protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}

func writeJSON(w io.Writer, m proto.Message) error {
	b, err := jsonLine.Marshal(m)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	_, err = w.Write(b)
	return err
}

// listFlag is a repeatable flag; a value may also hold several, comma
// separated.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error {
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			*l = append(*l, v)
		}
	}
	return nil
}

func observe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c common
	fs := c.flags("observe", stderr, "line", "json")
	var workloads, namespaces, kinds, ports listFlag
	fs.Var(&workloads, "workload", "only flows with this workload at either end (repeatable)")
	fs.Var(&namespaces, "namespace", "only flows with this namespace at either end (repeatable)")
	fs.Var(&kinds, "kind", "only flows with this workload kind at either end, e.g. deployment, process (repeatable)")
	fs.Var(&ports, "port", "only flows with this port at either end (repeatable)")
	follow := fs.Bool("follow", false, "keep printing new events until interrupted")
	fs.BoolVar(follow, "f", false, "short for --follow")
	since := fs.String("since", "", "first print the recent events since this time: a duration ago (5m) or RFC 3339")
	last := fs.Uint("last", 0, "first print the last N recent events (default 20 without --since and --follow)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: weirctl observe [flags]\n\nPrints flow events: open, counter updates and close of each connection.\n"+
			"Without --follow it prints recent events and exits, like hubble observe.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := c.parse(fs, args, "line", "json"); err != nil {
		return err
	}
	req := &observerv1.WatchFlowsRequest{Follow: *follow, Last: uint32(*last)}
	if *since != "" {
		t, err := parseSince(*since, time.Now())
		if err != nil {
			fmt.Fprintf(stderr, "weirctl observe: --since %q: %v\n", *since, err)
			return errUsage
		}
		req.Since = timestamppb.New(t)
	}
	if req.Since == nil && req.Last == 0 && !req.Follow {
		req.Last = 20
	}
	flt := &observerv1.FlowFilter{Workload: workloads, Namespace: namespaces, Kind: kinds}
	for _, p := range ports {
		var n uint32
		if _, err := fmt.Sscan(p, &n); err != nil || n == 0 || n > 65535 {
			fmt.Fprintf(stderr, "weirctl observe: --port %q: want a port number\n", p)
			return errUsage
		}
		flt.Port = append(flt.Port, n)
	}
	if len(flt.Workload)+len(flt.Namespace)+len(flt.Kind)+len(flt.Port) > 0 {
		req.Allowlist = []*observerv1.FlowFilter{flt}
	}
	client, done, err := c.dial()
	if err != nil {
		return err
	}
	defer done()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if !req.Follow {
		sctx, cancel = c.unary(ctx)
		defer cancel()
	}
	stream, err := client.WatchFlows(sctx, req)
	if err != nil {
		return c.explain(err)
	}
	p := newPrinter(stdout)
	n := 0
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			if n == 0 {
				fmt.Fprintln(stderr, "weirctl observe: no recent flow events. The reducer keeps them while a client follows"+
					" (weirctl observe --follow) and for its --observer-linger after; it keeps them always with --observer-linger=-1s.")
			}
			return nil
		}
		n++
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return c.explain(err)
		}
		if c.output == "json" {
			if err := writeJSON(stdout, resp); err != nil {
				return err
			}
			continue
		}
		switch r := resp.GetResponse().(type) {
		case *observerv1.WatchFlowsResponse_Flow:
			p.flow(r.Flow)
		case *observerv1.WatchFlowsResponse_LostEvents:
			p.lost(r.LostEvents)
		}
	}
}

// parseSince reads a duration ago or an RFC 3339 time.
func parseSince(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, errors.New("a duration ago must not be negative")
		}
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, errors.New("want a duration (5m) or an RFC 3339 time (2026-11-27T04:00:00Z)")
	}
	return t, nil
}

func serviceMap(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c common
	fs := c.flags("map", stderr, "table", "json", "dot")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: weirctl map [flags]\n\nPrints the service map: the edges between workloads, largest first.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	watch := fs.Bool("watch", false, "keep printing the map as it changes (WatchServiceMap), until interrupted")
	every := fs.Duration("interval", 5*time.Second, "with --watch: how often the reducer sends the changes")
	if err := c.parse(fs, args, "table", "json", "dot"); err != nil {
		return err
	}
	client, done, err := c.dial()
	if err != nil {
		return err
	}
	defer done()
	if *watch {
		return c.watchMap(ctx, client, *every, stdout)
	}
	uctx, cancel := c.unary(ctx)
	defer cancel()
	resp, err := client.GetServiceMap(uctx, &observerv1.GetServiceMapRequest{})
	if err != nil {
		return c.explain(err)
	}
	switch c.output {
	case "json":
		return writeJSON(stdout, resp)
	case "dot":
		mapDot(stdout, resp.GetMap())
	default:
		newPrinter(stdout).mapTable(resp.GetMap())
	}
	return nil
}

func statusCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c common
	fs := c.flags("status", stderr, "text", "json")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: weirctl status [flags]\n\nPrints the reducer's version, its collectors, its loss counters and table sizes.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := c.parse(fs, args, "text", "json"); err != nil {
		return err
	}
	client, done, err := c.dial()
	if err != nil {
		return err
	}
	defer done()
	uctx, cancel := c.unary(ctx)
	defer cancel()
	resp, err := client.GetStatus(uctx, &observerv1.GetStatusRequest{})
	if err != nil {
		return c.explain(err)
	}
	if c.output == "json" {
		return writeJSON(stdout, resp)
	}
	newPrinter(stdout).status(resp, time.Now())
	return nil
}

// watchMap prints the map, then again each time it changes. With -o json
// it prints the stream's messages, one per line.
func (c *common) watchMap(ctx context.Context, client observerv1.ObserverServiceClient, every time.Duration, stdout io.Writer) error {
	stream, err := client.WatchServiceMap(ctx, &observerv1.WatchServiceMapRequest{Interval: durationpb.New(every)})
	if err != nil {
		return c.explain(err)
	}
	p := newPrinter(stdout)
	var m *observerv1.ServiceMap
	for {
		resp, err := stream.Recv()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, io.EOF) {
				return nil
			}
			return c.explain(err)
		}
		if c.output == "json" {
			if err := writeJSON(stdout, resp); err != nil {
				return err
			}
			continue
		}
		if snap := resp.GetSnapshot(); snap != nil {
			m = snap
		} else if ch := resp.GetChange(); ch != nil && m != nil {
			if len(ch.GetEdgesUpdated())+len(ch.GetEdgesRemoved())+len(ch.GetNodesAdded())+len(ch.GetNodesRemoved()) == 0 {
				continue
			}
			m = applyChange(m, ch)
		} else {
			continue
		}
		if p.color {
			fmt.Fprint(stdout, "\x1b[H\x1b[2J") // a terminal: redraw in place
		} else {
			fmt.Fprintln(stdout)
		}
		fmt.Fprintln(stdout, m.GetTime().AsTime().In(p.loc).Format("15:04:05"))
		if c.output == "dot" {
			mapDot(stdout, m)
		} else {
			p.mapTable(m)
		}
	}
}

// applyChange returns m with the change applied, edges sorted by bytes.
func applyChange(m *observerv1.ServiceMap, ch *observerv1.ServiceMapChange) *observerv1.ServiceMap {
	type key struct{ s, d string }
	edges := make(map[key]*observerv1.Edge, len(m.GetEdges()))
	for _, e := range m.GetEdges() {
		edges[key{e.GetSourceId(), e.GetDestinationId()}] = e
	}
	for _, e := range ch.GetEdgesUpdated() {
		edges[key{e.GetSourceId(), e.GetDestinationId()}] = e
	}
	for _, e := range ch.GetEdgesRemoved() {
		delete(edges, key{e.GetSourceId(), e.GetDestinationId()})
	}
	nodes := make(map[string]*observerv1.Node, len(m.GetNodes()))
	for _, n := range m.GetNodes() {
		nodes[n.GetId()] = n
	}
	for _, n := range ch.GetNodesAdded() {
		nodes[n.GetId()] = n
	}
	for _, id := range ch.GetNodesRemoved() {
		delete(nodes, id)
	}
	out := &observerv1.ServiceMap{Time: ch.GetTime(), Level: m.GetLevel()}
	for _, e := range edges {
		out.Edges = append(out.Edges, e)
	}
	slices.SortFunc(out.Edges, func(a, b *observerv1.Edge) int {
		return cmp.Or(cmp.Compare(b.GetTcpBytes(), a.GetTcpBytes()),
			strings.Compare(a.GetSourceId(), b.GetSourceId()), strings.Compare(a.GetDestinationId(), b.GetDestinationId()))
	})
	for _, n := range nodes {
		out.Nodes = append(out.Nodes, n)
	}
	slices.SortFunc(out.Nodes, func(a, b *observerv1.Node) int { return strings.Compare(a.GetId(), b.GetId()) })
	return out
}
