package gateway_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1/imagerecordsv1connect"
	"github.com/imagerecords/imagerecords/service/gateway"
	"github.com/imagerecords/imagerecords/service/gateway/gatewaytest"
	"github.com/imagerecords/imagerecords/upstream/ecdsim"
)

func postJSON(t *testing.T, url, body string) (int, string) {
	t.Helper()
	res, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res.StatusCode, string(b)
}

func TestRunSimulateServesConnectJSON(t *testing.T) {
	t.Parallel()
	run := gatewaytest.Run(t, "--simulate")
	addr, stdout, stderr, stop := run.Addrs.API, run.Stdout, run.Stderr, run.Stop
	desktop := ecdsim.DefaultDesktops(1)[0].ID
	if !strings.Contains(stdout.String(), desktop) || !strings.Contains(stdout.String(), "curl") {
		t.Errorf("the banner lacks the sample desktop or a curl line:\n%s", stdout)
	}
	base := "http://" + addr + "/ecd.imagerecords.v1.ImageRecordsService/ListImageModifiedRecords"

	// What the README's curl line sends.
	code, body := postJSON(t, base, `{"regionId":"cn-hangzhou","desktopId":"`+desktop+`","pageSize":3}`)
	if code != http.StatusOK {
		t.Fatalf("POST: HTTP %d %s", code, body)
	}
	var page struct {
		Records []struct {
			ImageID    string `json:"imageId"`
			UpdateTime string `json:"updateTime"`
		} `json:"records"`
		NextPageToken string `json:"nextPageToken"`
		TotalCount    int    `json:"totalCount"`
	}
	if err := json.Unmarshal([]byte(body), &page); err != nil {
		t.Fatal(err)
	}
	if len(page.Records) != 3 || page.Records[0].ImageID == "" || page.Records[0].UpdateTime == "" || page.TotalCount != 1234 || page.NextPageToken == "" {
		t.Fatalf("POST answered %s", body)
	}

	// Connect GET, for the side-effect-free call.
	q := url.Values{"connect": {"v1"}, "encoding": {"json"}, "message": {`{"regionId":"cn-hangzhou","desktopId":"` + desktop + `","pageSize":2}`}}
	res, err := http.Get(base + "?" + q.Encode())
	if err != nil {
		t.Fatal(err)
	}
	getBody, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || !strings.Contains(string(getBody), `"totalCount":1234`) {
		t.Fatalf("GET: HTTP %d %s", res.StatusCode, getBody)
	}

	// Health and reflection, as mesh probes and grpcurl use them.
	health := grpchealth.NewClient(gatewaytest.H2C(), "http://"+addr, connect.WithGRPC())
	hres, err := health.Check(t.Context(), &grpchealth.CheckRequest{})
	if err != nil || hres.Status != grpchealth.StatusServing {
		t.Fatalf("health: %v %v", hres, err)
	}
	refl := grpcreflect.NewClient(gatewaytest.H2C(), "http://"+addr, connect.WithGRPC())
	rs := refl.NewStream(t.Context())
	names, err := rs.ListServices()
	if err != nil {
		t.Fatal(err)
	}
	_, _ = rs.Close()
	found := false
	for _, n := range names {
		found = found || string(n) == imagerecordsv1connect.ImageRecordsServiceName
	}
	if !found {
		t.Errorf("reflection lists %v", names)
	}

	if err := stop(); err != nil {
		t.Fatalf("Run returned %v after a clean shutdown", err)
	}
	for _, msg := range []string{`"msg":"serving"`, `"msg":"stopped"`} {
		if !strings.Contains(stderr.String(), msg) {
			t.Errorf("logs lack %s:\n%s", msg, stderr)
		}
	}
}

func TestParseArgsRefusesBadFlags(t *testing.T) {
	t.Parallel()
	testCases := [][]string{
		{"--signature", "v2"},
		{"--simulate", "--upstream-endpoint", "http://127.0.0.1:1"},
		{"--no-such-flag"},
		{"--upstream-endpoint", "ecd.cn-hangzhou.aliyuncs.com"}, // no scheme
		{"--upstream-endpoint", "ftp://ecd.example"},
		{"stray-argument"},
	}
	for _, args := range testCases {
		_, err := gateway.ParseArgs(args, noEnv, io.Discard)
		if _, ok := errors.AsType[*gateway.UsageError](err); !ok {
			t.Errorf("ParseArgs(%q) = %v, want a usage error", args, err)
		}
	}
}

func noEnv(string) (string, bool) { return "", false }

func TestShutdownDrainsInFlightStreams(t *testing.T) {
	t.Parallel()
	h := gatewaytest.New(t, gatewaytest.Config{
		Desktops: testDesktops,
		Faults:   ecdsim.Faults{Latency: 30 * time.Millisecond},
	})
	stream, err := h.Client(connect.WithGRPC()).StreamImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.StreamImageModifiedRecordsRequest{
		RegionId: gatewaytest.Region, DesktopId: bigDesktop,
	}))
	if err != nil {
		t.Fatal(err)
	}
	if !stream.Receive() {
		t.Fatal(stream.Err())
	}
	got := len(stream.Msg().GetRecords())
	stopped := make(chan error, 1)
	go func() { stopped <- h.Stop() }() // SIGTERM while the stream runs
	for stream.Receive() {
		got += len(stream.Msg().GetRecords())
	}
	if err := stream.Err(); err != nil {
		t.Fatalf("the stream was cut by the shutdown: %v", err)
	}
	if got != 1234 {
		t.Fatalf("got %d records across the shutdown, want 1234", got)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("serve returned %v", err)
	}
	if status, err := h.Gateway.Health(t.Context()); err != nil || status != grpchealth.StatusNotServing {
		t.Errorf("health after shutdown: %v %v", status, err)
	}
}

func TestShutdownCancelsStreamsAfterGrace(t *testing.T) {
	t.Parallel()
	const huge = "ecd-huge00000100000"
	h := gatewaytest.New(t, gatewaytest.Config{
		Desktops: []ecdsim.Desktop{{ID: huge, Records: 100_000}},
		Faults:   ecdsim.Faults{Latency: 20 * time.Millisecond},
		Args:     []string{"--shutdown-grace", "100ms"},
	})
	stream, err := h.Client(connect.WithGRPC()).StreamImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.StreamImageModifiedRecordsRequest{
		RegionId: gatewaytest.Region, DesktopId: huge,
	}))
	if err != nil {
		t.Fatal(err)
	}
	if !stream.Receive() {
		t.Fatal(stream.Err())
	}
	if err := h.Stop(); err != nil {
		t.Fatalf("serve returned %v", err)
	}
	var last string
	for stream.Receive() {
		last = stream.Msg().GetResumeToken()
	}
	err = stream.Err()
	if connect.CodeOf(err) != connect.CodeUnavailable || !strings.Contains(err.Error(), "resume") {
		t.Fatalf("a 1,000-page stream cut by the end of a 100 ms grace period: %v, want Unavailable telling the caller to resume", err)
	}
	if last == "" {
		t.Error("no resume token before the cut")
	}
	h.Gateway.WaitIdle()
}

// holdHeader marks the requests that holdUntil keeps waiting in front of
// the gateway's handler chain.
const holdHeader = "X-Test-Hold"

// holdUntil wraps the gateway's handler: a request with holdHeader reports
// its arrival on arrived (the server accepted its connection and read its
// headers), then waits for release before it enters the handler chain.
func holdUntil(arrived chan<- struct{}, release <-chan struct{}) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get(holdHeader) != "" {
				arrived <- struct{}{}
				<-release
			}
			next.ServeHTTP(w, r)
		})
	}
}

// TestNewRPCsAreRefusedWhileDraining: an RPC that the server accepted
// (its connection open, its request read) and that reaches the handler
// chain once the drain has begun is refused by the shutdown guard itself,
// with Unavailable and the guard's message, unary and streaming alike,
// while a stream already in flight finishes. Without the guard the held
// RPC would be served: the upstream is healthy.
func TestNewRPCsAreRefusedWhileDraining(t *testing.T) {
	t.Parallel()
	testCases := []struct {
		name string
		call func(context.Context, imagerecordsv1connect.ImageRecordsServiceClient) error
	}{
		{"unary", func(ctx context.Context, c imagerecordsv1connect.ImageRecordsServiceClient) error {
			req := connect.NewRequest(&imagerecordsv1.ListImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: smallDesktop})
			req.Header().Set(holdHeader, "1")
			_, err := c.ListImageModifiedRecords(ctx, req)
			return err
		}},
		{"stream", func(ctx context.Context, c imagerecordsv1connect.ImageRecordsServiceClient) error {
			req := connect.NewRequest(&imagerecordsv1.StreamImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: smallDesktop})
			req.Header().Set(holdHeader, "1")
			stream, err := c.StreamImageModifiedRecords(ctx, req)
			if err != nil {
				return err
			}
			msgs, err := gatewaytest.Drain(stream)
			if err == nil {
				return fmt.Errorf("served %d records", len(gatewaytest.RecordsOf(msgs)))
			}
			return err
		}},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			arrived, release := make(chan struct{}, 1), make(chan struct{})
			var logs gatewaytest.Output
			h := gatewaytest.New(t, gatewaytest.Config{
				Desktops:    testDesktops,
				Logs:        &logs,
				WrapHandler: holdUntil(arrived, release),
			})
			c := h.Client(connect.WithGRPC())
			stream, err := c.StreamImageModifiedRecords(ctx, connect.NewRequest(&imagerecordsv1.StreamImageModifiedRecordsRequest{
				RegionId: gatewaytest.Region, DesktopId: bigDesktop,
			}))
			if err != nil {
				t.Fatal(err)
			}
			if !stream.Receive() { // the stream is in flight: the drain waits for it
				t.Fatal(stream.Err())
			}
			held := make(chan error, 1)
			go func() { held <- tc.call(ctx, c) }()
			select {
			case <-arrived:
			case err := <-held:
				t.Fatalf("the RPC ended before the gateway read it: %v", err)
			case <-ctx.Done():
				t.Fatal("the RPC never reached the gateway")
			}
			stopped := make(chan error, 1)
			go func() { stopped <- h.Stop() }()
			// Logged right after the guard turns on, before the listener closes.
			logs.WaitFor(t, "shutting down: draining in-flight requests", 10*time.Second)
			close(release)
			select {
			case err = <-held:
			case <-ctx.Done():
				t.Fatal("the held RPC never ended")
			}
			if connect.CodeOf(err) != connect.CodeUnavailable || !strings.Contains(err.Error(), "the gateway is shutting down; retry on another instance") {
				t.Errorf("an RPC entering the chain during the drain: %v, want Unavailable from the shutdown guard", err)
			}
			msgs, err := gatewaytest.Drain(stream)
			if err != nil {
				t.Errorf("the in-flight stream: %v", err)
			}
			if got := len(gatewaytest.RecordsOf(msgs)) + 100; got != 1234 { // plus the first message's page
				t.Errorf("the in-flight stream delivered %d records, want 1234", got)
			}
			select {
			case err := <-stopped:
				if err != nil {
					t.Fatal(err)
				}
			case <-ctx.Done():
				t.Fatal("the drain never ended")
			}
		})
	}
}

func TestFlagsFromEnvironment(t *testing.T) {
	t.Parallel()
	env := map[string]string{
		"IMAGERECORDS_LISTEN":       "127.0.0.1:9999",
		"IMAGERECORDS_SIGNATURE":    "v1",
		"IMAGERECORDS_UPSTREAM_QPS": "7.5",
	}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	cfg, err := gateway.ParseArgs([]string{"--signature", "v3"}, lookup, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "127.0.0.1:9999" || cfg.UpstreamQPS != 7.5 {
		t.Errorf("from the environment: listen %q, upstream QPS %v", cfg.Listen, cfg.UpstreamQPS)
	}
	if cfg.Signature != "v3" {
		t.Errorf("signature %q: a flag on the command line must win over its variable", cfg.Signature)
	}
	env["IMAGERECORDS_MAX_REQUEST_BYTES"] = "lots"
	if _, err := gateway.ParseArgs(nil, lookup, io.Discard); err == nil || !strings.Contains(err.Error(), "IMAGERECORDS_MAX_REQUEST_BYTES") {
		t.Errorf("a bad variable: %v, want an error naming it", err)
	}
}
