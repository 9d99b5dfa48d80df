package milter

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Metrics are the milter's Prometheus series on a private registry, so
// several servers in one process do not collide. Serve them from Registry.
type Metrics struct {
	Registry *prometheus.Registry

	messages      *prometheus.CounterVec
	split         prometheus.Counter
	panics        prometheus.Counter
	policyErrors  prometheus.Counter
	unavailable   prometheus.Counter
	headersCapped prometheus.Counter
	acceptErrors  prometheus.Counter
	connCapped    prometheus.Counter
	decision      prometheus.Histogram
}

// NewMetrics registers the milter series on a new registry.
func NewMetrics() *Metrics {
	r := prometheus.NewRegistry()
	f := promauto.With(r)
	counter := func(name, help string) prometheus.Counter {
		return f.NewCounter(prometheus.CounterOpts{Name: "vipmilter_milter_" + name, Help: help})
	}
	return &Metrics{
		Registry: r,
		messages: f.NewCounterVec(prometheus.CounterOpts{
			Name: "vipmilter_milter_messages_total", Help: "Messages decided, by binding and reason.",
		}, []string{"binding", "reason"}),
		split:         counter("split_total", "Messages whose recipients would have had different bindings."),
		panics:        counter("panics_total", "Panics recovered in milter sessions."),
		policyErrors:  counter("policy_errors_total", "Messages whose policy run failed."),
		unavailable:   counter("group_members_unavailable_total", "Group members skipped because their address was not on the host."),
		headersCapped: counter("headers_capped_total", "Messages with header fields past MaxHeaderBytes, not seen by the policy."),
		acceptErrors:  counter("accept_errors_total", "Failed accepts (e.g. too many open files); the milter backs off and retries."),
		connCapped:    counter("connection_cap_reached_total", "Times MaxConnections connections were open and new ones had to wait."),
		decision: f.NewHistogram(prometheus.HistogramOpts{
			Name: "vipmilter_milter_decision_seconds", Help: "Time the policy took to decide.",
			Buckets: prometheus.ExponentialBuckets(0.00001, 4, 10),
		}),
	}
}
