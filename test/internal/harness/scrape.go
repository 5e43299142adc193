package harness

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Metrics is one parsed scrape.
type Metrics map[string]*dto.MetricFamily

// Scrape fetches and parses a Prometheus text endpoint.
func Scrape(url string) (Metrics, error) {
	client := http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mf, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", url, err)
	}
	return Metrics(mf), nil
}

// Value returns the value of the sample of family name whose labels include
// every pair of match, and whether there is exactly one such sample.
// Counters, gauges and untyped samples are supported.
func (m Metrics) Value(name string, match map[string]string) (float64, bool) {
	mf, ok := m[name]
	if !ok {
		return 0, false
	}
	var found []float64
	for _, metric := range mf.GetMetric() {
		if !labelsMatch(metric, match) {
			continue
		}
		switch {
		case metric.Counter != nil:
			found = append(found, metric.GetCounter().GetValue())
		case metric.Gauge != nil:
			found = append(found, metric.GetGauge().GetValue())
		case metric.Untyped != nil:
			found = append(found, metric.GetUntyped().GetValue())
		}
	}
	if len(found) != 1 {
		return 0, false
	}
	return found[0], true
}

// Sum adds the values of every sample of family name matching match.
func (m Metrics) Sum(name string, match map[string]string) float64 {
	var sum float64
	for _, metric := range m[name].GetMetric() {
		if !labelsMatch(metric, match) {
			continue
		}
		sum += metric.GetCounter().GetValue() + metric.GetGauge().GetValue() + metric.GetUntyped().GetValue()
	}
	return sum
}

// Series lists every sample of family name with its labels, for a
// failure message.
func (m Metrics) Series(name string) string {
	var out []string
	for _, metric := range m[name].GetMetric() {
		var ls []string
		for _, lp := range metric.GetLabel() {
			ls = append(ls, lp.GetName()+"="+lp.GetValue())
		}
		out = append(out, fmt.Sprintf("{%s} %v", strings.Join(ls, ","), metric.GetCounter().GetValue()+metric.GetGauge().GetValue()))
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, "; ")
}

func labelsMatch(metric *dto.Metric, match map[string]string) bool {
	n := 0
	for _, lp := range metric.GetLabel() {
		if v, ok := match[lp.GetName()]; ok {
			if v != lp.GetValue() {
				return false
			}
			n++
		}
	}
	return n == len(match)
}

// WaitFor scrapes url every 100 ms until cond holds or timeout passes, and
// returns the last scrape.
func WaitFor(t testing.TB, url string, timeout time.Duration, what string, cond func(Metrics) bool) Metrics {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last Metrics
	var lastErr error
	for time.Now().Before(deadline) {
		m, err := Scrape(url)
		if err == nil && cond(m) {
			return m
		}
		last, lastErr = m, err
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting for %s (last scrape error: %v)\n%s", timeout, what, lastErr, dump(last))
	return nil
}

func dump(m Metrics) string {
	out := ""
	for name, mf := range m {
		if len(name) < 8 || name[:8] != "weir_tcp" {
			continue
		}
		for _, metric := range mf.GetMetric() {
			out += fmt.Sprintf("%s%v %v\n", name, metric.GetLabel(), metric.GetCounter().GetValue()+metric.GetGauge().GetValue())
		}
	}
	return out
}
