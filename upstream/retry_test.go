package upstream_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aliyun/credentials-go/credentials"

	"github.com/imagerecords/imagerecords/upstream"
	"github.com/imagerecords/imagerecords/upstream/upstreamtest"
)

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

func ok() upstreamtest.Answer { return upstreamtest.OK(upstreamtest.OKBody) }

func fail(status int, code string) upstreamtest.Answer {
	return upstreamtest.Fail(status, code)
}

func checkDistinctNonces(t *testing.T, reqs []upstreamtest.Request) {
	t.Helper()
	seen := map[string]bool{}
	for i, r := range reqs {
		if r.Nonce == "" {
			t.Errorf("attempt %d carries no nonce", i+1)
		}
		if seen[r.Nonce] {
			t.Errorf("attempt %d reuses nonce %q", i+1, r.Nonce)
		}
		seen[r.Nonce] = true
		if _, err := time.Parse("2006-01-02T15:04:05Z", r.Date); err != nil {
			t.Errorf("attempt %d: date %q: %v", i+1, r.Date, err)
		}
	}
}

func TestRetryThenSuccess(t *testing.T) {
	t.Parallel()
	testCases := []struct {
		name  string
		first upstreamtest.Answer
	}{
		{"400 Throttling.User", fail(http.StatusBadRequest, "Throttling.User")},
		{"400 Throttling", fail(http.StatusBadRequest, "Throttling")},
		{"503 ServiceUnavailable", fail(http.StatusServiceUnavailable, "ServiceUnavailable")},
		{"500 InternalError", fail(http.StatusInternalServerError, "InternalError")},
		{"502 non-JSON body", upstreamtest.Answer{Status: http.StatusBadGateway, Body: "<html>502 Bad Gateway</html>", Header: http.Header{"Content-Type": {"text/html"}}}},
		{"dropped connection", upstreamtest.Answer{Drop: true}},
		{"connection cut inside the body", upstreamtest.Answer{CutBody: true}},
		{"400 SignatureNonceUsed", fail(http.StatusBadRequest, "SignatureNonceUsed")},
		{"400 InvalidSecurityToken.Expired", fail(http.StatusBadRequest, "InvalidSecurityToken.Expired")},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sc := upstreamtest.InOrder(t, tc.first, ok())
			creds := &countingCreds{creds: upstream.Credentials(staticCreds(longKey))}
			c := upstream.NewClient(creds, upstream.WithEndpoint(sc.URL), upstream.WithRetryPolicy(fastRetry(4)))
			page, err := describe(t, c)
			if err != nil {
				t.Fatalf("want success after a retry, got %v", err)
			}
			if page.RequestID != "R-OK" || len(page.Records) != 1 {
				t.Errorf("page = %+v, want the scripted page", page)
			}
			if n := len(sc.Requests()); n != 2 {
				t.Errorf("%d attempts, want 2", n)
			}
			if n := creds.n.Load(); n != 2 {
				t.Errorf("credentials fetched %d times, want 2 (once per attempt)", n)
			}
			checkDistinctNonces(t, sc.Requests())
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
			sc := upstreamtest.InOrder(t, throttled, throttled, ok())
			creds := &countingCreds{creds: upstream.Credentials(staticCreds(stsKey)), rotate: true}
			c := upstream.NewClient(creds,
				upstream.WithEndpoint(sc.URL),
				upstream.WithSignatureVersion(tc.version),
				upstream.WithClock(func() time.Time { return clock }),
				upstream.WithRetryPolicy(fastRetry(4)))
			if _, err := describe(t, c); err != nil {
				t.Fatalf("want success on the third attempt, got %v", err)
			}
			reqs := sc.Requests()
			if len(reqs) != 3 {
				t.Fatalf("%d attempts, want 3", len(reqs))
			}
			checkDistinctNonces(t, reqs)
			sigs := map[string]bool{}
			for i, r := range reqs {
				if r.Date != "2024-05-06T07:08:09Z" {
					t.Errorf("attempt %d: date %q, want the clock in UTC 2024-05-06T07:08:09Z", i+1, r.Date)
				}
				if want := fmt.Sprintf("%s-%d", stsKey.AccessKeyID, i+1); r.AccessKeyID != want {
					t.Errorf("attempt %d signed with AccessKeyId %q, want %q (credentials fetched anew per attempt)", i+1, r.AccessKeyID, want)
				}
				if r.Signature == "" || sigs[r.Signature] {
					t.Errorf("attempt %d: signature %q is empty or repeated", i+1, r.Signature)
				}
				sigs[r.Signature] = true
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
			sc := upstreamtest.InOrder(t, fail(tc.status, tc.code), ok())
			c := upstream.NewClient(staticCreds(longKey), upstream.WithEndpoint(sc.URL), upstream.WithRetryPolicy(fastRetry(5)))
			_, err := describe(t, c)
			apiErr, isAPI := errors.AsType[*upstream.APIError](err)
			if !isAPI || apiErr.Code != tc.code || apiErr.HTTPStatus != tc.status {
				t.Fatalf("error %v, want *APIError %s (HTTP %d)", err, tc.code, tc.status)
			}
			if n := len(sc.Requests()); n != 1 {
				t.Errorf("%d attempts, want exactly 1", n)
			}
		})
	}
}

func TestRetriedExactlyOnce(t *testing.T) {
	t.Parallel()
	testCases := []struct {
		name     string
		steps    []upstreamtest.Answer
		wantCode string
	}{
		{"SignatureNonceUsed repeated", []upstreamtest.Answer{fail(http.StatusBadRequest, "SignatureNonceUsed")}, "SignatureNonceUsed"},
		{"InvalidSecurityToken.Expired repeated", []upstreamtest.Answer{fail(http.StatusBadRequest, "InvalidSecurityToken.Expired")}, "InvalidSecurityToken.Expired"},
		{"SignatureNonceUsed then InvalidSecurityToken.Expired", []upstreamtest.Answer{
			fail(http.StatusBadRequest, "SignatureNonceUsed"), fail(http.StatusBadRequest, "InvalidSecurityToken.Expired"),
		}, "InvalidSecurityToken.Expired"},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sc := upstreamtest.InOrder(t, tc.steps...)
			creds := &countingCreds{creds: upstream.Credentials(staticCreds(stsKey))}
			c := upstream.NewClient(creds, upstream.WithEndpoint(sc.URL), upstream.WithRetryPolicy(fastRetry(5)))
			_, err := describe(t, c)
			apiErr, isAPI := errors.AsType[*upstream.APIError](err)
			if !isAPI || apiErr.Code != tc.wantCode {
				t.Fatalf("error %v, want *APIError %s", err, tc.wantCode)
			}
			if n := len(sc.Requests()); n != 2 {
				t.Errorf("%d attempts, want exactly 2", n)
			}
			if n := creds.n.Load(); n != 2 {
				t.Errorf("credentials fetched %d times, want 2", n)
			}
			checkDistinctNonces(t, sc.Requests())
		})
	}
}

func TestOnceOnlyRetryDoesNotUseUpThrottlingRetries(t *testing.T) {
	t.Parallel()
	sc := upstreamtest.InOrder(t,
		fail(http.StatusBadRequest, "SignatureNonceUsed"),
		fail(http.StatusBadRequest, "Throttling.User"),
		fail(http.StatusServiceUnavailable, "ServiceUnavailable"),
		ok())
	c := upstream.NewClient(staticCreds(longKey), upstream.WithEndpoint(sc.URL), upstream.WithRetryPolicy(fastRetry(4)))
	if _, err := describe(t, c); err != nil {
		t.Fatalf("want success on attempt 4, got %v", err)
	}
	if n := len(sc.Requests()); n != 4 {
		t.Errorf("%d attempts, want 4", n)
	}
}

// TestPersistentThrottlingWaitsUpToTheMaxWait: throttling is retried,
// paced, spending neither failed attempts (MaxAttempts is 1 here) nor the
// retry budget (empty here), until the page has waited the max wait; then
// the caller gets the throttling error.
func TestPersistentThrottlingWaitsUpToTheMaxWait(t *testing.T) {
	t.Parallel()
	sc := upstreamtest.InOrder(t, fail(http.StatusBadRequest, "Throttling.User"))
	creds := &countingCreds{creds: upstream.Credentials(staticCreds(longKey))}
	const maxWait = 300 * time.Millisecond // not the default 30 s: a test must end
	c := upstream.NewClient(creds, upstream.WithEndpoint(sc.URL), upstream.WithRetryPolicy(fastRetry(1)),
		upstream.WithRetryBudget(upstream.NewRetryBudget(0, 0)), upstream.WithMaxWait(maxWait), upstream.WithRateLimit(100, 1))
	start := time.Now()
	_, err := describe(t, c)
	elapsed := time.Since(start)
	apiErr, isAPI := errors.AsType[*upstream.APIError](err)
	if !isAPI || apiErr.Code != "Throttling.User" || apiErr.Kind() != upstream.KindThrottled {
		t.Fatalf("error %v, want *APIError Throttling.User", err)
	}
	n := len(sc.Requests())
	if n < 3 {
		t.Errorf("%d attempts in %v: throttling was not retried", n, elapsed)
	}
	if elapsed < maxWait || elapsed > maxWait+2*time.Second {
		t.Errorf("gave up after %v, want after the max wait of %v", elapsed, maxWait)
	}
	if got := creds.n.Load(); got != int64(n) {
		t.Errorf("credentials fetched %d times for %d attempts, want once per attempt", got, n)
	}
	checkDistinctNonces(t, sc.Requests())
}

// TestRetryNeverWaitsPastTheDeadline: neither a backoff nor a turn with
// the pacer is waited for when it would end past the caller's deadline:
// the client gives up at once with the upstream's last error.
func TestRetryNeverWaitsPastTheDeadline(t *testing.T) {
	t.Parallel()
	testCases := []struct {
		name string
		code string
		opts []upstream.Option
	}{
		// The backoff is drawn uniformly from [0, cap] (full jitter); with a
		// cap of 1000 h the chance that it fits under the deadline is ~1e-6.
		{"backoff of a 503", "ServiceUnavailable", []upstream.Option{
			upstream.WithRetryPolicy(upstream.RetryPolicy{MaxAttempts: 5, BaseDelay: 1000 * time.Hour, MaxDelay: 1000 * time.Hour})}},
		// One turn every 10 s: the turn after the throttle is past the deadline.
		{"turn after a throttle", "Throttling.User", []upstream.Option{upstream.WithRateLimit(0.1, 1)}},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sc := upstreamtest.InOrder(t, fail(http.StatusServiceUnavailable, tc.code))
			c := upstream.NewClient(staticCreds(longKey), append([]upstream.Option{upstream.WithEndpoint(sc.URL)}, tc.opts...)...)
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
			defer cancel()
			_, err := c.DescribeImageModifiedRecords(ctx, upstream.DescribeInput{RegionID: testRegion, DesktopID: "ecd-x"})
			if ctx.Err() != nil {
				t.Errorf("returned only after the deadline (%v); it must give up at once", ctx.Err())
			}
			if errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("error %v is a context error; want the upstream's *APIError", err)
			}
			if apiErr, isAPI := errors.AsType[*upstream.APIError](err); !isAPI || apiErr.Code != tc.code {
				t.Errorf("error %v, want *APIError %s", err, tc.code)
			}
			if n := len(sc.Requests()); n != 1 {
				t.Errorf("%d attempts, want 1", n)
			}
		})
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
			sc := upstreamtest.InOrder(t, fail(http.StatusBadRequest, "Throttling.User"), ok())
			answered := make(chan struct{})
			var once sync.Once
			sc.Wrap(func(next http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					next.ServeHTTP(w, r)
					w.(http.Flusher).Flush()
					once.Do(func() { close(answered) })
				})
			})
			opts := []upstream.Option{
				upstream.WithEndpoint(sc.URL),
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
			if n := len(sc.Requests()); n != 1 {
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
func (f failingCredential) GetType() *string                     { return new("failing") }
func (f failingCredential) GetCredential() (*credentials.CredentialModel, error) {
	return nil, f.err
}

// emptyCredential is a credentials-go Credential that answers an AccessKeyId
// without a secret.
type emptyCredential struct{ failingCredential }

func (emptyCredential) GetCredential() (*credentials.CredentialModel, error) {
	return &credentials.CredentialModel{AccessKeyId: new("LTAI5tNoSecret")}, nil
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
			sc := upstreamtest.InOrder(t, ok())
			c := upstream.NewClient(tc.creds, upstream.WithEndpoint(sc.URL), upstream.WithRetryPolicy(fastRetry(4)))
			_, err := describe(t, c)
			if !errors.Is(err, upstream.ErrNoCredentials) {
				t.Errorf("error %v, want one wrapping upstream.ErrNoCredentials", err)
			}
			if n := len(sc.Requests()); n != 0 {
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
