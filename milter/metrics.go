package milter

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Metrics are the milter's Prometheus series on a private registry, so
// tests and several servers in one process do not collide.
type Metrics struct {
	Registry     *prometheus.Registry
	Messages     *prometheus.CounterVec
	Split        prometheus.Counter
	Panics       prometheus.Counter
	PolicyErrors prometheus.Counter
	Unavailable  prometheus.Counter
	Decision     prometheus.Histogram
}

// NewMetrics registers the milter series on a new registry.
func NewMetrics() *Metrics {
	r := prometheus.NewRegistry()
	f := promauto.With(r)
	return &Metrics{
		Registry: r,
		Messages: f.NewCounterVec(prometheus.CounterOpts{
			Name: "vipmilter_milter_messages_total", Help: "Messages decided, by binding and reason.",
		}, []string{"binding", "reason"}),
		Split: f.NewCounter(prometheus.CounterOpts{
			Name: "vipmilter_milter_split_total", Help: "Messages whose recipients would have had different bindings.",
		}),
		Panics: f.NewCounter(prometheus.CounterOpts{
			Name: "vipmilter_milter_panics_total", Help: "Panics recovered in milter sessions (message tempfailed).",
		}),
		PolicyErrors: f.NewCounter(prometheus.CounterOpts{
			Name: "vipmilter_milter_policy_errors_total", Help: "Messages whose policy run failed.",
		}),
		Unavailable: f.NewCounter(prometheus.CounterOpts{
			Name: "vipmilter_milter_group_members_unavailable_total", Help: "Group members skipped because their address was not on the host.",
		}),
		Decision: f.NewHistogram(prometheus.HistogramOpts{
			Name: "vipmilter_milter_decision_seconds", Help: "Time the policy took to decide.",
			Buckets: prometheus.ExponentialBuckets(0.00001, 4, 10),
		}),
	}
}
