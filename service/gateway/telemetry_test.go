package gateway_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/service/gateway/gatewaytest"
	"github.com/imagerecords/imagerecords/upstream"
	"github.com/imagerecords/imagerecords/upstream/ecdsim"
)

const streamProcedure = "ecd.imagerecords.v1.ImageRecordsService/StreamImageModifiedRecords"

// callerSpan starts a span in a tracer of the test's own, as the calling
// service would, and returns a request carrying its traceparent.
func callerSpan[T any](t *testing.T, msg *T) (*connect.Request[T], trace.SpanContext) {
	t.Helper()
	tp := sdktrace.NewTracerProvider()
	ctx, span := tp.Tracer("caller").Start(context.Background(), "caller")
	span.End()
	req := connect.NewRequest(msg)
	propagation.TraceContext{}.Inject(ctx, propagation.HeaderCarrier(req.Header()))
	return req, span.SpanContext()
}

func attrs(s sdktrace.ReadOnlySpan) map[attribute.Key]attribute.Value {
	m := map[attribute.Key]attribute.Value{}
	for _, kv := range s.Attributes() {
		m[kv.Key] = kv.Value
	}
	return m
}

func spansOfKind(spans []sdktrace.ReadOnlySpan, kind trace.SpanKind) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range spans {
		if s.SpanKind() == kind {
			out = append(out, s)
		}
	}
	return out
}

func TestStreamTraceTree(t *testing.T) {
	t.Parallel()
	const desktop = "ecd-three0000000250"
	rec := tracetest.NewSpanRecorder()
	h := gatewaytest.New(t, gatewaytest.Config{Desktops: []ecdsim.Desktop{{ID: desktop, Records: 250}}, SpanProcessor: rec})
	req, caller := callerSpan(t, &imagerecordsv1.StreamImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: desktop})
	stream, err := h.Client(connect.WithGRPC()).StreamImageModifiedRecords(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := gatewaytest.Drain(stream); err != nil {
		t.Fatal(err)
	}
	h.Gateway.WaitIdle()

	servers := spansOfKind(rec.Ended(), trace.SpanKindServer)
	if len(servers) != 1 {
		t.Fatalf("%d server spans, want 1", len(servers))
	}
	server := servers[0]
	if server.Name() != streamProcedure || server.Parent().SpanID() != caller.SpanID() || server.SpanContext().TraceID() != caller.TraceID() {
		t.Fatalf("server span %q parent %v trace %v; want a child of the caller's span %v", server.Name(), server.Parent().SpanID(), server.SpanContext().TraceID(), caller)
	}
	if a := attrs(server); a["ecd.desktop_id"].AsString() != desktop || a["cloud.region"].AsString() != gatewaytest.Region {
		t.Errorf("server span attributes %v", a)
	}
	if n := len(server.Events()); n != 0 {
		t.Errorf("server span has %d events: a long stream must not add one per message", n)
	}
	clients := spansOfKind(rec.Ended(), trace.SpanKindClient)
	if len(clients) != 3 {
		t.Fatalf("%d upstream client spans, want one per page: 3", len(clients))
	}
	wantRecords := []int64{100, 100, 50}
	for i, c := range clients {
		a := attrs(c)
		if c.Name() != upstream.SpanName || c.Parent().SpanID() != server.SpanContext().SpanID() {
			t.Errorf("client span %d: %q with parent %v, want %q under the server span", i, c.Name(), c.Parent().SpanID(), upstream.SpanName)
		}
		if a["ecd.page"].AsInt64() != int64(i+1) || a["ecd.page.records"].AsInt64() != wantRecords[i] ||
			a["ecd.request_id"].AsString() == "" || a["ecd.attempt"].AsInt64() != 1 || a["ecd.throttled"].AsBool() ||
			a["ecd.desktop_id"].AsString() != desktop || a["cloud.region"].AsString() != gatewaytest.Region || a["ecd.action"].AsString() != upstream.Action {
			t.Errorf("client span %d attributes %v", i, a)
		}
		if c.Status().Code == codes.Error {
			t.Errorf("client span %d: status %v", i, c.Status())
		}
	}
}

// throttleNth answers the nth request (1-based) with Throttling.User and
// passes every other one to next.
func throttleNth(n int64, next http.Handler) http.Handler {
	var count atomic.Int64
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if count.Add(1) == n {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			_, _ = io.WriteString(w, `{"RequestId":"THROTTLED-REQUEST","HostId":"ecd.cn-hangzhou.aliyuncs.com","Code":"Throttling.User","Message":"Request was denied due to user flow control.","Recommend":"https://api.aliyun.com/troubleshoot?q=Throttling.User"}`)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func TestThrottledAttemptIsVisibleInTheTrace(t *testing.T) {
	t.Parallel()
	const desktop = "ecd-three0000000250"
	rec := tracetest.NewSpanRecorder()
	h := gatewaytest.New(t, gatewaytest.Config{
		Desktops:      []ecdsim.Desktop{{ID: desktop, Records: 250}},
		SpanProcessor: rec,
		WrapSimulator: func(sim http.Handler) http.Handler { return throttleNth(2, sim) },
	})
	stream, err := h.Client().StreamImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.StreamImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: desktop}))
	if err != nil {
		t.Fatal(err)
	}
	if msgs, err := gatewaytest.Drain(stream); err != nil || len(gatewaytest.RecordsOf(msgs)) != 250 {
		t.Fatalf("%d records, %v", len(gatewaytest.RecordsOf(msgs)), err)
	}
	h.Gateway.WaitIdle()
	clients := spansOfKind(rec.Ended(), trace.SpanKindClient)
	if len(clients) != 4 {
		t.Fatalf("%d client spans, want 4: three pages and one throttled attempt", len(clients))
	}
	failed, retry := attrs(clients[1]), attrs(clients[2])
	if !failed["ecd.throttled"].AsBool() || failed["ecd.error.code"].AsString() != "Throttling.User" ||
		failed["ecd.request_id"].AsString() != "THROTTLED-REQUEST" || failed["ecd.page"].AsInt64() != 2 || failed["ecd.attempt"].AsInt64() != 1 {
		t.Errorf("throttled attempt attributes %v", failed)
	}
	if retry["ecd.throttled"].AsBool() || retry["ecd.page"].AsInt64() != 2 || retry["ecd.attempt"].AsInt64() != 2 || retry["ecd.page.records"].AsInt64() != 100 {
		t.Errorf("retry attributes %v", retry)
	}
	server := spansOfKind(rec.Ended(), trace.SpanKindServer)[0]
	var backoff bool
	for _, e := range server.Events() {
		backoff = backoff || e.Name == "upstream retry backoff"
	}
	if !backoff {
		t.Errorf("the server span has no retry backoff event: %v", server.Events())
	}
	if server.Status().Code == codes.Error {
		t.Errorf("a stream that recovered is an error: %v", server.Status())
	}
}

func TestCancelledStreamEndsItsSpans(t *testing.T) {
	t.Parallel()
	const huge = "ecd-huge00000100000"
	rec := tracetest.NewSpanRecorder()
	h := gatewaytest.New(t, gatewaytest.Config{
		Desktops:      []ecdsim.Desktop{{ID: huge, Records: 100_000}},
		Faults:        ecdsim.Faults{Latency: 10 * time.Millisecond},
		SpanProcessor: rec,
	})
	ctx, cancel := context.WithCancel(t.Context())
	stream, err := h.Client(connect.WithGRPC()).StreamImageModifiedRecords(ctx, connect.NewRequest(&imagerecordsv1.StreamImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: huge}))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2 && stream.Receive(); i++ {
	}
	cancel()
	_ = stream.Close()
	h.Gateway.WaitIdle()
	started, ended := len(rec.Started()), len(rec.Ended())
	if started == 0 || started != ended {
		t.Fatalf("%d spans started, %d ended: a cancelled stream left spans open", started, ended)
	}
}

func TestBadInputIsNotAnErrorSpan(t *testing.T) {
	t.Parallel()
	rec := tracetest.NewSpanRecorder()
	h := gatewaytest.New(t, gatewaytest.Config{Desktops: testDesktops, SpanProcessor: rec})
	_, err := h.Client().ListImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.ListImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: "bad id"}))
	if connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatal(err)
	}
	h.Gateway.WaitIdle()
	if n := len(spansOfKind(rec.Ended(), trace.SpanKindClient)); n != 0 {
		t.Errorf("%d upstream spans for a rejected request", n)
	}
	servers := spansOfKind(rec.Ended(), trace.SpanKindServer)
	if len(servers) != 1 || servers[0].Status().Code == codes.Error {
		t.Errorf("server spans %v: a caller's bad input is not a server error", servers)
	}
}

// otlpReceiver is an in-process OTLP/HTTP trace endpoint.
type otlpReceiver struct {
	mu    sync.Mutex
	spans []spanSummary
	attrs map[string]string // resource attributes
}

type spanSummary struct {
	name, traceID, spanID, parentID string
	kind                            int32
}

func (o *otlpReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/v1/traces" {
		http.NotFound(w, r)
		return
	}
	body, err := io.ReadAll(r.Body)
	var req collectortrace.ExportTraceServiceRequest
	if err == nil {
		err = proto.Unmarshal(body, &req)
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		for _, kv := range rs.GetResource().GetAttributes() {
			o.attrs[kv.GetKey()] = kv.GetValue().GetStringValue()
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				o.spans = append(o.spans, spanSummary{
					name: s.GetName(), kind: int32(s.GetKind()),
					traceID: fmt.Sprintf("%x", s.GetTraceId()), spanID: fmt.Sprintf("%x", s.GetSpanId()), parentID: fmt.Sprintf("%x", s.GetParentSpanId()),
				})
			}
		}
	}
	w.Header().Set("Content-Type", "application/x-protobuf")
	out, _ := proto.Marshal(&collectortrace.ExportTraceServiceResponse{})
	_, _ = w.Write(out)
}

// This test sets process environment variables, so it does not run in
// parallel with the others.
func TestSpansReachARealOTLPReceiver(t *testing.T) {
	receiver := &otlpReceiver{attrs: map[string]string{}}
	srv := httptest.NewServer(receiver)
	defer srv.Close()
	t.Setenv("OTEL_TRACES_EXPORTER", "otlp")
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", srv.URL)
	t.Setenv("OTEL_METRICS_EXPORTER", "none")
	t.Setenv("OTEL_SERVICE_NAME", "imagerecordsd-test")

	run := gatewaytest.Run(t, "--simulate")
	addr, stop := run.Addrs.API, run.Stop
	desktop := ecdsim.DefaultDesktops(1)[2] // 101 records: two pages
	req, caller := callerSpan(t, &imagerecordsv1.StreamImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: desktop.ID})
	client := gatewaytest.ClientOf(addr, connect.WithGRPC())
	stream, err := client.StreamImageModifiedRecords(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	if msgs, err := gatewaytest.Drain(stream); err != nil || len(gatewaytest.RecordsOf(msgs)) != desktop.Records {
		t.Fatalf("%d records, %v", len(gatewaytest.RecordsOf(msgs)), err)
	}
	if err := stop(); err != nil { // graceful shutdown flushes the exporter
		t.Fatal(err)
	}

	receiver.mu.Lock()
	defer receiver.mu.Unlock()
	if got := receiver.attrs["service.name"]; got != "imagerecordsd-test" {
		t.Errorf("resource service.name = %q", got)
	}
	if receiver.attrs["service.version"] == "" {
		t.Errorf("resource has no service.version: %v", receiver.attrs)
	}
	var server *spanSummary
	var clients []spanSummary
	for i, s := range receiver.spans {
		switch {
		case s.name == streamProcedure:
			server = &receiver.spans[i]
		case s.name == upstream.SpanName:
			clients = append(clients, s)
		}
	}
	if server == nil {
		t.Fatalf("no server span among %v", receiver.spans)
	}
	if server.traceID != caller.TraceID().String() || server.parentID != caller.SpanID().String() {
		t.Errorf("server span %+v is not a child of the caller %v", *server, caller)
	}
	if len(clients) != 2 {
		t.Fatalf("%d upstream spans arrived, want 2: %v", len(clients), receiver.spans)
	}
	for _, c := range clients {
		if c.parentID != server.spanID || c.traceID != server.traceID {
			t.Errorf("upstream span %+v is not a child of the server span %+v", c, *server)
		}
	}
}

func TestMetricsEndpoint(t *testing.T) {
	t.Parallel()
	run := gatewaytest.Run(t, "--simulate", "--admin-listen", "127.0.0.1:0")
	addrs, stop := run.Addrs, run.Stop
	desktop := ecdsim.DefaultDesktops(1)[1] // 250 records
	stream, err := gatewaytest.ClientOf(addrs.API).StreamImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.StreamImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: desktop.ID}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := gatewaytest.Drain(stream); err != nil {
		t.Fatal(err)
	}
	body := get(t, "http://"+addrs.Admin+"/metrics")
	stream1 := map[string]string{"rpc_method": "StreamImageModifiedRecords"}
	testCases := []struct {
		name   string
		labels map[string]string
		want   float64 // < 0: any value above zero
	}{
		{"imagerecords_upstream_calls_total", map[string]string{"outcome": "ok", "error_type": ""}, 3},
		{"imagerecords_records_total", stream1, 250},
		{"imagerecords_pages_total", stream1, 3},
		{"imagerecords_upstream_duration_seconds_count", map[string]string{"outcome": "ok"}, 3},
		{"imagerecords_streams_active", nil, 0},
		{"rpc_server_call_duration_seconds_count", map[string]string{"rpc_method": streamProcedure}, 1},
	}
	for _, tc := range testCases {
		v, ok := sample(body, tc.name, tc.labels)
		if !ok || v != tc.want {
			t.Errorf("%s%v = %v (found: %v), want %v", tc.name, tc.labels, v, ok, tc.want)
		}
	}
	if strings.Contains(body, "ecd-") {
		t.Errorf("/metrics carries desktop ids as labels (unbounded cardinality)")
	}
	if got := get(t, "http://"+addrs.Admin+"/healthz"); got != "ok\n" {
		t.Errorf("/healthz = %q", got)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: HTTP %d %v", url, res.StatusCode, err)
	}
	return string(b)
}

// sample returns the value of the Prometheus sample named name whose
// labels include labels.
func sample(body, name string, labels map[string]string) (float64, bool) {
lines:
	for _, line := range strings.Split(body, "\n") {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || (rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		got := map[string]string{}
		if rest[0] == '{' {
			end := strings.LastIndexByte(rest, '}')
			for _, kv := range strings.Split(rest[1:end], ",") {
				k, v, _ := strings.Cut(kv, "=")
				got[k] = strings.Trim(v, `"`)
			}
			rest = rest[end+1:]
		}
		for k, v := range labels {
			if gv, ok := got[k]; !ok || gv != v {
				continue lines
			}
		}
		var v float64
		if _, err := fmt.Sscan(strings.TrimSpace(rest), &v); err != nil {
			return 0, false
		}
		return v, true
	}
	return 0, false
}

func TestAccessLogCarriesTraceIDs(t *testing.T) {
	t.Parallel()
	var logs gatewaytest.Output
	rec := tracetest.NewSpanRecorder()
	h := gatewaytest.New(t, gatewaytest.Config{Desktops: testDesktops, SpanProcessor: rec, Logs: &logs})
	stream, err := h.Client().StreamImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.StreamImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: smallDesktop}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := gatewaytest.Drain(stream); err != nil {
		t.Fatal(err)
	}
	h.Gateway.WaitIdle()
	server := spansOfKind(rec.Ended(), trace.SpanKindServer)[0]
	var line struct {
		Msg           string  `json:"msg"`
		Procedure     string  `json:"procedure"`
		Code          string  `json:"code"`
		Records       int     `json:"records"`
		UpstreamCalls int     `json:"upstream_calls"`
		TraceID       string  `json:"trace_id"`
		SpanID        string  `json:"span_id"`
		DurationMS    float64 `json:"duration_ms"`
	}
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, `"msg":"rpc"`) {
			if err := json.Unmarshal([]byte(l), &line); err != nil {
				t.Fatal(err)
			}
		}
	}
	if line.Msg != "rpc" || line.Procedure != "/"+streamProcedure || line.Code != "ok" || line.Records != 42 || line.UpstreamCalls != 1 || line.DurationMS <= 0 {
		t.Fatalf("access log line %+v in\n%s", line, logs.String())
	}
	if line.TraceID != server.SpanContext().TraceID().String() || line.SpanID != server.SpanContext().SpanID().String() {
		t.Errorf("access log trace %s/%s, server span %s/%s", line.TraceID, line.SpanID, server.SpanContext().TraceID(), server.SpanContext().SpanID())
	}
}
