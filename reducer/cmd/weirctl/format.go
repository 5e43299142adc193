package main

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	observerv1 "github.com/weir-project/weir/proto/weir/observer/v1"
)

// printer writes the human forms. Colours only on a terminal and without
// NO_COLOR.
type printer struct {
	w     io.Writer
	color bool
	loc   *time.Location
}

func newPrinter(w io.Writer) *printer {
	return &printer{w: w, color: useColor(w), loc: time.Local}
}

// useColor reports whether w is a terminal and NO_COLOR is unset or empty
// (https://no-color.org).
func useColor(w io.Writer) bool {
	if os.Getenv("NO_COLOR") != "" {
		return false
	}
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

const (
	green  = "\x1b[32m"
	red    = "\x1b[31m"
	yellow = "\x1b[33m"
	dim    = "\x1b[2m"
	bold   = "\x1b[1m"
	reset  = "\x1b[0m"
)

func (p *printer) paint(code, s string) string {
	if !p.color {
		return s
	}
	return code + s + reset
}

// flow writes one line for a flow event:
//
//	04:51:02.123 open   default/frontend[deployment] 198.18.0.1:43210 -> default/api[deployment] 198.18.0.2:8080
func (p *printer) flow(f *observerv1.Flow) {
	ts := f.GetTime().AsTime().In(p.loc).Format("Jan _2 15:04:05.000")
	var kind, tail string
	switch f.GetType() {
	case observerv1.FlowEventType_FLOW_EVENT_TYPE_OPEN:
		kind = p.paint(green, "open  ")
	case observerv1.FlowEventType_FLOW_EVENT_TYPE_UPDATE:
		kind = "update"
		tail = fmt.Sprintf("  +%s %s seg  (total %s %s seg)", bytesIEC(f.GetBytes()), count(f.GetPackets()),
			bytesIEC(f.GetTotalBytes()), count(f.GetTotalPackets()))
	case observerv1.FlowEventType_FLOW_EVENT_TYPE_CLOSE:
		kind = p.paint(red, "close ")
		tail = fmt.Sprintf("  total %s %s seg", bytesIEC(f.GetTotalBytes()), count(f.GetTotalPackets()))
	default:
		kind = "?     "
	}
	fmt.Fprintf(p.w, "%s %s %s -> %s%s\n", p.paint(dim, ts), kind, p.endpoint(f.GetSource()), p.endpoint(f.GetDestination()), tail)
}

// lost writes the line of a loss report.
func (p *printer) lost(l *observerv1.LostEvents) {
	why := "this stream read too slowly (the reducer kept going)"
	if l.GetSource() == observerv1.LostEventsSource_LOST_EVENTS_SOURCE_REDUCER {
		why = "the reducer's observer fell behind its ingest"
	}
	fmt.Fprintln(p.w, p.paint(yellow, fmt.Sprintf("lost %d events: %s", l.GetNumEventsLost(), why)))
}

func (p *printer) endpoint(e *observerv1.Endpoint) string {
	return p.paint(bold, workloadName(e.GetWorkload())) + " " + hostPort(e.GetIp(), e.GetPort())
}

func hostPort(ip string, port uint32) string {
	if strings.Contains(ip, ":") {
		return "[" + ip + "]:" + strconv.FormatUint(uint64(port), 10)
	}
	return ip + ":" + strconv.FormatUint(uint64(port), 10)
}

// workloadName is namespace/name[kind], or ? when unresolved.
func workloadName(w *observerv1.Workload) string {
	if w == nil || w.GetName() == "" {
		return "?"
	}
	s := w.GetName()
	if ns := w.GetNamespace(); ns != "" {
		s = ns + "/" + s
	}
	if k := w.GetKind(); k != "" {
		s += "[" + k + "]"
	}
	if n := w.GetNode(); n != "" {
		s += "@" + n
	}
	if pod := w.GetPod(); pod != "" {
		s += "/" + pod
	}
	return s
}

// mapTable writes the map as a table, largest edges first.
func (p *printer) mapTable(m *observerv1.ServiceMap) {
	tw := tabwriter.NewWriter(p.w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, p.paint(bold, "SOURCE\tDESTINATION\tBYTES\tPACKETS\tOPENED\tACTIVE"))
	for _, e := range m.GetEdges() {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", workloadName(e.GetSource()), workloadName(e.GetDestination()),
			bytesIEC(e.GetTcpBytes()), count(e.GetTcpPackets()), count(e.GetTcpConnectionsOpened()), count(e.GetTcpActiveConnections()))
	}
	_ = tw.Flush()
	fmt.Fprintf(p.w, "%d workloads, %d edges (level %s)\n", len(m.GetNodes()), len(m.GetEdges()), m.GetLevel())
}

// mapDot writes the map as a Graphviz digraph.
func mapDot(w io.Writer, m *observerv1.ServiceMap) {
	fmt.Fprintln(w, "digraph weir {")
	fmt.Fprintln(w, "  rankdir=LR;")
	fmt.Fprintln(w, "  node [shape=box, style=rounded];")
	for _, n := range m.GetNodes() {
		fmt.Fprintf(w, "  %s [label=%s];\n", strconv.Quote(n.GetId()), strconv.Quote(workloadName(n.GetWorkload())))
	}
	for _, e := range m.GetEdges() {
		fmt.Fprintf(w, "  %s -> %s [label=%s];\n", strconv.Quote(e.GetSourceId()), strconv.Quote(e.GetDestinationId()),
			strconv.Quote(fmt.Sprintf("%s, %s active", bytesIEC(e.GetTcpBytes()), count(e.GetTcpActiveConnections()))))
	}
	fmt.Fprintln(w, "}")
}

// status writes the reducer's status at now.
func (p *printer) status(s *observerv1.GetStatusResponse, now time.Time) {
	up := now.Sub(s.GetStartedAt().AsTime()).Truncate(time.Second)
	fmt.Fprintf(p.w, "%s %s, up %s, aggregation level %s\n", p.paint(bold, "Reducer"), s.GetVersion(), up, s.GetLevel())
	fmt.Fprintf(p.w, "Series %d  Flows %d  Sockets %d  Observer streams %d/%d\n",
		s.GetSeries(), s.GetFlows(), s.GetSockets(), s.GetObservers(), s.GetMaxObservers())
	fmt.Fprintf(p.w, "\n%s (%d)\n", p.paint(bold, "Collectors"), len(s.GetCollectors()))
	if len(s.GetCollectors()) > 0 {
		tw := tabwriter.NewWriter(p.w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  NODE\tVERSION\tKERNEL\tEPOCH\tLAG\tCONNECTED\tMESSAGES")
		for _, c := range s.GetCollectors() {
			lag := c.GetLag().AsDuration().Round(time.Millisecond)
			lagS := lag.String()
			if lag > 10*time.Second {
				lagS = p.paint(yellow, lagS)
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%d\t%s\t%s ago\t%d\n", c.GetNode(), c.GetVersion(), c.GetKernelRelease(), c.GetEpoch(),
				lagS, now.Sub(c.GetConnectedAt().AsTime()).Truncate(time.Second), c.GetMessages())
		}
		_ = tw.Flush()
	}
	fmt.Fprintf(p.w, "\n%s\n", p.paint(bold, "Losses"))
	tw := tabwriter.NewWriter(p.w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  COUNTER\tREASON\tCOUNT")
	for _, l := range s.GetLosses() {
		c := strconv.FormatUint(l.GetCount(), 10)
		if l.GetCount() > 0 {
			c = p.paint(yellow, c)
		}
		reason := l.GetReason()
		if reason == "" {
			reason = "-"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", l.GetMetric(), reason, c)
	}
	_ = tw.Flush()
}

// bytesIEC formats n bytes with a binary prefix: 999 B, 1.5 KiB, 12 MiB.
func bytesIEC(n uint64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatUint(n, 10) + " B"
	}
	div, exp := uint64(unit), 0
	for x := n / unit; x >= unit && exp < 5; x /= unit {
		div *= unit
		exp++
	}
	v := float64(n) / float64(div)
	prec := 1
	if v >= 100 {
		prec = 0
	}
	return strconv.FormatFloat(v, 'f', prec, 64) + " " + string("KMGTPE"[exp]) + "iB"
}

// count formats a count with thousands separators.
func count(n uint64) string {
	s := strconv.FormatUint(n, 10)
	if len(s) <= 3 {
		return s
	}
	var b strings.Builder
	pre := len(s) % 3
	if pre > 0 {
		b.WriteString(s[:pre])
	}
	for i := pre; i < len(s); i += 3 {
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(s[i : i+3])
	}
	return b.String()
}
