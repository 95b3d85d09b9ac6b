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
	records       metric.Int64Counter
	pages         metric.Int64Counter
	activeStreams metric.Int64UpDownCounter

	// fleetActive counts fleet desktops being paged; fleetDesktops the
	// fleet desktops finished, by outcome.
	fleetActive   metric.Int64UpDownCounter
	fleetDesktops metric.Int64Counter
	// watchPollers counts the running pollers, watchWatchers the watchers
	// they serve; watchPollWatchers is the watchers each poll serves;
	// watchPolls counts polls by outcome and watchEvents the events sent,
	// by kind.
	watchPollers      metric.Int64UpDownCounter
	watchWatchers     metric.Int64UpDownCounter
	watchPollWatchers metric.Int64Histogram
	watchPolls        metric.Int64Counter
	watchEvents       metric.Int64Counter
}

var (
	methodList   = metric.WithAttributeSet(attribute.NewSet(semconv.RPCMethod("ListImageModifiedRecords")))
	methodStream = metric.WithAttributeSet(attribute.NewSet(semconv.RPCMethod("StreamImageModifiedRecords")))
	methodFleet  = metric.WithAttributeSet(attribute.NewSet(semconv.RPCMethod("StreamFleetImageModifiedRecords")))
	methodWatch  = metric.WithAttributeSet(attribute.NewSet(semconv.RPCMethod("WatchImageModifiedRecords")))

	eventSnapshot      = metric.WithAttributeSet(attribute.NewSet(attribute.String("kind", "snapshot")))
	eventRecordAdded   = metric.WithAttributeSet(attribute.NewSet(attribute.String("kind", "record_added")))
	eventStatusChanged = metric.WithAttributeSet(attribute.NewSet(attribute.String("kind", "status_changed")))
	eventHeartbeat     = metric.WithAttributeSet(attribute.NewSet(attribute.String("kind", "heartbeat")))

	outcomeOK     = metric.WithAttributeSet(attribute.NewSet(attribute.String("outcome", "ok")))
	outcomeFailed = metric.WithAttributeSet(attribute.NewSet(attribute.String("outcome", "failed")))
)

func newInstruments(mp metric.MeterProvider) instruments {
	m := mp.Meter(instrumentationName)
	var in instruments
	// Instrument creation fails only for invalid names, fixed here; a
	// failed instrument is a no-op, never a crash.
	in.records, _ = m.Int64Counter("imagerecords.records",
		metric.WithDescription("Image-change records delivered to callers."), metric.WithUnit("{record}"))
	in.pages, _ = m.Int64Counter("imagerecords.pages",
		metric.WithDescription("Upstream pages delivered to callers (one per List, one per stream message)."), metric.WithUnit("{page}"))
	in.activeStreams, _ = m.Int64UpDownCounter("imagerecords.streams.active",
		metric.WithDescription("Streams in progress."), metric.WithUnit("{stream}"))
	in.fleetActive, _ = m.Int64UpDownCounter("imagerecords.fleet.desktops.active",
		metric.WithDescription("Fleet desktops being paged, across every fleet call."), metric.WithUnit("{desktop}"))
	in.fleetDesktops, _ = m.Int64Counter("imagerecords.fleet.desktops",
		metric.WithDescription("Fleet desktops finished, by outcome (ok: every record sent; failed: an error message sent)."), metric.WithUnit("{desktop}"))
	in.watchPollers, _ = m.Int64UpDownCounter("imagerecords.watch.pollers",
		metric.WithDescription("Watch pollers running: one per watched desktop."), metric.WithUnit("{poller}"))
	in.watchWatchers, _ = m.Int64UpDownCounter("imagerecords.watch.watchers",
		metric.WithDescription("Watch streams in progress."), metric.WithUnit("{watcher}"))
	in.watchPollWatchers, _ = m.Int64Histogram("imagerecords.watch.poll.watchers",
		metric.WithDescription("Watchers served by each poll: how many callers one poller stands in for."), metric.WithUnit("{watcher}"),
		metric.WithExplicitBucketBoundaries(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000))
	in.watchPolls, _ = m.Int64Counter("imagerecords.watch.polls",
		metric.WithDescription("Watch polls, by outcome."), metric.WithUnit("{poll}"))
	in.watchEvents, _ = m.Int64Counter("imagerecords.watch.events",
		metric.WithDescription("Watch messages sent, by kind (snapshot, record_added, status_changed, heartbeat)."), metric.WithUnit("{message}"))
	// Export every counter at zero from the start, so that rates and
	// alerts have a series before the first call.
	ctx := context.Background()
	for _, method := range []metric.AddOption{methodList, methodStream} {
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
