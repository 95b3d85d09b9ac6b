package upstream_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/imagerecords/imagerecords/upstream"
	"github.com/imagerecords/imagerecords/upstream/upstreamtest"
)

func spanAttrs(s sdktrace.ReadOnlySpan) map[attribute.Key]attribute.Value {
	m := map[attribute.Key]attribute.Value{}
	for _, kv := range s.Attributes() {
		m[kv.Key] = kv.Value
	}
	return m
}

// A parent span as the gateway's server span would be.
func tracedContext(t *testing.T, tp *sdktrace.TracerProvider) context.Context {
	t.Helper()
	ctx, span := tp.Tracer("test").Start(t.Context(), "server")
	t.Cleanup(func() { span.End() })
	return ctx
}

func TestAttemptSpansWithoutAnAnswerCarryTheRequest(t *testing.T) {
	t.Parallel()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	c := upstream.NewClient(staticCreds(longKey), upstream.WithEndpoint(refusedEndpoint(t)),
		upstream.WithRetryPolicy(fastRetry(2)), upstream.WithTracerProvider(tp))
	if _, err := c.DescribeImageModifiedRecords(tracedContext(t, tp), upstream.DescribeInput{RegionID: testRegion, DesktopID: "ecd-a"}); err == nil {
		t.Fatal("a refused connection succeeded")
	}
	spans := rec.Ended()
	if len(spans) != 2 {
		t.Fatalf("%d attempt spans, want 2", len(spans))
	}
	for i, s := range spans {
		a := spanAttrs(s)
		if s.Name() != upstream.SpanName || a["ecd.desktop_id"].AsString() != "ecd-a" || a["cloud.region"].AsString() != testRegion ||
			a["ecd.attempt"].AsInt64() != int64(i+1) || a["ecd.error.code"].AsString() != "network" {
			t.Errorf("attempt %d: span %q attributes %v", i+1, s.Name(), a)
		}
	}
}

// This test sets the global propagator, so it does not run in parallel.
func TestTraceContextStaysInside(t *testing.T) {
	var leaked atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for _, h := range []string{"Traceparent", "Tracestate", "Baggage"} {
			if v := r.Header.Get(h); v != "" {
				leaked.Store(h + ": " + v)
			}
		}
		_, _ = io.WriteString(w, upstreamtest.OKBody)
	}))
	t.Cleanup(srv.Close)
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	// Even with a global propagator set, as an application might.
	prev := otel.GetTextMapPropagator()
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	t.Cleanup(func() { otel.SetTextMapPropagator(prev) })
	c := upstream.NewClient(staticCreds(longKey), upstream.WithEndpoint(srv.URL), upstream.WithTracerProvider(tp))
	if _, err := c.DescribeImageModifiedRecords(tracedContext(t, tp), upstream.DescribeInput{RegionID: testRegion, DesktopID: "ecd-a"}); err != nil {
		t.Fatal(err)
	}
	if v := leaked.Load(); v != nil {
		t.Errorf("the upstream received %v", v)
	}
	if n := len(rec.Ended()); n != 1 {
		t.Errorf("%d attempt spans, want 1: the test proves nothing without tracing", n)
	}
}

func TestRedirectsAreNotFollowed(t *testing.T) {
	t.Parallel()
	var elsewhere atomic.Int64
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		elsewhere.Add(1)
		_, _ = io.WriteString(w, upstreamtest.OKBody)
	}))
	t.Cleanup(other.Close)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+"/", http.StatusTemporaryRedirect)
	}))
	t.Cleanup(srv.Close)
	c := upstream.NewClient(staticCreds(longKey), upstream.WithEndpoint(srv.URL), upstream.WithRetryPolicy(fastRetry(1)))
	if _, err := c.DescribeImageModifiedRecords(t.Context(), upstream.DescribeInput{RegionID: testRegion, DesktopID: "ecd-a"}); err == nil {
		t.Error("a redirect answered the call")
	}
	if n := elsewhere.Load(); n != 0 {
		t.Errorf("the signed request was replayed to the redirect target %d times", n)
	}
}
