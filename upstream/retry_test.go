package upstream_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aliyun/credentials-go/credentials"

	"github.com/imagerecords/imagerecords/upstream"
	"github.com/imagerecords/imagerecords/upstream/acs"
)

// okBody is a valid one-record page.
const okBody = `{"RequestId":"R-OK","TotalCount":1,"ImageModifiedRecords":[{"Status":1,"UpdateTime":"2022-03-03T02:43:44.851Z","ImageId":"m-1","ImageName":"镜像 1","NewImageId":"m-2","NewImageName":"镜像 2"}]}`

// errBody is an upstream error answer with code.
func errBody(code string) string {
	return fmt.Sprintf(`{"RequestId":"REQ-%[1]s","HostId":"ecd.cn-hangzhou.aliyuncs.com","Code":%[1]q,"Message":"scripted %[1]s","Recommend":"https://api.aliyun.com/troubleshoot?q=%[1]s"}`, code)
}

// step is one scripted answer.
type step struct {
	status int
	body   string
	header http.Header
	// drop hijacks the connection and closes it without an answer.
	drop bool
	// cutBody announces a 200 with a longer body than it sends, then
	// closes the connection.
	cutBody bool
}

// seenRequest is what the scripted server recorded of one request.
type seenRequest struct {
	nonce, date, accessKeyID, signature string
}

// scripted answers the steps in order, the last one for every further
// request.
type scripted struct {
	steps []step
	mu    sync.Mutex
	seen  []seenRequest
}

func newScripted(t *testing.T, steps ...step) (*scripted, *httptest.Server) {
	t.Helper()
	sc := &scripted{steps: steps}
	srv := httptest.NewServer(sc)
	t.Cleanup(srv.Close)
	return sc, srv
}

func (s *scripted) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// V1 parameters may come in the query string or a form body.
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form: "+err.Error(), http.StatusTeapot)
		return
	}
	rec := seenRequest{
		nonce:       r.Header.Get("x-acs-signature-nonce"),
		date:        r.Header.Get("x-acs-date"),
		accessKeyID: r.Form.Get("AccessKeyId"),
		signature:   r.Form.Get("Signature"),
	}
	if rec.nonce == "" { // V1
		rec.nonce, rec.date = r.Form.Get("SignatureNonce"), r.Form.Get("Timestamp")
	}
	if authz := r.Header.Get("Authorization"); authz != "" { // V3
		for part := range strings.SplitSeq(strings.TrimPrefix(authz, acs.V3Algorithm+" "), ",") {
			k, v, _ := strings.Cut(part, "=")
			switch k {
			case "Credential":
				rec.accessKeyID = v
			case "Signature":
				rec.signature = v
			}
		}
	}
	s.mu.Lock()
	n := len(s.seen)
	s.seen = append(s.seen, rec)
	s.mu.Unlock()

	st := s.steps[min(n, len(s.steps)-1)]
	if st.drop || st.cutBody {
		conn, buf, err := w.(http.Hijacker).Hijack()
		if err != nil {
			http.Error(w, "hijack: "+err.Error(), http.StatusTeapot)
			return
		}
		if st.cutBody {
			_, _ = buf.WriteString("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n" + okBody[:20])
			_ = buf.Flush()
		}
		_ = conn.Close()
		return
	}
	for k, v := range st.header {
		w.Header()[k] = v
	}
	if w.Header().Get("Content-Type") == "" {
		w.Header().Set("Content-Type", "application/json;charset=utf-8")
	}
	w.WriteHeader(st.status)
	_, _ = io.WriteString(w, st.body)
}

func (s *scripted) attempts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.seen)
}

func (s *scripted) requests() []seenRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]seenRequest(nil), s.seen...)
}

// countingCreds counts the calls; with err it fails, with rotate it hands
// out a different AccessKeyId every call.
type countingCreds struct {
	n      atomic.Int64
	creds  upstream.Credentials
	err    error
	rotate bool
}

func (c *countingCreds) Credentials(context.Context) (upstream.Credentials, error) {
	n := c.n.Add(1)
	if c.err != nil {
		return upstream.Credentials{}, c.err
	}
	cr := c.creds
	if c.rotate {
		cr.AccessKeyID = fmt.Sprintf("%s-%d", cr.AccessKeyID, n)
	}
	return cr, nil
}

func describe(t *testing.T, c *upstream.Client) (*upstream.Page, error) {
	t.Helper()
	return c.DescribeImageModifiedRecords(t.Context(), upstream.DescribeInput{RegionID: testRegion, DesktopID: "ecd-x", MaxResults: 10})
}

func ok() step                          { return step{status: http.StatusOK, body: okBody} }
func fail(status int, code string) step { return step{status: status, body: errBody(code)} }

func checkDistinctNonces(t *testing.T, reqs []seenRequest) {
	t.Helper()
	seen := map[string]bool{}
	for i, r := range reqs {
		if r.nonce == "" {
			t.Errorf("attempt %d carries no nonce", i+1)
		}
		if seen[r.nonce] {
			t.Errorf("attempt %d reuses nonce %q", i+1, r.nonce)
		}
		seen[r.nonce] = true
		if _, err := time.Parse("2006-01-02T15:04:05Z", r.date); err != nil {
			t.Errorf("attempt %d: date %q: %v", i+1, r.date, err)
		}
	}
}

func TestRetryThenSuccess(t *testing.T) {
	t.Parallel()
	testCases := []struct {
		name  string
		first step
	}{
		{"400 Throttling.User", fail(http.StatusBadRequest, "Throttling.User")},
		{"400 Throttling", fail(http.StatusBadRequest, "Throttling")},
		{"503 ServiceUnavailable", fail(http.StatusServiceUnavailable, "ServiceUnavailable")},
		{"500 InternalError", fail(http.StatusInternalServerError, "InternalError")},
		{"502 non-JSON body", step{status: http.StatusBadGateway, body: "<html>502 Bad Gateway</html>", header: http.Header{"Content-Type": {"text/html"}}}},
		{"dropped connection", step{drop: true}},
		{"connection cut inside the body", step{cutBody: true}},
		{"400 SignatureNonceUsed", fail(http.StatusBadRequest, "SignatureNonceUsed")},
		{"400 InvalidSecurityToken.Expired", fail(http.StatusBadRequest, "InvalidSecurityToken.Expired")},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sc, srv := newScripted(t, tc.first, ok())
			creds := &countingCreds{creds: upstream.Credentials(staticCreds(longKey))}
			c := upstream.NewClient(creds, upstream.WithEndpoint(srv.URL), upstream.WithRetryPolicy(fastRetry(4)))
			page, err := describe(t, c)
			if err != nil {
				t.Fatalf("want success after a retry, got %v", err)
			}
			if page.RequestID != "R-OK" || len(page.Records) != 1 {
				t.Errorf("page = %+v, want the scripted page", page)
			}
			if n := sc.attempts(); n != 2 {
				t.Errorf("%d attempts, want 2", n)
			}
			if n := creds.n.Load(); n != 2 {
				t.Errorf("credentials fetched %d times, want 2 (once per attempt)", n)
			}
			checkDistinctNonces(t, sc.requests())
		})
	}
}

func TestRetrySignsEveryAttemptAnew(t *testing.T) {
	t.Parallel()
	// A clock in UTC+8 checks that dates are sent in UTC.
	clock := time.Date(2024, 5, 6, 15, 8, 9, 0, time.FixedZone("CST", 8*3600))
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
			throttled := fail(http.StatusBadRequest, "Throttling.User")
			sc, srv := newScripted(t, throttled, throttled, ok())
			creds := &countingCreds{creds: upstream.Credentials(staticCreds(stsKey)), rotate: true}
			c := upstream.NewClient(creds,
				upstream.WithEndpoint(srv.URL),
				upstream.WithSignatureVersion(tc.version),
				upstream.WithClock(func() time.Time { return clock }),
				upstream.WithRetryPolicy(fastRetry(4)))
			if _, err := describe(t, c); err != nil {
				t.Fatalf("want success on the third attempt, got %v", err)
			}
			reqs := sc.requests()
			if len(reqs) != 3 {
				t.Fatalf("%d attempts, want 3", len(reqs))
			}
			checkDistinctNonces(t, reqs)
			sigs := map[string]bool{}
			for i, r := range reqs {
				if r.date != "2024-05-06T07:08:09Z" {
					t.Errorf("attempt %d: date %q, want the clock in UTC 2024-05-06T07:08:09Z", i+1, r.date)
				}
				if want := fmt.Sprintf("%s-%d", stsKey.AccessKeyID, i+1); r.accessKeyID != want {
					t.Errorf("attempt %d signed with AccessKeyId %q, want %q (credentials fetched anew per attempt)", i+1, r.accessKeyID, want)
				}
				if r.signature == "" || sigs[r.signature] {
					t.Errorf("attempt %d: signature %q is empty or repeated", i+1, r.signature)
				}
				sigs[r.signature] = true
			}
		})
	}
}

func TestNotRetried(t *testing.T) {
	t.Parallel()
	testCases := []struct {
		name   string
		status int
		code   string
	}{
		{"InvalidParameter", http.StatusBadRequest, "InvalidParameter"},
		{"Forbidden.RAM", http.StatusForbidden, "Forbidden.RAM"},
		{"SignatureDoesNotMatch", http.StatusBadRequest, "SignatureDoesNotMatch"},
		{"InvalidDesktopId.NotFound", http.StatusNotFound, "InvalidDesktopId.NotFound"},
		{"MissingDesktopId", http.StatusBadRequest, "MissingDesktopId"},
		{"InvalidAccessKeyId.NotFound", http.StatusNotFound, "InvalidAccessKeyId.NotFound"},
		{"InvalidTimeStamp.Expired", http.StatusBadRequest, "InvalidTimeStamp.Expired"},
		{"unknown 400 code", http.StatusBadRequest, "SomethingNew.Unheard"},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sc, srv := newScripted(t, fail(tc.status, tc.code), ok())
			c := upstream.NewClient(staticCreds(longKey), upstream.WithEndpoint(srv.URL), upstream.WithRetryPolicy(fastRetry(5)))
			_, err := describe(t, c)
			apiErr, isAPI := errors.AsType[*upstream.APIError](err)
			if !isAPI || apiErr.Code != tc.code || apiErr.HTTPStatus != tc.status {
				t.Fatalf("error %v, want *APIError %s (HTTP %d)", err, tc.code, tc.status)
			}
			if n := sc.attempts(); n != 1 {
				t.Errorf("%d attempts, want exactly 1", n)
			}
		})
	}
}

func TestRetriedExactlyOnce(t *testing.T) {
	t.Parallel()
	testCases := []struct {
		name     string
		steps    []step
		wantCode string
	}{
		{"SignatureNonceUsed repeated", []step{fail(http.StatusBadRequest, "SignatureNonceUsed")}, "SignatureNonceUsed"},
		{"InvalidSecurityToken.Expired repeated", []step{fail(http.StatusBadRequest, "InvalidSecurityToken.Expired")}, "InvalidSecurityToken.Expired"},
		{"SignatureNonceUsed then InvalidSecurityToken.Expired", []step{
			fail(http.StatusBadRequest, "SignatureNonceUsed"), fail(http.StatusBadRequest, "InvalidSecurityToken.Expired"),
		}, "InvalidSecurityToken.Expired"},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sc, srv := newScripted(t, tc.steps...)
			creds := &countingCreds{creds: upstream.Credentials(staticCreds(stsKey))}
			c := upstream.NewClient(creds, upstream.WithEndpoint(srv.URL), upstream.WithRetryPolicy(fastRetry(5)))
			_, err := describe(t, c)
			apiErr, isAPI := errors.AsType[*upstream.APIError](err)
			if !isAPI || apiErr.Code != tc.wantCode {
				t.Fatalf("error %v, want *APIError %s", err, tc.wantCode)
			}
			if n := sc.attempts(); n != 2 {
				t.Errorf("%d attempts, want exactly 2", n)
			}
			if n := creds.n.Load(); n != 2 {
				t.Errorf("credentials fetched %d times, want 2", n)
			}
			checkDistinctNonces(t, sc.requests())
		})
	}
}

func TestOnceOnlyRetryDoesNotUseUpThrottlingRetries(t *testing.T) {
	t.Parallel()
	sc, srv := newScripted(t,
		fail(http.StatusBadRequest, "SignatureNonceUsed"),
		fail(http.StatusBadRequest, "Throttling.User"),
		fail(http.StatusServiceUnavailable, "ServiceUnavailable"),
		ok())
	c := upstream.NewClient(staticCreds(longKey), upstream.WithEndpoint(srv.URL), upstream.WithRetryPolicy(fastRetry(4)))
	if _, err := describe(t, c); err != nil {
		t.Fatalf("want success on attempt 4, got %v", err)
	}
	if n := sc.attempts(); n != 4 {
		t.Errorf("%d attempts, want 4", n)
	}
}

func TestPersistentThrottlingStopsAtMaxAttempts(t *testing.T) {
	t.Parallel()
	testCases := []struct {
		name        string
		maxAttempts int
		want        int
	}{
		{"retries disabled", 1, 1},
		{"two attempts", 2, 2},
		{"five attempts", 5, 5},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sc, srv := newScripted(t, fail(http.StatusBadRequest, "Throttling.User"))
			creds := &countingCreds{creds: upstream.Credentials(staticCreds(longKey))}
			c := upstream.NewClient(creds, upstream.WithEndpoint(srv.URL), upstream.WithRetryPolicy(fastRetry(tc.maxAttempts)))
			_, err := describe(t, c)
			apiErr, isAPI := errors.AsType[*upstream.APIError](err)
			if !isAPI || apiErr.Code != "Throttling.User" || apiErr.Kind() != upstream.KindThrottled {
				t.Fatalf("error %v, want *APIError Throttling.User", err)
			}
			if n := sc.attempts(); n != tc.want {
				t.Errorf("%d attempts, want %d", n, tc.want)
			}
			if n := creds.n.Load(); n != int64(tc.want) {
				t.Errorf("credentials fetched %d times, want %d (once per attempt)", n, tc.want)
			}
			checkDistinctNonces(t, sc.requests())
		})
	}
}

func TestRetryNeverWaitsPastTheDeadline(t *testing.T) {
	t.Parallel()
	// The backoff is drawn uniformly from [0, cap] (full jitter); with a
	// cap of 1000 h the chance that it fits under the deadline is ~1e-6,
	// so the first retry's wait would end past the deadline and the client
	// must give up at once with the upstream's error.
	sc, srv := newScripted(t, fail(http.StatusBadRequest, "Throttling.User"))
	c := upstream.NewClient(staticCreds(longKey), upstream.WithEndpoint(srv.URL),
		upstream.WithRetryPolicy(upstream.RetryPolicy{MaxAttempts: 5, BaseDelay: 1000 * time.Hour, MaxDelay: 1000 * time.Hour}))
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	_, err := c.DescribeImageModifiedRecords(ctx, upstream.DescribeInput{RegionID: testRegion, DesktopID: "ecd-x"})
	if ctx.Err() != nil {
		t.Errorf("returned only after the deadline (%v); it must give up at once", ctx.Err())
	}
	if errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error %v is a context error; want the upstream's *APIError", err)
	}
	if apiErr, isAPI := errors.AsType[*upstream.APIError](err); !isAPI || apiErr.Code != "Throttling.User" {
		t.Errorf("error %v, want *APIError Throttling.User", err)
	}
	if n := sc.attempts(); n != 1 {
		t.Errorf("%d attempts, want 1", n)
	}
}

// hookHandler is a slog.Handler that calls fn for every record.
type hookHandler struct{ fn func(slog.Record) }

func (h hookHandler) Enabled(context.Context, slog.Level) bool      { return true }
func (h hookHandler) Handle(_ context.Context, r slog.Record) error { h.fn(r); return nil }
func (h hookHandler) WithAttrs([]slog.Attr) slog.Handler            { return h }
func (h hookHandler) WithGroup(string) slog.Handler                 { return h }

func TestCancelDuringBackoff(t *testing.T) {
	t.Parallel()
	testCases := []struct {
		name string
		// viaLog cancels when the client logs the retry, i.e. right before
		// it starts waiting; otherwise the handler signals after it has
		// answered the first attempt.
		viaLog bool
	}{
		{"cancelled after the first answer", false},
		{"cancelled as the backoff starts", true},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			sc := &scripted{steps: []step{fail(http.StatusBadRequest, "Throttling.User"), ok()}}
			answered := make(chan struct{})
			var once sync.Once
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				sc.ServeHTTP(w, r)
				w.(http.Flusher).Flush()
				once.Do(func() { close(answered) })
			}))
			t.Cleanup(srv.Close)
			opts := []upstream.Option{
				upstream.WithEndpoint(srv.URL),
				upstream.WithRetryPolicy(upstream.RetryPolicy{MaxAttempts: 5, BaseDelay: 1000 * time.Hour, MaxDelay: 1000 * time.Hour}),
			}
			if tc.viaLog {
				opts = append(opts, upstream.WithLogger(slog.New(hookHandler{fn: func(r slog.Record) {
					if strings.Contains(r.Message, "retry") {
						cancel()
					}
				}})))
			} else {
				go func() {
					select {
					case <-answered:
						cancel()
					case <-ctx.Done():
					}
				}()
			}
			c := upstream.NewClient(staticCreds(longKey), opts...)

			done := make(chan error, 1)
			go func() {
				_, err := c.DescribeImageModifiedRecords(ctx, upstream.DescribeInput{RegionID: testRegion, DesktopID: "ecd-x"})
				done <- err
			}()
			var err error
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("still waiting 10 s after cancellation; the backoff ignores the context")
			}
			if !errors.Is(err, context.Canceled) {
				t.Errorf("error %v, want context.Canceled", err)
			}
			if tc.viaLog {
				if apiErr, isAPI := errors.AsType[*upstream.APIError](err); !isAPI || apiErr.Code != "Throttling.User" {
					t.Errorf("error %v does not wrap the last attempt's *APIError", err)
				}
			}
			if n := sc.attempts(); n != 1 {
				t.Errorf("%d attempts, want 1", n)
			}
		})
	}
}

// failingCredential is a credentials-go Credential whose GetCredential
// fails.
type failingCredential struct{ err error }

func (f failingCredential) GetAccessKeyId() (*string, error)     { return nil, f.err }
func (f failingCredential) GetAccessKeySecret() (*string, error) { return nil, f.err }
func (f failingCredential) GetSecurityToken() (*string, error)   { return nil, f.err }
func (f failingCredential) GetBearerToken() *string              { return nil }
func (f failingCredential) GetType() *string                     { return ptr("failing") }
func (f failingCredential) GetCredential() (*credentials.CredentialModel, error) {
	return nil, f.err
}

// emptyCredential is a credentials-go Credential that answers an AccessKeyId
// without a secret.
type emptyCredential struct{ failingCredential }

func (emptyCredential) GetCredential() (*credentials.CredentialModel, error) {
	return &credentials.CredentialModel{AccessKeyId: ptr("LTAI5tNoSecret")}, nil
}

func TestCredentialsErrors(t *testing.T) {
	t.Parallel()
	testCases := []struct {
		name  string
		creds upstream.CredentialsProvider
	}{
		{"library credential fails", upstream.CredentialsLibrary{Credential: failingCredential{err: errors.New("ECS metadata unreachable")}}},
		{"library credential has no secret", upstream.CredentialsLibrary{Credential: emptyCredential{}}},
		{"custom provider fails", &countingCreds{err: errors.New("vault sealed")}},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sc, srv := newScripted(t, ok())
			c := upstream.NewClient(tc.creds, upstream.WithEndpoint(srv.URL), upstream.WithRetryPolicy(fastRetry(4)))
			_, err := describe(t, c)
			if !errors.Is(err, upstream.ErrNoCredentials) {
				t.Errorf("error %v, want one wrapping upstream.ErrNoCredentials", err)
			}
			if n := sc.attempts(); n != 0 {
				t.Errorf("%d HTTP requests made, want 0", n)
			}
			if cc, isCounting := tc.creds.(*countingCreds); isCounting {
				if n := cc.n.Load(); n != 1 {
					t.Errorf("provider called %d times, want 1 (not retried)", n)
				}
			}
		})
	}
}
