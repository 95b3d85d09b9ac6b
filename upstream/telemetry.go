package upstream

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
)

// instrumentationName names the client's meter.
const instrumentationName = "github.com/imagerecords/imagerecords/upstream"

// instruments are the client's metrics. Attributes are outcomes and error
// codes only: never a desktop or region id, which are unbounded.
type instruments struct {
	calls     metric.Int64Counter
	duration  metric.Float64Histogram
	retries   metric.Int64Counter
	throttles metric.Int64Counter
	// budgetExhausted counts retries the retry budget refused.
	budgetExhausted metric.Int64Counter
	// quotaWait is the time attempts waited for their turn with the pacer.
	quotaWait metric.Float64Histogram
	// sharedBudget counts the shared budget going down and coming back.
	sharedBudget metric.Int64Counter
}

func newInstruments(mp metric.MeterProvider) instruments {
	m := mp.Meter(instrumentationName)
	var in instruments
	// Instrument creation fails only for invalid names, fixed here; a
	// failed instrument is a no-op, never a crash.
	in.calls, _ = m.Int64Counter("imagerecords.upstream.calls",
		metric.WithDescription("Upstream DescribeImageModifiedRecords attempts, by outcome and upstream error code."), metric.WithUnit("{call}"))
	in.duration, _ = m.Float64Histogram("imagerecords.upstream.duration",
		metric.WithDescription("Duration of upstream attempts."), metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
	in.retries, _ = m.Int64Counter("imagerecords.upstream.retries",
		metric.WithDescription("Upstream attempts retried, by the error that caused the retry."), metric.WithUnit("{retry}"))
	in.throttles, _ = m.Int64Counter("imagerecords.upstream.throttles",
		metric.WithDescription("Upstream answers that were throttling errors."), metric.WithUnit("{call}"))
	in.quotaWait, _ = m.Float64Histogram("imagerecords.upstream.quota_wait",
		metric.WithDescription("Time upstream attempts waited for their turn with the pacer."), metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(0, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
	in.sharedBudget, _ = m.Int64Counter("imagerecords.upstream.shared_budget.transitions",
		metric.WithDescription("The shared (Redis) upstream budget becoming unreachable (state down) and reachable again (state up)."), metric.WithUnit("{transition}"))
	in.budgetExhausted, _ = m.Int64Counter("imagerecords.upstream.retry_budget_exhausted",
		metric.WithDescription("Retries not made because the retry budget was exhausted."), metric.WithUnit("{retry}"))
	// Export every counter at zero from the start, so that rates and
	// alerts have a series before the first event.
	ctx := context.Background()
	in.calls.Add(ctx, 0, callsOK...)
	in.retries.Add(ctx, 0, metric.WithAttributes(semconv.ErrorTypeKey.String("Throttling.User")))
	in.throttles.Add(ctx, 0)
	in.budgetExhausted.Add(ctx, 0)
	return in
}

// observePacer exports the pacer's current rate and queue.
func (in instruments) observePacer(mp metric.MeterProvider, p *Pacer) {
	m := mp.Meter(instrumentationName)
	// As in newInstruments, a failed instrument is a no-op.
	_, _ = m.Float64ObservableGauge("imagerecords.upstream.pacer.rate",
		metric.WithDescription("The pacer's current rate of upstream attempts; 0: not spaced."), metric.WithUnit("{call}/s"),
		metric.WithFloat64Callback(func(_ context.Context, o metric.Float64Observer) error {
			o.Observe(p.Rate())
			return nil
		}))
	_, _ = m.Int64ObservableGauge("imagerecords.upstream.pacer.queued",
		metric.WithDescription("Upstream attempts waiting for their turn with the pacer."), metric.WithUnit("{call}"),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			o.Observe(int64(p.Queued()))
			return nil
		}))
}

func (in instruments) record(ctx context.Context, d time.Duration, err error) {
	if err == nil {
		in.calls.Add(ctx, 1, callsOK...)
		in.duration.Record(ctx, d.Seconds(), outcomeOK...)
		return
	}
	in.calls.Add(ctx, 1, metric.WithAttributes(attribute.String("outcome", "error"), semconv.ErrorTypeKey.String(errorCode(err))))
	in.duration.Record(ctx, d.Seconds(), outcomeError...)
	if apiErr, ok := errors.AsType[*APIError](err); ok && apiErr.Kind() == KindThrottled {
		in.throttles.Add(ctx, 1)
	}
}

// The attributes of every successful attempt's measurements, and of every
// failed attempt's duration, built once, as the option lists the
// instruments take: a list passed on as it is (callsOK...) costs no
// allocation, where a single option becomes a new list at every call.
var (
	callsOK      = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(attribute.String("outcome", "ok"), semconv.ErrorTypeKey.String("")))}
	outcomeOK    = []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(attribute.String("outcome", "ok")))}
	outcomeError = []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(attribute.String("outcome", "error")))}
)

// errorCode names err for metrics and spans: the upstream Code, or a fixed
// word for failures without one.
func errorCode(err error) string {
	if err == nil {
		return ""
	}
	if apiErr, ok := errors.AsType[*APIError](err); ok {
		if apiErr.Code != "" {
			return apiErr.Code
		}
		return "http_error"
	}
	switch {
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline_exceeded"
	case errors.Is(err, ErrMalformedResponse):
		return "malformed_response"
	case errors.Is(err, ErrNoCredentials):
		return "no_credentials"
	case isUnknownRegion(err):
		return "unknown_region"
	}
	return "network"
}

// CallStats counts the upstream attempts made for one gateway RPC, for its
// access-log line.
type CallStats struct {
	// Calls counts attempts, retries included.
	Calls atomic.Int64
	// Retries counts the attempts that were retried.
	Retries atomic.Int64
}

type callStatsKey struct{}

// WithCallStats returns a context in which the client counts its attempts
// into stats.
func WithCallStats(ctx context.Context, stats *CallStats) context.Context {
	return context.WithValue(ctx, callStatsKey{}, stats)
}

// CallStatsFrom returns the stats ctx counts attempts into ([WithCallStats]),
// or nil: a call that makes many upstream calls at once (a fleet) reports
// its progress from them.
func CallStatsFrom(ctx context.Context) *CallStats { return callStatsFrom(ctx) }

func callStatsFrom(ctx context.Context) *CallStats {
	s, _ := ctx.Value(callStatsKey{}).(*CallStats)
	return s
}

type pageNumberKey struct{}

// withPageNumber tells the client which page of a sequence it fetches, for
// the attempt's span.
func withPageNumber(ctx context.Context, n int) context.Context {
	return context.WithValue(ctx, pageNumberKey{}, n)
}

func pageNumberFrom(ctx context.Context) int {
	n, _ := ctx.Value(pageNumberKey{}).(int)
	return n
}

// annotateAttempt records on an attempt's client span, in one call, what
// the attempt asked for and what the answer said: the HTTP status (0:
// none), the page or the error. An attempt without an answer carries what
// it asked for too. Attribute values are ids and codes, never credentials.
func annotateAttempt(span trace.Span, in DescribeInput, attempt, pageNumber, status int, page *Page, err error) {
	if !span.IsRecording() {
		return
	}
	attrs := make([]attribute.KeyValue, 0, 12)
	attrs = append(attrs,
		actionAttribute,
		semconv.CloudRegion(in.RegionID),
		attribute.String("ecd.desktop_id", in.DesktopID),
		attribute.Int("ecd.attempt", attempt),
		semconv.HTTPRequestMethodPost,
	)
	if pageNumber > 0 {
		attrs = append(attrs, attribute.Int("ecd.page", pageNumber))
	}
	if status > 0 {
		attrs = append(attrs, semconv.HTTPResponseStatusCode(status))
	}
	throttled := false
	apiErr, isAPIErr := errors.AsType[*APIError](err)
	switch {
	case page != nil:
		attrs = append(attrs,
			attribute.String("ecd.request_id", page.RequestID),
			attribute.Int("ecd.page.records", len(page.Records)))
	case isAPIErr:
		throttled = apiErr.Kind() == KindThrottled
		attrs = append(attrs, attribute.String("ecd.request_id", apiErr.RequestID))
	}
	var code string
	if err != nil {
		code = errorCode(err)
		attrs = append(attrs, attribute.String("ecd.error.code", code), semconv.ErrorTypeKey.String(code))
	}
	span.SetAttributes(append(attrs, attribute.Bool("ecd.throttled", throttled))...)
	if err != nil {
		span.SetStatus(codes.Error, code)
	}
}

// actionAttribute names the action on every attempt's span.
var actionAttribute = attribute.String("ecd.action", Action)
