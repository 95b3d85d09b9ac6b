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
}

var (
	methodList   = metric.WithAttributeSet(attribute.NewSet(semconv.RPCMethod("ListImageModifiedRecords")))
	methodStream = metric.WithAttributeSet(attribute.NewSet(semconv.RPCMethod("StreamImageModifiedRecords")))
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
	// Export every counter at zero from the start, so that rates and
	// alerts have a series before the first call.
	ctx := context.Background()
	for _, method := range []metric.AddOption{methodList, methodStream} {
		in.records.Add(ctx, 0, method)
		in.pages.Add(ctx, 0, method)
	}
	in.activeStreams.Add(ctx, 0)
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
