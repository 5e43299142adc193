package match

import dto "github.com/prometheus/client_model/go"

// EventsLost returns how many events the subscribers called name have lost
// so far (weir_reducer_events_lost_total{subscriber=name}), so that a
// subscriber can tell its own consumers in-band.
func (e *Engine) EventsLost(name string) uint64 {
	var m dto.Metric
	if err := e.events.lost.WithLabelValues(name).Write(&m); err != nil {
		return 0
	}
	return uint64(m.GetCounter().GetValue())
}
