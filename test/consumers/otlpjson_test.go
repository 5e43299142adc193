package consumers

import (
	"encoding/json"
	"fmt"
)

// The OTLP JSON that the file exporter writes, as much of it as the tests
// read.
type otlpJSON struct {
	ResourceMetrics []struct {
		Resource struct {
			Attributes []otlpAttr `json:"attributes"`
		} `json:"resource"`
		ScopeMetrics []struct {
			Metrics []otlpMetric `json:"metrics"`
		} `json:"scopeMetrics"`
	} `json:"resourceMetrics"`
}

type otlpAttr struct {
	Key   string `json:"key"`
	Value struct {
		StringValue string `json:"stringValue"`
	} `json:"value"`
}

type otlpPoint struct {
	Attributes        []otlpAttr `json:"attributes"`
	StartTimeUnixNano string     `json:"startTimeUnixNano"`
	TimeUnixNano      string     `json:"timeUnixNano"`
	AsInt             string     `json:"asInt"`
}

type otlpMetric struct {
	Name string `json:"name"`
	Unit string `json:"unit"`
	Sum  *struct {
		DataPoints             []otlpPoint `json:"dataPoints"`
		AggregationTemporality int         `json:"aggregationTemporality"`
		IsMonotonic            bool        `json:"isMonotonic"`
	} `json:"sum"`
	Gauge *struct {
		DataPoints []otlpPoint `json:"dataPoints"`
	} `json:"gauge"`
}

// point is one data point, flattened.
type point struct {
	metric, unit string
	kind         string // sum or gauge
	temporality  int    // 1 delta, 2 cumulative; 0 for a gauge
	monotonic    bool
	attrs        map[string]string
	start, time  int64
	value        int64
}

// export is the points of one export.
type export struct {
	resource map[string]string
	points   []point
}

func parseExport(line []byte) (export, error) {
	var doc otlpJSON
	if err := json.Unmarshal(line, &doc); err != nil {
		return export{}, fmt.Errorf("parse OTLP JSON: %w", err)
	}
	var e export
	for _, rm := range doc.ResourceMetrics {
		e.resource = attrs(rm.Resource.Attributes)
		for _, sm := range rm.ScopeMetrics {
			for _, m := range sm.Metrics {
				add := func(kind string, temp int, mono bool, dps []otlpPoint) {
					for _, dp := range dps {
						e.points = append(e.points, point{
							metric: m.Name, unit: m.Unit, kind: kind, temporality: temp, monotonic: mono,
							attrs: attrs(dp.Attributes), start: atoi64(dp.StartTimeUnixNano), time: atoi64(dp.TimeUnixNano),
							value: atoi64(dp.AsInt),
						})
					}
				}
				if m.Sum != nil {
					add("sum", m.Sum.AggregationTemporality, m.Sum.IsMonotonic, m.Sum.DataPoints)
				}
				if m.Gauge != nil {
					add("gauge", 0, false, m.Gauge.DataPoints)
				}
			}
		}
	}
	return e, nil
}

func attrs(as []otlpAttr) map[string]string {
	out := make(map[string]string, len(as))
	for _, a := range as {
		out[a.Key] = a.Value.StringValue
	}
	return out
}
