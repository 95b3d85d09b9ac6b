package gateway_test

import (
	"bytes"
	"encoding/binary"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1/imagerecordsv1connect"
	"github.com/imagerecords/imagerecords/service/gateway/gatewaytest"
)

const (
	dashboardOrigin = "http://dashboard.example:8000"
	otherOrigin     = "http://elsewhere.example:8000"
	corsToken       = "token-dashboard-0123456789"
)

// corsGateway is a gateway that lets the dashboard's pages call it and
// wants a bearer token, so that every test below also shows that CORS
// comes before the token check.
func corsGateway(t *testing.T) *gatewaytest.Stack {
	t.Helper()
	tokens := filepath.Join(t.TempDir(), "tokens")
	writeFile(t, tokens, corsToken+"\n")
	// CORS is off by default; the dashboard's origin turns it on.
	return gatewaytest.New(t, gatewaytest.Config{Desktops: testDesktops, Args: []string{
		"--cors-allowed-origins", dashboardOrigin, "--auth-tokens-file", tokens,
	}})
}

func send(t *testing.T, h *gatewaytest.Stack, req *http.Request) *http.Response {
	t.Helper()
	res, err := h.HTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	return res
}

func preflight(t *testing.T, h *gatewaytest.Stack, origin, method, headers string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodOptions, h.URL+imagerecordsv1connect.ImageRecordsServiceStreamImageModifiedRecordsProcedure, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Origin", origin)
	req.Header.Set("Access-Control-Request-Method", method)
	if headers != "" {
		req.Header.Set("Access-Control-Request-Headers", headers)
	}
	return send(t, h, req)
}

// accessControl is every Access-Control-* header of res.
func accessControl(res *http.Response) http.Header {
	out := http.Header{}
	for k, v := range res.Header {
		if strings.HasPrefix(k, "Access-Control-") {
			out[k] = v
		}
	}
	return out
}

// TestCORSPreflights sends the preflights a browser sends before the
// calls of @connectrpc/connect-web (Connect and gRPC-Web, with a bearer
// token): the dashboard's origin is allowed without a token, any other
// origin gets no Access-Control-Allow-* header, and none reaches the
// upstream.
func TestCORSPreflights(t *testing.T) {
	t.Parallel()
	h := corsGateway(t)
	before := h.Sim.Stats().Requests
	testCases := []struct {
		name, origin, method, headers string
		allowed                       bool
	}{
		{"connect stream", dashboardOrigin, "POST", "authorization,connect-protocol-version,connect-timeout-ms,content-type", true},
		{"connect get with a timeout", dashboardOrigin, "GET", "connect-timeout-ms", true},
		{"grpc-web", dashboardOrigin, "POST", "authorization,content-type,grpc-timeout,x-grpc-web,x-user-agent", true},
		{"trace context and revalidation", dashboardOrigin, "GET", "if-none-match,traceparent,tracestate", true},
		{"another origin", otherOrigin, "POST", "connect-protocol-version,content-type", false},
		{"a header no protocol sends", dashboardOrigin, "POST", "content-type,x-secret-admin", false},
		{"a method no protocol uses", dashboardOrigin, "DELETE", "", false},
	}
	for _, tc := range testCases {
		res := preflight(t, h, tc.origin, tc.method, tc.headers)
		got := accessControl(res)
		if res.StatusCode != http.StatusNoContent {
			t.Errorf("%s: HTTP %d, want 204 (answered before the token check)", tc.name, res.StatusCode)
		}
		if !tc.allowed {
			if len(got) != 0 {
				t.Errorf("%s: refused preflight carries %v", tc.name, got)
			}
			continue
		}
		if got.Get("Access-Control-Allow-Origin") != dashboardOrigin || got.Get("Access-Control-Allow-Methods") != tc.method ||
			got.Get("Access-Control-Allow-Headers") != tc.headers || got.Get("Access-Control-Max-Age") != "7200" ||
			got.Get("Access-Control-Allow-Credentials") != "" {
			t.Errorf("%s: preflight answered %v", tc.name, got)
		}
	}
	if calls := h.Sim.Stats().Requests - before; calls != 0 {
		t.Errorf("preflights made %d upstream calls", calls)
	}
}

// grpcWebCall is a gRPC-Web call of ListImageModifiedRecords as
// connect-web sends it from a page of origin, with a bearer token.
func grpcWebCall(t *testing.T, h *gatewaytest.Stack, origin, token, desktop string) *http.Response {
	t.Helper()
	msg, err := proto.Marshal(&imagerecordsv1.ListImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: desktop})
	if err != nil {
		t.Fatal(err)
	}
	body := binary.BigEndian.AppendUint32([]byte{0}, uint32(len(msg)))
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost,
		h.URL+imagerecordsv1connect.ImageRecordsServiceListImageModifiedRecordsProcedure, bytes.NewReader(append(body, msg...)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/grpc-web+proto")
	req.Header.Set("X-Grpc-Web", "1")
	req.Header.Set("Origin", origin)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	return send(t, h, req)
}

// TestCORSActualCalls checks the answers to the calls themselves: a page
// of the dashboard may read them, errors included (gRPC-Web puts the
// status of an answer without messages in headers, which must be
// exposed), also the refusal of a missing token; a page of another origin
// may read none.
func TestCORSActualCalls(t *testing.T) {
	t.Parallel()
	h := corsGateway(t)
	exposed := func(res *http.Response) []string {
		var names []string
		for _, v := range res.Header.Values("Access-Control-Expose-Headers") {
			for name := range strings.SplitSeq(v, ",") {
				names = append(names, strings.ToLower(strings.TrimSpace(name)))
			}
		}
		return names
	}
	testCases := []struct {
		name, origin, token, desktop, status string
		readable                             bool
	}{
		{"records", dashboardOrigin, corsToken, smallDesktop, "", true},
		{"an error in headers", dashboardOrigin, corsToken, "ecd-nosuchdesktop001", "5", true},
		{"no token", dashboardOrigin, "", smallDesktop, "16", true},
		{"another origin", otherOrigin, corsToken, smallDesktop, "", false},
	}
	for _, tc := range testCases {
		res := grpcWebCall(t, h, tc.origin, tc.token, tc.desktop)
		if got := res.Header.Get("Grpc-Status"); got != tc.status {
			t.Errorf("%s: Grpc-Status %q in headers, want %q", tc.name, got, tc.status)
		}
		if !slices.Contains(res.Header.Values("Vary"), "Origin") {
			t.Errorf("%s: Vary %v lacks Origin", tc.name, res.Header.Values("Vary"))
		}
		if !tc.readable {
			if got := accessControl(res); len(got) != 0 {
				t.Errorf("%s: carries %v", tc.name, got)
			}
			continue
		}
		if got := res.Header.Get("Access-Control-Allow-Origin"); got != dashboardOrigin {
			t.Errorf("%s: Access-Control-Allow-Origin %q", tc.name, got)
		}
		for _, want := range []string{"grpc-status", "grpc-message", "grpc-status-details-bin", "etag"} {
			if !slices.Contains(exposed(res), want) {
				t.Errorf("%s: %s is not exposed: %v", tc.name, want, exposed(res))
			}
		}
	}
}

// TestCORSIsOffByDefault: at the defaults a preflight gets no
// Access-Control-* header at all, whatever the origin.
func TestCORSIsOffByDefault(t *testing.T) {
	t.Parallel()
	h := gatewaytest.New(t, gatewaytest.Config{Desktops: testDesktops})
	for _, origin := range []string{dashboardOrigin, "null", h.URL} {
		if got := accessControl(preflight(t, h, origin, "POST", "content-type")); len(got) != 0 {
			t.Errorf("origin %s: %v", origin, got)
		}
	}
	if chain := strings.Join(h.Gateway.Chain(), " "); strings.Contains(chain, "cors") {
		t.Errorf("chain at the defaults has CORS: %s", chain)
	}
}
