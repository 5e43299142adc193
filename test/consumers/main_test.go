// Package consumers tests weir's consumers against real peers: the OTLP push
// against a real OpenTelemetry Collector, and the Observer API through
// weirctl, with real traffic between network namespaces through a real
// collector and reducer.
package consumers

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
