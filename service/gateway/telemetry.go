package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"runtime/debug"
	"strings"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/contrib/exporters/autoexport"
	"go.opentelemetry.io/contrib/propagators/autoprop"
	"go.opentelemetry.io/otel/attribute"
	promexporter "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
)

// serviceName is the default OTel service.name; OTEL_SERVICE_NAME overrides it.
const serviceName = "imagerecordsd"

// Telemetry is where a gateway's spans and metrics go. [NewTelemetry]
// builds the OTel SDK providers of a gateway run; [NoopTelemetry] records
// nothing (the benchmark measures the gateway's own cost with it).
type Telemetry struct {
	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider
	// Propagator reads the caller's trace context.
	Propagator propagation.TextMapPropagator
	// Metrics serves the Prometheus text format on the admin listener.
	Metrics http.Handler
	// shutdown flushes and stops the providers; nil for no-op ones.
	shutdown func(context.Context) error
}

// NoopTelemetry records nothing and serves an empty /metrics.
func NoopTelemetry() *Telemetry {
	return &Telemetry{
		TracerProvider: tracenoop.NewTracerProvider(),
		MeterProvider:  metricnoop.NewMeterProvider(),
		Propagator:     propagation.NewCompositeTextMapPropagator(),
		Metrics:        http.NotFoundHandler(),
	}
}

// version is stamped at build time by the image build
// (deploy/build-image.sh): -ldflags "-X
// github.com/imagerecords/imagerecords/service/gateway.version=v1.2.3".
var version string

// Version is the gateway's version: the one stamped at build time, else
// the module version when built from a tagged module, else the VCS
// revision, else "dev".
func Version() string {
	if version != "" {
		return version
	}
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

// NewTelemetry builds the OTel SDK providers from the OTEL_* environment.
// Traces and metrics are pushed only where those variables ask for it;
// metrics are always served for Prometheus scraping. extra span processors
// (tests pass an in-memory recorder) see every span.
func NewTelemetry(ctx context.Context, extra ...sdktrace.SpanProcessor) (*Telemetry, error) {
	res, err := resource.New(ctx,
		resource.WithAttributes(
			attribute.String("service.name", serviceName),
			attribute.String("service.version", Version()),
			// A new id per process, as the semantic conventions ask;
			// OTEL_RESOURCE_ATTRIBUTES may set another (the manifests do).
			attribute.String("service.instance.id", uuid.NewString()),
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
	// The Go runtime and process series every Go service has; no
	// otel_scope_* labels on every series (the meter name says nothing an
	// operator queries by).
	registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	prom, err := promexporter.New(promexporter.WithRegisterer(registry), promexporter.WithoutScopeInfo())
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

	propagator, err := propagatorFromEnv()
	if err != nil {
		return nil, err
	}
	tp := sdktrace.NewTracerProvider(traceOpts...)
	mp := sdkmetric.NewMeterProvider(metricOpts...)
	return &Telemetry{
		TracerProvider: tp,
		MeterProvider:  mp,
		Propagator:     propagator,
		Metrics:        promhttp.HandlerFor(registry, promhttp.HandlerOpts{EnableOpenMetrics: true}),
		shutdown: func(ctx context.Context) error {
			return errors.Join(tp.Shutdown(ctx), mp.Shutdown(ctx))
		},
	}, nil
}

// propagatorFromEnv returns the propagators OTEL_PROPAGATORS names
// (tracecontext, baggage, b3, b3multi, jaeger, xray, ottrace, none), or
// W3C trace context and baggage when it is unset. An unknown name is an
// error at start, not a trace silently broken at every hop.
func propagatorFromEnv() (propagation.TextMapPropagator, error) {
	v := strings.TrimSpace(os.Getenv("OTEL_PROPAGATORS"))
	if v == "" {
		return autoprop.NewTextMapPropagator(), nil
	}
	var names []string
	for n := range strings.SplitSeq(v, ",") {
		names = append(names, strings.TrimSpace(n))
	}
	p, err := autoprop.TextMapPropagator(names...)
	if err != nil {
		return nil, &UsageError{Err: fmt.Errorf("OTEL_PROPAGATORS=%q: %w; use a comma-separated list of tracecontext, baggage, b3, b3multi, jaeger, xray, ottrace or none", v, err)}
	}
	return p, nil
}

// Shutdown flushes and stops the providers: spans still buffered are
// exported before the process exits.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	if t.shutdown == nil {
		return nil
	}
	return t.shutdown(ctx)
}

// NewLogger returns the gateway's logger: JSON lines on w at level and
// above, with the trace_id and span_id of the active span.
func NewLogger(w io.Writer, level slog.Level) *slog.Logger {
	return slog.New(traceLogHandler{slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level})})
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
