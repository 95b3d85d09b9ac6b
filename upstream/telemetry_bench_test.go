package upstream_test

import (
	"context"
	"testing"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/imagerecords/imagerecords/upstream"
)

// BenchmarkDescribeTraced is BenchmarkDescribe (V3) with the OTel SDK
// recording every span and metric, as imagerecordsd runs: the cost of the
// client's telemetry per upstream call.
func BenchmarkDescribeTraced(b *testing.B) {
	_, srv := benchSim(b, 1000)
	tp := sdktrace.NewTracerProvider()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	b.Cleanup(func() { _ = tp.Shutdown(context.Background()); _ = mp.Shutdown(context.Background()) })
	c := benchClient(srv.URL, upstream.WithTracerProvider(tp), upstream.WithMeterProvider(mp))
	in := upstream.DescribeInput{RegionID: "cn-hangzhou", DesktopID: benchDesktop, MaxResults: upstream.MaxPageSize}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.DescribeImageModifiedRecords(ctx, in); err != nil {
			b.Fatal(err)
		}
	}
}
