package gateway

import (
	"context"
	"log/slog"
	"sync/atomic"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"golang.org/x/time/rate"
)

// Reasons for which the gateway refuses or cuts a caller's connection or
// request, as its logs and the imagerecords_refusals_total metric name
// them.
const (
	reasonUnauthenticated    = "unauthenticated"
	reasonConnections        = "max_connections"
	reasonConnectionsPerPeer = "max_connections_per_peer"
	reasonIdleEvicted        = "idle_evicted"
	reasonStreamsPerPeer     = "max_streams_per_peer"
	reasonStreamsPerToken    = "max_streams_per_token"
	reasonHealthWatches      = "max_health_watches"
	reasonStalled            = "stalled"
	reasonSlowRequest        = "slow_request"
)

// refusalLog records refusals: every one in a counter, and at most a few
// log lines a second, each telling how many it left out. A flood of bad
// tokens or connections is a flood of refusals: its log must not be the
// thing that fills the disk.
type refusalLog struct {
	logger     *slog.Logger
	lines      *rate.Limiter
	suppressed atomic.Int64
	count      metric.Int64Counter
}

// limitsMeterName names the meter of the gateway's protective limits.
const limitsMeterName = "github.com/imagerecords/imagerecords/service/gateway"

// refusalLogRate and refusalLogBurst bound the refusal lines: one a
// second, ten at once.
const (
	refusalLogRate  = 1
	refusalLogBurst = 10
)

func newRefusalLog(logger *slog.Logger, mp metric.MeterProvider) *refusalLog {
	r := &refusalLog{logger: logger, lines: rate.NewLimiter(refusalLogRate, refusalLogBurst)}
	// Instrument creation fails only for invalid names, fixed here; a
	// failed instrument is a no-op.
	r.count, _ = mp.Meter(limitsMeterName).Int64Counter("imagerecords.refusals",
		metric.WithDescription("Connections and requests the gateway refused or cut to protect itself, by reason."),
		metric.WithUnit("{refusal}"))
	return r
}

// record counts a refusal for reason of peer (remote: the connection's
// address), and logs it at WARN unless lines are being dropped.
func (r *refusalLog) record(ctx context.Context, reason, peer, remote string, attrs ...slog.Attr) {
	r.count.Add(ctx, 1, metric.WithAttributes(attribute.String("reason", reason)))
	if !r.lines.Allow() {
		r.suppressed.Add(1)
		return
	}
	attrs = append(attrs, slog.String("reason", reason), slog.String("peer", peer), slog.String("remote", remote))
	if n := r.suppressed.Swap(0); n > 0 {
		attrs = append(attrs, slog.Int64("not_logged_before", n))
	}
	r.logger.LogAttrs(ctx, slog.LevelWarn, "refused", attrs...)
}
