package upstream_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode"

	"github.com/aliyun/credentials-go/credentials"

	"github.com/imagerecords/imagerecords/upstream"
	"github.com/imagerecords/imagerecords/upstream/acs"
	"github.com/imagerecords/imagerecords/upstream/ecdsim"
	"github.com/imagerecords/imagerecords/upstream/upstreamtest"
)

// ---- shared helpers --------------------------------------------------------

const testRegion = "cn-hangzhou"

// fastRetry is a policy of the given attempts whose backoff is negligible,
// for the tests of the retry loop itself (which failures are retried, how
// often, with what nonce and credentials): backoff timing is not what they
// test, and the default's 100-400 ms would only slow them down. The
// default policy is pinned by TestBackoffIsCappedExponentialWithFullJitter
// and, through a gateway at its defaults, by service/gateway's
// TestDefaultsRetryAnOutageFourTimes.
func fastRetry(attempts int) upstream.RetryPolicy {
	return upstream.RetryPolicy{MaxAttempts: attempts, BaseDelay: time.Millisecond, MaxDelay: 2 * time.Millisecond}
}

var (
	// longKey is a long-term AccessKey; stsKey an STS key whose token
	// has characters that need percent-encoding.
	longKey = ecdsim.Key{AccessKeyID: "LTAI5tTestKey000001", AccessKeySecret: "long-term-secret-Zq9x"}
	stsKey  = ecdsim.Key{AccessKeyID: "STS.NTestKey0000002", AccessKeySecret: "sts-secret-Hk3w", SecurityToken: "CAIS+sts/token=镜像 1"}
)

func staticCreds(k ecdsim.Key) upstream.StaticCredentials {
	return upstream.StaticCredentials{AccessKeyID: k.AccessKeyID, AccessKeySecret: k.AccessKeySecret, SecurityToken: k.SecurityToken}
}

// libraryCreds adapts a credential of the real credentials library.
func libraryCreds(t *testing.T, cfg *credentials.Config) upstream.CredentialsLibrary {
	t.Helper()
	c, err := credentials.NewCredential(cfg)
	if err != nil {
		t.Fatalf("credentials.NewCredential(%s): %v", *cfg.Type, err)
	}
	return upstream.CredentialsLibrary{Credential: c}
}

func stsLibrary(t *testing.T, k ecdsim.Key) upstream.CredentialsProvider {
	return libraryCreds(t, &credentials.Config{
		Type:            new("sts"),
		AccessKeyId:     new(k.AccessKeyID),
		AccessKeySecret: new(k.AccessKeySecret),
		SecurityToken:   new(k.SecurityToken),
	})
}

func accessKeyLibrary(t *testing.T, k ecdsim.Key) upstream.CredentialsProvider {
	return libraryCreds(t, &credentials.Config{
		Type:            new("access_key"),
		AccessKeyId:     new(k.AccessKeyID),
		AccessKeySecret: new(k.AccessKeySecret),
	})
}

// newSim serves a simulator with the default desktops and the given keys.
func newSim(t *testing.T, keys ...ecdsim.Key) (*ecdsim.Simulator, *httptest.Server) {
	t.Helper()
	sim, err := ecdsim.New(ecdsim.Config{Seed: 20240506, Keys: keys})
	if err != nil {
		t.Fatalf("ecdsim.New: %v", err)
	}
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	return sim, srv
}

// desktopWith returns the id of the simulated desktop with n records.
func desktopWith(t *testing.T, sim *ecdsim.Simulator, n int) string {
	t.Helper()
	for _, d := range sim.Desktops() {
		if d.Records == n && !d.StuckToken {
			return d.ID
		}
	}
	t.Fatalf("the simulator has no desktop with %d records", n)
	return ""
}

// checkRecords compares got with the simulator's records offset, offset+1, ...
func checkRecords(t *testing.T, sim *ecdsim.Simulator, desktop string, offset int, got []upstream.Record) {
	t.Helper()
	for i, r := range got {
		w, ok := sim.Record(desktop, offset+i)
		if !ok {
			t.Fatalf("record %d: the simulator has no such record", offset+i)
		}
		wantTime, err := time.Parse(time.RFC3339Nano, w.UpdateTime)
		if err != nil {
			t.Fatalf("record %d: simulator UpdateTime %q: %v", offset+i, w.UpdateTime, err)
		}
		want := upstream.Record{
			Status: w.Status, UpdateTime: wantTime, ImageID: w.ImageID, ImageName: w.ImageName,
			NewImageID: w.NewImageID, NewImageName: w.NewImageName, Reason: w.Reason,
		}
		if r.UpdateTime.IsZero() || !r.UpdateTime.Equal(want.UpdateTime) {
			t.Fatalf("record %d: UpdateTime = %v, want %v (%q)", offset+i, r.UpdateTime, want.UpdateTime, w.UpdateTime)
		}
		r.UpdateTime = want.UpdateTime
		if r != want {
			t.Fatalf("record %d:\n got  %+v\n want %+v", offset+i, r, want)
		}
	}
}

func hasNonASCII(s string) bool {
	return strings.ContainsFunc(s, func(r rune) bool { return r > unicode.MaxASCII })
}

// roundTripFunc is an http.RoundTripper made of a function.
type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// ---- client against the simulator -----------------------------------------

func TestClientSimulatorAcceptsSignedRequests(t *testing.T) {
	t.Parallel()
	testCases := []struct {
		name     string
		version  upstream.SignatureVersion
		key      ecdsim.Key
		provider func(t *testing.T, k ecdsim.Key) upstream.CredentialsProvider
	}{
		{"v3 static long-term key", upstream.SignatureV3, longKey, func(_ *testing.T, k ecdsim.Key) upstream.CredentialsProvider { return staticCreds(k) }},
		{"v1 static long-term key", upstream.SignatureV1, longKey, func(_ *testing.T, k ecdsim.Key) upstream.CredentialsProvider { return staticCreds(k) }},
		{"v3 library sts", upstream.SignatureV3, stsKey, stsLibrary},
		{"v1 library sts", upstream.SignatureV1, stsKey, stsLibrary},
		{"v3 library access_key", upstream.SignatureV3, longKey, accessKeyLibrary},
		{"v1 library access_key", upstream.SignatureV1, longKey, accessKeyLibrary},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sim, srv := newSim(t, tc.key)
			desktop := desktopWith(t, sim, 1234)
			client := upstream.NewClient(tc.provider(t, tc.key),
				upstream.WithEndpoint(srv.URL),
				upstream.WithSignatureVersion(tc.version),
				upstream.WithRetryPolicy(fastRetry(1)))

			in := upstream.DescribeInput{RegionID: testRegion, DesktopID: desktop, MaxResults: 100}
			page, err := client.DescribeImageModifiedRecords(t.Context(), in)
			if err != nil {
				t.Fatalf("first page: %v", err)
			}
			if page.TotalCount != 1234 {
				t.Errorf("TotalCount = %d, want 1234", page.TotalCount)
			}
			if page.RequestID == "" {
				t.Error("RequestID is empty")
			}
			if page.NextToken == "" {
				t.Error("NextToken is empty on the first of 13 pages")
			}
			if page.Resume != (upstream.Cursor{}) {
				t.Errorf("Resume = %+v from the client; only Pages sets it", page.Resume)
			}
			if len(page.Records) != 100 {
				t.Fatalf("got %d records, want 100", len(page.Records))
			}
			checkRecords(t, sim, desktop, 0, page.Records)
			if !hasNonASCII(page.Records[0].ImageName) || !hasNonASCII(page.Records[0].NewImageName) {
				t.Errorf("record 0 names %q, %q: expected non-ASCII names from the simulator", page.Records[0].ImageName, page.Records[0].NewImageName)
			}

			// The NextToken (base64, with + / =) must survive signing and
			// percent-encoding too.
			in.NextToken = page.NextToken
			page2, err := client.DescribeImageModifiedRecords(t.Context(), in)
			if err != nil {
				t.Fatalf("second page: %v", err)
			}
			if len(page2.Records) != 100 {
				t.Fatalf("second page: got %d records, want 100", len(page2.Records))
			}
			checkRecords(t, sim, desktop, 100, page2.Records)

			st := sim.Stats()
			if st.Requests != 2 || st.Pages != 2 || st.AuthFailures != 0 {
				t.Errorf("simulator stats = %+v, want 2 requests, 2 pages, 0 auth failures", st)
			}
		})
	}
}

func TestClientSimulatorRejections(t *testing.T) {
	t.Parallel()
	wrongSecret := longKey
	wrongSecret.AccessKeySecret = "not-the-secret"
	unknownID := longKey
	unknownID.AccessKeyID = "LTAI5tNoSuchKey00009"
	wrongToken := stsKey
	wrongToken.SecurityToken = "CAIS-someone-elses-token"
	noToken := stsKey
	noToken.SecurityToken = ""

	testCases := []struct {
		name     string
		version  upstream.SignatureVersion
		creds    ecdsim.Key
		desktop  string // "" means a real desktop
		wantCode string
		wantKind upstream.Kind
	}{
		{"v3 wrong secret", upstream.SignatureV3, wrongSecret, "", "SignatureDoesNotMatch", upstream.KindGatewaySignature},
		{"v1 wrong secret", upstream.SignatureV1, wrongSecret, "", "SignatureDoesNotMatch", upstream.KindGatewaySignature},
		{"v3 unknown key id", upstream.SignatureV3, unknownID, "", "InvalidAccessKeyId.NotFound", upstream.KindGatewayCredentials},
		{"v1 unknown key id", upstream.SignatureV1, unknownID, "", "InvalidAccessKeyId.NotFound", upstream.KindGatewayCredentials},
		{"v3 wrong sts token", upstream.SignatureV3, wrongToken, "", "InvalidSecurityToken.Malformed", upstream.KindGatewayCredentials},
		{"v1 sts key without token", upstream.SignatureV1, noToken, "", "InvalidSecurityToken.Malformed", upstream.KindGatewayCredentials},
		{"v3 unknown desktop", upstream.SignatureV3, longKey, "ecd-doesnotexist0000", "InvalidDesktopId.NotFound", upstream.KindNotFound},
		{"v1 unknown desktop", upstream.SignatureV1, longKey, "ecd-doesnotexist0000", "InvalidDesktopId.NotFound", upstream.KindNotFound},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sim, srv := newSim(t, longKey, stsKey)
			desktop := tc.desktop
			if desktop == "" {
				desktop = desktopWith(t, sim, 1234)
			}
			client := upstream.NewClient(staticCreds(tc.creds),
				upstream.WithEndpoint(srv.URL),
				upstream.WithSignatureVersion(tc.version),
				upstream.WithRetryPolicy(fastRetry(4)))
			page, err := client.DescribeImageModifiedRecords(t.Context(),
				upstream.DescribeInput{RegionID: testRegion, DesktopID: desktop, MaxResults: 10})
			if err == nil {
				t.Fatalf("got a page with %d records, want error %s", len(page.Records), tc.wantCode)
			}
			apiErr, ok := errors.AsType[*upstream.APIError](err)
			if !ok {
				t.Fatalf("error %v (%T) is not an *upstream.APIError", err, err)
			}
			if apiErr.Code != tc.wantCode {
				t.Errorf("Code = %q, want %q", apiErr.Code, tc.wantCode)
			}
			if got := apiErr.Kind(); got != tc.wantKind {
				t.Errorf("Kind() = %v, want %v", got, tc.wantKind)
			}
			if apiErr.HTTPStatus < 400 || apiErr.RequestID == "" {
				t.Errorf("HTTPStatus = %d, RequestID = %q: want a 4xx status and the upstream RequestId", apiErr.HTTPStatus, apiErr.RequestID)
			}
			if got := sim.Stats().Requests; got != 1 {
				t.Errorf("the simulator saw %d requests, want exactly 1 (the error is not retryable)", got)
			}
		})
	}
}

// maxResultsRecorder records every request's MaxResults, from the query
// string or a form body, before handing the request to the simulator.
type maxResultsRecorder struct {
	next http.Handler
	mu   sync.Mutex
	seen []string
}

func (m *maxResultsRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusTeapot)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	mr := r.URL.Query().Get("MaxResults")
	if form, err := url.ParseQuery(string(body)); mr == "" && err == nil {
		mr = form.Get("MaxResults")
	}
	m.mu.Lock()
	m.seen = append(m.seen, mr)
	m.mu.Unlock()
	m.next.ServeHTTP(w, r)
}

func TestClientSimulatorPagesWholeDesktop(t *testing.T) {
	t.Parallel()
	testCases := []struct {
		name    string
		version upstream.SignatureVersion
	}{
		{"v3", upstream.SignatureV3},
		{"v1", upstream.SignatureV1},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sim, err := ecdsim.New(ecdsim.Config{Seed: 7, Keys: []ecdsim.Key{stsKey}})
			if err != nil {
				t.Fatalf("ecdsim.New: %v", err)
			}
			rec := &maxResultsRecorder{next: sim}
			srv := httptest.NewServer(rec)
			t.Cleanup(srv.Close)
			desktop := desktopWith(t, sim, 1234)
			client := upstream.NewClient(stsLibrary(t, stsKey),
				upstream.WithEndpoint(srv.URL),
				upstream.WithSignatureVersion(tc.version),
				upstream.WithRetryPolicy(fastRetry(1)))

			pages, records, lastNext := 0, 0, "unset"
			for page, err := range upstream.Pages(t.Context(), client,
				upstream.DescribeInput{RegionID: testRegion, DesktopID: desktop, MaxResults: 10}) {
				if err != nil {
					t.Fatalf("page %d: %v", pages+1, err)
				}
				pages++
				if want := (upstream.Cursor{Token: page.NextToken}); page.Resume != want {
					t.Errorf("page %d: Resume = %+v, want %+v", pages, page.Resume, want)
				}
				if page.TotalCount != 1234 {
					t.Errorf("page %d: TotalCount = %d, want 1234", pages, page.TotalCount)
				}
				checkRecords(t, sim, desktop, records, page.Records)
				records += len(page.Records)
				lastNext = page.NextToken
			}
			if pages != 13 || records != 1234 {
				t.Errorf("got %d pages, %d records; want 13 pages, 1234 records", pages, records)
			}
			if lastNext != "" {
				t.Errorf("last page NextToken = %q, want empty", lastNext)
			}
			if got := sim.DesktopCalls(desktop); got != 13 {
				t.Errorf("DesktopCalls = %d, want 13", got)
			}
			rec.mu.Lock()
			defer rec.mu.Unlock()
			if len(rec.seen) != 13 {
				t.Errorf("the simulator received %d requests, want 13", len(rec.seen))
			}
			for i, mr := range rec.seen {
				if mr != "100" {
					t.Errorf("request %d: MaxResults = %q, want 100", i+1, mr)
				}
			}
		})
	}
}

// ---- endpoint and input validation ----------------------------------------

func TestEndpoint(t *testing.T) {
	t.Parallel()
	testCases := []struct {
		name string
		opts []upstream.Option
		want string
	}{
		{"default is regional", nil, "https://ecd.cn-hangzhou.aliyuncs.com"},
		{"override wins", []upstream.Option{upstream.WithEndpoint("https://ecd.vpc-proxy.aliyuncs.com")}, "https://ecd.vpc-proxy.aliyuncs.com"},
		{"trailing slash trimmed", []upstream.Option{upstream.WithEndpoint("http://127.0.0.1:9000/")}, "http://127.0.0.1:9000"},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := upstream.NewClient(staticCreds(longKey), tc.opts...)
			if got := c.Endpoint("cn-hangzhou"); got != tc.want {
				t.Errorf("Endpoint(cn-hangzhou) = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestDefaultEndpointIsUsedForRequests(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var urls []string
	rt := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		mu.Lock()
		urls = append(urls, r.URL.Scheme+"://"+r.URL.Host+r.URL.Path)
		mu.Unlock()
		return &http.Response{
			StatusCode: http.StatusOK,
			Header:     http.Header{"Content-Type": {"application/json"}},
			Body:       io.NopCloser(strings.NewReader(upstreamtest.OKBody)),
			Request:    r,
		}, nil
	})
	c := upstream.NewClient(staticCreds(longKey), upstream.WithTransport(rt))
	if _, err := c.DescribeImageModifiedRecords(t.Context(),
		upstream.DescribeInput{RegionID: "ap-southeast-1", DesktopID: "ecd-x"}); err != nil {
		t.Fatalf("DescribeImageModifiedRecords: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(urls) != 1 || urls[0] != "https://ecd.ap-southeast-1.aliyuncs.com/" {
		t.Errorf("requested %q, want [https://ecd.ap-southeast-1.aliyuncs.com/]", urls)
	}
}

func TestInvalidInputFailsBeforeAnyRequest(t *testing.T) {
	t.Parallel()
	testCases := []struct {
		name string
		in   upstream.DescribeInput
	}{
		{"region with host and path", upstream.DescribeInput{RegionID: "evil.com/x", DesktopID: "ecd-x"}},
		{"region with dot", upstream.DescribeInput{RegionID: "cn-hangzhou.evil.com", DesktopID: "ecd-x"}},
		{"region with at sign", upstream.DescribeInput{RegionID: "x@evil", DesktopID: "ecd-x"}},
		{"empty region", upstream.DescribeInput{DesktopID: "ecd-x"}},
		{"empty desktop", upstream.DescribeInput{RegionID: testRegion}},
		{"MaxResults above 100", upstream.DescribeInput{RegionID: testRegion, DesktopID: "ecd-x", MaxResults: 101}},
		{"negative MaxResults", upstream.DescribeInput{RegionID: testRegion, DesktopID: "ecd-x", MaxResults: -1}},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			for _, endpoint := range []string{"", "http://127.0.0.1:9"} {
				var mu sync.Mutex
				requests := 0
				rt := roundTripFunc(func(r *http.Request) (*http.Response, error) {
					mu.Lock()
					requests++
					mu.Unlock()
					return nil, errors.New("no request expected")
				})
				opts := []upstream.Option{upstream.WithTransport(rt), upstream.WithRetryPolicy(fastRetry(3))}
				if endpoint != "" {
					opts = append(opts, upstream.WithEndpoint(endpoint))
				}
				creds := &countingCreds{creds: upstream.Credentials(staticCreds(longKey))}
				c := upstream.NewClient(creds, opts...)
				_, err := c.DescribeImageModifiedRecords(t.Context(), tc.in)
				if err == nil {
					t.Fatalf("endpoint %q: want an error for %+v", endpoint, tc.in)
				}
				if _, ok := errors.AsType[*upstream.APIError](err); ok {
					t.Errorf("endpoint %q: got an *APIError %v, want a local validation error", endpoint, err)
				}
				mu.Lock()
				if requests != 0 {
					t.Errorf("endpoint %q: %d HTTP requests made, want 0", endpoint, requests)
				}
				mu.Unlock()
				if n := creds.n.Load(); n != 0 {
					t.Errorf("endpoint %q: credentials fetched %d times, want 0", endpoint, n)
				}
			}
		})
	}
}

// ---- malformed answers ----------------------------------------------------

// pageWithPadding returns a valid page body of exactly size bytes (JSON
// allows trailing whitespace).
func pageWithPadding(t *testing.T, size int) string {
	t.Helper()
	if len(upstreamtest.OKBody) > size {
		t.Fatalf("upstreamtest.OKBody is %d bytes, more than %d", len(upstreamtest.OKBody), size)
	}
	return upstreamtest.OKBody + strings.Repeat(" ", size-len(upstreamtest.OKBody))
}

func TestMalformedResponses(t *testing.T) {
	t.Parallel()
	record := func(status, updateTime string) string {
		return `{"RequestId":"R","TotalCount":1,"ImageModifiedRecords":[{"Status":` + status +
			`,"UpdateTime":` + updateTime + `,"ImageId":"m-1","ImageName":"a","NewImageId":"m-2","NewImageName":"b"}]}`
	}
	testCases := []struct {
		name     string
		body     string
		maxBytes int64 // 0: default
	}{
		{"not JSON", "<html><body>502 proxy error</body></html>", 0},
		{"truncated JSON", `{"RequestId":"R","ImageModifiedRecords":[`, 0},
		{"UpdateTime yesterday", record("1", `"yesterday"`), 0},
		{"Status as a string", record(`"1"`, `"2022-03-03T02:43:44.851Z"`), 0},
		{"records not an array", `{"RequestId":"R","TotalCount":1,"ImageModifiedRecords":{}}`, 0},
		{"body larger than the limit", upstreamtest.OKBody + strings.Repeat(" ", 2048), 1024},
		{"body one byte over the limit", "", 1024}, // filled in below
	}
	testCases[len(testCases)-1].body = pageWithPadding(t, 1025)
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sc := upstreamtest.InOrder(t, upstreamtest.Answer{Status: http.StatusOK, Body: tc.body})
			opts := []upstream.Option{upstream.WithEndpoint(sc.URL), upstream.WithRetryPolicy(fastRetry(3))}
			if tc.maxBytes > 0 {
				opts = append(opts, upstream.WithMaxResponseBytes(tc.maxBytes))
			}
			c := upstream.NewClient(staticCreds(longKey), opts...)
			page, err := c.DescribeImageModifiedRecords(t.Context(), upstream.DescribeInput{RegionID: testRegion, DesktopID: "ecd-x"})
			if !errors.Is(err, upstream.ErrMalformedResponse) {
				t.Fatalf("got page %+v, error %v; want ErrMalformedResponse", page, err)
			}
			if n := len(sc.Requests()); n != 1 {
				t.Errorf("%d attempts, want 1 (a malformed answer is not retried)", n)
			}
		})
	}
}

func TestResponseAtTheSizeLimitIsAccepted(t *testing.T) {
	t.Parallel()
	sc := upstreamtest.InOrder(t, upstreamtest.Answer{Status: http.StatusOK, Body: pageWithPadding(t, 1024)})
	c := upstream.NewClient(staticCreds(longKey), upstream.WithEndpoint(sc.URL), upstream.WithMaxResponseBytes(1024))
	page, err := c.DescribeImageModifiedRecords(t.Context(), upstream.DescribeInput{RegionID: testRegion, DesktopID: "ecd-x"})
	if err != nil {
		t.Fatalf("a body of exactly the limit: %v", err)
	}
	if len(page.Records) != 1 || page.RequestID != "R-OK" {
		t.Errorf("page = %+v, want the one record of upstreamtest.OKBody", page)
	}
}

// ---- secrets --------------------------------------------------------------

// refusedEndpoint returns the URL of a loopback port nobody listens on.
func refusedEndpoint(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	return "http://" + addr
}

func TestNetworkErrorsDoNotLeakSecrets(t *testing.T) {
	t.Parallel()
	testCases := []struct {
		name    string
		version upstream.SignatureVersion
	}{
		{"v1", upstream.SignatureV1},
		{"v3", upstream.SignatureV3},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			endpoint := refusedEndpoint(t)
			var logs bytes.Buffer
			var logMu sync.Mutex
			logger := slog.New(slog.NewJSONHandler(&lockedWriter{mu: &logMu, w: &logs}, &slog.HandlerOptions{Level: slog.LevelDebug}))
			c := upstream.NewClient(stsLibrary(t, stsKey),
				upstream.WithEndpoint(endpoint),
				upstream.WithSignatureVersion(tc.version),
				upstream.WithRetryPolicy(fastRetry(2)),
				upstream.WithLogger(logger))
			_, err := c.DescribeImageModifiedRecords(t.Context(),
				upstream.DescribeInput{RegionID: testRegion, DesktopID: "ecd-x", NextToken: "tok"})
			if err == nil {
				t.Fatal("want a connection error")
			}
			msg := err.Error()
			forbidden := []string{
				stsKey.AccessKeySecret, stsKey.SecurityToken,
				acs.PercentEncode(stsKey.SecurityToken), "Signature=", "SecurityToken",
			}
			for _, s := range forbidden {
				if strings.Contains(msg, s) {
					t.Errorf("error %q contains %q", msg, s)
				}
			}
			if !strings.Contains(msg, strings.TrimPrefix(endpoint, "http://")) {
				t.Errorf("error %q does not name the endpoint %s", msg, endpoint)
			}
			logMu.Lock()
			defer logMu.Unlock()
			if !strings.Contains(logs.String(), "retrying") {
				t.Errorf("no retry was logged: %s", logs.String())
			}
			for _, s := range forbidden {
				if strings.Contains(logs.String(), s) {
					t.Errorf("retry log %s contains %q", logs.String(), s)
				}
			}
		})
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func TestCredentialsFormattingIsRedacted(t *testing.T) {
	t.Parallel()
	creds := upstream.Credentials{AccessKeyID: "LTAI5tVisibleId", AccessKeySecret: "s3cr3t-v4lue-XYZ", SecurityToken: "CAIS-t0ken-ABC"}
	long := upstream.Credentials{AccessKeyID: "LTAI5tVisibleId", AccessKeySecret: "s3cr3t-v4lue-XYZ"}
	type holder struct{ Creds upstream.Credentials }
	testCases := []struct {
		name   string
		format func() string
	}{
		{"%v", func() string { return fmt.Sprintf("%v", creds) }},
		{"%+v", func() string { return fmt.Sprintf("%+v", creds) }},
		{"%#v", func() string { return fmt.Sprintf("%#v", creds) }},
		{"%s", func() string { return fmt.Sprintf("%s", creds) }},
		{"%q", func() string { return fmt.Sprintf("%q", creds) }},
		{"%v long-term", func() string { return fmt.Sprintf("%v", long) }},
		{"%v pointer", func() string { return fmt.Sprintf("%v", &creds) }},
		{"%+v in a struct", func() string { return fmt.Sprintf("%+v", holder{creds}) }},
		{"%#v in a struct", func() string { return fmt.Sprintf("%#v", holder{creds}) }},
		{"%v in a slice", func() string { return fmt.Sprintf("%v", []upstream.Credentials{creds}) }},
		{"slog JSON", func() string {
			var b bytes.Buffer
			slog.New(slog.NewJSONHandler(&b, nil)).Info("m", slog.Any("creds", creds), "pointer", &creds, "plain", creds)
			return b.String()
		}},
		{"slog text", func() string {
			var b bytes.Buffer
			slog.New(slog.NewTextHandler(&b, nil)).Info("m", slog.Any("creds", creds))
			return b.String()
		}},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			out := tc.format()
			if strings.Contains(out, creds.AccessKeySecret) || strings.Contains(out, creds.SecurityToken) {
				t.Errorf("output %q contains the secret or the token", out)
			}
			if !strings.Contains(out, creds.AccessKeyID) {
				t.Errorf("output %q does not show the AccessKeyId", out)
			}
		})
	}
}

// StaticCredentials holds the same secrets as Credentials and is what a
// configuration struct keeps, so a stray %v or slog attribute of it must be
// redacted too.
func TestStaticCredentialsFormattingIsRedacted(t *testing.T) {
	t.Parallel()
	creds := upstream.StaticCredentials{AccessKeyID: "LTAI5tVisibleId", AccessKeySecret: "s3cr3t-v4lue-XYZ", SecurityToken: "CAIS-t0ken-ABC"}
	testCases := []struct {
		name   string
		format func() string
	}{
		{"%v", func() string { return fmt.Sprintf("%v", creds) }},
		{"%+v", func() string { return fmt.Sprintf("%+v", creds) }},
		{"%#v", func() string { return fmt.Sprintf("%#v", creds) }},
		{"slog JSON", func() string {
			var b bytes.Buffer
			slog.New(slog.NewJSONHandler(&b, nil)).Info("m", slog.Any("creds", creds))
			return b.String()
		}},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			out := tc.format()
			if strings.Contains(out, creds.AccessKeySecret) || strings.Contains(out, creds.SecurityToken) {
				t.Errorf("output %q contains the secret or the token", out)
			}
		})
	}
}

// ---- misc -----------------------------------------------------------------

func TestContextAlreadyCancelled(t *testing.T) {
	t.Parallel()
	sc := upstreamtest.InOrder(t, upstreamtest.Answer{Status: http.StatusOK, Body: upstreamtest.OKBody})
	c := upstream.NewClient(staticCreds(longKey), upstream.WithEndpoint(sc.URL), upstream.WithRetryPolicy(fastRetry(4)))
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := c.DescribeImageModifiedRecords(ctx, upstream.DescribeInput{RegionID: testRegion, DesktopID: "ecd-x"})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want context.Canceled", err)
	}
	if n := len(sc.Requests()); n != 0 {
		t.Errorf("%d requests reached the server, want 0", n)
	}
}

// TestEndpointUserAuthorizesV1 checks that the client sends the
// endpoint's user as Basic authorization (to a proxy that asks for it)
// where the signature leaves the Authorization header free, V1, and
// never in place of a V3 signature.
func TestEndpointUserAuthorizesV1(t *testing.T) {
	t.Parallel()
	testCases := []struct {
		name    string
		version upstream.SignatureVersion
		want    func(r *http.Request) bool
	}{
		{"v1", upstream.SignatureV1, func(r *http.Request) bool {
			user, password, ok := r.BasicAuth()
			return ok && user == "proxy-user" && password == "proxy pass"
		}},
		{"v3", upstream.SignatureV3, func(r *http.Request) bool {
			return strings.HasPrefix(r.Header.Get("Authorization"), acs.V3Algorithm+" ")
		}},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			authorized := make(chan bool, 1)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				authorized <- tc.want(r)
				_, _ = io.WriteString(w, upstreamtest.OKBody)
			}))
			t.Cleanup(srv.Close)
			u, err := url.Parse(srv.URL)
			if err != nil {
				t.Fatal(err)
			}
			u.User = url.UserPassword("proxy-user", "proxy pass")
			c := upstream.NewClient(staticCreds(longKey), upstream.WithEndpoint(u.String()),
				upstream.WithSignatureVersion(tc.version), upstream.WithRetryPolicy(fastRetry(1)))
			if _, err := c.DescribeImageModifiedRecords(t.Context(), upstream.DescribeInput{RegionID: testRegion, DesktopID: "ecd-a"}); err != nil {
				t.Fatal(err)
			}
			if !<-authorized {
				t.Error("the request's Authorization is not the expected one")
			}
		})
	}
}
