package service

import (
	"context"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
)

// instrumentationName names the service's meter.
const instrumentationName = "github.com/imagerecords/imagerecords/service"

// instruments are the service's metrics. Their attributes never include a
// desktop or region id: those are unbounded, and belong on spans.
type instruments struct {
	records       counter
	pages         counter
	activeStreams metric.Int64UpDownCounter

	// fleetActive counts fleet desktops being paged; fleetDesktops the
	// fleet desktops finished, by outcome.
	fleetActive   metric.Int64UpDownCounter
	fleetDesktops counter
	// watchPollers counts the running pollers, watchWatchers the watchers
	// they serve; watchPollWatchers is the watchers each poll serves;
	// watchPolls counts polls by outcome and watchEvents the events sent,
	// by kind.
	watchPollers      metric.Int64UpDownCounter
	watchWatchers     metric.Int64UpDownCounter
	watchPollWatchers metric.Int64Histogram
	watchPolls        counter
	watchEvents       counter
}

// counter is an Int64Counter whose every measurement carries one of the
// prebuilt attribute sets below.
type counter struct{ metric.Int64Counter }

// Add adds n to the series of attrs.
func (c counter) Add(ctx context.Context, n int64, attrs attributes) {
	c.Int64Counter.Add(ctx, n, attrs...)
}

// attributes is an attribute set built once, as the option list an
// instrument takes: a list passed on whole costs no allocation, where a
// single option becomes a new list at every measurement (every page of
// every stream).
type attributes []metric.AddOption

func attributeSet(kvs ...attribute.KeyValue) attributes {
	return attributes{metric.WithAttributeSet(attribute.NewSet(kvs...))}
}

var (
	methodList   = attributeSet(semconv.RPCMethod("ListImageModifiedRecords"))
	methodStream = attributeSet(semconv.RPCMethod("StreamImageModifiedRecords"))
	methodFleet  = attributeSet(semconv.RPCMethod("StreamFleetImageModifiedRecords"))
	methodWatch  = attributeSet(semconv.RPCMethod("WatchImageModifiedRecords"))

	eventSnapshot      = attributeSet(attribute.String("kind", "snapshot"))
	eventRecordAdded   = attributeSet(attribute.String("kind", "record_added"))
	eventStatusChanged = attributeSet(attribute.String("kind", "status_changed"))
	eventHeartbeat     = attributeSet(attribute.String("kind", "heartbeat"))

	outcomeOK     = attributeSet(attribute.String("outcome", "ok"))
	outcomeFailed = attributeSet(attribute.String("outcome", "failed"))
)

func newInstruments(mp metric.MeterProvider) instruments {
	m := mp.Meter(instrumentationName)
	var in instruments
	// Instrument creation fails only for invalid names, fixed here; a
	// failed instrument is a no-op, never a crash.
	in.records.Int64Counter, _ = m.Int64Counter("imagerecords.records",
		metric.WithDescription("Image-change records delivered to callers."), metric.WithUnit("{record}"))
	in.pages.Int64Counter, _ = m.Int64Counter("imagerecords.pages",
		metric.WithDescription("Upstream pages delivered to callers (one per List, one per stream message)."), metric.WithUnit("{page}"))
	in.activeStreams, _ = m.Int64UpDownCounter("imagerecords.streams.active",
		metric.WithDescription("Streams in progress."), metric.WithUnit("{stream}"))
	in.fleetActive, _ = m.Int64UpDownCounter("imagerecords.fleet.desktops.active",
		metric.WithDescription("Fleet desktops being paged, across every fleet call."), metric.WithUnit("{desktop}"))
	in.fleetDesktops.Int64Counter, _ = m.Int64Counter("imagerecords.fleet.desktops",
		metric.WithDescription("Fleet desktops finished, by outcome (ok: every record sent; failed: an error message sent)."), metric.WithUnit("{desktop}"))
	in.watchPollers, _ = m.Int64UpDownCounter("imagerecords.watch.pollers",
		metric.WithDescription("Watch pollers running: one per watched desktop."), metric.WithUnit("{poller}"))
	in.watchWatchers, _ = m.Int64UpDownCounter("imagerecords.watch.watchers",
		metric.WithDescription("Watch streams in progress."), metric.WithUnit("{watcher}"))
	in.watchPollWatchers, _ = m.Int64Histogram("imagerecords.watch.poll.watchers",
		metric.WithDescription("Watchers served by each poll: how many callers one poller stands in for."), metric.WithUnit("{watcher}"),
		metric.WithExplicitBucketBoundaries(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000))
	in.watchPolls.Int64Counter, _ = m.Int64Counter("imagerecords.watch.polls",
		metric.WithDescription("Watch polls, by outcome."), metric.WithUnit("{poll}"))
	in.watchEvents.Int64Counter, _ = m.Int64Counter("imagerecords.watch.events",
		metric.WithDescription("Watch messages sent, by kind (snapshot, record_added, status_changed, heartbeat)."), metric.WithUnit("{message}"))
	// Export every counter at zero from the start, so that rates and
	// alerts have a series before the first call.
	ctx := context.Background()
	for _, method := range []attributes{methodList, methodStream} {
		in.records.Add(ctx, 0, method)
		in.pages.Add(ctx, 0, method)
	}
	in.activeStreams.Add(ctx, 0)
	in.fleetActive.Add(ctx, 0)
	in.watchPollers.Add(ctx, 0)
	in.watchWatchers.Add(ctx, 0)
	return in
}

// WithMeterProvider sets where the service's metrics go. Default: the
// global OTel meter provider.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(s *Service) { s.meterProvider = mp }
}

func defaultMeterProvider() metric.MeterProvider { return otel.GetMeterProvider() }

// annotate puts the request's desktop on the server span.
func annotate(ctx context.Context, region, desktop string) {
	trace.SpanFromContext(ctx).SetAttributes(semconv.CloudRegion(region), attribute.String("ecd.desktop_id", desktop))
}
