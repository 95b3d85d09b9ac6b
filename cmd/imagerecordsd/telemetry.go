package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/contrib/exporters/autoexport"
	"go.opentelemetry.io/otel/attribute"
	promexporter "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// serviceName is the default OTel service.name; OTEL_SERVICE_NAME overrides it.
const serviceName = "imagerecordsd"

// telemetry holds the OTel SDK providers of one gateway run. Traces and
// metrics are pushed only where the standard OTEL_* variables ask for it;
// metrics are always available for Prometheus scraping on the admin
// listener.
type telemetry struct {
	tracerProvider *sdktrace.TracerProvider
	meterProvider  *sdkmetric.MeterProvider
	propagator     propagation.TextMapPropagator
	// metrics serves the Prometheus text format.
	metrics http.Handler
}

// version is the gateway's version: the module version when built from a
// tagged module, else the VCS revision, else "dev".
func version() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "dev"
	}
	if v := info.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	for _, s := range info.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			return s.Value[:12]
		}
	}
	return "dev"
}

// exportConfigured reports whether the environment asks for signal
// ("TRACES" or "METRICS") to be pushed: its OTEL_<SIGNAL>_EXPORTER is set,
// or an OTLP endpoint is. Unlike autoexport's default, nothing is exported
// when none of them is set.
func exportConfigured(signal string) bool {
	for _, key := range []string{"OTEL_" + signal + "_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_" + signal + "_ENDPOINT"} {
		if os.Getenv(key) != "" {
			return true
		}
	}
	return false
}

// newTelemetry builds the providers from the OTEL_* environment. extra
// span processors (tests pass an in-memory recorder) see every span.
func newTelemetry(ctx context.Context, extra ...sdktrace.SpanProcessor) (*telemetry, error) {
	res, err := resource.New(ctx,
		resource.WithAttributes(
			attribute.String("service.name", serviceName),
			attribute.String("service.version", version()),
		),
		resource.WithFromEnv(), // OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
		resource.WithTelemetrySDK(),
		resource.WithHost(),
	)
	if err != nil {
		return nil, fmt.Errorf("telemetry resource: %w", err)
	}

	traceOpts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)} // sampler: OTEL_TRACES_SAMPLER
	if exportConfigured("TRACES") {
		exp, err := autoexport.NewSpanExporter(ctx)
		if err != nil {
			return nil, fmt.Errorf("trace exporter: %w", err)
		}
		if !autoexport.IsNoneSpanExporter(exp) {
			traceOpts = append(traceOpts, sdktrace.WithBatcher(exp))
		}
	}
	for _, p := range extra {
		traceOpts = append(traceOpts, sdktrace.WithSpanProcessor(p))
	}

	registry := prometheus.NewRegistry()
	prom, err := promexporter.New(promexporter.WithRegisterer(registry))
	if err != nil {
		return nil, fmt.Errorf("prometheus exporter: %w", err)
	}
	metricOpts := []sdkmetric.Option{sdkmetric.WithResource(res), sdkmetric.WithReader(prom)}
	if exportConfigured("METRICS") {
		reader, err := autoexport.NewMetricReader(ctx)
		if err != nil {
			return nil, fmt.Errorf("metric exporter: %w", err)
		}
		if !autoexport.IsNoneMetricReader(reader) {
			metricOpts = append(metricOpts, sdkmetric.WithReader(reader))
		}
	}

	return &telemetry{
		tracerProvider: sdktrace.NewTracerProvider(traceOpts...),
		meterProvider:  sdkmetric.NewMeterProvider(metricOpts...),
		propagator:     propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}),
		metrics:        promhttp.HandlerFor(registry, promhttp.HandlerOpts{}),
	}, nil
}

// shutdown flushes and stops the providers: spans still buffered are
// exported before the process exits.
func (t *telemetry) shutdown(ctx context.Context) error {
	return errors.Join(t.tracerProvider.Shutdown(ctx), t.meterProvider.Shutdown(ctx))
}

// traceLogHandler adds trace_id and span_id to every log record made under
// an active span, so a log line leads to its trace.
type traceLogHandler struct{ slog.Handler }

func (h traceLogHandler) Handle(ctx context.Context, r slog.Record) error {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r.AddAttrs(slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
	}
	return h.Handler.Handle(ctx, r)
}

func (h traceLogHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return traceLogHandler{h.Handler.WithAttrs(attrs)}
}

func (h traceLogHandler) WithGroup(name string) slog.Handler {
	return traceLogHandler{h.Handler.WithGroup(name)}
}
