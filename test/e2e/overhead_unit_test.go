package e2e

import "testing"

func TestParseLoad(t *testing.T) {
	got := parseLoad(t, "requests 500 seconds 5.0000 rate 100.0 errors 2 cpu 1.2500 first-error dial tcp 198.18.1.2:8081: connect: connection refused")
	want := loadResult{requests: 500, errors: 2, seconds: 5, rate: 100, cpu: 1.25,
		firstErr: "dial tcp 198.18.1.2:8081: connect: connection refused"}
	if got != want {
		t.Errorf("parseLoad = %+v, want %+v", got, want)
	}
	if got := parseLoad(t, "requests 1 seconds 1 rate 1 errors 0 cpu 0"); got.firstErr != "" {
		t.Errorf("first error %q from a line without one", got.firstErr)
	}
}

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		xs   []float64
		want float64
	}{
		{[]float64{3}, 3},
		{[]float64{0.99, 0.95, 1.01}, 0.99},
		{[]float64{4, 1, 3, 2}, 2.5},
		{[]float64{0.97, 0.98, 0.96, 0.99, 0.5}, 0.97},
	} {
		xs := append([]float64(nil), tc.xs...)
		if got := median(tc.xs); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.xs, got, tc.want)
		}
		for i := range xs {
			if xs[i] != tc.xs[i] {
				t.Errorf("median reordered its argument: %v", tc.xs)
			}
		}
	}
}
