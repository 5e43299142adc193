// Package e2e runs weir's real binaries against real traffic between network
// namespaces on this kernel and checks the reducer's Prometheus scrape.
package e2e

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
