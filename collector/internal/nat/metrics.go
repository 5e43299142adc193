package nat

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	added, dropped, hits, overruns, errors prometheus.Counter
	namespaces                             prometheus.Gauge
	// listings of the namespaces: periodic, or asked by Sync for a socket
	// of a namespace not followed yet.
	periodicRescans, syncRescans prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, t *Table) (*metrics, error) {
	m := &metrics{
		added: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weir_collector_nat_translations_total",
			Help: "Translated TCP connections learnt from conntrack.",
		}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weir_collector_nat_translations_dropped_total",
			Help: "Translations not kept because the table was at --nat-max-entries.",
		}),
		hits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weir_collector_nat_sockets_translated_total",
			Help: "Sockets reported with a NAT translation.",
		}),
		overruns: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weir_collector_conntrack_overruns_total",
			Help: "Conntrack netlink sockets that overran (ENOBUFS, events lost) and were opened again.",
		}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weir_collector_conntrack_errors_total",
			Help: "Conntrack netlink sockets that failed otherwise (retried after 5 s).",
		}),
		namespaces: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "weir_collector_conntrack_namespaces",
			Help: "Network namespaces whose conntrack events are followed.",
		}),
	}
	listings := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "weir_collector_netns_listings_total",
		Help: "Listings of the network namespaces (every /proc/PID/ns/net) for conntrack, by reason: periodic, or new_netns (a socket of a namespace not followed yet was about to be reported).",
	}, []string{"reason"})
	m.periodicRescans = listings.WithLabelValues("periodic")
	m.syncRescans = listings.WithLabelValues("new_netns")
	size := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "weir_collector_nat_translations",
		Help: "NAT translations kept.",
	}, func() float64 { return float64(t.Len()) })
	for _, c := range []prometheus.Collector{m.added, m.dropped, m.hits, m.overruns, m.errors, m.namespaces, listings, size} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register NAT metrics: %w", err)
		}
	}
	return m, nil
}
